"""The one SMC engine: ``step(state, transition, generator, options) -> (state, info)``.

An :class:`SMCState` holds weighted particles at the current target (positions, energies and
gradients, log-weights, lineages) and the MCMC kernel with its adapted step size. A
:class:`Transition` says where the next step goes: the next target's energy and, optionally, a
proposal that moves the particles together with its backward kernel (reverse-diffusion steps, a
fresh draw from an initial distribution). One step

  1. proposes x' (or keeps x) and reweights: log w += E_now(x) - E_next(x') + log L(x | x') - log r(x' | x);
  2. resamples when the ESS fraction falls below ``options.resample_threshold`` (or when the
     transition says so), giving every offspring the mean weight so that log Z = log mean w holds;
  3. moves the particles ``transition.n_moves`` times with the kernel (exp(-E_next) invariant),
     adapting the step size after every move from the kernel's own figures;

and returns the new state with an :class:`SMCStep` record of what it measured. The levels of a
diffusion model, bridges, mixing, free-energy switching and composition are *stages*
(:class:`Stage`): small objects that, given the state and their position, return the next
transition. :func:`run` drives stages one after another; a run can be checkpointed between steps
(:class:`Checkpoint`) and resumed bit for bit, because a stage's next transition depends only on
the state and its position, and all randomness comes from one torch.Generator.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Protocol, Sequence

import torch

from .._checks import check_count
from . import weights as W
from .energy import EnergyFn, Projection, evaluate
from .kernels import MALA, ParticleState, particle_state
from .resampling import RESAMPLERS, resample


@dataclass(frozen=True)
class SMCState:
    """Weighted particles at the current target and the kernel that moves them.

    Attributes:
        particles: positions (N, d) with their energies (N,) float64 kT and gradients (N, d)
            under the current target.
        log_weights: (N,) float64 unnormalised log-weights; log_mean_exp(log_weights) is the
            running estimate of log Z of the current target.
        origin: (N,) int64 index of each particle's initial ancestor (its lineage).
        kernel: the MCMC kernel with its adapted step size (None before any kernel is chosen).
    """

    particles: ParticleState
    log_weights: torch.Tensor
    origin: torch.Tensor
    kernel: object = None

    @property
    def n_particles(self) -> int:
        return int(self.log_weights.numel())

    @property
    def log_z(self) -> float:
        """log mean w: the estimate of log Z of the current target."""
        return W.log_mean_exp(self.log_weights)

    @property
    def n_lineages(self) -> int:
        """Distinct initial ancestors that still have descendants with positive weight."""
        return int(torch.unique(self.origin[torch.isfinite(self.log_weights)]).numel())


def empty_state(n_particles: int, device=None, kernel=None) -> SMCState:
    """N particles that hold nothing yet (shape (N, 0), energy 0, log-weight 0): the start of a run.

    The first transition draws the particles with an independent proposal (:class:`Draw`), so
    its increment is -E(x') - log q(x'), the importance weight of the first target.
    """
    n = check_count(n_particles, "n_particles")
    x = torch.zeros(n, 0, dtype=torch.float64, device=device)
    zeros = torch.zeros(n, dtype=torch.float64, device=device)
    return SMCState(ParticleState(x, zeros, x), zeros, torch.arange(n, device=device), kernel)


def weighted_state(x: torch.Tensor, log_weights, energy: EnergyFn, *, origin=None, kernel=None,
                   gradients: bool = True, chunk_size: int | None = None) -> SMCState:
    """Weighted particles x (N, d) at exp(-energy), e.g. a generator's samples to carry further."""
    x = x.detach()
    log_w = W.clean_log_weights(log_weights).to(x.device)
    if log_w.shape != (x.shape[0],):
        raise ValueError(f"log_weights must have shape ({x.shape[0]},) (one per particle), got {tuple(log_w.shape)}")
    origin = torch.arange(x.shape[0], device=x.device) if origin is None else origin.to(x.device)
    return SMCState(_evaluated(energy, x, gradients, chunk_size), log_w, origin, kernel)


