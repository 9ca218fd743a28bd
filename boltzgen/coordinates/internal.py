"""Internal coordinates of a molecule: a Z-matrix of bond lengths, bond angles and dihedrals.

A *Z-matrix* (:class:`ZMatrix`, built from the bond graph by :func:`zmatrix`) lists the atoms in
a placement order and, for every atom i after the first, reference atoms placed before it: i is
placed from the bond i-j, the angle i-j-k and the dihedral i-j-k-l. The second atom has only a
bond (to the first), the third a bond and an angle. A molecule of N atoms then has N - 1 bonds
(nm), N - 2 angles (radians, in (0, pi)) and N - 3 dihedrals (radians, signed, IUPAC convention),
3N - 6 numbers in all: the six rigid-body degrees of freedom are gone.

Maps (batched, differentiable, device and dtype of the input):

* :func:`internal_from_positions`: positions (n, N, 3) nm -> bonds (n, N-1), angles (n, N-2),
  dihedrals (n, N-3) in (-pi, pi];
* :func:`positions_from_internal`: the inverse up to a rigid motion, in the *canonical frame*: the
  first atom of the order at the origin, the second on the +x axis, the third in the xy-plane with
  y > 0. Atoms are placed by NeRF (natural extension reference frame), one *generation* at a
  time: every atom whose three references are already placed is placed at once, so the
  sequential depth is the depth of the reference tree (about the longest chain), not N.

Signed dihedrals carry chirality: a mirror image has the same bonds and angles and negated
dihedrals, so a round trip x -> internal -> x is x up to a *proper* rigid motion, never folded
onto the other enantiomer.

Jacobian. Write x = R X(q) + c: c (the first atom) a translation, R a rotation, X(q) the canonical
frame placement of q = (bonds, angles, dihedrals). Each atom i >= 3 is placed in spherical
coordinates about its j (radius r_i, polar angle theta_i from the j->k axis, azimuth phi_i), so
d^3 x_i = r_i^2 sin(theta_i) dr dtheta dphi given the atoms before it. The second atom is
c + r_1 n with n on the unit sphere, the third is at r_2, theta_2 about its j with an azimuth
about n; (n, that azimuth) is a rotation, and with the first atom's d^3 c

    d^{3N} x = d^3 c  dR  prod_{bonds} r^2  prod_{angles} sin(theta)  dq,

dR the Haar measure of SO(3) normalised as d^3 omega at the identity for a rotation vector omega
(total volume 8 pi^2). So log|det J| = sum 2 ln r + sum ln sin(theta) over all N - 1 bonds and
N - 2 angles of the Z-matrix (the first bond contributes 2 ln r_1, the first angle
ln sin theta_2): :func:`log_det_jacobian`; it does not depend on the dihedrals.

Normaliser. boltzgen samples Cartesian positions on the centroid-free subspace (dimension 3N - 3,
the Lebesgue measure of its orthonormal embedding in R^{3N}: what
:class:`boltzgen.coordinates.cartesian.MolecularSpace` uses). Splitting R^{3N} orthogonally into
that subspace and the centroid direction gives d^{3N} x = N^{3/2} d^3 centroid dV, and the
centroid moves with c, so integrating out translations and rotations (8 pi^2)

    Z_cart = integral exp(-u) dV = 8 pi^2 N^{-3/2} integral exp(-u(x(q))) |det J(q)| dq,

q over bonds > 0, angles in (0, pi), dihedrals over one period. ``log_rigid_body_factor(N)`` is
ln(8 pi^2 N^{-3/2}); ``tests/test_internal_coordinates.py`` checks it against a Cartesian
importance-sampling estimate.

The space. :class:`InternalSpace` is the coordinate space that models and samplers consume:
flat vectors z (n, 3N - 6) = (standardised bonds, standardised angles, dihedrals in radians),
with the per-sample log|det| of z -> centroid-free positions (standardisation and the constant
above included), so log Z in z is the Cartesian centroid-free log Z.

Rings. The Z-matrix follows a spanning tree of the bond graph: a ring-closure bond is not a
coordinate, its length and angles are implied by the other coordinates (exactly, for any
positions given to :func:`internal_from_positions`; a generated z is not constrained to close a
ring at the force field's bond length, which the energy then penalises).

Linear angles (theta = 0 or pi, e.g. in CO2 or an alkyne) make the dihedrals that use them
undefined; such molecules are not supported.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from .._checks import as_tensor, check_flat, check_positions
from . import mdtraj_topology

__all__ = [
    "ZMatrix", "zmatrix", "internal_from_positions", "positions_from_internal", "log_det_jacobian",
    "log_rigid_body_factor", "InternalSpace",
]


# ---- the Z-matrix -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZMatrix:
    """An atom placement order and the reference atoms that place each atom.

    Attributes:
        order: the atoms in placement order, a permutation of 0..n_atoms-1.
        references: one row (j, k, l) per placement position p, for atom i = order[p]: i is
            placed from the bond i-j, the angle i-j-k and the dihedral i-j-k-l; j, k and l are
            placed before i and the four atoms are distinct. Unused entries are -1: all three
            for p = 0, k and l for p = 1 (where j is order[0]), l for p = 2.

    Coordinates follow the order: bond p - 1, angle p - 2 and dihedral p - 3 belong to the atom
    at position p (:attr:`bond_atoms`, :attr:`angle_atoms`, :attr:`dihedral_atoms`).
    Equality compares ``order`` and ``references``; both are plain tuples (JSON-able).
    """

    order: tuple[int, ...]
    references: tuple[tuple[int, int, int], ...]
    _bonds: np.ndarray = field(init=False, repr=False, compare=False)
    _angles: np.ndarray = field(init=False, repr=False, compare=False)
    _dihedrals: np.ndarray = field(init=False, repr=False, compare=False)
    _generations: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        order = np.asarray(self.order)
        if order.ndim != 1 or (order.size and order.dtype.kind not in "iu"):
            raise TypeError(f"order must be a sequence of integer atom indices, got {self.order!r}")
        order = order.astype(np.int64)
        n = int(order.size)
        if n < 3:
            raise ValueError(f"order must hold at least 3 atoms (a Z-matrix needs a bond, an angle and "
                             f"a frame), got {n}")
        if not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError(f"order must be a permutation of the atom indices 0..{n - 1}")
        refs = np.asarray(self.references)
        if refs.shape != (n, 3) or refs.dtype.kind not in "iu":
            raise ValueError(f"references must be {n} rows of three integer atom indices (j, k, l), "
                             f"got shape {refs.shape}")
        refs = refs.astype(np.int64)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        for p in range(n):
            used, unused = refs[p, :min(p, 3)], refs[p, min(p, 3):]
            if (unused != -1).any() or (used < 0).any() or (used >= n).any():
                raise ValueError(f"references[{p}] must hold {min(p, 3)} atom indices in [0, {n}) followed "
                                 f"by -1, got {tuple(refs[p])}")
            if (position[used] >= p).any() or len(set(used.tolist()) | {int(order[p])}) != len(used) + 1:
                raise ValueError(f"references[{p}] = {tuple(refs[p])} must be distinct atoms placed before "
                                 f"atom {int(order[p])} (position {p} of order)")
        object.__setattr__(self, "order", tuple(int(a) for a in order))
        object.__setattr__(self, "references", tuple(tuple(int(r) for r in row) for row in refs))
        object.__setattr__(self, "_bonds", np.stack([order[1:], refs[1:, 0]], axis=1))
        object.__setattr__(self, "_angles", np.stack([order[2:], refs[2:, 0], refs[2:, 1]], axis=1))
        object.__setattr__(self, "_dihedrals", np.concatenate([order[3:, None], refs[3:]], axis=1).reshape(-1, 4))
        # Generations: an atom can be placed as soon as its references are.
        generation = np.zeros(n, dtype=np.int64)
        generation[order[:3]] = (0, 1, 2)
        for p in range(3, n):
            generation[order[p]] = 1 + generation[refs[p]].max()
        pos_generation = generation[order]
        batches = []
        for g in range(3, int(pos_generation.max()) + 1):
            p = np.nonzero(pos_generation == g)[0]
            batches.append(np.stack([p, order[p], refs[p, 0], refs[p, 1], refs[p, 2]]).astype(np.int64))
        object.__setattr__(self, "_generations", tuple(batches))

    @property
    def n_atoms(self) -> int:
        """Number of atoms N."""
        return len(self.order)

    @property
    def bond_atoms(self) -> np.ndarray:
        """int64 (N - 1, 2): atoms (i, j) of each bond coordinate."""
        return self._bonds.copy()

    @property
    def angle_atoms(self) -> np.ndarray:
        """int64 (N - 2, 3): atoms (i, j, k) of each angle coordinate, the angle at j."""
        return self._angles.copy()

    @property
    def dihedral_atoms(self) -> np.ndarray:
        """int64 (N - 3, 4): atoms (i, j, k, l) of each dihedral coordinate (about the bond j-k)."""
        return self._dihedrals.copy()

    @property
    def depth(self) -> int:
        """Sequential steps of :func:`positions_from_internal`: 3 (the frame) + the generations."""
        return 3 + len(self._generations)

    def dihedral_index(self, a: int, b: int, c: int, d: int) -> int:
        """Index (into the N - 3 dihedrals) of the dihedral a-b-c-d, given in either direction.

        A dihedral and its reverse d-c-b-a are the same angle (same sign), so both match.

        Raises:
            ValueError: if neither direction is a dihedral coordinate of this Z-matrix.
        """
        row = np.array([a, b, c, d], dtype=np.int64)
        hits = np.nonzero((self._dihedrals == row).all(1) | (self._dihedrals == row[::-1]).all(1))[0]
        if hits.size == 0:
            raise ValueError(f"the dihedral {a}-{b}-{c}-{d} is not a coordinate of this Z-matrix "
                             f"(see dihedral_atoms for the {len(self._dihedrals)} that are)")
        return int(hits[0])


def _neighbours(top) -> list[set[int]]:
    neighbours: list[set[int]] = [set() for _ in range(top.n_atoms)]
    for bond in top.bonds:
        i, j = bond[0].index, bond[1].index
        if i != j:
            neighbours[i].add(j)
            neighbours[j].add(i)
    return neighbours


def _distances(neighbours: list[set[int]], start: int, allowed: np.ndarray | None) -> dict[int, int]:
    """Breadth-first graph distances from ``start`` over atoms where ``allowed`` (None: all)."""
    dist, frontier = {start: 0}, [start]
    while frontier:
        nxt = []
        for a in frontier:
            for b in sorted(neighbours[a]):
                if b not in dist and (allowed is None or allowed[b]):
                    dist[b] = dist[a] + 1
                    nxt.append(b)
        frontier = nxt
    return dist


def _farthest(dist: dict[int, int]) -> int:
    """The atom of largest distance, the lowest index among ties."""
    return min(dist, key=lambda a: (-dist[a], a))


def zmatrix(topology, ends: tuple[int, int] | None = None) -> ZMatrix:
    """A Z-matrix of the molecule from its bond graph: heavy-atom backbone first, then hydrogens.

    The construction is deterministic (a function of the bond graph, elements and atom indices):

    1. Heavy atoms (not hydrogen; all atoms if there is none). The main chain runs from ``root``
       to ``far``: by default the two ends of a longest shortest heavy-atom path (two
       breadth-first sweeps, exact for acyclic graphs; ties to the lower index), ``root`` the one
       with the lower index.
    2. A depth-first spanning tree of the heavy atoms from ``root``, heading for ``far`` first.
       Its preorder is the heavy-atom order, with the children of each atom taken main chain
       first (the tree path root -> far), then the taller subtrees, then by index. For a peptide
       the main chain is the backbone, so phi = C(i-1)-N-CA-C and psi = N-CA-C-N(i+1) are
       themselves dihedral coordinates (:meth:`ZMatrix.dihedral_index`).
    3. The remaining atoms (hydrogens) breadth-first from the placed ones: each after the atoms
       placed before it, grouped by the earliest-placed neighbour, their tree parent.

    References of atom i: j its tree parent, k the parent of j (for j = root: the second atom),
    and l the first atom placed with the same (j, k) if there is one (an improper-like dihedral,
    near +-120 degrees at a tetrahedral centre, so a rotation about j-k is carried by the first
    substituent's dihedral alone), else the parent of k (a proper torsion along the tree), else
    the earliest-placed neighbour of k, then of j.

    Rings: only the spanning tree's bonds are coordinates; a ring-closure bond is implied by the
    others (see the module docstring).

    Args:
        topology: an openmm.app.Topology or mdtraj.Topology with bonds (or an object with a
            ``.topology``, e.g. a target).
        ends: optional heavy atoms (root, far) to use as the main chain's ends instead. For a
            protein whose longest path ends in side chains, (N of the first residue, C of the
            last) makes every backbone phi and psi a coordinate.

    Raises:
        ValueError: fewer than 3 atoms, a bond graph that is not connected, or bad ``ends``.
    """
    top = mdtraj_topology(topology)
    n = top.n_atoms
    if n < 3:
        raise ValueError(f"topology must have at least 3 atoms for internal coordinates (a bond, an angle and "
                         f"a frame), got {n}")
    neighbours = _neighbours(top)
    reached = _distances(neighbours, 0, None)
    if len(reached) < n:
        missing = sorted(set(range(n)) - set(reached))
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise ValueError(f"topology's bond graph is not connected: atoms {shown} have no path of bonds to atom 0 "
                         f"(a Z-matrix describes one molecule; check that the topology has bonds)")
    heavy = np.array([a.element is None or a.element.atomic_number != 1 for a in top.atoms])
    if not heavy.any():
        heavy[:] = True
    if ends is None:
        u = _farthest(_distances(neighbours, int(np.argmax(heavy)), heavy))
        v = _farthest(_distances(neighbours, u, heavy))
        root, far = min(u, v), max(u, v)
    else:
        ok = isinstance(ends, (tuple, list)) and len(ends) == 2 and all(
            not isinstance(e, bool) and isinstance(e, numbers.Integral) and 0 <= e < n and heavy[e] for e in ends)
        if not ok or ends[0] == ends[1]:
            raise ValueError(f"ends must be two different heavy (non-hydrogen) atoms (root, far) in [0, {n}), "
                             f"got {ends!r}")
        root, far = int(ends[0]), int(ends[1])
    to_far = _distances(neighbours, far, heavy)
    if root not in to_far:
        raise ValueError(f"ends {ends!r}: no path of heavy-atom bonds joins them")

    # Depth-first spanning tree of root's heavy component, heading for `far` first.
    parent, children = {root: -1}, {root: []}
    preorder = [root]

    def heavy_neighbours(a):
        return iter(sorted((b for b in neighbours[a] if heavy[b]), key=lambda b: (to_far[b], b)))

    stack = [(root, heavy_neighbours(root))]
    while stack:
        a, it = stack[-1]
        for b in it:
            if b not in parent:
                parent[b], children[b] = a, []
                children[a].append(b)
                preorder.append(b)
                stack.append((b, heavy_neighbours(b)))
                break
        else:
            stack.pop()
    height = {}
    for a in reversed(preorder):
        height[a] = 1 + max((height[c] for c in children[a]), default=-1)
    main, a = set(), far
    while a != -1:
        main.add(a)
        a = parent[a]
    order, stack = [], [root]
    while stack:
        a = stack.pop()
        order.append(a)
        kids = sorted(children[a], key=lambda c: (c not in main, -height[c], to_far[c], c))
        stack.extend(reversed(kids))
    # The rest (hydrogens, and any heavy atom reached only through one), breadth-first.
    placed, p = set(order), 0
    while p < len(order):
        for b in sorted(neighbours[order[p]]):
            if b not in placed:
                placed.add(b)
                parent[b] = order[p]
                order.append(b)
        p += 1

    position = {a: q for q, a in enumerate(order)}
    references, first_with = [], {}
    for p, i in enumerate(order):
        if p == 0:
            references.append((-1, -1, -1))
            continue
        j = parent[i]
        if p == 1:
            references.append((j, -1, -1))
            continue
        k = parent[j] if parent[j] != -1 else order[1]
        if p == 2:
            references.append((j, k, -1))
            first_with.setdefault((j, k), i)
            continue
        l = first_with.get((j, k))
        if l is None and parent[k] not in (-1, j):
            l = parent[k]
        for pivot, exclude in ((k, (i, j)), (j, (i, k)), (None, (i, j, k))):
            if l is not None:
                break
            pool = neighbours[pivot] if pivot is not None else order[:p]
            earlier = [b for b in pool if position[b] < p and b not in exclude]
            l = min(earlier, key=position.get) if earlier else None
        first_with.setdefault((j, k), i)
        references.append((j, k, l))
    return ZMatrix(tuple(order), tuple(references))


_zmatrix_of = zmatrix  # InternalSpace.fit's argument is called zmatrix


def _check_zmatrix(zmat) -> ZMatrix:
    if not isinstance(zmat, ZMatrix):
        raise TypeError(f"zmat must be a ZMatrix (from boltzgen.coordinates.internal.zmatrix), got {type(zmat).__name__}")
    return zmat


# ---- geometry -----------------------------------------------------------------------------------
def _angle(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Angle a-b-c at b, in [0, pi] (atan2 form: accurate and differentiable near 0 and pi)."""
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(u, v), dim=-1), (u * v).sum(-1))


