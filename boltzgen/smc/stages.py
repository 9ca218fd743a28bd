"""Stages of an SMC run, each a small object that hands the engine its next transition.

* :class:`Initial`: one step that draws the particles from a normalised distribution (their
  importance weights toward the first target);
* :class:`PathStage`: the targets of one path segment (:mod:`boltzgen.smc.path`), on its grid or
  adaptively, each next value chosen by bisection so that the conditional ESS stays near the
  segment's ``cess_target`` (segments linear in their value, such as geometric bridges, reuse two
  endpoint evaluations for the whole search);
* :class:`Mixing`: equilibration at a fixed target: resample once, then blocks of MCMC moves.

The levels of a diffusion model with reverse-diffusion proposals are a stage too
(:class:`boltzgen.smc.denoising.Levels`). A stage's next transition depends only on the state and
its position, so runs resume from a :class:`~boltzgen.smc.engine.Checkpoint` bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_count
from . import weights as W
from .energy import EnergyFn, evaluate
from .engine import SMCState, StepOptions, Transition, _evaluated
from .kernels import ParticleState
from .path import Path, Segment


@dataclass(frozen=True)
class Initial:
    """The first step: particles drawn by ``proposal`` (a :class:`~boltzgen.smc.engine.Draw`) and weighted toward ``target``.

    Start it from :func:`~boltzgen.smc.engine.empty_state`. Attributes: the target's energy, its
    label (``label``, ``value``), the moves after the draw, the kernel, whether gradients are needed,
    the resampling rule (None: on the ESS threshold) and the step options.
    """

    proposal: Callable
    target: EnergyFn
    options: StepOptions = StepOptions()
    label: str = "t"
    value: float = float("nan")
    n_moves: int = 0
    kernel: object = None
    gradients: bool = True
    resample: bool | None = None
    name: str = "initial"
    start: float = 0.0

    def next(self, state: SMCState, position: float, generator: torch.Generator | None = None):
        if position >= 1.0:
            return None
        return Transition(self.target, self.label, self.value, proposal=self.proposal, n_moves=self.n_moves,
                          kernel=self.kernel, resample=self.resample, gradients=self.gradients), 1.0


_RELATIVE_TOLERANCE = 0.01  # bisection stops when the step is known to 1%
_SMALLEST_STEP = 1e-12  # in the segment fraction s; below this the step is taken anyway


def largest_step(good: Callable[[float], bool], hi: float) -> float:
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


def _endpoint_states(segment: Segment, x: torch.Tensor, gradients: bool, chunk_size) -> tuple:
    """Both endpoint energies (and gradients) at x: everything a linear segment's step needs."""
    return tuple(_evaluated(e, x, gradients, chunk_size) for e in segment.endpoints)


def _mixed(a: ParticleState, b: ParticleState, s: float) -> ParticleState:
    """The state of (1 - s) E_a + s E_b from the endpoint states (the endpoints exactly at s = 0, 1)."""
    if s >= 1.0:
        return b
    energy = (1.0 - s) * a.energy + s * b.energy
    energy = torch.where(torch.isnan(energy), torch.full_like(energy, float("inf")), energy)
    return ParticleState(a.x, energy, (1.0 - s) * a.grad + s * b.grad)


@dataclass(frozen=True)
class PathStage:
    """The targets of one path segment, visited from its start to its end.

    Attributes:
        segment: the :class:`~boltzgen.smc.path.Segment`.
        options: step options.
        n_moves: MCMC moves per step.
        kernel: kernel to switch to at the stage's first step (None: keep the state's).
        gradients: evaluate gradients (needed when n_moves > 0).
        junction: the run arrives from another target: if the segment's start differs from it
            (any particle's energy changes), the first step goes to the start itself.
        name: the stage's name in the records (default: the segment's).

    Positions: the grid index for a fixed grid, the fraction s in [0, 1] of an adaptive segment
    (-1 before a junction check).
    """

    segment: Segment
    options: StepOptions = StepOptions()
    n_moves: int = 5
    kernel: object = None
    gradients: bool = True
    junction: bool = False
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "name", self.name or self.segment.name)

    @property
    def start(self) -> float:
        return -1.0 if self.junction else 0.0

    def _transition(self, target, value, *, evaluated=None, first=False, extra=None) -> Transition:
        return Transition(target, self.segment.name, value, evaluated=evaluated, n_moves=self.n_moves,
                          kernel=self.kernel if first else None, gradients=self.gradients, extra=extra or {})

    def next(self, state: SMCState, position: float, generator: torch.Generator | None = None):
        seg, x = self.segment, state.particles.x
        first = position == self.start
        if position < 0:  # a step to the segment's start only if it is another target
            target = seg.target(seg.start)
            new = _evaluated(target, x, self.gradients, self.options.chunk_size)
            alive = torch.isfinite(state.log_weights)
            if not bool((state.particles.energy - new.energy)[alive].eq(0).all()):
                return self._transition(target, seg.start, evaluated=new, first=True), 0.0
            position = 0.0
        if not seg.adaptive:
            i = int(position) + 1
            if i >= len(seg.grid):
                return None
            return self._transition(seg.target(seg.grid[i]), seg.grid[i], first=first), float(i)
        if position >= 1.0:
            return None
        if seg.endpoints is not None:
            # linear in s: both endpoints evaluated once, at the particles, serve the step search,
            # the new target's energies and gradients
            ends = _endpoint_states(seg, x, self.gradients, self.options.chunk_size)
            s = _linear_step(seg, position, state.log_weights, ends)
            extra = {}
            if position == 0.0:  # importance sampling the end straight from the start: the one-step ESS
                extra = {"one_step_ess_fraction": W.ess_fraction(state.log_weights + ends[0].energy - ends[1].energy)}
            value = seg.value_at(s)
            return self._transition(seg.target(value), value, evaluated=_mixed(*ends, s), first=first, extra=extra), s
        s = _next_fraction(seg, position, state, self.options.chunk_size)
        value = seg.value_at(s)
        return self._transition(seg.target(value), value, first=first), s