@dataclass(frozen=True)
class SMCStep:
    """What one SMC step measured (weights before resampling, moves after).

    Attributes:
        index: step number within the run.
        stage: the stage that took the step ("initial", "levels", "bridge", "mixing", ...).
        name: what ``value`` is ("t", "lambda", "moves", ...).
        value: where on the stage's path this step's target sits.
        n_particles: N.
        ess: Kish ESS of the weights after reweighting, before any resampling.
        ess_fraction: ess / N.
        conditional_ess: conditional ESS of this step's incremental weights, in [0, N].
        resampled: whether the particles were resampled at this step.
        log_z_increment: log of the estimated ratio Z_this / Z_previous (float64).
        log_z: running estimate of log Z of this step's target.
        n_ancestors: distinct initial particles that still have descendants with positive weight;
            a high ESS with few ancestors means the population collapsed onto a few lineages.
        max_weight_share: the largest normalised weight before resampling.
        n_nonfinite: particles that got zero weight at this step because the energy was not finite.
        step_size: the kernel's step size before this step's moves (nan without one).
        moves: the kernel's figures averaged over this step's moves (e.g. {"acceptance": 0.57} for
            MALA, {"mala.acceptance": ..., "torsion.acceptance": ...} for a sequence); empty
            without moves.
        extra: figures the stage measured for this step (e.g. a bridge's one-step ESS).
    """

    index: int
    stage: str
    name: str
    value: float
    n_particles: int
    ess: float
    ess_fraction: float
    conditional_ess: float
    resampled: bool
    log_z_increment: float
    log_z: float
    n_ancestors: int
    max_weight_share: float
    n_nonfinite: int
    step_size: float = float("nan")
    moves: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def conditional_ess_fraction(self) -> float:
        """conditional_ess / N."""
        return self.conditional_ess / self.n_particles

    def move_figure(self, suffix: str = "acceptance") -> float:
        """The first of ``moves`` whose key ends with ``suffix`` (nan if none): e.g. the acceptance."""
        return next((v for k, v in self.moves.items() if k.endswith(suffix)), float("nan"))


class Proposal(Protocol):
    """Moves particles to x' ~ r(. | x) and returns log L(x | x') - log r(x' | x) (backward kernel L)."""

    def __call__(self, particles: ParticleState, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Draw:
    """An independent proposal: x' ~ q, whatever x; log ratio -log q(x') (the first step of a run).

    Attributes:
        distribution: has ``sample(n, generator) -> (n, d)`` and a normalised ``log_prob(x) -> (n,)``.
        project: optional orthogonal projection; samples outside its subspace are refused (moves
            never leave the subspace they start in, so such a start would shift log Z silently).
    """

    distribution: object
    project: Projection | None = None

    def __post_init__(self):
        if not (hasattr(self.distribution, "sample") and hasattr(self.distribution, "log_prob")):
            raise TypeError("proposal must have sample(n, generator) -> (n, d) and log_prob(x) -> (n,)")

    def __call__(self, particles: ParticleState, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = particles.x.shape[0]
        x = self.distribution.sample(n, generator)
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] != n:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"proposal.sample({n}, generator) must return shape ({n}, d), got {shape}")
        if not torch.isfinite(x).all():
            raise ValueError("proposal.sample returned non-finite positions")
        log_q = self.distribution.log_prob(x)
        if not isinstance(log_q, torch.Tensor) or log_q.shape != (n,):
            shape = tuple(log_q.shape) if isinstance(log_q, torch.Tensor) else type(log_q).__name__
            raise ValueError(f"proposal.log_prob(x) must return shape ({n},), got {shape}")
        if self.project is not None:
            _check_in_subspace(x, self.project)
        return x, -log_q.detach().to(torch.float64)


_SUBSPACE_TOLERANCE = 1e-5  # relative offset of a proposal sample from the subspace that counts as in it


def _check_in_subspace(x: torch.Tensor, project: Projection) -> None:
    px = project(x)
    if not isinstance(px, torch.Tensor) or px.shape != x.shape:
        raise ValueError(f"project must map (n, d) to (n, d) = {tuple(x.shape)}")
    offset = float((px - x).abs().max()) if x.numel() else 0.0
    if offset > _SUBSPACE_TOLERANCE * (1.0 + float(x.abs().max())):
        raise ValueError(
            f"proposal samples are not in the subspace of project (largest offset {offset:.3g}): build the "
            "proposal with the same projection, e.g. GaussianProposal(d, project=project) or space.proposal()")


