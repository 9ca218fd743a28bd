"""MCMC kernels that leave exp(-energy) invariant: MALA and HMC with a Metropolis-Hastings test.

Both act on a batch of independent particles x (n, d) at once, each with its own accept/reject
decision. The step size is shared by the batch and adapted toward a target acceptance rate
*between* calls (``kernel.adapted(rate)`` returns a new kernel), so every single move is an exact
MH move for the current target.

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
    """Outcome of one MCMC move of a batch.

    Attributes:
        state: particles after the move.
        accepted: (n,) bool, True where the proposal was accepted.
        movable: (n,) bool, particles that could be moved at all (finite energy and gradient).
        torsion_acceptance: acceptance rate of the torsion moves that followed the gradient move
            (nan without; see :class:`boltzgen.smc.torsion.TorsionMove`).
    """

    state: ParticleState
    accepted: torch.Tensor
    movable: torch.Tensor
    torsion_acceptance: float = float("nan")

    @property
    def acceptance_rate(self) -> float:
        """Fraction of movable particles whose proposal was accepted (nan if none could move)."""
        m = int(self.movable.sum())
        return float(self.accepted[self.movable].sum()) / m if m else float("nan")


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


def _adapted(kernel, acceptance_rate: float):
    """Robbins-Monro step on log(step size) toward the kernel's target acceptance rate."""
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

    @property
    def gradient_evaluations(self) -> int:
        """Energy+gradient evaluations per move."""
        return 1

    def adapted(self, acceptance_rate: float) -> "MALA":
        """The same kernel with the step size moved toward ``target_acceptance``."""
        return _adapted(self, acceptance_rate)

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
        return Move(_select(accepted, proposed, state), accepted, movable)


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

    @property
    def gradient_evaluations(self) -> int:
        """Energy+gradient evaluations per move."""
        return self.n_leapfrog

    def adapted(self, acceptance_rate: float) -> "HMC":
        """The same kernel with the step size moved toward ``target_acceptance``."""
        return _adapted(self, acceptance_rate)

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
        return Move(_select(accepted, current, state), accepted, movable)