def _dihedral(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Signed dihedral a-b-c-d about b-c (IUPAC: positive clockwise looking from b to c), in (-pi, pi]."""
    b1 = c - b
    n1 = torch.linalg.cross(b - a, b1)
    n2 = torch.linalg.cross(b1, d - c)
    y = (torch.linalg.cross(n1, n2) * b1).sum(-1) / torch.linalg.vector_norm(b1, dim=-1)
    phi = torch.atan2(y, (n1 * n2).sum(-1))
    return torch.where(phi <= -math.pi, phi + 2 * math.pi, phi)


def internal_from_positions(x, zmat: ZMatrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bond lengths, bond angles and dihedrals of the Z-matrix from Cartesian positions.

    Args:
        x: positions (n, N, 3) in nm.
        zmat: the molecule's :class:`ZMatrix` (N atoms).

    Returns:
        bonds (n, N - 1) in nm, angles (n, N - 2) in radians in [0, pi], dihedrals (n, N - 3) in
        radians in (-pi, pi] (IUPAC sign), ordered as :attr:`ZMatrix.bond_atoms` etc.; dtype and
        device of ``x``; differentiable (except at degenerate geometry: coincident atoms, linear
        angles).
    """
    zmat = _check_zmatrix(zmat)
    pos = check_positions(x, "x", zmat.n_atoms)
    bi, ai, di = (torch.as_tensor(t, device=pos.device) for t in (zmat._bonds, zmat._angles, zmat._dihedrals))
    bonds = torch.linalg.vector_norm(pos[:, bi[:, 0]] - pos[:, bi[:, 1]], dim=-1)
    angles = _angle(pos[:, ai[:, 0]], pos[:, ai[:, 1]], pos[:, ai[:, 2]])
    dihedrals = _dihedral(*(pos[:, di[:, c]] for c in range(4)))
    return bonds, angles, dihedrals


def positions_from_internal(bonds, angles, dihedrals, zmat: ZMatrix) -> torch.Tensor:
    """Cartesian positions in the canonical frame from internal coordinates (NeRF, by generations).

    Canonical frame: the first atom of ``zmat.order`` at the origin, the second at (r_1, 0, 0)
    on +x, the third in the xy-plane with y > 0; every later atom from its bond, angle and
    dihedral. Any real dihedral is accepted (it is periodic); bonds should be > 0 and angles in
    (0, pi) for the map to be the inverse of :func:`internal_from_positions`.

    Args:
        bonds: (n, N - 1) in nm.
        angles: (n, N - 2) in radians.
        dihedrals: (n, N - 3) in radians.
        zmat: the molecule's :class:`ZMatrix`.

    Returns:
        (n, N, 3) positions in nm (atom indices as in the topology), in the promoted dtype of the
        three inputs on the device of ``bonds``; differentiable once (a hand-written backward
        pass, :class:`_NeRF`, marked once_differentiable: no second derivatives).
    """
    zmat = _check_zmatrix(zmat)
    n_atoms = zmat.n_atoms
    b = check_flat(bonds, "bonds", n_atoms - 1)
    a = check_flat(angles, "angles", n_atoms - 2)
    d = check_flat(dihedrals, "dihedrals", n_atoms - 3)
    if not b.shape[0] == a.shape[0] == d.shape[0]:
        raise ValueError(f"bonds, angles and dihedrals must have the same number of rows, got "
                         f"{b.shape[0]}, {a.shape[0]} and {d.shape[0]}")
    dtype = torch.promote_types(torch.promote_types(b.dtype, a.dtype), d.dtype)
    q = torch.cat([t.to(device=b.device, dtype=dtype) for t in (b, a, d)], dim=1)
    return _NeRF.apply(q, None, None, _walk(zmat, b.device), False)


# ---- NeRF: internal coordinates -> positions ----------------------------------------------------
# positions_from_internal is evaluated with its gradient for whole batches thousands of times per
# sampling run, on small molecules (~20 atoms, a handful per generation). Eager torch then pays
# per operation, not per number, so the map is one autograd Function with a hand-written
# backward: no autograd graph of ~400 small nodes, no index_put backward per generation.
#
# Layout: positions live in a (3, N, n) buffer (x/y/z, atom, configuration), so every atom's
# component is a contiguous row of n numbers, gathering reference atoms is a copy of rows, and
# each component of a generation's (3, k, n) tensors is one contiguous block (per-atom scalars
# are (k, n)): elementwise ops then run over long rows, not strided triples.
#
# An atom i with references (j, k, l) sits at
#     x_i = x_j + D0 b + D1 m + D2 nrm,   D = (-r cos(theta), r sin(theta) cos(phi), r sin(theta) sin(phi)),
# in the orthonormal right-handed frame of its references
#     b = (x_j - x_k) / |x_j - x_k|,   m = v_perp / |v_perp|,   nrm = b x m,
# where v = x_l - x_k and v_perp = v - (v.b) b is its part perpendicular to b. This is the
# textbook NeRF frame (nrm = unit((x_k - x_l) x b), m = nrm x b) with one cross product and one
# normalisation fewer.

@dataclass(frozen=True)
class _Walk:
    """Index tensors of the NeRF walk of one Z-matrix on one device (:func:`_walk`).

    Internal coordinates travel as one flat q (n, 3N - 6) = [bonds, angles, dihedrals] (the
    layout of :class:`InternalSpace`'s z); the atom at placement position p uses columns
    p - 1 (bond), N - 1 + p - 2 (angle) and 2N - 3 + p - 3 (dihedral).

    Attributes:
        n_atoms: N.
        second, third: the second and third atoms of the order (the first sits at the origin).
        third_on_second: whether the third atom is bonded to the second (else to the first).
        generations: one (start, stop, atoms, references) per generation after the frame:
            rows [start, stop) of the local displacements, the atoms placed (k,) and their
            reference atoms (3k,) as [j..., l..., k...], int64.
        columns: (3 (N - 3),) the columns of q of the local-displacement rows: their bonds,
            then their angles, then their dihedrals (rows in generation order).
    """

    n_atoms: int
    second: int
    third: int
    third_on_second: bool
    generations: tuple[tuple[int, int, torch.Tensor, torch.Tensor], ...]
    columns: torch.Tensor


@functools.lru_cache(maxsize=64)
def _walk(zmat: ZMatrix, device: torch.device) -> _Walk:
    """The :class:`_Walk` of ``zmat`` on ``device`` (cached: built once per Z-matrix and device)."""
    def index(values) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(values, dtype=np.int64), device=device)

    generations, start = [], 0
    for p, atoms, j, k, l in zmat._generations:
        generations.append((start, start + len(p), index(atoms), index(np.concatenate([j, l, k]))))
        start += len(p)
    n = zmat.n_atoms
    p = np.concatenate([g[0] for g in zmat._generations] or [np.zeros(0, np.int64)])
    columns = np.concatenate([p - 1, n - 1 + p - 2, 2 * n - 3 + p - 3])
    return _Walk(n, zmat.order[1], zmat.order[2], zmat.references[2][0] == zmat.order[1], tuple(generations),
                 index(columns))


