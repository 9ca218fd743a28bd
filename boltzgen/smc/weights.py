"""Log-weights: normalisation, effective sample sizes, log Z increments.

Every function takes log-weights of shape (n,) (any real dtype) and computes in float64.
Non-finite log-weights (NaN, +inf, -inf) count as zero weight: a NaN comes from a broken energy,
and a +inf would mean an infinitely likely particle, which only a broken energy produces, so it
is treated like NaN instead of being allowed to swallow all the mass.

Clipping the largest weights (``ess_clipped``) is a diagnostic only: it says how much of the ESS
rests on a few particles. No estimate in this package is ever computed from clipped weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import as_tensor, check_count

_NEG_INF = float("-inf")


def clean_log_weights(log_w, name: str = "log_w") -> torch.Tensor:
    """Return log-weights as float64 of shape (n,), with every non-finite entry set to -inf."""
    t = as_tensor(log_w, name, dtype=torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got {tuple(t.shape)}")
    return torch.where(torch.isfinite(t), t, torch.full_like(t, _NEG_INF))


def _nonempty(log_w, name: str = "log_w") -> torch.Tensor:
    t = clean_log_weights(log_w, name)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: need at least one particle")
    return t


def log_mean_exp(log_w) -> float:
    """log(mean_i exp(log_w_i)) as a Python float; -inf when every weight is zero."""
    t = _nonempty(log_w)
    return float(torch.logsumexp(t, 0)) - math.log(t.numel())


def normalized_log_weights(log_w) -> torch.Tensor:
    """log W_i with sum_i W_i = 1, float64 (n,); raises ValueError when every weight is zero."""
    t = _nonempty(log_w)
    total = torch.logsumexp(t, 0)
    if not torch.isfinite(total):
        raise ValueError("every log-weight is non-finite (all particles have zero weight): nothing to normalise")
    return t - total


def normalized_weights(log_w) -> torch.Tensor:
    """W_i = w_i / sum_j w_j, float64 (n,), summing to one."""
    return torch.exp(normalized_log_weights(log_w))


def ess(log_w) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2, in [1, n] (0 when every weight is zero)."""
    t = _nonempty(log_w)
    if not torch.isfinite(t).any():
        return 0.0
    # shift-free form: both logsumexps are stable for any scale of the log-weights
    return float(torch.exp(2.0 * torch.logsumexp(t, 0) - torch.logsumexp(2.0 * t, 0)))


def ess_fraction(log_w) -> float:
    """ESS / n, in [1/n, 1] (0 when every weight is zero)."""
    t = _nonempty(log_w)
    return ess(t) / t.numel()


def max_weight_share(log_w) -> float:
    """The largest normalised weight max_i W_i (1/n for uniform weights, 1 for total collapse)."""
    t = _nonempty(log_w)
    if not torch.isfinite(t).any():
        return float("nan")
    return float(torch.exp(t.max() - torch.logsumexp(t, 0)))


def _weighted_terms(log_w: torch.Tensor, log_increment: torch.Tensor) -> torch.Tensor:
    """log W_i + g_i with zero-weight particles kept at -inf (never -inf + inf = NaN)."""
    return torch.where(torch.isneginf(log_w), torch.full_like(log_w, _NEG_INF), log_w + log_increment)


def _pair(log_w, log_increment) -> tuple[torch.Tensor, torch.Tensor]:
    lw = normalized_log_weights(log_w)
    inc = clean_log_weights(log_increment, "log_increment")
    if inc.shape != lw.shape:
        raise ValueError(f"log_increment must have shape {tuple(lw.shape)} like log_w, got {tuple(inc.shape)}")
    return lw, inc


def conditional_ess(log_w, log_increment) -> float:
    """Conditional ESS of an incremental weight given the current weights (Zhou et al. 2016).

    CESS = n (sum_i W_i g_i)^2 / sum_i W_i g_i^2 with W the current normalised weights and g the
    incremental weights exp(log_increment). It lies in [0, n], equals n when the increment is
    constant, and equals ``ess(log_increment)`` when the current weights are uniform. Adaptive
    schedules choose the next step so that CESS / n stays near a set value.
    """
    lw, inc = _pair(log_w, log_increment)
    first = torch.logsumexp(_weighted_terms(lw, inc), 0)
    second = torch.logsumexp(_weighted_terms(lw, 2.0 * inc), 0)
    if not torch.isfinite(first):
        return 0.0
    return float(lw.numel() * torch.exp(2.0 * first - second))


def log_mean_increment(log_w, log_increment) -> float:
    """log sum_i W_i exp(g_i): the SMC estimate of log(Z_next / Z_current), float."""
    lw, inc = _pair(log_w, log_increment)
    return float(torch.logsumexp(_weighted_terms(lw, inc), 0))