@dataclass(frozen=True)
class Transition:
    """One step's destination.

    Attributes:
        target: the next target's energy, (n, d) -> (n,) kT.
        name, value: label of the target on its stage's path (reported in :class:`SMCStep`).
        proposal: optional :class:`Proposal` that moves the particles with a backward kernel;
            None keeps them where they are (pure reweighting).
        evaluated: the target's energies (and gradients) at the current particles when the stage
            already has them (bridges compute them to choose the step); None: the engine evaluates.
        n_moves: MCMC moves after reweighting and resampling.
        kernel: the kernel to use from this step on (None: the state's).
        resample: None resamples when ESS / N < the threshold; True always; False never.
        gradients: evaluate gradients at the new particles (needed by moves and by gradient
            proposals at the next step).
        extra: figures the stage measured, copied into the step's record.
    """

    target: EnergyFn
    name: str = "step"
    value: float = float("nan")
    proposal: Proposal | None = None
    evaluated: ParticleState | None = None
    n_moves: int = 0
    kernel: object = None
    resample: bool | None = None
    gradients: bool = True
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepOptions:
    """The fixed choices of a stage's steps.

    Attributes:
        resample_threshold: resample when ESS / N falls below this (0: never, i.e. AIS).
        resampler: "systematic", "stratified", "residual" or "multinomial".
        adapt_step_size: adapt the kernel's step size after every move from the move's figures.
        project: optional orthogonal projection of noise, momenta and gradients (keeps particles
            in a linear subspace, e.g. centre-free coordinates).
        chunk_size: energies are evaluated on at most this many particles at a time (None: all).
    """

    resample_threshold: float = 0.5
    resampler: str = "systematic"
    adapt_step_size: bool = True
    project: Projection | None = None
    chunk_size: int | None = 4096

    def __post_init__(self):
        if not isinstance(self.resample_threshold, (int, float)) or not 0.0 <= self.resample_threshold <= 1.0:
            raise ValueError(f"resample_threshold must be an ESS fraction in [0, 1], got {self.resample_threshold!r}")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"resampler must be one of {sorted(RESAMPLERS)}, got {self.resampler!r}")
        check_count(self.chunk_size, "chunk_size", allow_none=True)


def _evaluated(energy: EnergyFn, x: torch.Tensor, gradients: bool, chunk_size) -> ParticleState:
    if gradients:
        return particle_state(energy, x, chunk_size)
    return ParticleState(x, evaluate(energy, x, chunk_size), torch.zeros_like(x))


def resampled(state: SMCState, resampler: str, generator: torch.Generator) -> SMCState:
    """Resample; every offspring gets the mean weight, so log_mean_exp(log_w) (= log Z) is kept."""
    idx = resample(state.log_weights, resampler, generator).to(state.log_weights.device)
    p = state.particles
    log_w = torch.full_like(state.log_weights, W.log_mean_exp(state.log_weights))
    return replace(state, particles=ParticleState(p.x[idx], p.energy[idx], p.grad[idx]), log_weights=log_w,
                   origin=state.origin[idx])


def moved(state: SMCState, target: EnergyFn, n_moves: int, generator: torch.Generator,
          options: StepOptions) -> tuple[SMCState, dict]:
    """``n_moves`` moves of the state's kernel, exp(-target) invariant, the step size adapted after each.

    Each move is an exact MH move for the target; adapting between moves (from the kernel's own
    figures) lets the step size follow a path's levels instead of lagging a step behind.
    Returns the moved state (with the adapted kernel) and the mean of the moves' figures.
    """
    kernel, particles, values = state.kernel, state.particles, {}
    for _ in range(n_moves):
        move = kernel.move(target, particles, generator, options.project, options.chunk_size)
        particles = move.state
        for key, value in move.info.items():
            values.setdefault(key, []).append(value)
        if options.adapt_step_size:
            kernel = kernel.adapted(move.info)
    means = {key: _nanmean(v) for key, v in values.items()}
    return replace(state, particles=particles, kernel=kernel), means


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return math.fsum(finite) / len(finite) if finite else float("nan")