def _linear_step(segment: Segment, s_now: float, log_w: torch.Tensor, ends: tuple) -> float:
    """Next s of a segment linear in s, from its endpoint energies at the particles (no evaluation)."""
    diff = ends[1].energy - ends[0].energy
    goal = segment.cess_target * log_w.numel()

    def good(step: float) -> bool:
        return W.conditional_ess(log_w, -step * diff) >= goal

    return min(s_now + largest_step(good, 1.0 - s_now), 1.0)


def _next_fraction(segment: Segment, s_now: float, state: SMCState, chunk_size: int | None) -> float:
    """Next s in (s_now, 1]: the largest step whose conditional ESS fraction is >= cess_target.

    Each trial costs one energy evaluation of the segment's target.
    """
    x, log_w = state.particles.x, state.log_weights
    goal = segment.cess_target * log_w.numel()

    def good(step: float) -> bool:
        increment = state.particles.energy - evaluate(segment.target(segment.value_at(s_now + step)), x, chunk_size)
        return W.conditional_ess(log_w, increment) >= goal

    return min(s_now + largest_step(good, 1.0 - s_now), 1.0)


def path_stages(path: Path, options: StepOptions, n_moves: int, *, gradients: bool = True, kernel=None,
                junction_first: bool = False) -> list[PathStage]:
    """One :class:`PathStage` per segment of ``path``; ``kernel`` is switched to at the first.

    Segments after the first check their junction (a step of their own only if they start at
    another target than the last one ended at); ``junction_first`` does the same for the first.
    """
    return [PathStage(seg, options, n_moves, kernel if k == 0 else None, gradients, junction=junction_first or k > 0)
            for k, seg in enumerate(path.segments)]


@dataclass(frozen=True)
class Mixing:
    """Equilibrate weighted particles at their own target: resample once, then blocks of moves.

    SMC's estimates are exact in the limit of many particles, but with a finite population the mass
    of a basin is carried by the few lineages that reached it; when the moves along the path cannot
    cross between basins, independent runs disagree on that mass by more than their weights say.
    Moves that leave the final target invariant fix this without any bias. Resampling first makes
    every particle count equally; log Z is kept.

    Attributes:
        target: the current target's energy (the particles' energies must already be its own).
        n_moves: moves per particle, rounded up to whole blocks.
        block: moves per step (one record per block, value = moves so far).
        options: step options (only the resampler, projection and chunk size matter).
        kernel: optional function of the state's kernel returning the kernel to mix with (e.g.
            adding torsion moves to an adapted MALA), applied at the first block.
    """

    target: EnergyFn
    n_moves: int
    block: int = 50
    options: StepOptions = StepOptions(resample_threshold=0.0)
    kernel: Callable | None = None
    name: str = "mixing"
    start: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "n_moves", check_count(self.n_moves, "n_moves"))
        object.__setattr__(self, "block", min(check_count(self.block, "block"), self.n_moves))

    @property
    def total(self) -> float:
        """Moves per particle when the stage ends."""
        return float(self.block * math.ceil(self.n_moves / self.block))

    def next(self, state: SMCState, position: float, generator: torch.Generator | None = None):
        if position >= self.total:
            return None
        first = position == 0.0
        kernel = self.kernel(state.kernel) if first and self.kernel is not None else None
        done = position + self.block
        return Transition(self.target, "moves", done, evaluated=state.particles, n_moves=self.block, kernel=kernel,
                          resample=first), done


__all__ = ["Initial", "Mixing", "PathStage", "largest_step", "path_stages"]
