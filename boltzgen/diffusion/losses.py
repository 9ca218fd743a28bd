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
* :func:`target_score_loss`: target score matching at low noise. When the clean data come with
  their score s_0 = grad log p_0(x_0) (for molecules: the force field's forces, -grad u), the score
  of the noised density obeys grad log p_t(x_t) = E[s_0(x_0) / alpha_t | x_t], so s_0 / alpha_t is
  an unbiased regression target whose variance vanishes as the noise does, exactly where DSM's
  target -eps / sigma_t carries almost no signal about the energy's fine structure. Used only below
  a noise level ``max_sigma`` (above it the conditional spread of s_0 makes it noisier than DSM).
* :func:`own_sample_loss`: the reverse direction. On the model's own samples at t_min (not the data),
  the variance of E_theta - u: its gradient at the model's own distribution is twice that of
  KL(q_theta || p) (the log-variance divergence), so it lowers the mass the model puts where the
  target has none (e.g. clashes), which no loss on data frames can see.
* :func:`combined_loss`: DSM + lambda CLF (+ mu TSM + energy matching, optionally on other frames).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_flat
from ..smc.weights import weighted_quantiles


def _check_data(x0) -> torch.Tensor:
    x0 = check_flat(x0, "x0")
    if x0.shape[0] == 0:
        raise ValueError("x0 must hold at least one sample, got shape (0, d)")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains non-finite values")
    return x0


def _device(generator, x0):
    """Random numbers are drawn where the generator lives (then moved to x0's device)."""
    return generator.device if generator is not None else x0.device


def _noise(shape, x0, generator, project):
    """Standard normal noise of ``shape`` (..., d), projected row by row onto the data's subspace."""
    eps = torch.randn(shape, generator=generator, dtype=x0.dtype, device=_device(generator, x0)).to(x0.device)
    if project is None:
        return eps
    return project(eps.reshape(-1, shape[-1])).reshape(shape)  # projections take (n, d)


def _noised(model, x0, t, eps):
    """x_t by the model's own noising (``model.noise``, e.g. wrapped dihedrals), else its schedule's."""
    noise = getattr(model, "noise", None)
    return noise(x0, t, eps) if noise is not None else model.schedule.noise(x0, t, eps)


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
    t = schedule.sample_times(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    eps = _noise(x0.shape, x0, generator, project)
    xt = _noised(model, x0, t, eps)
    score = model.score(t, xt, create_graph=True)
    if project is not None:
        score = project(score)
    residual = getattr(model, "dsm_residual", None)
    if residual is not None:  # the model's own noising kernels (e.g. wrapped normals on dihedrals)
        return (residual(score, xt, x0, eps, t) ** 2).mean()
    return ((schedule.sigma(t)[:, None] * score + eps) ** 2).mean()


def low_noise_time(schedule, max_sigma: float) -> float:
    """The time at which sigma_t reaches ``max_sigma`` (sigma is increasing in t), by bisection."""
    lo, hi = schedule.t_min, 1.0
    if float(schedule.sigma(lo)) >= max_sigma:
        raise ValueError(f"max_sigma={max_sigma:g} is below the schedule's lowest noise "
                         f"sigma(t_min)={float(schedule.sigma(lo)):.3g}")
    if float(schedule.sigma(hi)) <= max_sigma:
        return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(schedule.sigma(mid)) < max_sigma else (lo, mid)
    return lo


def target_score_loss(model, x0, score0, generator: torch.Generator | None = None, project=None,
                      max_sigma: float = 5e-3) -> torch.Tensor:
    """Relative target-score-matching loss (scalar) at low noise, t ~ U[t_min, t(max_sigma)].

    mean |s_theta(t, x_t) - s_0(x_0) / alpha_t|^2 / mean |s_0|^2: 1 for a model that ignores s_0,
    0 for one that reproduces it; sqrt of it is the relative error of the model's score (forces).

    Args:
        model: has ``schedule`` and ``score(t, x, create_graph)``.
        x0: (n, d) clean data; score0: (n, d) their scores grad log p_0 (units 1/x).
        generator: for t and the noise. project: optional projection of noise and scores.
        max_sigma: the largest noise sigma_t used (units of x).
    """
    x0 = _check_data(x0)
    score0 = check_flat(score0, "score0", x0.shape[1]).to(x0)
    if score0.shape[0] != x0.shape[0] or not torch.isfinite(score0).all():
        raise ValueError(f"score0 must be finite with shape {tuple(x0.shape)} (one score per sample)")
    schedule = model.schedule
    t_cut = low_noise_time(schedule, max_sigma)
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=_device(generator, x0)).to(x0.device)
    t = schedule.t_min + (t_cut - schedule.t_min) * u
    eps = _noise(x0.shape, x0, generator, project)
    xt = _noised(model, x0, t, eps)
    score = model.score(t, xt, create_graph=True)
    tsm_target = getattr(model, "tsm_target", None)
    target = tsm_target(score0, t) if tsm_target is not None else score0 / schedule.alpha(t)[:, None]
    if project is not None:
        score, target = project(score), project(target)
    return ((score - target) ** 2).sum(1).mean() / (target**2).sum(1).mean().detach()


def energy_matching_loss(model, x0, energy0, generator: torch.Generator | None = None, project=None,
                         max_sigma: float = 5e-3) -> torch.Tensor:
    """Variance over the batch of E_theta(t, x_t) - u(x_0) at low noise (scalar, kT^2).

    When the clean data come with their target energies u(x_0) (kT, up to one constant), the model's
    lowest levels should equal them up to that constant: this pins the *offsets* between separated
    modes that DSM and target score matching cannot see (a basin's mass), directly where the one-step
    importance weights exp(E(t_min) - u) are read. Levels t ~ U[t_min, t(max_sigma)] with their tiny
    noise, as for :func:`target_score_loss`; the batch mean of the residual is removed, so the unknown
    constant (log Z) plays no role.

    Args:
        model: has ``schedule`` and ``energy(t, x)``.
        x0: (n, d) clean data; energy0: (n,) their reduced energies in the model's coordinates (kT).
        generator, project, max_sigma: as for :func:`target_score_loss`.
    """
    x0 = _check_data(x0)
    energy0 = torch.as_tensor(energy0).to(device=x0.device).reshape(-1)
    if energy0.shape != (x0.shape[0],) or not torch.isfinite(energy0).all():
        raise ValueError(f"energy0 must be finite with shape ({x0.shape[0]},) (one energy per sample)")
    schedule = model.schedule
    t_cut = low_noise_time(schedule, max_sigma)
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=_device(generator, x0)).to(x0.device)
    t = schedule.t_min + (t_cut - schedule.t_min) * u
    xt = _noised(model, x0, t, _noise(x0.shape, x0, generator, project))
    residual = model.energy(t, xt).to(torch.float64) - energy0.to(torch.float64)
    return ((residual - residual.mean()) ** 2).mean()