def step(state: SMCState, transition: Transition, generator: torch.Generator,
         options: StepOptions = StepOptions(), *, index: int = 0, stage: str = "") -> tuple[SMCState, SMCStep]:
    """One SMC step toward ``transition.target``: propose/reweight, resample, move (see the module docstring).

    Args:
        state: particles at the current target.
        transition: the next target, and how to get there.
        generator: supplies all randomness.
        options: :class:`StepOptions`.
        index, stage: labels copied into the record.
    Returns:
        The new state and the step's :class:`SMCStep`.
    Raises:
        RuntimeError: if every particle ends with zero weight.
    """
    current = state.particles
    if transition.proposal is not None:
        x, log_ratio = transition.proposal(current, generator)
        if x.device != state.log_weights.device:  # a first draw decides where the particles live
            state = replace(state, log_weights=state.log_weights.to(x.device), origin=state.origin.to(x.device))
            current = ParticleState(current.x.to(x.device), current.energy.to(x.device), current.grad.to(x.device))
        new = _evaluated(transition.target, x, transition.gradients, options.chunk_size)
        increment = current.energy - new.energy + log_ratio
    else:
        new = transition.evaluated
        if new is None:
            new = _evaluated(transition.target, current.x, transition.gradients, options.chunk_size)
        increment = current.energy - new.energy
    n = state.n_particles
    cess = W.conditional_ess(state.log_weights, increment)
    log_w, dlogz = W.reweight(state.log_weights, increment)
    if not torch.isfinite(log_w).any():
        raise RuntimeError(f"all particles have zero weight at step {index} ({transition.name}={transition.value:g}): "
                           "every energy was non-finite or the target has no overlap with the particles")
    lost = int((torch.isfinite(state.log_weights) & ~torch.isfinite(log_w)).sum())
    ess, share = W.ess(log_w), W.max_weight_share(log_w)
    kernel = transition.kernel if transition.kernel is not None else state.kernel
    after = SMCState(new, log_w, state.origin, kernel)
    do_resample = ess < options.resample_threshold * n if transition.resample is None else transition.resample
    if do_resample:
        after = resampled(after, options.resampler, generator)
    step_size = float(getattr(kernel, "step_size", float("nan")))
    moves = {}
    if transition.n_moves:
        if kernel is None:
            raise ValueError(f"step {index} asks for {transition.n_moves} moves but no kernel was given")
        after, moves = moved(after, transition.target, transition.n_moves, generator, options)
    record = SMCStep(index=index, stage=stage, name=transition.name, value=float(transition.value), n_particles=n,
                     ess=ess, ess_fraction=ess / n, conditional_ess=cess, resampled=bool(do_resample),
                     log_z_increment=dlogz, log_z=W.log_mean_exp(log_w), n_ancestors=after.n_lineages,
                     max_weight_share=share, n_nonfinite=lost, step_size=step_size, moves=moves,
                     extra=dict(transition.extra))
    return after, record


# --- stages and runs ------------------------------------------------------------------------------
class Stage(Protocol):
    """A part of a run: from its position and the state, the next transition (None when done).

    ``start`` is the position before the first step; ``next(state, position, generator)`` returns
    ``(transition, new_position)`` or None (a stage that chooses its next target by trials draws their
    random numbers from the run's ``generator``). ``options`` are the :class:`StepOptions` of its steps.
    ``total`` (optional, float) is the position at which the stage ends, for progress displays.
    """

    name: str
    start: float
    options: StepOptions

    def next(self, state: SMCState, position: float,
             generator: torch.Generator | None = None) -> tuple[Transition, float] | None: ...


@dataclass(frozen=True)
class StageEnd:
    """Where a stage left the particles.

    Attributes:
        name: the stage's name.
        n_steps: steps it took.
        ess_fraction: ESS / N of the weights it ended with (after any resampling).
        n_lineages: initial ancestors with descendants of positive weight.
        log_z: the running log Z estimate.
    """

    name: str
    n_steps: int
    ess_fraction: float
    n_lineages: int
    log_z: float


def _stage_end(name: str, n_steps: int, state: SMCState) -> StageEnd:
    return StageEnd(name, n_steps, W.ess_fraction(state.log_weights), state.n_lineages, state.log_z)


@dataclass(frozen=True)
class Checkpoint:
    """Where a run stands between two steps: enough to resume it bit for bit.

    Attributes:
        stage: index of the stage in progress.
        position: that stage's position.
        state: the particles.
        generator_state: ``generator.get_state()`` after the last step.
        diagnostics: the records of every step so far.
        stage_ends: the stages finished so far.
    """

    stage: int
    position: float
    state: SMCState
    generator_state: torch.Tensor
    diagnostics: tuple[SMCStep, ...]
    stage_ends: tuple[StageEnd, ...] = ()


