"""Resampling: draw ancestor indices so that particle i has N W_i offspring on average.

All four schemes are unbiased (E[offspring_i] = N W_i); they differ in variance. Systematic and
stratified resampling use one uniform per stratum of width 1/N and keep every particle's count
within one of N W_i; residual resampling keeps floor(N W_i) copies deterministically and draws
only the remainder; multinomial draws N independent ancestors (the largest variance, the
simplest to reason about). Each function takes normalised weights (n,) float64 and returns
ancestor indices (n_out,) int64. Zero-weight particles are never drawn.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._checks import check_count
from .weights import normalized_weights


def _invert(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Ancestor indices of uniforms ``u`` in [0, 1]: particle i owns [cdf[i-1], cdf[i]).

    Only particles with positive weight are searched, so a zero-weight particle is never drawn,
    not even through rounding: a cumulative sum such as 0.1 * 10 = 0.9999999999999999 would
    otherwise leave a trailing zero-weight particle a sliver [0.9999999999999999, 1), and a
    uniform that rounds to 1.0 would land on the last particle whatever its weight. The last
    positive particle's cdf is set to one (absorbing the rounding deficit), and uniforms at or
    beyond it are clamped onto that particle.
    """
    positive = torch.nonzero(weights > 0).squeeze(1)
    if positive.numel() == 0:
        raise ValueError("weights has no positive entry: every particle has zero weight")
    cdf = torch.cumsum(weights[positive], 0)
    cdf[-1] = 1.0
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=positive.numel() - 1)
    return positive[idx]


def _uniforms(n: int, weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64, device=weights.device)


def multinomial(weights: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n independent draws from Categorical(weights)."""
    return _invert(weights, _uniforms(n, weights, generator))


def stratified(weights: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One independent uniform in each stratum [j/n, (j+1)/n)."""
    j = torch.arange(n, dtype=torch.float64, device=weights.device)
    return _invert(weights, (j + _uniforms(n, weights, generator)) / n)


def systematic(weights: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same uniform offset in every stratum: u_j = (j + U) / n."""
    j = torch.arange(n, dtype=torch.float64, device=weights.device)
    return _invert(weights, (j + _uniforms(1, weights, generator)) / n)


def residual(weights: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """floor(n W_i) copies of each particle, the remaining draws multinomial on the residuals."""
    expected = n * weights
    copies = torch.floor(expected).long()
    deterministic = torch.repeat_interleave(torch.arange(weights.numel(), device=weights.device), copies)
    n_rest = n - int(copies.sum())
    if n_rest == 0:
        return deterministic
    rest = (expected - copies).clamp_(min=0.0)
    rest = torch.where(weights > 0, rest, 0.0)  # zero weight, zero residual (never drawn)
    total = rest.sum()
    # Rounding can leave all residuals zero (n W_i all integers) while n_rest > 0: fall back to W.
    drawn = multinomial(rest / total if total > 0 else weights, n_rest, generator)
    return torch.cat([deterministic, drawn])


RESAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def resample(log_w, method: str = "systematic", generator: torch.Generator | None = None,
             n: int | None = None) -> torch.Tensor:
    """Ancestor indices (n,) int64 drawn from the normalised weights of ``log_w`` (n_particles,).

    Args:
        log_w: log-weights, shape (n_particles,); non-finite entries are zero weight.
        method: one of "multinomial", "stratified", "systematic", "residual".
        generator: the torch.Generator that supplies all randomness.
        n: number of offspring (default: as many as particles).
    """
    if method not in RESAMPLERS:
        raise ValueError(f"method must be one of {sorted(RESAMPLERS)}, got {method!r}")
    weights = normalized_weights(log_w)
    n_out = weights.numel() if n is None else n
    n_out = check_count(n_out, "n")
    return RESAMPLERS[method](weights, n_out, generator)
