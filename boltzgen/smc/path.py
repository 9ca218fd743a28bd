"""Paths of unnormalised targets exp(-energy) for SMC and AIS.

A :class:`Path` is a sequence of :class:`Segment` s. A segment is a family of energies
``energy(value, x)`` for ``value`` running from ``start`` to ``end``, visited either on a fixed
grid or adaptively (the sampler picks each next value by bisection so that the conditional ESS
fraction stays near ``cess_target``). Segment k+1 should start where segment k ends (the
constructors below guarantee it); if it does not, the junction is simply one more reweighting
step, so the estimate stays correct either way.

Constructors:
    energy_path         a user list of energies (fixed levels)
    family_path         a parameterised family energy(lam, x), lam on a grid or adaptive
    geometric_path      exp(-(1 - lam) E_a - lam E_b), lam: 0 -> 1, with cheap adaptive steps
    diffusion_path      the levels t = 1 -> t_min of a diffusion EBM's energy(t, x), then a
                        geometric bridge to a physical target's reduced energy

Energies are reduced (kT) and map x (n, d) -> (n,); see :mod:`boltzgen.smc.energy`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .energy import EnergyFn

FamilyFn = Callable[[float, torch.Tensor], torch.Tensor]


def _floats(values, name: str) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers") from exc
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _check_cess_target(cess_target: float) -> float:
    if not isinstance(cess_target, (int, float)) or not 0 < cess_target < 1:
        raise ValueError(f"cess_target must lie in (0, 1) (a fraction of the particles), got {cess_target!r}")
    return float(cess_target)


@dataclass(frozen=True)
class Segment:
    """Targets exp(-energy(value, .)) for value from ``start`` to ``end``.

    Attributes:
        name: what ``value`` is, e.g. "t" (diffusion time) or "lambda" (bridge parameter).
        energy: energy(value, x) -> (n,) reduced energies in kT for x (n, d).
        start, end: first and last value.
        grid: the values visited, in order (grid[0] == start, grid[-1] == end); None for
            adaptive steps.
        cess_target: for adaptive steps, the conditional ESS fraction each step aims at.
        endpoints: optional (E_a, E_b) when energy is linear in value, energy = (1 - s) E_a + s E_b
            with s = (value - start) / (end - start); lets adaptive bisection reuse two energy
            evaluations instead of one per trial value.
    """

    name: str
    energy: FamilyFn
    start: float
    end: float
    grid: tuple[float, ...] | None = None
    cess_target: float = 0.9
    endpoints: tuple[EnergyFn, EnergyFn] | None = None

    def __post_init__(self):
        if not callable(self.energy):
            raise TypeError("energy must be callable as energy(value, x) -> (n,)")
        if self.start == self.end:
            raise ValueError(f"a segment needs at least two targets: start and end are both {self.start}")
        if self.grid is not None:
            if len(self.grid) < 2:
                raise ValueError(f"grid must hold at least two values (a path of length one has nothing to anneal), got {self.grid}")
            if self.grid[0] != self.start or self.grid[-1] != self.end:
                raise ValueError(f"grid must run from start={self.start} to end={self.end}, got {self.grid[0]} .. {self.grid[-1]}")
            sign = 1.0 if self.end > self.start else -1.0
            if any(sign * (b - a) <= 0 for a, b in zip(self.grid, self.grid[1:])):
                raise ValueError(f"grid must be strictly monotone from start to end, got {self.grid}")
        _check_cess_target(self.cess_target)

    @property
    def adaptive(self) -> bool:
        """True when the sampler chooses the values (no fixed grid)."""
        return self.grid is None

    def fraction(self, value: float) -> float:
        """s = (value - start) / (end - start), 0 at start and 1 at end."""
        return (value - self.start) / (self.end - self.start)

    def value_at(self, fraction: float) -> float:
        """Inverse of :meth:`fraction` (returns ``end`` exactly at fraction 1)."""
        return self.end if fraction >= 1.0 else self.start + fraction * (self.end - self.start)

    def target(self, value: float) -> EnergyFn:
        """The energy function x -> energy(value, x) of one target along the segment."""
        return lambda x: self.energy(value, x)


@dataclass(frozen=True)
class Path:
    """An ordered tuple of segments; ``path_a + path_b`` concatenates."""

    segments: tuple[Segment, ...]

    def __post_init__(self):
        if len(self.segments) == 0:
            raise ValueError("a path needs at least one segment")
        for s in self.segments:
            if not isinstance(s, Segment):
                raise TypeError(f"segments must be Segment objects, got {type(s).__name__}")

    def __add__(self, other: "Path") -> "Path":
        if not isinstance(other, Path):
            return NotImplemented
        return Path(self.segments + other.segments)

    @property
    def first_target(self) -> EnergyFn:
        """Energy of the first target (the initial weights are exp(-it) / q)."""
        s = self.segments[0]
        return s.target(s.start)


def energy_path(energies: Sequence[EnergyFn], values: Sequence[float] | None = None, name: str = "level") -> Path:
    """A fixed sequence of targets exp(-energies[k]), visited in the order given.

    Args:
        energies: at least two callables x (n, d) -> (n,) reduced energies in kT.
        values: labels reported in the diagnostics (default 0, 1, ..., K-1), strictly monotone.
        name: what the labels are.
    """
    energies = list(energies)
    if len(energies) < 2:
        raise ValueError(f"energies must hold at least two targets (a path of length one has nothing to anneal), got {len(energies)}")
    if not all(callable(e) for e in energies):
        raise TypeError("every entry of energies must be callable as energy(x) -> (n,)")
    labels = tuple(float(k) for k in range(len(energies))) if values is None else _floats(values, "values")
    if len(labels) != len(energies):
        raise ValueError(f"values must have one label per energy ({len(energies)}), got {len(labels)}")
    by_value = dict(zip(labels, energies))

    def energy(value: float, x: torch.Tensor) -> torch.Tensor:
        return by_value[value](x)

    return Path((Segment(name, energy, labels[0], labels[-1], grid=labels),))


def family_path(energy: FamilyFn, lambdas: Sequence[float] | None = None, start: float = 0.0, end: float = 1.0,
                cess_target: float = 0.9, name: str = "lambda") -> Path:
    """A parameterised family energy(lam, x), lam from ``start`` to ``end``.

    With ``lambdas`` (a strictly monotone grid from start to end) the steps are fixed; without,
    they are adaptive, each trial value of the bisection costing one energy evaluation.
    """
    grid = None if lambdas is None else _floats(lambdas, "lambdas")
    if grid is not None:
        start, end = grid[0], grid[-1]
    return Path((Segment(name, energy, float(start), float(end), grid=grid, cess_target=cess_target),))


def _geometric_segment(start_energy: EnergyFn, end_energy: EnergyFn, lambdas, cess_target: float, name: str) -> Segment:
    if not (callable(start_energy) and callable(end_energy)):
        raise TypeError("start_energy and end_energy must be callable as energy(x) -> (n,)")
    grid = None if lambdas is None else _floats(lambdas, "lambdas")
    if grid is not None and (grid[0] != 0.0 or grid[-1] != 1.0):
        raise ValueError(f"lambdas must run from 0 to 1, got {grid[0]} .. {grid[-1]}")

    def energy(lam: float, x: torch.Tensor) -> torch.Tensor:
        # the endpoints alone, so that an infinite energy at the other end never makes 0 * inf = NaN
        if lam == 0.0:
            return start_energy(x)
        if lam == 1.0:
            return end_energy(x)
        return (1.0 - lam) * start_energy(x) + lam * end_energy(x)

    return Segment(name, energy, 0.0, 1.0, grid=grid, cess_target=cess_target, endpoints=(start_energy, end_energy))


def geometric_path(start_energy: EnergyFn, end_energy: EnergyFn, lambdas: Sequence[float] | None = None,
                   cess_target: float = 0.9, name: str = "lambda") -> Path:
    """Geometric bridge exp(-(1 - lam) E_start - lam E_end), lam: 0 -> 1.

    Args:
        start_energy, end_energy: energies x (n, d) -> (n,) in kT.
        lambdas: fixed grid from 0 to 1, or None for adaptive steps (bisection on the
            conditional ESS, nearly free here because the energy is linear in lam).
        cess_target: conditional ESS fraction per adaptive step.
    """
    return Path((_geometric_segment(start_energy, end_energy, lambdas, cess_target, name),))


def diffusion_path(energy: FamilyFn, times: Sequence[float], target_energy: EnergyFn | None = None,
                   lambdas: Sequence[float] | None = None, cess_target: float = 0.9,
                   adaptive_times: bool = False) -> Path:
    """Path through the levels of a diffusion EBM, then (optionally) a bridge to the target.

    Args:
        energy: the model's energy(t, x) -> (n,) in kT for a float time t and x (n, d)
            (e.g. ``model.energy``).
        times: the levels, at least two distinct values; visited from the largest (t = 1, close
            to a Gaussian) to the smallest (t_min), whatever order they are given in.
        target_energy: optional physical reduced energy u(x) (n, d) -> (n,). When given, the
            path continues with exp(-(1 - lam) energy(t_min, .) - lam u), lam: 0 -> 1.
        lambdas: fixed grid for that bridge (default adaptive).
        cess_target: conditional ESS fraction per adaptive step.
        adaptive_times: choose the levels between max(times) and min(times) adaptively instead
            (bisection on the conditional ESS; each trial costs one energy evaluation).
    """
    if not callable(energy):
        raise TypeError("energy must be callable as energy(t, x) -> (n,)")
    levels = tuple(sorted(set(_floats(times, "times")), reverse=True))
    if len(levels) < 2:
        raise ValueError(f"times must hold at least two distinct levels, got {levels}")
    grid = None if adaptive_times else levels
    path = Path((Segment("t", energy, levels[0], levels[-1], grid=grid, cess_target=cess_target),))
    if target_energy is None:
        return path
    t_min = levels[-1]
    bridge = _geometric_segment(lambda x: energy(t_min, x), target_energy, lambdas, cess_target, "lambda")
    return path + Path((bridge,))
