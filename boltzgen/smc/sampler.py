"""Sequential Monte Carlo (and annealed importance sampling) over a path of targets.

One step toward the next target gamma_next = exp(-E_next):
  1. reweight: log w += E_current(x) - E_next(x)   (the particles are distributed ~ gamma_current);
  2. resample when ESS / N < resample_threshold (weights reset to their mean, so that
     log Z = log mean exp(log w) holds at every step);
  3. move with ``n_moves`` MCMC moves that leave gamma_next invariant; adapt the step size.
The first step is the same with the proposal q in place of gamma_current: log w = -E_first - log q.
Hence, for a normalised q, ``log_z`` estimates log Z of the *final* target itself. Z (not log Z)
is unbiased; log Z is biased low by about Var(log Z) / 2.

Annealed importance sampling is the same code with resampling off (:func:`ais`). Independent
runs (different seeds) give honest error bars; particles within one run are correlated.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_count
from . import weights as W
from .energy import EnergyFn, Projection, evaluate
from .kernels import MALA, ParticleState, particle_state
from .path import Path, Segment
from .resampling import RESAMPLERS, resample


@dataclass(frozen=True)
class SMCStep:
    """Diagnostics of one SMC step (weights before resampling, moves after).

    Attributes:
        index: step number (0 is the initial importance step from the proposal).
        name: what ``value`` is ("t", "lambda", "level").
        value: where on the path this step's target sits.
        n_particles: N.
        ess: Kish ESS of the weights after reweighting, before any resampling.
        ess_fraction: ess / N.
        conditional_ess: conditional ESS of this step's incremental weights, in [0, N].
        acceptance: mean MCMC acceptance rate over this step's moves (nan without moves).
        step_size: the kernel step size used for this step's moves.
        resampled: whether the particles were resampled at this step.
        log_z_increment: log of the estimated ratio Z_this / Z_previous (float64).
        log_z: running estimate of log Z of this step's target.
        n_ancestors: distinct initial particles that still have descendants with positive weight;
            a high ESS with few ancestors means the population collapsed onto a few lineages.
        max_weight_share: the largest normalised weight before resampling.
        n_nonfinite: particles that got zero weight at this step because the energy was not finite.
        torsion_acceptance: mean acceptance of this step's torsion moves (nan without).
    """

    index: int
    name: str
    value: float
    n_particles: int
    ess: float
    ess_fraction: float
    conditional_ess: float
    acceptance: float
    step_size: float
    resampled: bool
    log_z_increment: float
    log_z: float
    n_ancestors: int
    max_weight_share: float
    n_nonfinite: int
    torsion_acceptance: float = float("nan")

    @property
    def conditional_ess_fraction(self) -> float:
        """conditional_ess / N."""
        return self.conditional_ess / self.n_particles


@dataclass(frozen=True)
class SMCResult:
    """Weighted particles at the final target, the log Z estimate and per-step diagnostics.

    Attributes:
        particles: (N, d) positions.
        log_weights: (N,) float64 unnormalised log-weights, log_mean_exp(log_weights) == log_z.
        log_z: estimate of log Z of the final target (relative to the proposal's normaliser).
        diagnostics: one :class:`SMCStep` per step.
        kernel: the MCMC kernel with its final adapted step size (reusable for another run).
        origin: (N,) int64 index of each particle's initial ancestor (its lineage); None only
            for results built by hand. Carried over when a run starts from another's particles.
    """

    particles: torch.Tensor
    log_weights: torch.Tensor
    log_z: float
    diagnostics: tuple[SMCStep, ...]
    kernel: object
    origin: torch.Tensor | None = None

    @property
    def n_lineages(self) -> int:
        """Distinct initial ancestors that still have descendants with positive weight."""
        if self.origin is None:
            raise ValueError("this result does not record its particles' origins")
        return int(torch.unique(self.origin[torch.isfinite(self.log_weights)]).numel())

    @property
    def weights(self) -> torch.Tensor:
        """(N,) float64 normalised weights."""
        return W.normalized_weights(self.log_weights)

    @property
    def ess(self) -> float:
        """Kish ESS of the final weights."""
        return W.ess(self.log_weights)

    @property
    def ess_fraction(self) -> float:
        """ESS / N of the final weights."""
        return W.ess_fraction(self.log_weights)

    @property
    def n_nonfinite(self) -> int:
        """Particles that got zero weight over the run because an energy was not finite."""
        return sum(s.n_nonfinite for s in self.diagnostics)

    def summary(self, n_clip: int | None = None) -> W.WeightSummary:
        """Weight diagnostics of the final weights, including the clipped ESS."""
        return W.summarize(self.log_weights, n_clip)

    def expectation(self, values) -> torch.Tensor:
        """Weighted average of per-particle values (N,) or (N, k), float64 scalar or (k,)."""
        return W.weighted_mean(values, self.log_weights)


def _generator(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _check_arguments(path, proposal, n_particles, n_moves, resample_threshold, resampler, max_steps, initial):
    if not isinstance(path, Path):
        raise TypeError(f"path must be a boltzgen.smc.Path (see energy_path, geometric_path, diffusion_path), got {type(path).__name__}")
    if initial is None and not (hasattr(proposal, "sample") and hasattr(proposal, "log_prob")):
        raise TypeError("proposal must have sample(n, generator) -> (n, d) and log_prob(x) -> (n,) (or give initial=)")
    n_particles = check_count(n_particles, "n_particles")
    n_moves = check_count(n_moves, "n_moves", minimum=0)
    if not isinstance(resample_threshold, (int, float)) or not 0.0 <= resample_threshold <= 1.0:
        raise ValueError(f"resample_threshold must be an ESS fraction in [0, 1], got {resample_threshold!r}")
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {sorted(RESAMPLERS)}, got {resampler!r}")
    max_steps = check_count(max_steps, "max_steps")


def _initial_particles(proposal, n: int, generator, project) -> tuple[torch.Tensor, torch.Tensor]:
    x = proposal.sample(n, generator)
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"proposal.sample({n}, generator) must return shape ({n}, d), got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError("proposal.sample returned non-finite positions")
    log_q = proposal.log_prob(x)
    if not isinstance(log_q, torch.Tensor) or log_q.shape != (n,):
        shape = tuple(log_q.shape) if isinstance(log_q, torch.Tensor) else type(log_q).__name__
        raise ValueError(f"proposal.log_prob(x) must return shape ({n},), got {shape}")
    if project is not None:
        px = project(x)
        if not isinstance(px, torch.Tensor) or px.shape != x.shape:
            raise ValueError(f"project must map (n, d) to (n, d) = {tuple(x.shape)}")
        # Moves never leave the subspace they start in: a proposal outside project's subspace would
        # freeze the off-subspace part (e.g. the centre of mass) and shift log Z without a word.
        offset = float((px - x).abs().max()) if x.numel() else 0.0
        if offset > _SUBSPACE_TOLERANCE * (1.0 + float(x.abs().max())):
            raise ValueError(
                f"proposal samples are not in the subspace of project (largest offset {offset:.3g}): build the "
                "proposal with the same projection, e.g. GaussianProposal(d, project=project) or space.proposal()")
    return x, log_q.detach().to(torch.float64)


_SUBSPACE_TOLERANCE = 1e-5  # relative offset of a proposal sample from the subspace that counts as in it


def _projection(project, proposal):
    """The subspace of the run: ``project``, else the proposal's own projection (if it has one)."""
    return project if project is not None else getattr(proposal, "project", None)


@dataclass(frozen=True)
class _Population:
    """Internal: particles at the current target, their log-weights and initial ancestors."""

    state: ParticleState
    log_w: torch.Tensor  # (N,) float64, log_mean_exp(log_w) = running log Z
    origin: torch.Tensor  # (N,) int64 index of each particle's initial ancestor

    def indexed(self, idx: torch.Tensor, log_w: torch.Tensor) -> "_Population":
        s = self.state
        return _Population(ParticleState(s.x[idx], s.energy[idx], s.grad[idx]), log_w, self.origin[idx])

    @property
    def n_ancestors(self) -> int:
        return int(torch.unique(self.origin[torch.isfinite(self.log_w)]).numel())


@dataclass(frozen=True)
class _Settings:
    """Internal: the fixed arguments of one run."""

    n_moves: int
    resample_threshold: float
    resampler: str
    adapt_step_size: bool
    project: Projection | None
    chunk_size: int | None
    generator: torch.Generator


def _resampled(pop: _Population, cfg: _Settings) -> _Population:
    """Resample; every offspring gets the mean weight, so log_mean_exp(log_w) (= log Z) is kept."""
    idx = resample(pop.log_w, cfg.resampler, cfg.generator)
    return pop.indexed(idx, torch.full_like(pop.log_w, W.log_mean_exp(pop.log_w)))


def _moved(pop: _Population, target: EnergyFn, kernel, cfg: _Settings):
    """``cfg.n_moves`` MCMC moves leaving exp(-target) invariant.

    The step size is adapted after every move (each move is still an exact MH move for this
    target), so it follows the path's levels instead of lagging one step behind per level.
    Returns the population, the adapted kernel, the mean acceptance rates (gradient moves,
    torsion moves) and the step size used by the first move.
    """
    state, rates, torsion_rates, first_step = pop.state, [], [], float(kernel.step_size)
    for _ in range(cfg.n_moves):
        move = kernel.move(target, state, cfg.generator, cfg.project, cfg.chunk_size)
        state = move.state
        rates.append(move.acceptance_rate)
        torsion_rates.append(move.torsion_acceptance)
        if cfg.adapt_step_size:
            kernel = kernel.adapted(move.acceptance_rate)

    def mean(values):
        return math.fsum(values) / len(values) if values else float("nan")

    return _Population(state, pop.log_w, pop.origin), kernel, (mean(rates), mean(torsion_rates)), first_step


def _step(pop: _Population, new: ParticleState, log_increment: torch.Tensor, target: EnergyFn, kernel,
          cfg: _Settings, index: int, name: str, value: float):
    """Reweight toward ``target`` (whose energies at pop's particles are ``new``), resample, move.

    Returns the new population, the (adapted) kernel and the step's diagnostics.
    """
    n = log_increment.numel()
    cess = W.conditional_ess(pop.log_w, log_increment)
    log_w, dlogz = W.reweight(pop.log_w, log_increment)
    if not torch.isfinite(log_w).any():
        raise RuntimeError(
            f"all particles have zero weight at step {index} ({name}={value:g}): every energy was "
            "non-finite or the target has no overlap with the particles"
        )
    lost = int((torch.isfinite(pop.log_w) & ~torch.isfinite(log_w)).sum())
    ess, share = W.ess(log_w), W.max_weight_share(log_w)
    pop = _Population(new, log_w, pop.origin)
    resampled = ess < cfg.resample_threshold * n
    if resampled:
        pop = _resampled(pop, cfg)
    pop, kernel, (acceptance, torsion_acceptance), step_size = _moved(pop, target, kernel, cfg)
    record = SMCStep(
        index=index, name=name, value=float(value), n_particles=n, ess=ess, ess_fraction=ess / n,
        conditional_ess=cess, acceptance=acceptance, step_size=step_size, resampled=resampled,
        log_z_increment=dlogz, log_z=W.log_mean_exp(log_w), n_ancestors=pop.n_ancestors,
        max_weight_share=share, n_nonfinite=lost, torsion_acceptance=torsion_acceptance,
    )
    return pop, kernel, record


_RELATIVE_TOLERANCE = 0.01  # bisection stops when the step is known to 1%
_SMALLEST_STEP = 1e-12  # in the segment fraction s; below this the step is taken anyway


def _largest_step(good: Callable[[float], bool], hi: float) -> float:
    """The largest step in (0, hi] with good(step), to 1% relative precision (hi if good(hi)).

    The step is first halved until it is good (steps can be tiny, e.g. 1e-8 when a bridge meets a
    force field with huge energies), then bisected. Below _SMALLEST_STEP it is taken anyway.
    """
    if good(hi):
        return hi
    lo = 0.5 * hi
    while not good(lo):
        if lo < _SMALLEST_STEP:  # always make progress, even through a very sharp transition
            return lo
        hi, lo = lo, 0.5 * lo
    while hi - lo > _RELATIVE_TOLERANCE * lo:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if good(mid) else (lo, mid)
    return lo


def _next_fraction(segment: Segment, s_now: float, pop: _Population, chunk_size: int | None) -> float:
    """Next s in (s_now, 1]: the largest step whose conditional ESS fraction is >= cess_target.

    Each trial costs one energy evaluation of the segment's target (see :func:`_linear_step` for
    segments linear in s, whose trials are free).
    """
    x, log_w = pop.state.x, pop.log_w
    goal = segment.cess_target * log_w.numel()

    def good(step: float) -> bool:
        increment = pop.state.energy - evaluate(segment.target(segment.value_at(s_now + step)), x, chunk_size)
        return W.conditional_ess(log_w, increment) >= goal

    return min(s_now + _largest_step(good, 1.0 - s_now), 1.0)


def _endpoint_states(segment: Segment, x: torch.Tensor, gradients: bool, chunk_size) -> tuple:
    """Both endpoint energies (and gradients) at x: everything a linear segment's step needs."""
    if gradients:
        return tuple(particle_state(e, x, chunk_size) for e in segment.endpoints)
    return tuple(ParticleState(x, evaluate(e, x, chunk_size), torch.zeros_like(x)) for e in segment.endpoints)


def _mixed(a: ParticleState, b: ParticleState, s: float) -> ParticleState:
    """The state of (1 - s) E_a + s E_b from the endpoint states (the endpoints exactly at s = 0, 1)."""
    if s >= 1.0:
        return b
    energy = (1.0 - s) * a.energy + s * b.energy
    energy = torch.where(torch.isnan(energy), torch.full_like(energy, float("inf")), energy)
    return ParticleState(a.x, energy, (1.0 - s) * a.grad + s * b.grad)


def _linear_step(segment: Segment, s_now: float, pop: _Population, ends: tuple) -> float:
    """Next s of a segment linear in s, from its endpoint energies at the particles (no evaluation)."""
    diff = ends[1].energy - ends[0].energy
    goal = segment.cess_target * pop.log_w.numel()

    def good(step: float) -> bool:
        return W.conditional_ess(pop.log_w, -step * diff) >= goal

    return min(s_now + _largest_step(good, 1.0 - s_now), 1.0)


def smc(path: Path, proposal=None, n_particles: int | None = None, *, initial: SMCResult | None = None,
        kernel=None, n_moves: int = 5,
        resample_threshold: float = 0.5, resampler: str = "systematic", adapt_step_size: bool = True,
        project: Projection | None = None, seed: int | torch.Generator = 0, chunk_size: int | None = 4096,
        max_steps: int = 10_000, progress: Callable[[SMCStep], None] | None = None) -> SMCResult:
    """Run SMC from ``proposal`` along ``path`` and return the weighted particles and log Z.

    Args:
        path: the targets (:func:`energy_path`, :func:`family_path`, :func:`geometric_path`,
            :func:`diffusion_path`, or sums of them).
        proposal: initial distribution with ``sample(n, generator) -> (n, d)`` and a normalised
            ``log_prob(x) -> (n,)`` (e.g. :class:`GaussianProposal`).
        n_particles: N >= 1.
        initial: instead of ``proposal`` and ``n_particles``: weighted particles (an
            :class:`SMCResult`, e.g. of :func:`boltzgen.smc.denoising_smc`) that target the path's
            first target. The run continues from them: their log-weights (hence log Z) and
            lineages carry over, and no initial importance step is taken.
        kernel: MCMC kernel (:class:`MALA` (default) or :class:`HMC`), with its initial step size.
        n_moves: MCMC moves per step (0: pure reweighting). In high dimension the accuracy of
            log Z and of mode weights is limited by how well these moves mix at each step, often
            more than by N: raise n_moves when independent runs disagree.
        resample_threshold: resample when ESS / N falls below this (0: never, i.e. AIS).
        resampler: "systematic", "stratified", "residual" or "multinomial".
        adapt_step_size: move the step size toward the kernel's target acceptance between steps.
        project: optional orthogonal projection (n, d) -> (n, d) of noise, momenta and gradients,
            keeping particles in a linear subspace (e.g. ``space.project`` of a
            boltzgen.coordinates.cartesian.MolecularSpace). Default: the proposal's ``project`` if it has one (as
            ``space.proposal()`` does). Proposal samples outside the subspace are refused.
        seed: an int, or a torch.Generator that supplies all randomness.
        chunk_size: energies are evaluated on at most this many particles at a time (None: all).
        max_steps: bound on the number of steps (adaptive segments could otherwise crawl).
        progress: optional callback, called with each :class:`SMCStep` as it completes.

    Returns:
        :class:`SMCResult`. Particles whose energy is not finite get zero weight (counted in
        ``SMCStep.n_nonfinite``, with a RuntimeWarning); if every particle does, RuntimeError.
    """
    if initial is not None:
        if proposal is not None or n_particles is not None:
            raise TypeError("give either initial (weighted particles) or proposal and n_particles, not both")
        if not isinstance(initial, SMCResult):
            raise TypeError(f"initial must be an SMCResult, got {type(initial).__name__}")
        n_particles = int(initial.particles.shape[0])
    _check_arguments(path, proposal, n_particles, n_moves, resample_threshold, resampler, max_steps, initial)
    kernel = MALA() if kernel is None else kernel
    generator = _generator(seed)
    project = _projection(project, proposal)
    cfg = _Settings(n_moves, float(resample_threshold), resampler, adapt_step_size, project, chunk_size, generator)
    records: list[SMCStep] = []

    def state_at(target: EnergyFn, x: torch.Tensor) -> ParticleState:
        if n_moves == 0:  # no MCMC: gradients are never needed
            return ParticleState(x, evaluate(target, x, chunk_size), torch.zeros_like(x))
        return particle_state(target, x, chunk_size)

    def advance(pop, new, increment, target, kernel, segment, value):
        if len(records) >= max_steps:
            raise RuntimeError(f"SMC stopped after max_steps={max_steps} steps at {segment.name}={value:g}")
        pop, kernel, record = _step(pop, new, increment, target, kernel, cfg, len(records), segment.name, value)
        records.append(record)
        if progress is not None:
            progress(record)
        return pop, kernel

    first = path.segments[0]
    target = first.target(first.start)
    if initial is not None:  # weighted particles already at the first target
        x = initial.particles.detach()
        origin = initial.origin if initial.origin is not None else torch.arange(n_particles, device=x.device)
        pop = _Population(state_at(target, x), W.clean_log_weights(initial.log_weights).to(x.device),
                          origin.to(x.device))
    else:  # step 0: importance weights of the first target relative to the proposal
        x, log_q = _initial_particles(proposal, n_particles, generator, project)
        new = state_at(target, x)
        start = _Population(new, torch.zeros(n_particles, dtype=torch.float64, device=x.device),
                            torch.arange(n_particles, device=x.device))
        pop, kernel = advance(start, new, -new.energy - log_q, target, kernel, first, first.start)

    for k, segment in enumerate(path.segments):
        if k > 0:  # junction: a real step only if the new segment does not start where the last one ended
            target = segment.target(segment.start)
            new = state_at(target, pop.state.x)
            increment = pop.state.energy - new.energy
            alive = torch.isfinite(pop.log_w)
            if bool((increment[alive] == 0).all()):
                pop = _Population(new, pop.log_w, pop.origin)
            else:
                pop, kernel = advance(pop, new, increment, target, kernel, segment, segment.start)
        s, i = 0.0, 0
        while s < 1.0:
            if segment.adaptive and segment.endpoints is not None:
                # linear in s: both endpoints evaluated once, at the particles, serve the step
                # search, the new target's energies and gradients
                ends = _endpoint_states(segment, pop.state.x, n_moves > 0, chunk_size)
                s = _linear_step(segment, s, pop, ends)
                value = segment.value_at(s)
                target, new = segment.target(value), _mixed(*ends, s)
            else:
                if segment.adaptive:
                    s = _next_fraction(segment, s, pop, chunk_size)
                    value = segment.value_at(s)
                else:
                    i += 1
                    value = segment.grid[i]
                    s = 1.0 if i == len(segment.grid) - 1 else segment.fraction(value)
                target = segment.target(value)
                new = state_at(target, pop.state.x)
            pop, kernel = advance(pop, new, pop.state.energy - new.energy, target, kernel, segment, value)

    n_lost = sum(r.n_nonfinite for r in records)
    if n_lost:
        warnings.warn(f"{n_lost} particle(s) got zero weight because an energy was not finite "
                      "(see SMCStep.n_nonfinite)", RuntimeWarning, stacklevel=2)
    return SMCResult(pop.state.x, pop.log_w, W.log_mean_exp(pop.log_w), tuple(records), kernel, pop.origin)


def ais(path: Path, proposal=None, n_particles: int | None = None, **kwargs) -> SMCResult:
    """Annealed importance sampling: :func:`smc` with resampling off (same arguments otherwise)."""
    if "resample_threshold" in kwargs:
        raise TypeError("ais never resamples; use smc to set resample_threshold")
    return smc(path, proposal, n_particles, resample_threshold=0.0, **kwargs)
