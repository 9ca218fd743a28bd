"""MCMC kernels that leave exp(-energy) invariant: MALA and HMC with a Metropolis-Hastings test.

Both act on a batch of independent particles x (n, d) at once, each with its own accept/reject
decision. The step size is shared by the batch and adapted toward a target acceptance rate
*between* calls (``kernel.adapted(move.info)`` returns a new kernel), so every single move is an
exact MH move for the current target. Every move reports its own figures (``Move.info``), and the
combinators :class:`Sequence` and :class:`Mixture` build compound kernels (e.g. MALA followed by
torsion moves) whose figures stay with the part that measured them.

``project`` (optional) is an orthogonal projection applied to noise, momenta and gradients, so
that particles never leave a linear subspace (e.g. centre-of-mass-free coordinates). Densities
are then w.r.t. Lebesgue measure on that subspace, and the MH ratios below are the right ones
there: proposal residuals lie in the subspace by construction.

Particles whose current energy or gradient is not finite (zero-weight particles in SMC) are not
moved; proposals with a non-finite energy or gradient are rejected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Protocol, Sequence as _Seq

import torch

from .._checks import check_count
from .energy import EnergyFn, Projection, evaluate_with_grad


@dataclass(frozen=True)
class ParticleState:
    """Particles with their energy and its gradient under the current target.

    Attributes:
        x: (n, d) positions.
        energy: (n,) float64 reduced energies in kT (+inf where not finite).
        grad: (n, d) gradients of the energy w.r.t. x (not projected).
    """

    x: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor

    @property
    def movable(self) -> torch.Tensor:
        """(n,) bool: finite energy and gradient, so an MCMC proposal is well defined."""
        return torch.isfinite(self.energy) & torch.isfinite(self.grad).all(dim=1)


def particle_state(energy: EnergyFn, x: torch.Tensor, chunk_size: int | None = None) -> ParticleState:
    """Evaluate ``energy`` and its gradient at ``x`` (n, d) in chunks."""
    e, g = evaluate_with_grad(energy, x, chunk_size)
    return ParticleState(x.detach(), e, g)


@dataclass(frozen=True)
class Move:
    """Outcome of one MCMC move of a batch: the particles and what the kernel measured.

    Attributes:
        state: particles after the move.
        info: the kernel's own figures for this move, e.g. ``{"acceptance": 0.57}`` (fraction of
            movable particles whose proposal was accepted; nan if none could move). Combinators
            prefix their parts' keys with the parts' names (``"mala.acceptance"``,
            ``"torsion.acceptance"``), so every kernel's diagnostics travel with it.
    """

    state: ParticleState
    info: Mapping[str, float]


def acceptance_rate(accepted: torch.Tensor, movable: torch.Tensor) -> float:
    """Fraction of movable particles (n,) bool whose proposal was accepted (n,) bool; nan if none could move."""
    m = int(movable.sum())
    return float(accepted[movable].sum()) / m if m else float("nan")


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


def _sq_norm(v: torch.Tensor) -> torch.Tensor:
    return (v.to(torch.float64) ** 2).sum(dim=1)


def _mh_accept(log_alpha: torch.Tensor, ok: torch.Tensor, generator) -> torch.Tensor:
    """Per-particle MH decision; a NaN log ratio (e.g. inf - inf) is a rejection."""
    log_u = torch.log(torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64, device=log_alpha.device))
    return ok & (log_u < log_alpha)


def _select(accepted: torch.Tensor, new: ParticleState, old: ParticleState) -> ParticleState:
    a = accepted[:, None]
    return ParticleState(
        torch.where(a, new.x, old.x), torch.where(accepted, new.energy, old.energy), torch.where(a, new.grad, old.grad)
    )


def _adapted(kernel, info: Mapping[str, float]):
    """Robbins-Monro step on log(step size) toward the kernel's target acceptance rate.

    ``info`` is the kernel's own :attr:`Move.info` (its "acceptance" entry is used).
    """
    acceptance_rate = info.get("acceptance", float("nan"))
    if not math.isfinite(acceptance_rate):
        return kernel
    log_step = math.log(kernel.step_size) + kernel.adaptation_rate * (acceptance_rate - kernel.target_acceptance)
    step = min(max(math.exp(log_step), kernel.min_step_size), kernel.max_step_size)
    return replace(kernel, step_size=step)


def _check_kernel(kernel) -> None:
    if not (0 < kernel.min_step_size <= kernel.step_size <= kernel.max_step_size):
        raise ValueError(
            f"need 0 < min_step_size <= step_size <= max_step_size, got {kernel.min_step_size}, "
            f"{kernel.step_size}, {kernel.max_step_size}"
        )
    if not 0 < kernel.target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {kernel.target_acceptance}")
    if kernel.adaptation_rate < 0:
        raise ValueError(f"adaptation_rate must be >= 0, got {kernel.adaptation_rate}")


@dataclass(frozen=True)
class MALA:
    """Metropolis-adjusted Langevin: y = x - h grad E(x) + sqrt(2h) xi, then an MH test.

    Attributes:
        step_size: h, in units of x squared (variance of the proposal noise is 2h).
        target_acceptance: acceptance rate the step size is adapted toward (0.574 is optimal
            for MALA in high dimension).
        adaptation_rate: gain of the log-step-size update in ``adapted``.
        min_step_size, max_step_size: bounds for adaptation.
    """

    step_size: float = 0.01
    target_acceptance: float = 0.574
    adaptation_rate: float = 1.0
    min_step_size: float = 1e-8
    max_step_size: float = 10.0

    def __post_init__(self):
        _check_kernel(self)

    name = "mala"

    @property
    def evaluations(self) -> int:
        """Energy+gradient evaluations per move."""
        return 1

    def adapted(self, info: Mapping[str, float]) -> "MALA":
        """The same kernel with the step size moved toward ``target_acceptance`` (``info``: a move's info)."""
        return _adapted(self, info)

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """One MALA move of every particle; exp(-energy) is invariant."""
        P = project or _identity
        h = self.step_size
        movable = state.movable
        grad = P(torch.where(movable[:, None], state.grad, torch.zeros_like(state.grad)))
        noise = P(torch.randn(state.x.shape, generator=generator, dtype=state.x.dtype, device=state.x.device))
        y = state.x - h * grad + math.sqrt(2 * h) * noise
        y = torch.where(movable[:, None], y, state.x)
        proposed = particle_state(energy, y, chunk_size)
        grad_y = P(proposed.grad)
        # log q(x | y) - log q(y | x), Gaussian proposals with variance 2h
        log_q_forward = -_sq_norm(y - state.x + h * grad) / (4 * h)
        log_q_reverse = -_sq_norm(state.x - y + h * grad_y) / (4 * h)
        log_alpha = (state.energy - proposed.energy) + log_q_reverse - log_q_forward
        accepted = _mh_accept(log_alpha, movable & proposed.movable, generator)
        return Move(_select(accepted, proposed, state), {"acceptance": acceptance_rate(accepted, movable)})


@dataclass(frozen=True)
class HMC:
    """Hamiltonian Monte Carlo: unit-mass leapfrog trajectories of ``n_leapfrog`` steps, MH test.

    Attributes:
        step_size: leapfrog step eps, in units of x.
        n_leapfrog: leapfrog steps per trajectory (energy+gradient evaluations per move).
        target_acceptance: acceptance rate the step size is adapted toward (0.65 is the
            usual optimum).
        adaptation_rate, min_step_size, max_step_size: as for :class:`MALA`.
    """

    step_size: float = 0.1
    n_leapfrog: int = 10
    target_acceptance: float = 0.65
    adaptation_rate: float = 1.0
    min_step_size: float = 1e-8
    max_step_size: float = 10.0

    def __post_init__(self):
        _check_kernel(self)
        object.__setattr__(self, "n_leapfrog", check_count(self.n_leapfrog, "n_leapfrog"))  # a plain int

    name = "hmc"

    @property
    def evaluations(self) -> int:
        """Energy+gradient evaluations per move."""
        return self.n_leapfrog

    def adapted(self, info: Mapping[str, float]) -> "HMC":
        """The same kernel with the step size moved toward ``target_acceptance`` (``info``: a move's info)."""
        return _adapted(self, info)

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """One HMC trajectory per particle; exp(-energy) is invariant."""
        P = project or _identity
        eps = self.step_size
        movable = state.movable
        zero = torch.zeros_like(state.grad)
        p = P(torch.randn(state.x.shape, generator=generator, dtype=state.x.dtype, device=state.x.device))
        h_start = state.energy + 0.5 * _sq_norm(p)
        alive = movable.clone()  # trajectories that have not hit a non-finite energy or gradient
        x, grad = state.x, P(torch.where(movable[:, None], state.grad, zero))
        p = p - 0.5 * eps * grad
        for k in range(self.n_leapfrog):
            x = torch.where(alive[:, None], x + eps * p, x)
            current = particle_state(energy, x, chunk_size)
            alive = alive & current.movable
            grad = P(torch.where(alive[:, None], current.grad, zero))
            p = p - (eps if k < self.n_leapfrog - 1 else 0.5 * eps) * grad
        h_end = current.energy + 0.5 * _sq_norm(p)
        accepted = _mh_accept(h_start - h_end, alive, generator)
        return Move(_select(accepted, current, state), {"acceptance": acceptance_rate(accepted, movable)})


class Kernel(Protocol):
    """What the SMC engine needs of an MCMC kernel that leaves exp(-energy) invariant.

    ``name`` prefixes its figures inside combinators; ``move`` returns a :class:`Move`;
    ``adapted(info)`` returns the kernel tuned by a move's ``info`` (or itself); ``evaluations``
    is the energy+gradient evaluations per particle and move.
    """

    name: str

    @property
    def evaluations(self) -> int: ...

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move: ...

    def adapted(self, info: Mapping[str, float]) -> "Kernel": ...


def _check_parts(kernels) -> tuple:
    kernels = tuple(kernels)
    if not kernels:
        raise ValueError("kernels: give at least one MCMC kernel")
    for k in kernels:
        if not (hasattr(k, "move") and hasattr(k, "adapted") and hasattr(k, "name")):
            raise TypeError(f"kernels must be MCMC kernels (move, adapted, name), got {type(k).__name__}")
    return kernels


def _prefixed(name: str, info: Mapping[str, float]) -> dict:
    return {f"{name}.{key}": value for key, value in info.items()}


def _own(name: str, info: Mapping[str, float]) -> dict:
    """The entries of a combinator's ``info`` that belong to its parts called ``name``, unprefixed."""
    head = name + "."
    return {key[len(head):]: value for key, value in info.items() if key.startswith(head)}


def _step_size(kernels) -> float:
    return next((float(k.step_size) for k in kernels if hasattr(k, "step_size")), float("nan"))


@dataclass(frozen=True)
class Sequence:
    """Apply several kernels one after another (each leaves exp(-energy) invariant, so the sequence does).

    ``info`` holds every part's figures under its name (``"mala.acceptance"``), averaged over the
    parts that share a name (e.g. four torsion moves after one MALA move). ``adapted`` hands each
    part its own figures, so a gradient kernel's step size follows its own acceptance.

    Attributes:
        kernels: the parts, in order.
    """

    kernels: _Seq

    name = "sequence"

    def __post_init__(self):
        object.__setattr__(self, "kernels", _check_parts(self.kernels))

    @property
    def evaluations(self) -> int:
        """Energy+gradient evaluations per move: the sum over the parts."""
        return sum(k.evaluations for k in self.kernels)

    @property
    def step_size(self) -> float:
        """The first part's step size (for diagnostics; nan if no part has one)."""
        return _step_size(self.kernels)

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """Every part's move in turn; exp(-energy) is invariant."""
        values: dict[str, list[float]] = {}
        for kernel in self.kernels:
            move = kernel.move(energy, state, generator, project, chunk_size)
            state = move.state
            for key, value in _prefixed(kernel.name, move.info).items():
                values.setdefault(key, []).append(value)
        return Move(state, {key: math.fsum(v) / len(v) for key, v in values.items()})

    def adapted(self, info: Mapping[str, float]) -> "Sequence":
        """Each part adapted by its own entries of ``info``."""
        return replace(self, kernels=tuple(k.adapted(_own(k.name, info)) for k in self.kernels))


@dataclass(frozen=True)
class Mixture:
    """Apply one of several kernels per move, chosen at random with fixed probabilities.

    A choice that does not depend on the particles keeps exp(-energy) invariant. One choice per
    move is shared by the batch; ``info`` holds the chosen part's figures under its name.

    Attributes:
        kernels: the parts.
        probabilities: one positive probability per part (normalised here); default equal.
    """

    kernels: _Seq
    probabilities: _Seq | None = None

    name = "mixture"

    def __post_init__(self):
        kernels = _check_parts(self.kernels)
        p = [1.0] * len(kernels) if self.probabilities is None else [float(v) for v in self.probabilities]
        if len(p) != len(kernels) or not all(v > 0 and math.isfinite(v) for v in p):
            raise ValueError(f"probabilities must be {len(kernels)} positive numbers, one per kernel, got {self.probabilities!r}")
        total = math.fsum(p)
        object.__setattr__(self, "kernels", kernels)
        object.__setattr__(self, "probabilities", tuple(v / total for v in p))

    @property
    def evaluations(self) -> float:
        """Expected energy+gradient evaluations per move."""
        return sum(p * k.evaluations for p, k in zip(self.probabilities, self.kernels))

    @property
    def step_size(self) -> float:
        """The first part's step size (for diagnostics; nan if no part has one)."""
        return _step_size(self.kernels)

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """One move of a part drawn with ``probabilities``; exp(-energy) is invariant."""
        device = state.x.device if generator is None else generator.device
        u = float(torch.rand(1, generator=generator, dtype=torch.float64, device=device))
        cumulative = 0.0
        for kernel, p in zip(self.kernels, self.probabilities):
            cumulative += p
            if u < cumulative:
                break
        move = kernel.move(energy, state, generator, project, chunk_size)
        return Move(move.state, _prefixed(kernel.name, move.info))

    def adapted(self, info: Mapping[str, float]) -> "Mixture":
        """Each part adapted by its own entries of ``info`` (parts that did not move keep theirs)."""
        return replace(self, kernels=tuple(k.adapted(_own(k.name, info)) if _own(k.name, info) else k
                                           for k in self.kernels))
