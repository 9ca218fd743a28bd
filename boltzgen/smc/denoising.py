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

The proposal is a :class:`ReverseDiffusion` (a :class:`~boltzgen.smc.engine.Proposal` with its
backward kernel) and the levels are a stage (:class:`Levels`) of the one SMC engine. The result of
:func:`denoising_smc` is an :class:`~boltzgen.smc.SMCResult` at the model's last level (t_min),
ready to be continued toward a physical target with ``smc_from(result, geometric_path(...))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_count
from .energy import Projection, subspace_dimension
from .engine import Draw, SMCResult, SMCStep, StepOptions, Transition, as_generator, empty_state, run
from .kernels import MALA, ParticleState
from .proposal import GaussianProposal
from .stages import Initial


def _scalar(fn, t: float, like: torch.Tensor) -> float:
    return float(fn(torch.tensor([t], dtype=torch.float64, device=like.device))[0])


def _log_gaussian(residual: torch.Tensor, variance: float, k: int) -> torch.Tensor:
    """log N(residual; 0, variance I_k) per row, float64 (n,), on a k-dimensional subspace."""
    r = residual.to(torch.float64)
    return -0.5 * (r**2).sum(1) / variance - 0.5 * k * math.log(2.0 * math.pi * variance)


def gaussian_level(model, t: float = 1.0) -> tuple[torch.Tensor, float]:
    """The Gaussian base of a diffusion model at level t: mean alpha_t mu (d,) float64 and variance v_t.

    v_t = alpha_t^2 v_data + sigma_t^2 per coordinate. At t = 1 the energy of an
    :class:`~boltzgen.diffusion.EnergyModel` is exactly this Gaussian (its correction is gated by
    1 - t). Needs ``schedule``, ``data_mean`` (d,) and ``data_variance``.
    """
    mean = model.data_mean.detach().to(torch.float64)
    alpha = _scalar(model.schedule.alpha, t, mean)
    sigma = _scalar(model.schedule.sigma, t, mean)
    return alpha * mean, alpha**2 * float(model.data_variance) + sigma**2


def initial_gaussian(model, project: Projection | None = None) -> GaussianProposal:
    """The model's top level as a proposal: N(alpha_1 data_mean, v_1) on the subspace of ``project``."""
    m, variance = gaussian_level(model, 1.0)
    if project is not None:
        m = project(m[None])[0]
    return GaussianProposal(model.dim, mean=m, variance=variance, project=project, device=m.device)


def level_grid(t_min: float, n_levels: int, t_max: float = 1.0, power: float = 1.0) -> tuple[float, ...]:
    """n_levels + 1 times from t_max down to t_min: t = t_min + (t_max - t_min) s^power, s uniform from 1 to 0.

    power = 1 is uniform in t (uniform in log SNR for LogSNRSchedule); power = 2 puts more levels at
    low noise, where p_t changes fastest.
    """
    n_levels = check_count(n_levels, "n_levels")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if not (isinstance(power, (int, float)) and power > 0):
        raise ValueError(f"power must be positive, got {power!r}")
    if power == 1:
        step = (t_max - t_min) / n_levels
        return tuple([t_max - i * step for i in range(n_levels)] + [t_min])
    s = torch.linspace(1.0, 0.0, n_levels + 1, dtype=torch.float64)
    return tuple((t_min + (t_max - t_min) * s**power).tolist())


