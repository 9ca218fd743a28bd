"""What is sampled: targets with a batched ``reduced_energy(x)`` in kT."""
from .analytic import DoubleWell, GaussianMixture
from .openmm import OpenMMTarget
from .torchff import (CompileNotice, TorchForceField, TorchForceFieldTarget, UnsupportedForceError, fast_target,
                      torch_target)

__all__ = [
    "DoubleWell", "GaussianMixture", "OpenMMTarget",
    "CompileNotice", "TorchForceField", "TorchForceFieldTarget", "UnsupportedForceError", "fast_target", "torch_target",
]