def _cross_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a x b for (3, ...) tensors (components first), written component by component.

    Cheaper than torch.linalg.cross for these shapes (each component a block of long rows).
    """
    for c, (c1, c2) in enumerate(((1, 2), (2, 0), (0, 1))):
        torch.mul(a[c1], b[c2], out=out[c]).addcmul_(a[c2], b[c1], value=-1)


def _place_generation(x: torch.Tensor, local: torch.Tensor, atoms: torch.Tensor, references: torch.Tensor):
    """Place one generation of atoms into ``x`` (in place) and return what the backward pass needs.

    Args:
        x: (3, N, n) positions in nm; the reference atoms are already placed.
        local: (3, k, n) local displacements D (nm) of the k atoms, in their frames (b, m, nrm).
        atoms: (k,) the atoms to place; references: (3k,) their j's, l's and k's.

    Returns:
        (frame, inv_jk, inv_perp, v_dot_b): the frames (3, 3, k, n) = (b, m, nrm),
        1/|x_j - x_k| and 1/|v_perp| (k, n) in 1/nm, and v.b (k, n) in nm.
    """
    k, n = atoms.shape[0], x.shape[2]
    ref = x.index_select(1, references)
    xj, xk = ref[:, :k], ref[:, 2 * k:]
    u, v = ref[:, :2 * k].view(3, 2, k, n).sub(xk[:, None]).unbind(1)  # x_j - x_k, x_l - x_k: one op
    frame = x.new_empty((3, 3, k, n))
    b, m, nrm = frame
    inv_jk = (u * u).sum(0).rsqrt_()
    torch.mul(u, inv_jk, out=b)
    v_dot_b = (v * b).sum(0)
    v_perp = torch.addcmul(v, b, v_dot_b, value=-1)
    inv_perp = (v_perp * v_perp).sum(0).rsqrt_()
    torch.mul(v_perp, inv_perp, out=m)
    _cross_into(nrm, b, m)
    d0, d1, d2 = local
    x.index_copy_(1, atoms, torch.addcmul(xj, b, d0).addcmul_(m, d1).addcmul_(nrm, d2))
    return frame, inv_jk, inv_perp, v_dot_b


def _place_generation_backward(grad_x: torch.Tensor, grad_local: torch.Tensor, local: torch.Tensor, saved,
                               atoms: torch.Tensor, references: torch.Tensor) -> None:
    """Backward of :func:`_place_generation`, in place: the adjoints of the placed atoms (complete,
    since later generations were processed first) go to ``grad_local`` and to their references.

    Args:
        grad_x: (3, N, n) adjoint of the positions; the references' columns are accumulated into.
        grad_local: (3, k, n) output, the adjoint of ``local``.
        local, atoms, references: as given to :func:`_place_generation`; saved: what it returned.

    With g = dL/dx_i written in the frame as g = gb b + gm m + gn nrm, dL/dD = (gb, gm, gn), and
    (from differentiating x_i = x_j + D0 b + D1 m + D2 b x m, the normalisations and v_perp, and
    using that the frame is orthonormal) the adjoints of u = x_j - x_k and v = x_l - x_k are

        w = (D1 gn - D2 gm) / |v_perp|,
        dL/du = [(D0 gm - D1 gb) m + (D0 gn - D2 gb - (v.b) w) nrm] / |x_j - x_k|,
        dL/dv = w nrm,

    so dL/dx_j += g + dL/du, dL/dx_l += dL/dv, dL/dx_k += -(dL/du + dL/dv).
    """
    frame, inv_jk, inv_perp, v_dot_b = saved
    b, m, nrm = frame
    g = grad_x.index_select(1, atoms)
    gb, gm, gn = torch.sum(frame * g, 1, out=grad_local)
    d0, d1, d2 = local
    w = (d1 * gn).addcmul_(d2, gm, value=-1).mul_(inv_perp)
    alpha = (d0 * gm).addcmul_(d1, gb, value=-1).mul_(inv_jk)
    beta = (d0 * gn).addcmul_(d2, gb, value=-1).addcmul_(v_dot_b, w, value=-1).mul_(inv_jk)
    grad_u = (m * alpha).addcmul_(nrm, beta)
    grad_v = nrm * w
    grad_k = torch.add(grad_u, grad_v).neg_()
    grad_j = g.add_(grad_u)
    grad_x.index_add_(1, references, torch.cat([grad_j, grad_v, grad_k], 1))


class _NeRF(torch.autograd.Function):
    """Internal coordinates -> positions (n, N, 3) nm, optionally centroid-free; first derivatives.

    Takes z (n, 3N - 6) and optionally ``shift`` and ``scale`` (3N - 6,): the internal
    coordinates are q = shift + scale * z (:class:`InternalSpace`'s standardisation; both None:
    q = z). See :func:`positions_from_internal`. The backward pass is hand-written (module
    comments above :class:`_Walk`); it is not itself differentiable (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, z, shift, scale, walk: _Walk, centred: bool):
        q = z if scale is None else shift + scale * z
        n, n_atoms = q.shape[0], walk.n_atoms
        # Local displacements of the atoms after the frame, rows in generation order, (3, N - 3, n).
        rows = q.t().index_select(0, walk.columns).view(3, n_atoms - 3, n)
        r, angles = rows[0], rows[1:]  # angles: theta and phi
        cos_a, sin_a = torch.cos(angles), torch.sin(angles)
        (cos_t, cos_p), (sin_t, sin_p) = cos_a, sin_a
        local = q.new_empty((3, n_atoms - 3, n))
        torch.mul(r, cos_t, out=local[0]).neg_()
        r_sin_t = r * sin_t
        torch.mul(r_sin_t, cos_p, out=local[1])
        torch.mul(r_sin_t, sin_p, out=local[2])
        # The canonical frame: first atom at 0, second on +x, third in the xy-plane.
        x = q.new_zeros((3, n_atoms, n))
        r1, r2, theta2 = q[:, 0], q[:, 1], q[:, n_atoms - 1]
        cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
        x[0, walk.second] = r1
        # The angle at j opens from the direction to the other frame atom: -x from the second, +x from the first.
        sign = -1.0 if walk.third_on_second else 1.0
        torch.mul(r2, cos2, out=x[0, walk.third]).mul_(sign)
        if walk.third_on_second:
            x[0, walk.third] += r1
        torch.mul(r2, sin2, out=x[1, walk.third])
        saved = [t for start, stop, atoms, refs in walk.generations
                 for t in _place_generation(x, local[:, start:stop], atoms, refs)]
        if centred:
            x -= x.mean(1, keepdim=True)
        ctx.walk, ctx.centred = walk, centred
        ctx.save_for_backward(scale, r, cos_a, sin_a, local, r2, cos2, sin2, *saved)
        return x.permute(2, 1, 0).contiguous()  # (n, N, 3), as before

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        walk = ctx.walk
        scale, r, (cos_t, cos_p), (sin_t, sin_p), local, r2, cos2, sin2, *saved = ctx.saved_tensors
        per_generation = [saved[i:i + 4] for i in range(0, len(saved), 4)]  # _place_generation's 4 tensors
        n, n_atoms = grad.shape[:2]
        grad_x = grad.new_empty((3, n_atoms, n)).copy_(grad.permute(2, 1, 0))  # a copy: updated in place
        if ctx.centred:
            grad_x -= grad_x.mean(1, keepdim=True)
        grad_local = torch.empty_like(local)
        for (start, stop, atoms, refs), tensors in zip(reversed(walk.generations), reversed(per_generation)):
            _place_generation_backward(grad_x, grad_local[:, start:stop], local[:, start:stop], tensors, atoms, refs)
        # Local displacements -> (r, theta, phi) of the rows, then into the columns of q.
        g0, g1, g2 = grad_local
        grad_rows = torch.empty_like(local)
        radial = (g1 * cos_p).addcmul_(g2, sin_p)  # the adjoint along (cos(phi), sin(phi))
        torch.mul(radial, sin_t, out=grad_rows[0]).addcmul_(g0, cos_t, value=-1)
        torch.mul(radial, cos_t, out=grad_rows[1]).addcmul_(g0, sin_t).mul_(r)
        torch.mul(g2, local[1], out=grad_rows[2]).addcmul_(g1, local[2], value=-1)
        grad_q = grad.new_zeros((3 * n_atoms - 6, n))
        grad_q.index_copy_(0, walk.columns, grad_rows.view(3 * (n_atoms - 3), n))
        # The frame: x_second = (r1, 0, 0), x_third = (x_j + sign r2 cos(theta2), r2 sin(theta2), 0).
        sign = -1.0 if walk.third_on_second else 1.0
        gx, gy = grad_x[0, walk.third], grad_x[1, walk.third]
        torch.add(grad_x[0, walk.second], gx if walk.third_on_second else 0, out=grad_q[0])
        torch.mul(gx, cos2, out=grad_q[1]).mul_(sign).addcmul_(gy, sin2)
        torch.mul(gy, cos2, out=grad_q[n_atoms - 1]).addcmul_(gx, sin2, value=-sign).mul_(r2)
        grad_z = grad.new_empty((n, 3 * n_atoms - 6))  # (n, 3N - 6) in the usual layout, not a transposed view
        if scale is None:
            grad_z.copy_(grad_q.t())
        else:
            torch.mul(grad_q.t(), scale, out=grad_z)
        return grad_z, None, None, None, None