def capped_energies(model, y, energy0, clip: float = 20.0, log_weights=None) -> torch.Tensor:
    """Target energies for :func:`own_sample_loss`, with far gaps capped (n,) float64 kT.

    Where the gap u - E_theta(t_min) exceeds its median by more than ``clip`` (clashes: thousands
    of kT), or u is not finite, the target becomes E_theta + median + clip: the model is asked to
    rate that sample ``clip`` worse than typical, not to fit an astronomical energy. Computed once
    per pool of samples with the model as it drew them, so the regression has fixed targets. The
    median is weighted by ``log_weights`` (the samples' weights toward the model's density), as in
    :func:`boltzgen.analysis.model_quality.own_sample_quality`. Where the model's own energy is
    not finite the target is NaN: such a sample cannot be fitted and must be left out.

    Args:
        model: has ``schedule`` and ``energy(t, x)``.
        y: (n, d) the model's own samples at t_min in its coordinates.
        energy0: (n,) their target energies u in the model's coordinates (kT; may be +-inf or NaN).
        clip: kT above the median gap beyond which the target is capped.
        log_weights: (n,) the samples' log-weights (finite or -inf), or None for equal weights.
    """
    y = _check_data(y)
    n = y.shape[0]
    energy0 = torch.as_tensor(energy0).to(device=y.device, dtype=torch.float64).reshape(-1)
    if energy0.shape != (n,):
        raise ValueError(f"energy0 must have shape ({n},) (one energy per sample), got {tuple(energy0.shape)}")
    if not clip > 0:
        raise ValueError(f"clip must be positive (kT), got {clip!r}")
    lw = torch.zeros(n, dtype=torch.float64, device=y.device) if log_weights is None else \
        torch.as_tensor(log_weights).to(device=y.device, dtype=torch.float64).reshape(-1)
    if lw.shape != (n,) or torch.isnan(lw).any() or (lw == math.inf).any():
        raise ValueError(f"log_weights must have shape ({n},), finite or -inf")
    with torch.no_grad():
        e = model.energy(torch.full((n,), model.schedule.t_min, dtype=y.dtype, device=y.device), y)
    e = e.to(torch.float64)
    fitted = torch.isfinite(e)
    gap = torch.where(torch.isfinite(energy0) & fitted, energy0 - e, torch.full_like(e, math.inf))
    typical = torch.isfinite(gap) & torch.isfinite(lw)
    if not typical.any():
        raise ValueError("no sample has a finite gap u - E and a finite weight: nothing sets the typical gap")
    (median,) = weighted_quantiles(gap[typical], lw[typical], (0.5,))
    ceiling = median + clip
    target = torch.where(gap > ceiling, e + ceiling, energy0)
    return torch.where(fitted, target, torch.full_like(target, math.nan))


