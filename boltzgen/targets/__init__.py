"""What is sampled: targets with a batched ``reduced_energy(x)`` in kT."""
from .analytic import DoubleWell, GaussianMixture

__all__ = ["DoubleWell", "GaussianMixture"]