def log_det_jacobian(bonds, angles) -> torch.Tensor:
    """ln |det J| = sum 2 ln r + sum ln sin(theta) of the map (c, R, q) -> x (module docstring).

    Over all N - 1 bonds and N - 2 angles of the Z-matrix (dihedrals do not enter); the measure
    of rotations is the Haar measure with volume 8 pi^2 (d^3 omega at the identity).

    Args:
        bonds: (n, N - 1) in nm (> 0).
        angles: (n, N - 2) in radians (in (0, pi); elsewhere the log is not finite).

    Returns:
        (n,) in the dtype of the inputs; ln of nm^(2 (N - 1)).
    """
    b = check_flat(bonds, "bonds")
    a = check_flat(angles, "angles", b.shape[1] - 1)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"bonds and angles must have the same number of rows, got {b.shape[0]} and {a.shape[0]}")
    return 2 * torch.log(b).sum(1) + torch.log(torch.sin(a)).sum(1)


def log_rigid_body_factor(n_atoms: int) -> float:
    """ln(8 pi^2 N^(-3/2)): ln Z_cart (centroid-free) = this + ln integral exp(-u) |det J| dq."""
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, numbers.Integral) or n_atoms < 3:
        raise ValueError(f"n_atoms must be an integer >= 3, got {n_atoms!r}")
    return math.log(8 * math.pi**2) - 1.5 * math.log(n_atoms)