def own_sample_loss(model, y, energy0) -> torch.Tensor:
    """Variance over the batch of E_theta(t_min, y) - u(y) on the model's own samples (scalar, kT^2).

    ``y`` are draws of the model's own density at t_min (held fixed: no gradient flows through how
    they were drawn). At that density the gradient of this variance is 2 grad KL(q_theta || p)
    (the log-variance divergence of Richter et al., 2020), so it moves mass away from where the
    target rates the model's samples worse than typical, which no loss on data frames can see.
    Give it :func:`capped_energies`, so clashes count with a bounded gap.

    Args:
        model: has ``schedule`` and ``energy(t, x)``.
        y: (n, d) the model's own samples at t_min in its coordinates.
        energy0: (n,) their (capped) target energies in the model's coordinates (kT), finite.
    """
    y = _check_data(y)
    energy0 = torch.as_tensor(energy0).to(device=y.device, dtype=torch.float64).reshape(-1)
    if energy0.shape != (y.shape[0],) or not torch.isfinite(energy0).all():
        raise ValueError(f"energy0 must be finite with shape ({y.shape[0]},) (one energy per sample; cap them "
                         f"with capped_energies)")
    t = torch.full((y.shape[0],), model.schedule.t_min, dtype=y.dtype, device=y.device)
    residual = model.energy(t, y).to(torch.float64) - energy0
    return ((residual - residual.mean()) ** 2).mean()


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
    device = generator.device if generator is not None else None
    anchor = torch.rand(n, 1, generator=generator, dtype=dtype, device=device)
    if window == 1:
        others = torch.rand(n, k - 1, generator=generator, dtype=dtype, device=device)
    else:
        others = _reflect(anchor + window * (2 * torch.rand(n, k - 1, generator=generator, dtype=dtype, device=device) - 1))
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
    t = sample_levels(n, k, schedule, generator, x0.dtype, window).to(x0.device)  # (n, k)
    eps = _noise((n, k, d), x0, generator, project)
    if getattr(model, "noise", None) is not None:
        xt = _noised(model, x0[:, None, :].expand(n, k, d).reshape(-1, d), t.reshape(-1),
                     eps.reshape(-1, d)).reshape(n, k, d)
    else:
        xt = schedule.alpha(t)[..., None] * x0[:, None, :] + schedule.sigma(t)[..., None] * eps  # (n, k, d)
    levels = t[:, :, None].expand(n, k, k).reshape(-1)  # level i
    samples = xt[:, None, :, :].expand(n, k, k, d).reshape(-1, d)  # sample j
    log_p = -model.energy(levels, samples) - model.log_normaliser(levels)
    logits = log_p.reshape(n, k, k).transpose(1, 2).reshape(n * k, k)  # row: sample j, column: level i
    labels = torch.arange(k, device=x0.device).repeat(n)
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class LossParts:
    """Scalar parts of the combined loss (floats, for logging; nan for a part not computed)."""

    total: float
    dsm: float
    clf: float
    tsm: float = float("nan")
    energy: float = float("nan")
    own: float = float("nan")


def combined_loss(model, x0, generator=None, clf_weight: float = 1.0, n_levels: int = 2, project=None,
                  window: float = 1.0, score0=None, tsm_weight: float = 0.0, tsm_max_sigma: float = 5e-3,
                  energy0=None, energy_weight: float = 0.0, x_regression=None):
    """DSM + clf_weight * DiffCLF + tsm_weight * TSM + energy_weight * energy matching. Returns (loss tensor, LossParts).

    A zero weight skips that pass; TSM needs ``score0`` (m, d), the scores of the regression frames;
    energy matching needs ``energy0`` (m,), their target energies (kT). The regression frames are
    ``x_regression`` (m, d) when given, else ``x0``: TSM and energy matching are regressions on known
    per-frame targets whose optimum does not depend on which frames they see, so they may take frames
    drawn differently (e.g. as sampled by biased MD, covering every basin) from the DSM/DiffCLF batch.
    """
    if clf_weight < 0 or tsm_weight < 0 or energy_weight < 0:
        raise ValueError(f"clf_weight, tsm_weight and energy_weight must be >= 0, got {clf_weight}, {tsm_weight}, "
                         f"{energy_weight}")
    xr = x0 if x_regression is None else x_regression
    total = dsm = dsm_loss(model, x0, generator, project)
    clf = tsm = float("nan")
    if clf_weight > 0:
        c = diffclf_loss(model, x0, generator, n_levels, project, window)
        total, clf = total + clf_weight * c, c.item()
    if tsm_weight > 0:
        if score0 is None:
            raise ValueError("tsm_weight > 0 needs score0, the scores of the data")
        m = target_score_loss(model, xr, score0, generator, project, tsm_max_sigma)
        total, tsm = total + tsm_weight * m, m.item()
    energy = float("nan")
    if energy_weight > 0:
        if energy0 is None:
            raise ValueError("energy_weight > 0 needs energy0, the target energies of the data")
        e = energy_matching_loss(model, xr, energy0, generator, project, tsm_max_sigma)
        total, energy = total + energy_weight * e, e.item()
    return total, LossParts(total.item(), dsm.item(), clf, tsm, energy)
