"""Checks of a learned energy against an analytic ground truth (a GaussianMixture).

Used by the benchmarks and tests to measure what DSM gets wrong and DiffCLF fixes: the mass
each mode receives under exp(-E_theta(t, .)), and how well -E_theta(t, .) tracks log p_t.
"""
from __future__ import annotations

import math

import torch

from ..targets.analytic import GaussianMixture


@torch.no_grad()
def mode_weights_from_energy(energy_fn, mixture: GaussianMixture, n_samples: int = 20000,
                             widen: float = 1.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mode weights implied by an unnormalised density exp(-energy_fn(x)), shape (K,) float64.

    The mass of mode k is integral exp(-E(x)) r_k(x) dx with r_k the responsibilities of
    ``mixture`` (soft mode membership, exact also for overlapping modes), estimated by importance
    sampling from component k with its covariance scaled by ``widen`` (heavier proposals are
    safer when the learned mode is a little wider than the true one). For energy_fn the exact
    -log density of ``mixture`` this returns the mixture weights up to Monte Carlo error.

    Args:
        energy_fn: callable (n, d) -> (n,) energies (kT).
        mixture: the GaussianMixture that defines the modes (e.g. the true p_t at the same t).
        n_samples: samples per component.
    """
    log_masses = []
    for k in range(mixture.n_components):
        proposal = GaussianMixture(mixture.means[k:k + 1], covs=widen * mixture.covariances[k:k + 1])
        x = proposal.sample(n_samples, generator)
        log_resp = torch.log_softmax(mixture.component_log_probs(x), dim=1)[:, k]
        energy = energy_fn(x.to(torch.float32)).to(torch.float64)
        log_w = -energy + log_resp - proposal.log_prob(x)
        log_masses.append(torch.logsumexp(log_w, 0) - math.log(n_samples))
    return torch.softmax(torch.stack(log_masses), 0)


@torch.no_grad()
def mode_weights_from_samples(x: torch.Tensor, mixture: GaussianMixture) -> torch.Tensor:
    """Mode weights of samples x (n, d): mean responsibilities under ``mixture``, shape (K,)."""
    return torch.softmax(mixture.component_log_probs(x.to(torch.float64)), dim=1).mean(0)


@torch.no_grad()
def energy_r2(energy_fn, log_prob_fn, x: torch.Tensor) -> float:
    """R^2 of -energy_fn against log_prob_fn on samples x (n, d), up to a free additive constant.

    1 - Var(-E - log p) / Var(log p): 1 means the learned energy is exact up to its normaliser.
    """
    learned = -energy_fn(x.to(torch.float32)).to(torch.float64)
    true = log_prob_fn(x.to(torch.float64))
    return float(1.0 - (learned - true).var() / true.var())


class ExactEnergyModel:
    """The exact noised energies of a GaussianMixture, with the EnergyMLP interface.

    energy(t, x) = -log p_t(x) (normalised, so log_normaliser = 0). Plug it in wherever a trained
    model goes (losses, samplers, SMC paths) to separate model error from method error.
    """

    def __init__(self, mixture: GaussianMixture, schedule):
        self.mixture, self.schedule = mixture, schedule
        self.dim = mixture.dim
        self.data_mean = (mixture.weights[:, None] * mixture.means).sum(0).to(torch.float32)
        self.data_variance = mixture.data_variance

    def energy(self, t, x) -> torch.Tensor:
        """-log p_t(x), (n, d) -> (n,) float64."""
        return -self.mixture.noised_log_prob(self.schedule, t, x)

    def log_normaliser(self, t) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64)
        return torch.zeros_like(tt.reshape(-1) if tt.ndim else tt.reshape(1))

    def score(self, t, x, create_graph: bool = False) -> torch.Tensor:
        """Exact grad_x log p_t(x) in the dtype of x."""
        return self.mixture.noised_score(self.schedule, t, x).to(x.dtype)