def _wrap_angle(phi: torch.Tensor) -> torch.Tensor:
    """Angles wrapped to [-pi, pi)."""
    w = torch.remainder(phi + math.pi, 2 * math.pi) - math.pi
    return torch.where(w >= math.pi, w - 2 * math.pi, w)


class _LogVolume(torch.autograd.Function):
    """:meth:`InternalSpace.log_det_jacobian` from z, with a hand-written backward (first derivatives).

    forward(z (n, 3N - 6), shift, scale (3N - 6,), n_bonds, constant): the bonds and angles are
    q = shift + scale * z over the first m = 2N - 3 = 2 n_bonds - 1 columns; returns (n,)
    sum 2 ln r + sum ln sin(theta) + constant, -inf for rows off the domain (a bond <= 0, an angle
    outside (0, pi)). Its gradient is zero on those rows (as with torch.where) and for the
    dihedral columns; elsewhere d/dz = scale * (2 / r, cos(theta) / sin(theta)).

    One autograd node instead of ~25 small ones, and q transposed to (m, n): sin and log are then
    vectorised along rows of n numbers (on rows of ~20 they run mostly scalar, twice as slow).
    """

    @staticmethod
    def forward(ctx, z, shift, scale, n_bonds: int, constant: float):
        m = 2 * n_bonds - 1
        q = z.new_empty((m, z.shape[0]))
        torch.mul(z[:, :m].t(), scale[:m, None], out=q).add_(shift[:m, None])
        bonds, angles = q[:n_bonds], q[n_bonds:]
        inside = (bonds.amin(0) > 0) & (angles.amin(0) > 0) & (angles.amax(0) < math.pi)
        sin_a = torch.sin(angles)
        value = torch.log(bonds).sum(0).mul_(2).add_(torch.log(sin_a).sum(0))
        ctx.save_for_backward(scale, bonds, angles, sin_a, inside)
        ctx.dim = z.shape[1]
        return value.add_(constant).masked_fill_(~inside, -math.inf)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        scale, bonds, angles, sin_a, inside = ctx.saved_tensors
        n_bonds = bonds.shape[0]
        m = 2 * n_bonds - 1
        grad = grad.masked_fill(~inside, 0)  # off the domain the value is a constant, -inf
        grad_q = sin_a.new_empty((m, grad.shape[0]))
        torch.reciprocal(bonds, out=grad_q[:n_bonds]).mul_(2 * grad)
        torch.cos(angles, out=grad_q[n_bonds:]).div_(sin_a).mul_(grad)
        if not inside.all():  # there 2 / r or cot may be infinite, and 0 * inf = nan (a branch: the fill is slow)
            grad_q.masked_fill_(~inside, 0)
        grad_z = grad.new_zeros((grad.shape[0], ctx.dim))
        torch.mul(grad_q.t(), scale[:m], out=grad_z[:, :m])
        return grad_z, None, None, None, None