def reweight(log_w, log_increment) -> tuple[torch.Tensor, float]:
    """Multiply the weights by exp(log_increment).

    Returns the new log-weights (float64, (n,), non-finite -> -inf, zero weights stay zero) and
    the log Z increment log sum_i W_i exp(g_i). With unnormalised weights kept such that
    log Z = log_mean_exp(log_w), the running log Z is simply ``log_mean_exp`` of the result.
    """
    lw = _nonempty(log_w)
    inc = clean_log_weights(log_increment, "log_increment")
    if inc.shape != lw.shape:
        raise ValueError(f"log_increment must have shape {tuple(lw.shape)} like log_w, got {tuple(inc.shape)}")
    new = clean_log_weights(_weighted_terms(lw, inc))
    return new, log_mean_increment(lw, inc)


def ess_clipped(log_w, n_clip: int | None = None) -> float:
    """ESS after clipping the ``n_clip`` largest weights down to the next largest one.

    ``n_clip`` defaults to ceil(sqrt(n)) (the truncation level of Ionides 2008). A large gap
    between ``ess`` and ``ess_clipped`` says the ESS is carried by a handful of particles.
    Diagnostic only: estimates are never computed from clipped weights.
    """
    t = _nonempty(log_w)
    n = t.numel()
    k = math.ceil(math.sqrt(n)) if n_clip is None else n_clip
    k = check_count(k, "n_clip", minimum=0)
    k = min(k, n - 1)
    if k == 0:
        return ess(t)
    threshold = torch.sort(t, descending=True).values[k]
    if not torch.isfinite(threshold):  # fewer than k+1 positive weights: clip to the smallest positive one
        finite = t[torch.isfinite(t)]
        if finite.numel() == 0:
            return 0.0
        threshold = finite.min()
    return ess(torch.minimum(t, threshold))


@dataclass(frozen=True)
class WeightSummary:
    """Diagnostics of one set of weights.

    Attributes:
        n: number of particles.
        ess: Kish effective sample size.
        ess_fraction: ess / n.
        ess_clipped: ESS after clipping the ``n_clipped`` largest weights (diagnostic only).
        n_clipped: how many of the largest weights ``ess_clipped`` clipped.
        max_weight_share: largest normalised weight.
        n_zero: particles with zero weight (non-finite log-weight).
        log_mean_weight: log of the mean weight (the importance-sampling estimate of log Z).
    """

    n: int
    ess: float
    ess_fraction: float
    ess_clipped: float
    n_clipped: int
    max_weight_share: float
    n_zero: int
    log_mean_weight: float


def summarize(log_w, n_clip: int | None = None) -> WeightSummary:
    """All weight diagnostics of ``log_w`` (n,) in one frozen record."""
    t = _nonempty(log_w)
    n = t.numel()
    k = math.ceil(math.sqrt(n)) if n_clip is None else n_clip
    e = ess(t)
    return WeightSummary(
        n=n,
        ess=e,
        ess_fraction=e / n,
        ess_clipped=ess_clipped(t, k),
        n_clipped=min(k, n - 1),
        max_weight_share=max_weight_share(t),
        n_zero=int((~torch.isfinite(t)).sum()),
        log_mean_weight=log_mean_exp(t),
    )


def weighted_mean(values, log_w) -> torch.Tensor:
    """sum_i W_i values_i for values of shape (n,) or (n, k); float64 scalar tensor or (k,).

    Zero-weight particles do not contribute, even where their values are NaN.
    """
    w = normalized_weights(log_w)
    v = as_tensor(values, "values", dtype=torch.float64).to(w.device)
    if v.ndim not in (1, 2) or v.shape[0] != w.numel():
        raise ValueError(f"values must have shape ({w.numel()},) or ({w.numel()}, k), got {tuple(v.shape)}")
    wb = w if v.ndim == 1 else w[:, None]
    return torch.where(wb > 0, wb * v, torch.zeros_like(v)).sum(0)


def weighted_quantiles(values, log_w, levels) -> list[float]:
    """Quantiles (inverted CDF, no interpolation) of ``values`` (n,) under the weights of ``log_w`` (n,).

    ``levels`` are fractions in [0, 1]; values may be +-inf (they sort to the ends). Returns one float
    per level.
    """
    w = normalized_weights(log_w)
    v = as_tensor(values, "values", dtype=torch.float64).to(w.device).reshape(-1)
    if v.shape != w.shape:
        raise ValueError(f"values must have shape ({w.numel()},), one per weight, got {tuple(v.shape)}")
    order = torch.sort(v, stable=True).indices
    cumulative = torch.cumsum(w[order], 0)
    targets = torch.as_tensor(levels, dtype=torch.float64, device=w.device) * cumulative[-1]
    picks = torch.searchsorted(cumulative, targets, side="left").clamp(max=v.numel() - 1)
    return [float(x) for x in v[order][picks]]
