"""Importance reweighting of samples from any proposal with a known log-density.

The one-step case of SMC: log w_i = -u(x_i) - log q(x_i), with u the target's reduced energy (kT)
and q the proposal's normalised density. mean(w) estimates Z = integral exp(-u) without bias;
the diagnostics are the same as SMC's (:class:`boltzgen.smc.weights.WeightSummary`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import as_tensor, check_count
from . import weights as W
from .energy import EnergyFn, evaluate


@dataclass(frozen=True)
class ImportanceResult:
    """Importance weights of n samples toward a target.

    Attributes:
        log_weights: (n,) float64 log w_i = -u(x_i) - log q(x_i) (-inf where not finite).
        log_z: log mean w, the estimate of the target's log Z (float64 float).
        log_z_std_error: delta-method standard error of log_z, sqrt((n / ESS - 1) / n);
            meaningful only when the ESS is not tiny.
        diagnostics: ESS, ESS fraction, clipped ESS, largest weight share, zero weights.
        n_nonfinite: samples whose target energy or proposal log-density was not finite.
    """

    log_weights: torch.Tensor
    log_z: float
    log_z_std_error: float
    diagnostics: W.WeightSummary
    n_nonfinite: int

    @property
    def weights(self) -> torch.Tensor:
        """(n,) float64 normalised weights."""
        return W.normalized_weights(self.log_weights)

    @property
    def ess(self) -> float:
        return self.diagnostics.ess

    @property
    def ess_fraction(self) -> float:
        return self.diagnostics.ess_fraction

    def expectation(self, values) -> torch.Tensor:
        """Self-normalised estimate of E_target[f] from values f(x_i) of shape (n,) or (n, k)."""
        return W.weighted_mean(values, self.log_weights)


def _per_sample(values, name: str, n: int | None) -> torch.Tensor:
    t = as_tensor(values, name, dtype=torch.float64)
    if t.ndim != 1 or (n is not None and t.shape[0] != n):
        raise ValueError(f"{name} must have shape ({n if n is not None else 'n'},), got {tuple(t.shape)}")
    return t


def importance_reweight(target_energy, proposal_log_prob, samples: torch.Tensor | None = None, *,
                        chunk_size: int | None = 4096, n_clip: int | None = None) -> ImportanceResult:
    """Weights of samples from a proposal q toward the target exp(-u).

    Args:
        target_energy: u as a callable x (n, d) -> (n,) in kT, or its values, shape (n,).
        proposal_log_prob: log q(x_i), shape (n,), or a callable log_prob(x) -> (n,) (normalised).
        samples: x (n, d); needed when either of the above is a callable.
        chunk_size: energies are evaluated on at most this many samples at a time.
        n_clip: how many top weights the clipped-ESS diagnostic clips (default ceil(sqrt(n))).
    """
    if (callable(target_energy) or callable(proposal_log_prob)) and samples is None:
        raise ValueError("samples (n, d) are needed when target_energy or proposal_log_prob is a callable")
    n = None
    if samples is not None:
        if not isinstance(samples, torch.Tensor) or samples.ndim != 2:
            raise ValueError(f"samples must be a tensor of shape (n, d), got {getattr(samples, 'shape', type(samples).__name__)}")
        n = samples.shape[0]
    u = evaluate(target_energy, samples, chunk_size) if callable(target_energy) else _per_sample(target_energy, "target_energy", n)
    n = u.shape[0]
    if n == 0:
        raise ValueError("no samples: need at least one")
    log_q = proposal_log_prob(samples) if callable(proposal_log_prob) else proposal_log_prob
    log_q = _per_sample(log_q.detach() if isinstance(log_q, torch.Tensor) else log_q, "proposal_log_prob", n)
    log_w = W.clean_log_weights(-u - log_q.to(u.device))
    summary = W.summarize(log_w, n_clip)
    if summary.n_zero == n:
        raise ValueError("every sample has zero weight (non-finite target energy or proposal log-density)")
    se = math.sqrt(max(n / summary.ess - 1.0, 0.0) / n)
    return ImportanceResult(log_w, summary.log_mean_weight, se, summary, summary.n_zero)


def importance_sample(proposal, target_energy: EnergyFn, n: int, seed: int | torch.Generator = 0,
                      chunk_size: int | None = 4096, n_clip: int | None = None) -> tuple[torch.Tensor, ImportanceResult]:
    """Draw n samples from ``proposal`` (sample/log_prob) and reweight them toward exp(-target_energy).

    Returns the samples (n, d) and their :class:`ImportanceResult`.
    """
    n = check_count(n, "n")
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    x = proposal.sample(n, generator)
    return x, importance_reweight(target_energy, proposal.log_prob, x, chunk_size=chunk_size, n_clip=n_clip)