@dataclass(frozen=True)
class ReverseDiffusion:
    """The model's reverse-diffusion step from level t to t_next < t, with the forward kernel as backward kernel.

    x' ~ N(mu(x), tau^2) (the DDPM posterior step with x0 from the model's score by Tweedie's
    formula); returns x' and log q(x | x') - log r(x' | x), q(x | x') = N(a x', s^2),
    a = alpha_t / alpha_t', s^2 = sigma_t^2 - a^2 sigma_t'^2. Needs the particles' gradients of
    E(t, .).

    Attributes:
        model: a diffusion EBM (schedule, data_variance).
        t, t_next: the levels.
        project: orthogonal projection of the noise (the sampling subspace), or None.
        k: the dimension of that subspace (Gaussians are normalised there).
        x0_variance: widen the step by Var[x0 | x] of Gaussian data with the model's data variance.
    """

    model: object
    t: float
    t_next: float
    project: Projection | None
    k: int
    x0_variance: bool = True

    def __call__(self, particles: ParticleState, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        like = particles.x
        return self.propose(particles, torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device))

    def propose(self, particles: ParticleState, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step with given standard normal ``noise`` (n, d) (e.g. for a trial): x' and the log ratio."""
        P = self.project or (lambda v: v)
        like, model, t, t_next = particles.x, self.model, self.t, self.t_next
        data_variance = float(model.data_variance)
        alpha_t, sigma_t = _scalar(model.schedule.alpha, t, like), _scalar(model.schedule.sigma, t, like)
        alpha_n, sigma_n = _scalar(model.schedule.alpha, t_next, like), _scalar(model.schedule.sigma, t_next, like)
        a = alpha_t / alpha_n
        s2 = sigma_t**2 - a**2 * sigma_n**2  # variance of the forward kernel t_next -> t
        x0 = (particles.x - sigma_t**2 * P(particles.grad.to(like.dtype))) / alpha_t  # Tweedie: score = -grad E
        mean = (a * sigma_n**2 / sigma_t**2) * particles.x + (alpha_n * s2 / sigma_t**2) * x0
        tau2 = s2 * sigma_n**2 / sigma_t**2
        if self.x0_variance:  # Var[x0 | x] of Gaussian data with the model's variance: exact for such data
            v_t = alpha_t**2 * data_variance + sigma_t**2
            tau2 = tau2 + (alpha_n * s2 / sigma_t**2) ** 2 * sigma_t**2 * data_variance / v_t
        x_next = mean + math.sqrt(tau2) * P(noise)
        log_ratio = _log_gaussian(particles.x - a * x_next, s2, self.k) - _log_gaussian(x_next - mean, tau2, self.k)
        return x_next, log_ratio


@dataclass(frozen=True)
class Levels:
    """The model's levels from ``times[0]`` down to ``times[-1]``, one reverse-diffusion step each.

    Position: the index of the current level. Start it from particles at level times[0] (e.g.
    an :class:`~boltzgen.smc.stages.Initial` draw from :func:`initial_gaussian`).

    Attributes:
        model: the diffusion EBM.
        times: the levels, decreasing.
        options: step options (``options.project`` is the sampling subspace).
        n_moves: MCMC moves per level.
        kernel: the kernel switched to at the first level (default MALA()).
        x0_variance: see :class:`ReverseDiffusion`.
        energy: the family E(t, x) to evaluate (default ``model.energy``; e.g. a counting wrapper).
    """

    model: object
    times: tuple
    options: StepOptions = StepOptions()
    n_moves: int = 0
    kernel: object = None
    x0_variance: bool = True
    energy: Callable | None = None
    name: str = "levels"
    start: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        object.__setattr__(self, "kernel", MALA() if self.kernel is None else self.kernel)
        k = subspace_dimension(self.options.project, self.model.dim, device=self.model.data_mean.device)
        object.__setattr__(self, "_k", k)

    @property
    def total(self) -> float:
        """The position at the last level."""
        return float(len(self.times) - 1)

    def level(self, t: float):
        """The energy x -> E(t, x) of one level."""
        energy = self.model.energy if self.energy is None else self.energy
        return lambda x: energy(t, x)

    def next(self, state, position: float, generator: torch.Generator | None = None):
        i = int(position)
        if i + 1 >= len(self.times):
            return None
        t, t_next = self.times[i], self.times[i + 1]
        return Transition(self.level(t_next), "t", t_next, proposal=self._proposal(t, t_next), n_moves=self.n_moves,
                          kernel=self.kernel if i == 0 else None), float(i + 1)

    def _proposal(self, t: float, t_next: float):
        own = getattr(self.model, "reverse_proposal", None)  # a model with its own kernels (e.g. wrapped dihedrals)
        if own is not None:
            return own(t, t_next, self.options.project, self._k, self.x0_variance)
        return ReverseDiffusion(self.model, t, t_next, self.options.project, self._k, self.x0_variance)


@dataclass(frozen=True)
class AdaptiveLevels:
    """The model's levels from t = 1 down to t_min, each next level chosen on the conditional ESS.

    From level t, the next level t' < t is the lowest one (to 1% in the log of the remaining range)
    whose reverse-diffusion step keeps the conditional ESS fraction at least ``cess_target``: trial
    steps with their own noise (energies only) are bisected, then the real step is taken with fresh
    noise. Levels crowd where the model's density changes fastest (where the dihedrals' structure
    appears) and are sparse elsewhere, instead of a fixed grid. Position: the current t.

    Attributes:
        model, options, n_moves, kernel, x0_variance, energy: as for :class:`Levels`.
        cess_target: conditional ESS fraction each step aims at.
        max_steps: bound on the number of levels (then the last step goes to t_min).
    """

    model: object
    options: StepOptions = StepOptions()
    n_moves: int = 0
    kernel: object = None
    x0_variance: bool = True
    energy: Callable | None = None
    cess_target: float = 0.9
    max_steps: int = 1000
    name: str = "levels"
    start: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "kernel", MALA() if self.kernel is None else self.kernel)
        object.__setattr__(self, "_fixed", Levels(self.model, (1.0, float(self.model.schedule.t_min)), self.options,
                                                  self.n_moves, self.kernel, self.x0_variance, self.energy))
        if not 0.0 < self.cess_target < 1.0:
            raise ValueError(f"cess_target must lie in (0, 1), got {self.cess_target!r}")

    @property
    def t_min(self) -> float:
        return float(self.model.schedule.t_min)

    @property
    def total(self) -> float:
        """The position (t) at the last level: positions run down from 1 to t_min."""
        return self.t_min

    def level(self, t: float):
        """The energy x -> E(t, x) of one level."""
        return self._fixed.level(t)

    def _proposal(self, t: float, t_next: float):
        return self._fixed._proposal(t, t_next)

    def _next_time(self, state, t: float, generator) -> float:
        """The lowest t' in [t_min, t) whose trial step keeps the conditional ESS at the target."""
        from .stages import largest_step
        from . import weights as W
        from .energy import evaluate

        particles, log_w, t_min = state.particles, state.log_weights, self.t_min
        noise = torch.randn(particles.x.shape, generator=generator, dtype=particles.x.dtype,
                            device=particles.x.device)
        goal = self.cess_target * log_w.numel()
        span = math.log(t / t_min)  # steps are found on a log scale of t: the low levels are the finest

        def at(fraction: float) -> float:
            return t_min if fraction >= 1.0 else t * math.exp(-fraction * span)

        def good(fraction: float) -> bool:
            t_next = at(fraction)
            x_next, log_ratio = self._proposal(t, t_next).propose(particles, noise)
            increment = particles.energy - evaluate(self.level(t_next), x_next, self.options.chunk_size) + log_ratio
            return W.conditional_ess(log_w, increment) >= goal

        return at(min(largest_step(good, 1.0), 1.0))

    def next(self, state, position: float, generator: torch.Generator | None = None):
        t = float(position)
        if t <= self.t_min:
            return None
        t_next = self._next_time(state, t, generator)
        transition = Transition(self.level(t_next), "t", t_next, proposal=self._proposal(t, t_next),
                                n_moves=self.n_moves, kernel=self.kernel if t >= 1.0 else None)
        return transition, t_next


