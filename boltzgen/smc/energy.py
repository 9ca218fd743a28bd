"""Evaluating energy functions on batches of particles, in chunks, with validated outputs.

An *energy function* is any callable ``energy(x) -> (n,)`` on flat particles ``x`` of shape
(n, d): a reduced energy in kT (lower is likelier), differentiable with respect to ``x`` by
autograd. Molecular energies take (n, n_atoms, 3) positions in nm; wrap them with
:func:`flat_energy` and, to keep moves in the centre-of-mass-free subspace, pass
:func:`mean_free_projection` as ``project`` to the sampler, kernels and proposal.

Energies are returned as float64. A non-finite energy (NaN, +inf or -inf) becomes +inf, i.e.
zero weight and a rejected move, never a NaN that could reach log Z.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._checks import check_count

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
Projection = Callable[[torch.Tensor], torch.Tensor]


def _chunks(n: int, chunk_size: int | None):
    chunk_size = check_count(chunk_size, "chunk_size", allow_none=True)
    step = n if chunk_size is None else chunk_size
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def _checked(e, n: int) -> torch.Tensor:
    if not isinstance(e, torch.Tensor):
        raise TypeError(f"energy must return a torch.Tensor of shape ({n},), got {type(e).__name__}")
    if e.shape != (n,):
        raise ValueError(f"energy must return shape ({n},) (one reduced energy in kT per particle), got {tuple(e.shape)}")
    return e


def _as_energy(e: torch.Tensor) -> torch.Tensor:
    e = e.detach().to(torch.float64)
    return torch.where(torch.isfinite(e), e, torch.full_like(e, float("inf")))


def evaluate(energy: EnergyFn, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Energies of ``x`` (n, d) without gradients, float64 (n,), non-finite -> +inf."""
    parts = []
    with torch.no_grad():
        for s in _chunks(x.shape[0], chunk_size):
            parts.append(_as_energy(_checked(energy(x[s]), s.stop - s.start)))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=x.device)


def evaluate_with_grad(energy: EnergyFn, x: torch.Tensor,
                       chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (n,) float64 and their gradients (n, d) in the dtype of ``x``.

    Only one chunk's autograd graph is alive at a time, so memory stays bounded for large n.
    Non-finite gradients are returned as they are; the kernels refuse to move such particles.
    """
    energies, grads = [], []
    with torch.enable_grad():
        for s in _chunks(x.shape[0], chunk_size):
            xc = x[s].detach().requires_grad_(True)
            e = _checked(energy(xc), s.stop - s.start)
            if e.requires_grad:
                (g,) = torch.autograd.grad(e.sum(), xc)
            else:  # an energy that does not depend on x (or was computed without autograd)
                g = torch.zeros_like(xc)
            energies.append(_as_energy(e))
            grads.append(g.detach())
    if not energies:
        return torch.zeros(0, dtype=torch.float64, device=x.device), torch.zeros_like(x)
    return torch.cat(energies), torch.cat(grads)


def flat_energy(energy: Callable[[torch.Tensor], torch.Tensor], n_atoms: int) -> EnergyFn:
    """Adapt a molecular energy on (n, n_atoms, 3) positions to flat (n, 3 n_atoms) particles."""
    n_atoms = check_count(n_atoms, "n_atoms")

    def flat(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 3 * n_atoms:
            raise ValueError(f"x must have shape (n, {3 * n_atoms}) (flattened (n, {n_atoms}, 3) positions), got {tuple(x.shape)}")
        return energy(x.reshape(x.shape[0], n_atoms, 3))

    return flat


def mean_free_projection(n_atoms: int, spatial_dim: int = 3) -> Projection:
    """Orthogonal projection of flat (n, n_atoms * spatial_dim) vectors onto zero mean over atoms.

    This is the centre-of-mass-free subspace of the design notes (unweighted mean), of dimension
    spatial_dim * (n_atoms - 1).
    """
    if not isinstance(n_atoms, int) or n_atoms < 2:
        raise ValueError(f"n_atoms must be an integer >= 2, got {n_atoms!r}")

    def project(v: torch.Tensor) -> torch.Tensor:
        r = v.reshape(v.shape[0], n_atoms, spatial_dim)
        return (r - r.mean(dim=1, keepdim=True)).reshape(v.shape)

    return project


def subspace_dimension(project: Projection | None, dim: int, dtype=torch.float64, device=None) -> int:
    """Dimension of the range of an orthogonal projection on R^dim: its trace (dim if None)."""
    if project is None:
        return dim
    eye = torch.eye(dim, dtype=dtype, device=device)
    return int(round(float(torch.diagonal(project(eye)).sum())))


class CountedEnergy:
    """An energy function that counts the configurations it was evaluated on (``count``).

    Works for energies ``energy(x)`` and families ``energy(t, x)``: the last argument is the batch.
    """

    def __init__(self, energy: Callable, count: int = 0):
        self.energy, self.count = energy, count

    def __call__(self, *args) -> torch.Tensor:
        self.count += int(args[-1].shape[0])
        return self.energy(*args)


def on_device(energy: EnergyFn, device: torch.device | str) -> EnergyFn:
    """``energy`` evaluated on ``device`` (e.g. a CPU force field) for inputs anywhere; autograd-safe."""
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return energy(x.to(device)).to(x.device)
    return wrapped