# ---- the coordinate space -----------------------------------------------------------------------
def _stat(values, name: str, length: int, positive: bool) -> tuple[float, ...]:
    try:
        t = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of {length} numbers, got {type(values).__name__}") from exc
    if len(t) != length:
        raise ValueError(f"{name} must have {length} entries (one per coordinate), got {len(t)}")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in t):
        raise ValueError(f"{name} must be finite{' and positive' if positive else ''}")
    return t


@dataclass(frozen=True)
class InternalSpace:
    """Flat internal coordinates of a molecule: the coordinate space for models and samplers.

    A flat vector z (n, dim), dim = 3N - 6, is

        [(bonds - bond_mean) / bond_scale, (angles - angle_mean) / angle_scale, dihedrals],

    bonds in nm, angles and dihedrals in radians, dihedrals wrapped to [-pi, pi) (the periodic
    coordinates, :attr:`periodic`). The map z -> x is onto the centroid-free positions (modulo
    rotations) and :meth:`log_det_jacobian` is its per-sample log-volume factor

        ln|det J|(z) = sum 2 ln r + sum ln sin(theta) + sum ln bond_scale + sum ln angle_scale
                       + ln(8 pi^2 N^(-3/2)),

    so that ``flat_energy(u)(z) = u(x(z)) - log_det_jacobian(z)`` has
    integral exp(-flat_energy) dz = Z_cart, the Cartesian normaliser over centroid-free positions
    that :class:`~boltzgen.coordinates.cartesian.MolecularSpace` uses (units nm^(3N - 3)).
    Outside the domain (a bond <= 0 or an angle outside (0, pi)) the density is zero:
    ``log_det_jacobian`` is -inf and ``flat_energy`` +inf there.

    Attributes:
        zmatrix: the molecule's :class:`ZMatrix`.
        bond_mean, bond_scale: N - 1 numbers each, nm (:meth:`fit`: weighted mean and std).
        angle_mean, angle_scale: N - 2 numbers each, radians.
    """

    zmatrix: ZMatrix
    bond_mean: tuple[float, ...]
    bond_scale: tuple[float, ...]
    angle_mean: tuple[float, ...]
    angle_scale: tuple[float, ...]

    def __post_init__(self):
        if not isinstance(self.zmatrix, ZMatrix):
            raise TypeError(f"zmatrix must be a ZMatrix, got {type(self.zmatrix).__name__}")
        n = self.zmatrix.n_atoms
        object.__setattr__(self, "bond_mean", _stat(self.bond_mean, "bond_mean", n - 1, positive=True))
        object.__setattr__(self, "bond_scale", _stat(self.bond_scale, "bond_scale", n - 1, positive=True))
        object.__setattr__(self, "angle_mean", _stat(self.angle_mean, "angle_mean", n - 2, positive=False))
        object.__setattr__(self, "angle_scale", _stat(self.angle_scale, "angle_scale", n - 2, positive=True))
        if not all(0 < v < math.pi for v in self.angle_mean):
            raise ValueError("angle_mean must lie in (0, pi) radians")
        # Not fields (no effect on ==): (shift, scale) tensors per (dtype, device), made on first use,
        # and the constant part of log_det_jacobian.
        object.__setattr__(self, "_affine_cache", {})
        object.__setattr__(self, "_log_det_constant", sum(map(math.log, self.bond_scale))
                           + sum(map(math.log, self.angle_scale)) + log_rigid_body_factor(n))

    @classmethod
    def fit(cls, zmatrix, positions, weights=None) -> "InternalSpace":
        """The space standardised by the (weighted) statistics of ``positions``.

        Args:
            zmatrix: a :class:`ZMatrix`, or a topology (or target) to build one with
                :func:`zmatrix`.
            positions: (n, N, 3) in nm, n >= 1 configurations.
            weights: optional (n,) non-negative importance weights (e.g. exp(+V/kT) of biased MD);
                None: equal weights.

        Means are weighted means, scales weighted standard deviations (normalised by the sum of
        the weights, not n - 1), computed in float64.

        Raises:
            ValueError: if a bond or angle does not vary over the weighted data (scale 0).
        """
        zm = zmatrix if isinstance(zmatrix, ZMatrix) else _zmatrix_of(zmatrix)
        x = check_positions(positions, "positions", zm.n_atoms)
        if x.shape[0] == 0 or not torch.isfinite(x).all():
            raise ValueError("positions must hold at least one configuration and only finite values (nm)")
        bonds, angles, _ = internal_from_positions(x.detach().to(torch.float64), zm)
        if weights is None:
            w = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=bonds.device)
        else:
            w = as_tensor(weights, "weights").detach().to(device=bonds.device, dtype=torch.float64)
            if w.shape != (x.shape[0],):
                raise ValueError(f"weights must have shape ({x.shape[0]},) (one per configuration), got {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError("weights must be finite, non-negative and not all zero")
            w = w / w.sum()
        stats = []
        for name, q in (("bond", bonds), ("angle", angles)):
            mean = w @ q
            scale = torch.sqrt(w @ (q - mean) ** 2)
            if (scale <= 1e-12).any():
                which = int(torch.nonzero(scale <= 1e-12)[0])
                raise ValueError(f"positions do not vary in {name} {which} (atoms "
                                 f"{getattr(zm, f'_{name}s')[which].tolist()}): fit needs configurations that "
                                 f"differ, e.g. MD samples, not copies of one structure")
            stats += [mean.tolist(), scale.tolist()]
        return cls(zm, *stats)

    # --- the protocol ----------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        """Number of atoms N."""
        return self.zmatrix.n_atoms

    @property
    def dim(self) -> int:
        """3N - 6: the length of a flat vector z."""
        return 3 * self.n_atoms - 6

    @property
    def subspace_dim(self) -> int:
        """Equal to :attr:`dim`: z has no linear constraint (for code written for both spaces)."""
        return self.dim

    @property
    def periodic(self) -> torch.Tensor:
        """bool tensor (dim,): True for the dihedral coordinates (the last N - 3)."""
        flags = torch.zeros(self.dim, dtype=torch.bool)
        flags[2 * self.n_atoms - 3:] = True
        return flags

    @property
    def projection(self):
        """None: the space has no linear constraint to project onto."""
        return None

    def _stats(self, like: torch.Tensor):
        return tuple(torch.tensor(s, dtype=like.dtype, device=like.device)
                     for s in (self.bond_mean, self.bond_scale, self.angle_mean, self.angle_scale))

    def _affine(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each (dim,) in z's dtype and device: [bonds, angles, dihedrals] = shift + scale * z."""
        key = (z.dtype, z.device)
        if key not in self._affine_cache:
            bm, bs, am, as_ = self._stats(z)
            zero, one = bm.new_zeros(self.n_atoms - 3), bm.new_ones(self.n_atoms - 3)  # dihedrals: q = z
            self._affine_cache[key] = (torch.cat([bm, am, zero]), torch.cat([bs, as_, one]))
        return self._affine_cache[key]

    def _check_z(self, z) -> torch.Tensor:
        """check_flat(z, "z", dim), its NaN test first on one sum (a whole-batch isnan costs more than the map)."""
        z = check_flat(z, "z", self.dim, allow_nan=True)
        if torch.isnan(z.sum()) and torch.isnan(z).any():
            raise ValueError("z contains NaN values")
        return z

    def to_internal(self, z) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat z (n, dim) -> bonds (n, N - 1) nm, angles (n, N - 2) rad, dihedrals (n, N - 3) rad (as in z)."""
        z = self._check_z(z)
        shift, scale = self._affine(z)
        nb, m = self.n_atoms - 1, 2 * self.n_atoms - 3
        q = shift[:m] + scale[:m] * z[:, :m]
        return q[:, :nb], q[:, nb:], z[:, m:]

    def to_flat(self, positions) -> torch.Tensor:
        """Positions (n, N, 3) in nm -> flat z (n, dim), dihedrals in [-pi, pi); dtype/device of ``positions``."""
        x = check_positions(positions, "positions", self.n_atoms)
        bonds, angles, dihedrals = internal_from_positions(x, self.zmatrix)
        bm, bs, am, as_ = self._stats(bonds)
        return torch.cat([(bonds - bm) / bs, (angles - am) / as_, _wrap_angle(dihedrals)], dim=1)

    def to_positions(self, z) -> torch.Tensor:
        """Flat z (n, dim) -> centroid-free positions (n, N, 3) in nm, differentiable (once).

        The molecule is built in the canonical frame of :func:`positions_from_internal` and its
        centroid subtracted (its orientation is that frame's; the energy does not depend on it).
        """
        z = self._check_z(z)
        shift, scale = self._affine(z)
        return _NeRF.apply(z, shift, scale, _walk(self.zmatrix, z.device), True)

    def log_det_jacobian(self, z) -> torch.Tensor:
        """(n,) ln|det| of z -> centroid-free positions modulo rotations (class docstring); -inf off the domain.

        Differentiable once (zero gradient off the domain).
        """
        z = self._check_z(z)
        shift, scale = self._affine(z)
        return _LogVolume.apply(z, shift, scale, self.n_atoms - 1, self._log_det_constant)

    def flat_energy(self, reduced_energy):
        """The target in z: z -> u(x(z)) - log_det_jacobian(z) (+inf off the domain).

        Args:
            reduced_energy: callable on positions (n, N, 3) in nm -> (n,) energies in kT.

        Returns:
            callable on flat z (n, dim) -> (n,) in kT, whose integral of exp(-.) over z is the
            Cartesian centroid-free Z (so log Z keeps the target's units, nm^(3N - 3)).
        """
        if not callable(reduced_energy):
            raise TypeError("reduced_energy must be callable on positions (n, n_atoms, 3) in nm")

        def energy(z: torch.Tensor) -> torch.Tensor:
            log_det = self.log_det_jacobian(z)
            u = reduced_energy(self.to_positions(z))
            inside = torch.isfinite(log_det)
            return torch.where(inside, u - torch.where(inside, log_det, torch.zeros_like(log_det)),
                               torch.full_like(log_det, math.inf))

        return energy

    def wrap(self, z) -> torch.Tensor:
        """z (n, dim) with the dihedral coordinates wrapped to [-pi, pi), the others unchanged."""
        z = check_flat(z, "z", self.dim)
        cut = 2 * self.n_atoms - 3
        return torch.cat([z[:, :cut], _wrap_angle(z[:, cut:])], dim=1)

    def dihedral_index(self, a: int, b: int, c: int, d: int) -> int:
        """Index into z of the dihedral a-b-c-d (either direction); ValueError if it is not a coordinate."""
        return 2 * self.n_atoms - 3 + self.zmatrix.dihedral_index(a, b, c, d)

    def check_target(self, reduced_energy, positions) -> None:
        """Nothing to check: signed dihedrals keep chirality, so no sample is ever folded."""

    def finish(self, positions: torch.Tensor, topology) -> tuple[torch.Tensor, float]:
        """Samples (n, N, 3) nm as they are, and the fraction that are mirror images (D), measured, not folded.

        nan for a molecule without an amino-acid stereocentre.
        """
        from . import alpha_carbon_centers, chirality

        centres = alpha_carbon_centers(topology)
        if len(centres) == 0 or positions.shape[0] == 0:
            return positions, float("nan")
        return positions, float((chirality(positions, centres) < 0).all(dim=1).double().mean())

    def torsion_kernel(self, topology, reflect: float = 0.5):
        """Turns of the rotatable bonds as changes of their dihedral coordinates, or None without any.

        See :class:`~boltzgen.smc.torsion.DihedralKernel`: one coordinate per bond, single bonds and
        pairs sharing an atom.
        """
        from ..smc.torsion import DihedralKernel, rotatable_dihedral_groups

        offset = 2 * self.n_atoms - 3
        groups = rotatable_dihedral_groups(topology, self.zmatrix)
        if not groups:
            return None
        return DihedralKernel(tuple(tuple(offset + i for i in g) for g in groups), reflect)

    # --- model files -----------------------------------------------------------------------
    def config(self) -> dict:
        """Plain-type (JSON-able) description, with the Z-matrix itself; :meth:`from_config` inverts it."""
        return {"kind": "internal", "n_atoms": self.n_atoms, "order": list(self.zmatrix.order),
                "references": [list(r) for r in self.zmatrix.references],
                "bond_mean": list(self.bond_mean), "bond_scale": list(self.bond_scale),
                "angle_mean": list(self.angle_mean), "angle_scale": list(self.angle_scale)}

    @classmethod
    def from_config(cls, config: dict) -> "InternalSpace":
        """Inverse of :meth:`config`."""
        if not isinstance(config, dict) or config.get("kind") != "internal":
            raise ValueError(f"config must be an internal space config (kind 'internal'), got {config!r}"[:300])
        c = dict(config)
        c.pop("kind")
        n_atoms = c.pop("n_atoms", None)
        try:
            zm = ZMatrix(tuple(c.pop("order")), tuple(tuple(r) for r in c.pop("references")))
            space = cls(zm, **c)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"config is missing or has unexpected entries: {exc}") from exc
        if n_atoms is not None and n_atoms != space.n_atoms:
            raise ValueError(f"config says n_atoms = {n_atoms} but its order has {space.n_atoms} atoms")
        return space