def levels_stages(model, *, n_levels: int = 1000, n_moves: int = 0, x0_variance: bool = True,
                  kernel=None, options: StepOptions = StepOptions(), energy: Callable | None = None,
                  cess: float | None = None) -> list:
    """The two stages of a model's levels: the draw from its Gaussian at t = 1, then :class:`Levels`
    (``n_levels`` uniform in t) or, with ``cess``, :class:`AdaptiveLevels` aiming at that conditional ESS."""
    times = level_grid(float(model.schedule.t_min), n_levels)
    levels = Levels(model, times, options, n_moves, kernel, x0_variance, energy)
    if cess is not None:
        levels = AdaptiveLevels(model, options, n_moves, kernel, x0_variance, energy, cess)
    top = getattr(model, "top_level", None)  # a model with its own top level (e.g. uniform dihedrals)
    draw = Draw(top(options.project) if top is not None else initial_gaussian(model, options.project))
    return [Initial(draw, levels.level(times[0]), options, "t", times[0], resample=False), levels]


def denoising_smc(model, n_particles: int, *, project: Projection | None = None, n_levels: int = 1000,
                  n_moves: int = 0, x0_variance: bool = True, kernel=None, resample_threshold: float = 0.5,
                  resampler: str = "systematic", seed: int | torch.Generator = 0, chunk_size: int | None = 4096,
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
    options = StepOptions(resample_threshold, resampler, True, project, chunk_size)
    stages = levels_stages(model, n_levels=n_levels, n_moves=n_moves, x0_variance=x0_variance, kernel=kernel,
                           options=options)
    callback = None if progress is None else (lambda stage, position, record: progress(record))
    device = model.data_mean.device
    return run(empty_state(n_particles, device), stages, as_generator(seed, device), progress=callback)
