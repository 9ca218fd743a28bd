"""Training losses for diffusion energy-based models.

A "model" here is anything with ``schedule``, ``energy(t, x) -> (n,)`` and
``log_normaliser(t) -> (n,)`` (boltzgen.diffusion.networks.EnergyMLP, or the exact energies of an
analytic target in tests). Data ``x0`` is a batch of flat vectors (n, d).

* :func:`dsm_loss`: denoising score matching, E w(t) |sigma_t s_theta(t, x_t) + eps|^2 averaged over
  coordinates (w = 1, the epsilon-prediction weighting). Local: it only constrains gradients.
* :func:`diffclf_loss`: the Diffusive Classification loss. The same x_0 is noised to k levels
  with independent noise; l_t(x) = -E_theta(t, x) - f(t) models log p_t(x); a softmax over the k
  levels must tell which level produced each noisy sample (k = 2 is the binary logistic form of
  DESIGN.md). The Bayes-optimal logits are the log density ratios log p_ti - log p_tj, which fix
  the relative mass of modes that DSM cannot see.
* :func:`combined_loss`: DSM + lambda CLF.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_flat


def _check_data(x0) -> torch.Tensor:
    x0 = check_flat(x0, "x0")
    if x0.shape[0] == 0:
        raise ValueError("x0 must hold at least one sample, got shape (0, d)")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains non-finite values")
    return x0


def _noise(shape, x0, generator, project):
    eps = torch.randn(shape, generator=generator, dtype=x0.dtype)
    return eps if project is None else project(eps)


def dsm_loss(model, x0, generator: torch.Generator | None = None, project=None) -> torch.Tensor:
    """Denoising score matching loss (scalar), t ~ U[t_min, 1].

    Args:
        model: has ``schedule`` and ``score(t, x, create_graph)`` (or ``energy``).
        x0: (n, d) clean data.
        generator: torch.Generator for t and the noise.
        project: optional projection applied to the noise (e.g. remove the centre of mass), so the
            noise lives in the data's subspace.
    """
    x0 = _check_data(x0)
    schedule = model.schedule
    t = schedule.sample_times(x0.shape[0], generator=generator, dtype=x0.dtype)
    eps = _noise(x0.shape, x0, generator, project)
    xt = schedule.noise(x0, t, eps)
    score = model.score(t, xt, create_graph=True)
    if project is not None:
        score = project(score)
    residual = schedule.sigma(t)[:, None] * score + eps
    return (residual**2).mean()


def sample_levels(n: int, k: int, schedule, generator=None, dtype=torch.float32, window: float = 1.0) -> torch.Tensor:
    """(n, k) levels per sample: one uniform on [t_min, 1], the others within +-window of it.

    Close levels are hard to tell apart, which is where the classification carries information
    about relative mode mass; windows at every position chain the density ratios from t = 1 down
    to t_min. Offsets are reflected at the ends of the range so that every level is marginally
    uniform, and the lowest levels (where the mode weights are read off) are covered as often as
    any other. window = 1 gives independent uniform levels.
    """
    if not (0 < window <= 1):
        raise ValueError(f"window must lie in (0, 1], got {window}")
    anchor = torch.rand(n, 1, generator=generator, dtype=dtype)
    if window == 1:
        others = torch.rand(n, k - 1, generator=generator, dtype=dtype)
    else:
        others = _reflect(anchor + window * (2 * torch.rand(n, k - 1, generator=generator, dtype=dtype) - 1))
    u = torch.cat([anchor, others], dim=1)
    return schedule.t_min + (1.0 - schedule.t_min) * u


def _reflect(u: torch.Tensor) -> torch.Tensor:
    """Fold values from [-1, 2] back into [0, 1] by reflection at 0 and 1."""
    u = torch.abs(u)
    return torch.where(u > 1, 2 - u, u)


def diffclf_loss(model, x0, generator: torch.Generator | None = None, n_levels: int = 2,
                 project=None, window: float = 1.0) -> torch.Tensor:
    """Diffusive Classification loss (scalar): softmax cross-entropy over ``n_levels`` noise levels.

    For each x_0, levels t_1..t_k are drawn, x_{t_j} = alpha x_0 + sigma eps_j with independent
    eps_j, and L[i, j] = l_{t_i}(x_{t_j}) = -E(t_i, x_{t_j}) - f(t_i); the loss is the mean
    cross-entropy of the columns with the true level as label. k = 2 equals
    1/2 softplus(l_t(x_s) - l_s(x_s)) + 1/2 softplus(l_s(x_t) - l_t(x_t)). Costs k^2 energies per x_0.
    """
    x0 = _check_data(x0)
    if not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    n, d = x0.shape
    k = n_levels
    schedule = model.schedule
    t = sample_levels(n, k, schedule, generator, x0.dtype, window)  # (n, k)
    eps = _noise((n, k, d), x0, generator, project)
    xt = schedule.alpha(t)[..., None] * x0[:, None, :] + schedule.sigma(t)[..., None] * eps  # (n, k, d)
    levels = t[:, :, None].expand(n, k, k).reshape(-1)  # level i
    samples = xt[:, None, :, :].expand(n, k, k, d).reshape(-1, d)  # sample j
    log_p = -model.energy(levels, samples) - model.log_normaliser(levels)
    logits = log_p.reshape(n, k, k).transpose(1, 2).reshape(n * k, k)  # row: sample j, column: level i
    labels = torch.arange(k).repeat(n)
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class LossParts:
    """Scalar parts of the combined loss (floats, for logging)."""

    total: float
    dsm: float
    clf: float


def combined_loss(model, x0, generator=None, clf_weight: float = 1.0, n_levels: int = 2, project=None,
                  window: float = 1.0):
    """DSM + clf_weight * DiffCLF. Returns (loss tensor, LossParts). clf_weight = 0 skips the CLF pass."""
    if clf_weight < 0:
        raise ValueError(f"clf_weight must be >= 0, got {clf_weight}")
    dsm = dsm_loss(model, x0, generator, project)
    if clf_weight == 0:
        return dsm, LossParts(dsm.item(), dsm.item(), float("nan"))
    clf = diffclf_loss(model, x0, generator, n_levels, project, window)
    total = dsm + clf_weight * clf
    return total, LossParts(total.item(), dsm.item(), clf.item())