def run(state: SMCState, stages: Sequence[Stage], generator: torch.Generator, *,
        resume: Checkpoint | None = None, max_steps: int = 1_000_000,
        progress: Callable[[Stage, float, SMCStep], None] | None = None,
        on_step: Callable[[Checkpoint], None] | None = None) -> "SMCResult":
    """Drive ``stages`` one after another from ``state``.

    Args:
        state: the start (e.g. :func:`empty_state`).
        stages: the stages, in order.
        generator: supplies all randomness.
        resume: a :class:`Checkpoint` of this same run: continue from it (``state`` is ignored and
            the generator's state is restored), so the result equals an uninterrupted run's.
        max_steps: bound on the number of steps (adaptive stages could otherwise crawl).
        progress: called after every step with the stage, its new position and the record.
        on_step: called after every step with a :class:`Checkpoint` (e.g. to save it).
    Returns:
        :class:`SMCResult`: the final state, every step's :class:`SMCStep` and each stage's end.
    """
    first, position, records, ends = 0, None, [], []
    if resume is not None:
        first, position, state = resume.stage, resume.position, resume.state
        records, ends = list(resume.diagnostics), list(resume.stage_ends)
        generator.set_state(resume.generator_state)
    for k in range(first, len(stages)):
        stage = stages[k]
        position = stage.start if position is None else position
        while (nxt := stage.next(state, position, generator)) is not None:
            if len(records) >= max_steps:
                raise RuntimeError(f"SMC stopped after max_steps={max_steps} steps in stage {stage.name!r}")
            transition, position = nxt
            state, record = step(state, transition, generator, stage.options, index=len(records), stage=stage.name)
            records.append(record)
            if progress is not None:
                progress(stage, position, record)
            if on_step is not None:
                on_step(Checkpoint(k, position, state, generator.get_state(), tuple(records), tuple(ends)))
        ends.append(_stage_end(stage.name, sum(1 for r in records if r.stage == stage.name), state))
        position = None
    n_lost = sum(r.n_nonfinite for r in records)
    if n_lost:
        warnings.warn(f"{n_lost} particle(s) got zero weight because an energy was not finite "
                      "(see SMCStep.n_nonfinite)", RuntimeWarning, stacklevel=2)
    return SMCResult(state, tuple(records), tuple(ends))


@dataclass(frozen=True)
class SMCResult:
    """Weighted particles at the final target, the log Z estimate and per-step diagnostics.

    Attributes:
        state: the final :class:`SMCState`.
        diagnostics: one :class:`SMCStep` per step.
        stage_ends: where each stage left the particles (:class:`StageEnd`).
    """

    state: SMCState
    diagnostics: tuple[SMCStep, ...]
    stage_ends: tuple[StageEnd, ...] = ()

    @property
    def particles(self) -> torch.Tensor:
        """(N, d) positions."""
        return self.state.particles.x

    @property
    def log_weights(self) -> torch.Tensor:
        """(N,) float64 unnormalised log-weights, log_mean_exp(log_weights) == log_z."""
        return self.state.log_weights

    @property
    def log_z(self) -> float:
        """Estimate of log Z of the final target (relative to the proposal's normaliser)."""
        return self.state.log_z

    @property
    def kernel(self):
        """The MCMC kernel with its final adapted step size (reusable for another run)."""
        return self.state.kernel

    @property
    def origin(self) -> torch.Tensor:
        """(N,) int64 index of each particle's initial ancestor (its lineage)."""
        return self.state.origin

    @property
    def n_lineages(self) -> int:
        """Distinct initial ancestors that still have descendants with positive weight."""
        return self.state.n_lineages

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

    def steps(self, stage: str) -> tuple[SMCStep, ...]:
        """The records of one stage's steps."""
        return tuple(s for s in self.diagnostics if s.stage == stage)

    def stage_end(self, stage: str) -> StageEnd | None:
        """Where the stage called ``stage`` left the particles (None if the run had no such stage)."""
        return next((e for e in self.stage_ends if e.name == stage), None)

    def summary(self, n_clip: int | None = None) -> W.WeightSummary:
        """Weight diagnostics of the final weights, including the clipped ESS."""
        return W.summarize(self.log_weights, n_clip)

    def expectation(self, values) -> torch.Tensor:
        """Weighted average of per-particle values (N,) or (N, k), float64 scalar or (k,)."""
        return W.weighted_mean(values, self.log_weights)


def records_as_dicts(steps: Sequence[SMCStep]) -> list[dict]:
    """JSON-ready dictionaries of step records."""
    return [asdict(s) for s in steps]


def as_generator(seed, device=None) -> torch.Generator:
    """``seed`` if it is a torch.Generator, else a new generator on ``device`` seeded with the int ``seed``."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed) if device is not None else torch.Generator().manual_seed(seed)


__all__ = ["Checkpoint", "Draw", "MALA", "Proposal", "SMCResult", "SMCState", "SMCStep", "Stage", "StageEnd", "StepOptions",
           "Transition", "as_generator", "empty_state", "moved", "records_as_dicts", "resampled", "run", "step",
           "weighted_state"]
