"""SMC through the levels of a diffusion EBM with reverse-diffusion proposals (exact weights).

Annealing with MCMC alone (:func:`boltzgen.smc.diffusion_path`) moves particles from level t to
t' < t only by reweighting, then relies on MALA to follow the shrinking distribution; in d
dimensions a level step that shrinks the variance by Delta ln v costs a log-weight variance of
about (d/2)(Delta ln v)^2, so lineages die fast where the backbone basins form. Here particles
are instead *moved* by the model's own reverse-diffusion step (as in particle denoising
diffusion samplers) and weighted exactly, with the forward noising kernel as backward kernel:

    x' ~ r(x' | x) = N(mu(x), tau^2),   the DDPM posterior step with x0_hat from the model score,
    log w += -E(t', x') + E(t, x) + log q(x | x') - log r(x' | x),
    q(x | x') = N(a x', s^2),  a = alpha_t / alpha_t',  s^2 = sigma_t^2 - a^2 sigma_t'^2.

When E is the energy of the noised data at every level and r the true reverse kernel, every
weight is one; the weights measure how far the model and the step are from that, and never
bias the result. All Gaussians live on the subspace of ``project`` (centre-free coordinates),
with their normalisation on that subspace, so log Z stays exact. MCMC moves at a level are
optional (``n_moves``); resampling is on the ESS as in :func:`boltzgen.smc.smc`.

The result is an :class:`~boltzgen.smc.SMCResult` at the model's last level (t_min), ready to be
continued toward a physical target with ``smc(geometric_path(...), initial=result)``.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from .._checks import check_count
from . import weights as W
from .energy import Projection, subspace_dimension
from .kernels import MALA, ParticleState, particle_state
from .proposal import GaussianProposal
from .resampling import RESAMPLERS
from .sampler import SMCResult, SMCStep, _generator, _moved, _Population, _resampled, _Settings


def _scalar(fn, t: float, like: torch.Tensor) -> float:
    return float(fn(torch.tensor([t], dtype=torch.float64, device=like.device))[0])


def _log_gaussian(residual: torch.Tensor, variance: float, k: int) -> torch.Tensor:
    """log N(residual; 0, variance I_k) per row, float64 (n,), on a k-dimensional subspace."""
    r = residual.to(torch.float64)
    return -0.5 * (r**2).sum(1) / variance - 0.5 * k * math.log(2.0 * math.pi * variance)


def initial_gaussian(model, project: Projection | None = None) -> GaussianProposal:
    """The model's top level as a proposal: N(alpha_1 data_mean, v_1) on the subspace.

    At t = 1 the energy of an :class:`~boltzgen.diffusion.EnergyModel` is exactly this Gaussian
    (its correction is gated by 1 - t), so the first importance weights are all equal.
    """
    mean = model.data_mean.detach().to(torch.float64)
    alpha = _scalar(model.schedule.alpha, 1.0, mean)
    sigma = _scalar(model.schedule.sigma, 1.0, mean)
    variance = alpha**2 * float(model.data_variance) + sigma**2
    m = alpha * mean
    if project is not None:
        m = project(m[None])[0]
    return GaussianProposal(model.dim, mean=m, variance=variance, project=project, device=mean.device)


def level_grid(t_min: float, n_levels: int, t_max: float = 1.0) -> tuple[float, ...]:
    """n_levels + 1 times from t_max down to t_min, uniform in t (uniform in log SNR for LogSNRSchedule)."""
    n_levels = check_count(n_levels, "n_levels")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    step = (t_max - t_min) / n_levels
    return tuple([t_max - i * step for i in range(n_levels)] + [t_min])


def _denoised(model, state: ParticleState, t: float, t_next: float, project, k: int, generator,
              x0_variance: bool = True) -> tuple:
    """Propose x' at t_next from x at t; return x' and log q(x | x') - log r(x' | x), (n,) float64."""
    P = project or (lambda v: v)
    like = state.x
    data_variance = float(model.data_variance)
    alpha_t, sigma_t = _scalar(model.schedule.alpha, t, like), _scalar(model.schedule.sigma, t, like)
    alpha_n, sigma_n = _scalar(model.schedule.alpha, t_next, like), _scalar(model.schedule.sigma, t_next, like)
    a = alpha_t / alpha_n
    s2 = sigma_t**2 - a**2 * sigma_n**2  # variance of the forward kernel t_next -> t
    x0 = (state.x - sigma_t**2 * P(state.grad.to(like.dtype))) / alpha_t  # Tweedie: score = -grad E
    mean = (a * sigma_n**2 / sigma_t**2) * state.x + (alpha_n * s2 / sigma_t**2) * x0
    tau2 = s2 * sigma_n**2 / sigma_t**2
    if x0_variance:  # Var[x0 | x] of Gaussian data with the model's variance: the exact kernel for such data
        v_t = alpha_t**2 * data_variance + sigma_t**2
        tau2 = tau2 + (alpha_n * s2 / sigma_t**2) ** 2 * sigma_t**2 * data_variance / v_t
    noise = P(torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device))
    x_next = mean + math.sqrt(tau2) * noise
    log_ratio = _log_gaussian(state.x - a * x_next, s2, k) - _log_gaussian(x_next - mean, tau2, k)
    return x_next, log_ratio


def denoising_smc(model, n_particles: int, *, project: Projection | None = None, n_levels: int = 1000,
                  n_moves: int = 0, x0_variance: bool = True, kernel=None, resample_threshold: float = 0.5, resampler: str = "systematic",
                  seed: int | torch.Generator = 0, chunk_size: int | None = 4096,
                  progress: Callable[[SMCStep], None] | None = None) -> SMCResult:
    """SMC from the model's Gaussian at t = 1 down to t_min with reverse-diffusion proposals.

    Args:
        model: a diffusion EBM with ``energy(t, x) -> (n,)`` (kT), ``schedule`` (alpha, sigma,
            t_min, variance preserving), ``data_mean`` (d,), ``data_variance`` and ``dim``
            (an :class:`~boltzgen.diffusion.EnergyModel`).
        n_particles: N >= 1.
        project: orthogonal projection onto the sampling subspace (e.g. ``space.project``).
        n_levels: reverse-diffusion steps, uniform in t from 1 to t_min (one model energy and
            gradient per particle and step, plus ``n_moves`` per step).
        x0_variance: widen the proposal by the uncertainty of x0 given x under Gaussian data
            of the model's data variance (exact reverse kernel for such data; False: the plain DDPM
            posterior step, too narrow wherever data and noise are comparable).
        n_moves, kernel: optional MCMC moves (default kernel MALA) at every level after
            resampling, with the step size adapted after every move.
        resample_threshold, resampler, seed, chunk_size, progress: as for :func:`boltzgen.smc.smc`.

    Returns:
        :class:`SMCResult` at the model's t_min level: particles (N, d) in the units of x,
        log-weights whose log_mean_exp is the running log Z (the exact log Z of the model's
        t_min density when the proposals are perfect), one :class:`SMCStep` per level, and the
        particles' lineages (``origin``).
    """
    n_particles = check_count(n_particles, "n_particles")
    n_moves = check_count(n_moves, "n_moves", minimum=0)
    if not 0.0 <= resample_threshold <= 1.0:
        raise ValueError(f"resample_threshold must be an ESS fraction in [0, 1], got {resample_threshold!r}")
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {sorted(RESAMPLERS)}, got {resampler!r}")
    generator = _generator(seed)
    kernel = MALA() if kernel is None else kernel
    cfg = _Settings(n_moves, float(resample_threshold), resampler, True, project, chunk_size, generator)
    times = level_grid(float(model.schedule.t_min), n_levels)
    k = subspace_dimension(project, model.dim, device=model.data_mean.device)

    def level(t: float):
        return lambda x: model.energy(t, x)

    proposal = initial_gaussian(model, project)
    x = proposal.sample(n_particles, generator)
    state = particle_state(level(times[0]), x, chunk_size)
    log_w = W.clean_log_weights(-state.energy - proposal.log_prob(x))
    pop = _Population(state, log_w, torch.arange(n_particles, device=x.device))
    records = [_record(0, times[0], pop, log_w, W.log_mean_exp(log_w), float(n_particles), False, float("nan"),
                       float("nan"), 0)]
    for i, (t, t_next) in enumerate(zip(times, times[1:]), start=1):
        x_next, log_ratio = _denoised(model, pop.state, t, t_next, project, k, generator, x0_variance)
        new = particle_state(level(t_next), x_next, chunk_size)
        increment = pop.state.energy - new.energy + log_ratio
        cess = W.conditional_ess(pop.log_w, increment)
        log_w, dlogz = W.reweight(pop.log_w, increment)
        if not torch.isfinite(log_w).any():
            raise RuntimeError(f"all particles have zero weight at level t={t_next:g}: the model's energy is not finite")
        lost = int((torch.isfinite(pop.log_w) & ~torch.isfinite(log_w)).sum())
        pop = _Population(new, log_w, pop.origin)
        ess = W.ess(log_w)
        resampled = ess < cfg.resample_threshold * n_particles
        if resampled:
            pop = _resampled(pop, cfg)
        pop, kernel, (acceptance, _), step_size = _moved(pop, level(t_next), kernel, cfg)
        records.append(_record(i, t_next, pop, log_w, dlogz, cess, resampled, acceptance,
                               step_size if n_moves else float("nan"), lost))
        if progress is not None:
            progress(records[-1])
    n_lost = sum(r.n_nonfinite for r in records)
    if n_lost:
        warnings.warn(f"{n_lost} particle(s) got zero weight because the model energy was not finite",
                      RuntimeWarning, stacklevel=2)
    return SMCResult(pop.state.x, pop.log_w, W.log_mean_exp(pop.log_w), tuple(records), kernel, pop.origin)


def _record(index, t, pop, log_w, dlogz, cess, resampled, acceptance, step_size, lost) -> SMCStep:
    n = log_w.numel()
    ess = W.ess(log_w)
    return SMCStep(index=index, name="t", value=float(t), n_particles=n, ess=ess, ess_fraction=ess / n,
                   conditional_ess=cess, acceptance=acceptance, step_size=step_size, resampled=resampled,
                   log_z_increment=dlogz, log_z=W.log_mean_exp(log_w), n_ancestors=pop.n_ancestors,
                   max_weight_share=W.max_weight_share(log_w), n_nonfinite=lost)
