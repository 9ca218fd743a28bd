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

A uniform angle mostly lands on a clash. With probability ``reflect`` a move instead *reflects*
its group's dihedrals, theta -> -theta, each measured along the bond's main chain (the neighbour
with the largest branch on each side: for a peptide backbone, the usual phi and psi). Rotamers
and backbone basins often come in such mirror pairs (gauche+ / gauche-; a peptide's C7eq / C7ax
and alpha_R / alpha_L, which glycine's achiral backbone makes exact mirror images), so a
reflection lands on a basin far more often than a uniform angle does. It is exact too: the turn
by -2 theta is an involution (the reflected dihedral is -theta, whose reflection turns it back;
a turn about one bond of a pair does not change the other's dihedral, so the order does not
matter), and it is volume preserving (in internal coordinates it is theta -> -theta with
everything else fixed, |det| = 1, and the Cartesian-to-internal Jacobian depends only on bond
lengths and angles, which do not change). A state-independent choice between two exact moves
is exact, so the Metropolis ratio is still exp(E(x) - E(x')).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_count, check_probability
from .energy import EnergyFn, Projection
from .kernels import Move, ParticleState, Sequence, _mh_accept, _select, acceptance_rate, particle_state


def _on_device(owner, name: str, make, device) -> torch.Tensor:
    """The constant table ``name`` of ``owner`` (a frozen dataclass) on ``device``, made once per device and
    kept on the object, so that moves copy nothing from the host to the device."""
    cache = owner.__dict__.get("_device_tables")
    if cache is None:
        cache = {}
        object.__setattr__(owner, "_device_tables", cache)
    key = (name, str(device))
    if key not in cache:
        cache[key] = make().to(device)
    return cache[key]


def _group_table(groups, size: int) -> torch.Tensor:
    """Groups padded to a common size with -1 (no bond/coordinate): (n_groups, size) int64."""
    return torch.tensor([g + (-1,) * (size - len(g)) for g in groups], dtype=torch.int64)


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
        references: (k, 2) int64 atoms (c, d) that define each bond's dihedral c-a-b-d, c bonded
            to a on the fixed side and d bonded to b on the moving side; None: no reflection moves.
    """

    n_atoms: int
    axes: np.ndarray
    moving: np.ndarray
    names: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...] = ()
    references: np.ndarray | None = None

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
        if self.references is not None:
            refs = np.asarray(self.references, dtype=np.int64)
            if refs.shape != (k, 2) or refs.min() < 0 or refs.max() >= self.n_atoms:
                raise ValueError(f"references must have shape ({k}, 2) with atoms 0..{self.n_atoms - 1}")
            rows = np.arange(k)
            if moving[rows, refs[:, 0]].any() or not moving[rows, refs[:, 1]].all() or (refs == axes).any():
                raise ValueError("references must be (c, d): c on each bond's fixed side, d on its moving side")
            object.__setattr__(self, "references", refs)

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


def _main_neighbour(neighbours: list[set[int]], heavy: np.ndarray, atom: int, other: int) -> int:
    """The neighbour of ``atom`` (besides ``other``) whose branch has most heavy atoms, then most atoms."""
    def size(j):
        branch = sorted(_component(neighbours, j, atom))
        return int(heavy[branch].sum()), len(branch), -j
    return max(sorted(neighbours[atom] - {other}), key=size)


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
    axes, moving, names, references = [], [], [], []
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
            references.append((_main_neighbour(neighbours, heavy, a, b), _main_neighbour(neighbours, heavy, b, a)))
            moving.append(mask)
            names.append(f"{atoms[a]}:{atoms[b]}")
    if not axes:
        raise ValueError("topology has no rotatable bond (every bond is terminal, in a ring or turns only hydrogens)")
    k = len(axes)
    pairs = [(p, q) for p in range(k) for q in range(p + 1, k) if set(axes[p]) & set(axes[q])]
    groups = tuple((i,) for i in range(k)) + tuple(pairs)
    return Torsions(n, np.array(axes), np.array(moving), tuple(names), groups, np.array(references))


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
    axes = _on_device(torsions, "axes", lambda: torch.as_tensor(torsions.axes), x.device)[which]
    mask = _on_device(torsions, "moving", lambda: torch.as_tensor(torsions.moving), x.device)[which]  # (n, n_atoms)
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


def dihedral(x: torch.Tensor, torsions: Torsions, which: torch.Tensor) -> torch.Tensor:
    """Each particle's dihedral c-a-b-d about one rotatable bond, signed so that ``rotate`` adds to it.

    Args:
        x: (n, 3 n_atoms) flat positions.
        torsions: the molecule's :class:`Torsions`, with ``references``.
        which: (n,) int64 index of the bond of each particle.
    Returns:
        (n,) angles in radians in (-pi, pi]: the right-handed angle about a -> b from c's
        projection to d's.
    """
    if torsions.references is None:
        raise ValueError("dihedral needs Torsions.references (the atoms c, d of each dihedral c-a-b-d)")
    n = x.shape[0]
    r = x.reshape(n, torsions.n_atoms, 3)
    rows = torch.arange(n, device=x.device)
    axes = _on_device(torsions, "axes", lambda: torch.as_tensor(torsions.axes), x.device)[which]
    refs = _on_device(torsions, "references", lambda: torch.as_tensor(torsions.references), x.device)[which]
    a, b, c, d = r[rows, axes[:, 0]], r[rows, axes[:, 1]], r[rows, refs[:, 0]], r[rows, refs[:, 1]]
    u = (b - a) / torch.linalg.norm(b - a, dim=1, keepdim=True)
    p, q = c - a, d - b
    p = p - (p * u).sum(1, keepdim=True) * u
    q = q - (q * u).sum(1, keepdim=True) * u
    return torch.atan2((u * torch.cross(p, q, dim=1)).sum(1), (p * q).sum(1))


@dataclass(frozen=True)
class TorsionKernel:
    """Torsion moves as an MCMC kernel: each move turns one group of rotatable bonds per particle.

    The group is drawn uniformly; each of its bonds turns by an angle drawn uniformly from
    (-pi, pi] or, with probability ``reflect``, by the angle that reflects its dihedral (see the
    module docstring); the move is accepted with probability min(1, exp(E(x) - E(x'))). It has
    no step size: ``adapted`` returns it unchanged. Combine it with a gradient kernel through
    :func:`with_torsion_moves` (a :class:`~boltzgen.smc.kernels.Sequence`).

    Attributes:
        torsions: the molecule's :class:`Torsions` (flat coordinates of the particles must be
            (n, 3 torsions.n_atoms), centre-free).
        reflect: probability in [0, 1] that a move reflects its dihedrals instead of turning them
            by uniform angles (needs ``torsions.references`` when > 0).
    """

    torsions: Torsions
    reflect: float = 0.5

    name = "torsion"
    evaluations = 1

    def __post_init__(self):
        object.__setattr__(self, "reflect", check_reflect(self.reflect, self.torsions))

    def adapted(self, info) -> "TorsionKernel":
        """Nothing to adapt: the same kernel."""
        return self

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """One torsion move of every particle; ``project`` is not used (the move removes the centroid itself)."""
        return torsion_step(energy, state, self.torsions, generator, chunk_size, self.reflect)


def with_torsion_moves(kernel, torsions: Torsions, n_moves: int = 1, reflect: float = 0.5) -> Sequence:
    """``kernel`` (MALA or HMC) followed by ``n_moves`` torsion moves, as one compound kernel.

    The gradient kernel's step size is adapted by its own acceptance; the torsion moves report
    theirs as ``"torsion.acceptance"``.
    """
    n_moves = check_count(n_moves, "n_moves")
    if not hasattr(kernel, "move") or not hasattr(kernel, "adapted"):
        raise TypeError(f"kernel must be an MCMC kernel (MALA or HMC), got {type(kernel).__name__}")
    turn = TorsionKernel(torsions, reflect)
    return Sequence((kernel,) + (turn,) * n_moves)


def check_reflect(reflect: float, torsions: Torsions) -> float:
    """``reflect`` as a float, or a ValueError naming it (a probability; > 0 needs references)."""
    reflect = check_probability(reflect, "reflect")
    if reflect > 0 and torsions.references is None:
        raise ValueError("reflect > 0 needs Torsions.references (the atoms c, d of each dihedral); "
                         "use rotatable_torsions(topology) or pass reflect=0")
    return reflect


def torsion_step(energy: EnergyFn, state: ParticleState, torsions: Torsions, generator: torch.Generator | None = None,
                 chunk_size: int | None = None, reflect: float = 0.0) -> Move:
    """One torsion move of every particle (see :class:`TorsionKernel`); exp(-energy) is invariant.

    Args:
        energy: callable on (n, 3 n_atoms) -> (n,) kT.
        state: the particles (n, 3 n_atoms) with energies and gradients under ``energy``.
        torsions: the molecule's :class:`Torsions`.
        reflect: probability that a particle's move reflects its group's dihedrals instead of
            turning them by uniform angles.
    Returns:
        :class:`~boltzgen.smc.Move` whose info holds the torsion moves' "acceptance".
    """
    x = state.x
    if x.ndim != 2 or x.shape[1] != 3 * torsions.n_atoms:
        raise ValueError(f"particles must have shape (n, {3 * torsions.n_atoms}), got {tuple(x.shape)}")
    n, size = x.shape[0], max(len(g) for g in torsions.groups)
    # groups padded to a common size with -1 (no bond), each particle's group in a random order
    table = _on_device(torsions, "groups", lambda: _group_table(torsions.groups, size), x.device)
    bonds = table[torch.randint(len(torsions.groups), (n,), generator=generator, device=x.device)]
    order = torch.argsort(torch.rand(n, size, generator=generator, device=x.device), dim=1)
    bonds = torch.gather(bonds, 1, order)
    if check_reflect(reflect, torsions) > 0:
        reflects = torch.rand(n, generator=generator, device=x.device) < reflect
    y = x
    for slot in range(size):
        which = bonds[:, slot].clamp(min=0)
        angle = (2 * torch.rand(n, generator=generator, dtype=torch.float64, device=x.device) - 1) * math.pi
        if reflect > 0:
            angle = torch.where(reflects, -2 * dihedral(y, torsions, which).to(angle.dtype), angle)
        angle = torch.where(bonds[:, slot] >= 0, angle, torch.zeros_like(angle))
        y = rotate(y, torsions, which, angle)
    movable = state.movable
    proposed = particle_state(energy, torch.where(movable[:, None], y, x), chunk_size)
    accepted = _mh_accept(state.energy - proposed.energy, movable & proposed.movable, generator)
    return Move(_select(accepted, proposed, state), {"acceptance": acceptance_rate(accepted, movable)})


@dataclass(frozen=True)
class DihedralKernel:
    """Torsion moves in internal coordinates: a turn of a rotatable bond is a change of one coordinate.

    Each move draws one group of dihedral coordinates per particle (uniformly) and either shifts
    each of them by an angle drawn uniformly from (-pi, pi] or, with probability ``reflect``,
    negates them (theta -> -theta); accepted with probability min(1, exp(E(z) - E(z'))). Both are
    exact: the shift is a symmetric random walk on the circle, the reflection an involution, each
    with unit Jacobian (a mixture of exact moves chosen independently of the state is exact).

    Attributes:
        groups: tuples of coordinate indices (into flat z) turned together.
        reflect: probability in [0, 1] of a reflection instead of uniform shifts.
    """

    groups: tuple
    reflect: float = 0.5

    name = "torsion"
    evaluations = 1

    def __post_init__(self):
        groups = tuple(tuple(int(i) for i in g) for g in self.groups)
        if not groups or any(not g or len(set(g)) != len(g) or min(g) < 0 for g in groups):
            raise ValueError("groups must be non-empty tuples of distinct coordinate indices")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "reflect", check_probability(self.reflect, "reflect"))

    def adapted(self, info) -> "DihedralKernel":
        """Nothing to adapt: the same kernel."""
        return self

    def move(self, energy: EnergyFn, state: ParticleState, generator: torch.Generator | None = None,
             project: Projection | None = None, chunk_size: int | None = None) -> Move:
        """One move of every particle; exp(-energy) is invariant."""
        z = state.x
        n, size = z.shape[0], max(len(g) for g in self.groups)
        table = _on_device(self, "groups", lambda: _group_table(self.groups, size), z.device)
        chosen = table[torch.randint(len(self.groups), (n,), generator=generator, device=z.device)]  # (n, size)
        shift = (2 * torch.rand(n, size, generator=generator, dtype=z.dtype, device=z.device) - 1) * math.pi
        reflects = torch.rand(n, generator=generator, device=z.device) < self.reflect
        rows = torch.arange(n, device=z.device)[:, None].expand(n, size)
        valid = chosen >= 0
        cols = chosen.clamp(min=0)
        current = z[rows, cols]
        new = torch.where(reflects[:, None], -current, current + shift)
        y = z.clone()
        y[rows[valid], cols[valid]] = new[valid]
        movable = state.movable
        proposed = particle_state(energy, torch.where(movable[:, None], y, z), chunk_size)
        accepted = _mh_accept(state.energy - proposed.energy, movable & proposed.movable, generator)
        return Move(_select(accepted, proposed, state), {"acceptance": acceptance_rate(accepted, movable)})


def rotatable_dihedral_groups(topology, zmatrix) -> tuple:
    """Groups of internal dihedral coordinates that turn the rotatable bonds of ``topology`` (see :func:`rotatable_torsions`).

    Each rotatable bond is turned by the *primary* dihedral of the Z-matrix about it (the first atom
    placed across it; the other atoms placed there are defined relative to it and follow). Groups:
    every bond alone and every pair of bonds that share an atom, as for Cartesian torsion moves.
    Indices count dihedrals only (0 .. N - 4); add the offset of the dihedrals in z.
    Returns () when the molecule has no rotatable bond.
    """
    torsions = rotatable_torsions_or_none(topology)
    if torsions is None:
        return ()
    primary = {}
    for index, (i, j, k, l) in enumerate(zmatrix.dihedral_atoms.tolist()):
        key = frozenset((j, k))
        primary.setdefault(key, index)  # the first atom placed across j-k is the primary one
    which = [primary.get(frozenset(map(int, axis))) for axis in torsions.axes]
    groups = []
    for g in torsions.groups:
        indices = tuple(which[b] for b in g)
        if all(i is not None for i in indices):
            groups.append(indices)
    return tuple(groups)
