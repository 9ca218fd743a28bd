"""Torsion moves: rigid rotations about a molecule's rotatable bonds, with a Metropolis test.

Gradient kernels (MALA, HMC) take tiny steps and practically never carry a particle over the
barrier between two backbone basins; a rotation of one side of a rotatable bond by an angle drawn
uniformly from (-pi, pi] does so in one move. The move is exact for any target exp(-E):

* the proposal is symmetric: the rotation by -theta about the same bond (whose two atoms do not
  move) undoes it, and the angle's distribution is symmetric;
* it is volume preserving: the rotated atoms' Jacobian is a rotation (det 1) and the rest is the
  identity, in block-triangular form; the centroid is removed afterwards, a translation that
  commutes with the rotation, so the move stays in the centre-free subspace with Jacobian 1 there;

so the Metropolis ratio is exp(E(x) - E(x')). Rotations preserve chirality.

Rotatable bonds are found from the topology alone: a bond that is not in a ring with a heavy
(non-hydrogen) atom on each side besides the bond's own two atoms (rotors that only turn hydrogens,
such as methyl groups, are left to the gradient moves). The smaller side is rotated. A move turns
one *group* of bonds, drawn uniformly: every rotatable bond alone, and every pair of rotatable
bonds that share an atom (a backbone's phi and psi together: a single turn of phi mostly lands on
a clash, the pair reaches the other basins). Each bond of a group turns by its own uniform angle,
in a random order; the reverse move (negated angles, reversed order) has the same probability,
so the proposal stays symmetric. Bonds with a high barrier (amide bonds) are kept: their moves
are simply rejected; nothing is tuned to a particular molecule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import check_count
from .energy import EnergyFn, Projection
from .kernels import Move, ParticleState, _mh_accept, _select, particle_state


@dataclass(frozen=True)
class Torsions:
    """The rotatable bonds of a molecule and the groups of them that a move turns together.

    Attributes:
        n_atoms: atoms of the molecule.
        axes: (k, 2) int64 atom indices (a, b) of each bond; atoms rotate about the axis a -> b.
        moving: (k, n_atoms) bool, the atoms on b's side (the smaller side) of each bond, b excluded.
        names: k labels "atom_a:atom_b" (for diagnostics).
        groups: tuples of bond indices; a move turns one group, drawn uniformly (default: every
            bond alone).
    """

    n_atoms: int
    axes: np.ndarray
    moving: np.ndarray
    names: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self):
        axes, moving = np.asarray(self.axes, dtype=np.int64), np.asarray(self.moving, dtype=bool)
        if axes.ndim != 2 or axes.shape[1] != 2 or axes.shape[0] == 0:
            raise ValueError(f"axes must have shape (k >= 1, 2), got {axes.shape}")
        k = axes.shape[0]
        if moving.shape != (k, self.n_atoms):
            raise ValueError(f"moving must have shape ({k}, {self.n_atoms}), got {moving.shape}")
        if axes.min() < 0 or axes.max() >= self.n_atoms:
            raise ValueError(f"axes must index atoms 0..{self.n_atoms - 1}")
        groups = tuple(tuple(int(i) for i in g) for g in self.groups) or tuple((i,) for i in range(k))
        if any(not g or len(set(g)) != len(g) or min(g) < 0 or max(g) >= k for g in groups):
            raise ValueError(f"groups must be non-empty tuples of distinct bond indices 0..{k - 1}")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "moving", moving)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "groups", groups)

    def __len__(self) -> int:
        return int(self.axes.shape[0])


def _component(neighbours: list[set[int]], start: int, blocked: int) -> set[int]:
    """Atoms connected to ``start`` once the bond start-blocked is removed."""
    seen, stack = {start}, [start]
    while stack:
        i = stack.pop()
        for j in neighbours[i]:
            if (i, j) == (start, blocked) or j in seen:
                continue
            seen.add(j)
            stack.append(j)
    return seen


def rotatable_torsions(topology) -> Torsions:
    """The rotatable bonds of ``topology`` and their groups (see the module docstring).

    Args:
        topology: an openmm.app.Topology or mdtraj.Topology with bonds (or an object with
            ``.topology``, e.g. a target).
    Raises:
        ValueError: if the topology has no bonds or no rotatable bond.
    """
    from ..coordinates import mdtraj_topology

    top = mdtraj_topology(topology)
    n = top.n_atoms
    atoms = list(top.atoms)
    heavy = np.array([a.element is None or a.element.symbol != "H" for a in atoms])
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for bond in top.bonds:
        i, j = bond[0].index, bond[1].index
        neighbours[i].add(j)
        neighbours[j].add(i)
    if not any(neighbours):
        raise ValueError("topology has no bonds: torsion moves need the molecule's bond graph")
    axes, moving, names = [], [], []
    for i in range(n):
        for j in sorted(neighbours[i]):
            if j < i:
                continue
            side_j = _component(neighbours, j, i)
            if i in side_j:  # a ring bond: cutting it does not split the molecule
                continue
            side_i = _component(neighbours, i, j)
            if not (heavy[sorted(side_i - {i})].any() and heavy[sorted(side_j - {j})].any()):
                continue  # a terminal bond or a rotor of hydrogens only
            a, b, side = (i, j, side_j) if len(side_j) <= len(side_i) else (j, i, side_i)
            mask = np.zeros(n, dtype=bool)
            mask[sorted(side - {b})] = True
            axes.append((a, b))
            moving.append(mask)
            names.append(f"{atoms[a]}:{atoms[b]}")
    if not axes:
        raise ValueError("topology has no rotatable bond (every bond is terminal, in a ring or turns only hydrogens)")
    k = len(axes)
    pairs = [(p, q) for p in range(k) for q in range(p + 1, k) if set(axes[p]) & set(axes[q])]
    return Torsions(n, np.array(axes), np.array(moving), tuple(names), tuple((i,) for i in range(k)) + tuple(pairs))


def rotatable_torsions_or_none(topology) -> Torsions | None:
    """:func:`rotatable_torsions`, or None for a molecule without rotatable bonds (or bonds)."""
    try:
        return rotatable_torsions(topology)
    except ValueError:
        return None


def rotate(x: torch.Tensor, torsions: Torsions, which: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each particle's atoms about one of its rotatable bonds, then remove the centroid.

    Args:
        x: (n, 3 n_atoms) flat positions (any length unit).
        torsions: the molecule's :class:`Torsions`.
        which: (n,) int64 index of the bond each particle rotates.
        angle: (n,) rotation angles in radians (right-handed about a -> b).
    Returns:
        (n, 3 n_atoms) rotated, centre-free positions, same dtype and device as ``x``.
    """
    n = x.shape[0]
    r = x.reshape(n, torsions.n_atoms, 3)
    axes = torch.as_tensor(torsions.axes, device=x.device)[which]
    mask = torch.as_tensor(torsions.moving, device=x.device)[which]  # (n, n_atoms)
    rows = torch.arange(n, device=x.device)
    a, b = r[rows, axes[:, 0]], r[rows, axes[:, 1]]  # (n, 3)
    u = (b - a) / torch.linalg.norm(b - a, dim=1, keepdim=True)
    v = r - b[:, None, :]
    cos, sin = torch.cos(angle).to(x.dtype)[:, None, None], torch.sin(angle).to(x.dtype)[:, None, None]
    uu = u[:, None, :].expand_as(v)
    dot = (v * uu).sum(dim=2, keepdim=True)
    rotated = b[:, None, :] + v * cos + torch.cross(uu, v, dim=2) * sin + uu * dot * (1 - cos)
    out = torch.where(mask[:, :, None], rotated, r)
    return (out - out.mean(dim=1, keepdim=True)).reshape(n, -1)


@dataclass(frozen=True)
class TorsionMove:
    """``n_moves`` torsion moves after every move of a gradient ``kernel`` (MALA or HMC).

    Each torsion move rotates one rotatable bond per particle, drawn uniformly, by an angle drawn
    uniformly from (-pi, pi], and accepts with probability min(1, exp(E(x) - E(x'))). The step
    size, its adaptation and the reported acceptance rate are those of ``kernel``; the torsion
    moves' mean acceptance is reported as ``Move.torsion_acceptance``.

    Attributes:
        kernel: the gradient kernel (its step size is adapted as usual).
        torsions: the molecule's :class:`Torsions` (flat coordinates of the particles must be
            (n, 3 torsions.n_atoms)).
        n_moves: torsion moves per gradient move (each costs one energy+gradient evaluation).
    """

    kernel: object
    torsions: Torsions
    n_moves: int = 1

    def __post_init__(self):
        object.__setattr__(self, "n_moves", check_count(self.n_moves, "n_moves"))
        if not hasattr(self.kernel, "move") or not hasattr(self.kernel, "adapted"):
            raise TypeError(f"kernel must be an MCMC kernel (MALA or HMC), got {type(self.kernel).__name__}")

    @property
    def step_size(self) -> float:
        return self.kernel.step_size

    @property
    def gradient_evaluations(self) -> int:
        """Energy+gradient evaluations per move."""
        return self.kernel.gradient_evaluations + self.n_moves

    def adapted(self, acceptance_rate: float) -> "TorsionMove":
        """The same move with the gradient kernel's step size adapted."""
        return replace(self, kernel=self.kernel.adapted(acceptance_rate))

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """One gradient move, then ``n_moves`` torsion moves; exp(-energy) is invariant.

        ``project`` is used by the gradient move; the torsion moves always remove the unweighted
        centroid, i.e. they assume the centre-free subspace of :class:`boltzgen.space.MolecularSpace`.
        """
        first = self.kernel.move(energy, state, generator, project, chunk_size)
        current, rates = first.state, []
        for _ in range(self.n_moves):
            turn = torsion_step(energy, current, self.torsions, generator, chunk_size)
            current = turn.state
            rates.append(turn.acceptance_rate)
        return Move(current, first.accepted, first.movable, torsion_acceptance=math.fsum(rates) / len(rates))


def torsion_step(energy: EnergyFn, state: ParticleState, torsions: Torsions, generator: torch.Generator | None = None,
                 chunk_size: int | None = None) -> Move:
    """One torsion move of every particle (see :class:`TorsionMove`); exp(-energy) is invariant.

    Args:
        energy: callable on (n, 3 n_atoms) -> (n,) kT.
        state: the particles (n, 3 n_atoms) with energies and gradients under ``energy``.
        torsions: the molecule's :class:`Torsions`.
    Returns:
        :class:`~boltzgen.smc.Move` (its acceptance rate is the torsion acceptance).
    """
    x = state.x
    if x.ndim != 2 or x.shape[1] != 3 * torsions.n_atoms:
        raise ValueError(f"particles must have shape (n, {3 * torsions.n_atoms}), got {tuple(x.shape)}")
    n, size = x.shape[0], max(len(g) for g in torsions.groups)
    # groups padded to a common size with -1 (no bond), each particle's group in a random order
    table = torch.tensor([g + (-1,) * (size - len(g)) for g in torsions.groups], device=x.device)
    bonds = table[torch.randint(len(torsions.groups), (n,), generator=generator, device=x.device)]
    order = torch.argsort(torch.rand(n, size, generator=generator, device=x.device), dim=1)
    bonds = torch.gather(bonds, 1, order)
    y = x
    for slot in range(size):
        angle = (2 * torch.rand(n, generator=generator, dtype=torch.float64, device=x.device) - 1) * math.pi
        angle = torch.where(bonds[:, slot] >= 0, angle, torch.zeros_like(angle))
        y = rotate(y, torsions, bonds[:, slot].clamp(min=0), angle)
    movable = state.movable
    proposed = particle_state(energy, torch.where(movable[:, None], y, x), chunk_size)
    accepted = _mh_accept(state.energy - proposed.energy, movable & proposed.movable, generator)
    return Move(_select(accepted, proposed, state), accepted, movable)
