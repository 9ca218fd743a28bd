"""Cartesian coordinates of molecules: centre of mass, alignment, chirality, invariant features.

Internal coordinates (a Z-matrix from the bond graph, and the coordinate space
:class:`~boltzgen.coordinates.internal.InternalSpace`) live in :mod:`boltzgen.coordinates.internal`.

All functions take batched positions ``x`` of shape (n, n_atoms, 3) in nm as a torch tensor (or an
array), work in torch and, where it makes sense, are differentiable with respect to ``x``.

Centre of mass. ``masses=None`` means equal weights, i.e. the centroid. That is the subspace the
rest of boltzgen samples in: :func:`boltzgen.smc.energy.mean_free_projection` projects onto zero
*unweighted* mean over atoms (the design notes' centre-of-mass-free noise), so
``remove_center_of_mass(x)`` lands exactly in the range of that projection. Pass daltons (e.g.
from :func:`masses_from_system`) only for the physical centre of mass; the mass-weighted and
unweighted "centre-free" subspaces differ, so do not mix them within one sampler.

Chirality. A force field is invariant under reflection: the D enantiomer of a molecule has
exactly the energy of the L one. A Boltzmann generator or energy-based model working on Cartesian
coordinates has nothing that tells the two apart either, so it may produce (and the Boltzmann
weights will happily keep) mirror-image configurations that are a different molecule. They must be
detected and filtered or reported: :func:`is_l_amino_acid`.
"""
from __future__ import annotations

from dataclasses import dataclass

import mdtraj
import numpy as np
import openmm
import openmm.app
import openmm.unit as unit
import torch

from .._checks import as_tensor, check_atom_indices, check_positions


# ---- topology and validation --------------------------------------------------------------------
def mdtraj_topology(topology) -> mdtraj.Topology:
    """``topology`` (an openmm.app.Topology, an mdtraj.Topology, or an object with a ``.topology``
    holding one, such as a target or a Trajectory) as an mdtraj.Topology."""
    if hasattr(topology, "topology") and not isinstance(topology, (mdtraj.Topology, openmm.app.Topology)):
        topology = topology.topology  # a target or a trajectory: use its topology
    if isinstance(topology, mdtraj.Topology):
        return topology
    if isinstance(topology, openmm.app.Topology):
        return mdtraj.Topology.from_openmm(topology)
    raise TypeError(f"topology must be an openmm.app.Topology or mdtraj.Topology, got {type(topology).__name__}")


def _reference(reference, n_atoms: int) -> torch.Tensor:
    ref = as_tensor(reference, "reference")
    if ref.ndim != 2 or ref.shape != (n_atoms, 3):
        raise ValueError(f"reference must have shape ({n_atoms}, 3) in nm (one configuration with the atoms "
                         f"of x), got {tuple(ref.shape)}")
    if not torch.isfinite(ref).all():
        raise ValueError("reference contains non-finite positions")
    return ref


def _weights(masses, x: torch.Tensor) -> torch.Tensor:
    """Normalised atom weights (n_atoms,) in the dtype of ``x``: equal if ``masses`` is None."""
    n_atoms = x.shape[1]
    if masses is None:
        return torch.full((n_atoms,), 1.0 / n_atoms, dtype=x.dtype, device=x.device)
    m = as_tensor(masses, "masses")
    if m.ndim != 1 or m.shape[0] != n_atoms:
        raise ValueError(f"masses must have shape ({n_atoms},) in daltons (one per atom of x), got {tuple(m.shape)}")
    if not torch.isfinite(m).all() or (m < 0).any():
        raise ValueError("masses must be finite and non-negative (daltons)")
    total = m.sum()
    if total <= 0:
        raise ValueError("masses must not all be zero")
    return (m.to(torch.float64) / total.to(torch.float64)).to(device=x.device, dtype=x.dtype)


# ---- centre of mass -----------------------------------------------------------------------------
def masses_from_system(system) -> torch.Tensor:
    """Atom masses of an OpenMM system, float64 tensor (n_atoms,) in daltons.

    Args:
        system: an ``openmm.System``, or an object holding one as ``.system`` (e.g. a boltzgen
            target from :func:`boltzgen.systems.load`).
    """
    if not isinstance(system, openmm.System) and isinstance(getattr(system, "system", None), openmm.System):
        system = system.system
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System (or hold one as .system), got {type(system).__name__}")
    return torch.tensor([system.getParticleMass(i).value_in_unit(unit.dalton)
                         for i in range(system.getNumParticles())], dtype=torch.float64)


def center_of_mass(x, masses=None) -> torch.Tensor:
    """Centre of mass of every configuration, differentiable.

    Args:
        x: positions (n, n_atoms, 3) in nm.
        masses: (n_atoms,) non-negative masses in daltons, or None for equal weights (the
            centroid, the convention of :func:`boltzgen.smc.energy.mean_free_projection`).

    Returns:
        (n, 3) in nm, dtype of ``x``.
    """
    pos = check_positions(x, "x")
    return torch.einsum("a,nad->nd", _weights(masses, pos), pos)


def remove_center_of_mass(x, masses=None) -> torch.Tensor:
    """Translate every configuration so that its centre of mass is at the origin.

    Args:
        x: positions (n, n_atoms, 3) in nm.
        masses: as for :func:`center_of_mass` (None: centroid, the sampler's subspace).

    Returns:
        (n, n_atoms, 3) in nm, dtype of ``x``, differentiable.
    """
    pos = check_positions(x, "x")
    return pos - center_of_mass(pos, masses)[:, None, :]


# ---- alignment ----------------------------------------------------------------------------------
def _kabsch(x: torch.Tensor, ref: torch.Tensor, w: torch.Tensor):
    """Best proper rotations R (n, 3, 3), centres of x (n, 3) and of ref (3,).

    Weighted Kabsch: with centred P (x) and Q (ref), H = P^T W Q = U S V^T and
    R = V diag(1, 1, d) U^T, d = sign det(V U^T), so R is a rotation (det +1) even when the
    best orthogonal map would be a reflection; R (x_i - c_x) + c_ref is then the aligned atom i.
    """
    cx = torch.einsum("a,nad->nd", w, x)
    cr = w @ ref
    h = torch.einsum("a,nai,aj->nij", w, x - cx[:, None], ref - cr)
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vh.mT @ u.mT)).detach()  # +-1 (V U^T is orthogonal); no gradient
    flip = torch.ones_like(u[:, 0])  # (n, 3): diag(1, 1, d)
    flip[:, 2] = d
    rot = vh.mT @ (flip[:, :, None] * u.mT)
    return rot, cx, cr


def _aligned(pos: torch.Tensor, reference, masses):
    """Float64 aligned positions (n, n_atoms, 3), the checked reference (n_atoms, 3) and the weights (n_atoms,)."""
    ref = _reference(reference, pos.shape[1]).to(device=pos.device, dtype=torch.float64)
    x64 = pos.to(torch.float64)
    w = _weights(masses, x64)
    rot, cx, cr = _kabsch(x64, ref, w)
    return torch.einsum("nij,naj->nai", rot, x64 - cx[:, None]) + cr, ref, w


def align(x, reference, masses=None) -> torch.Tensor:
    """Superpose every configuration onto ``reference`` by the best rotation and translation.

    The rotation minimises the (mass-weighted) RMSD and is always proper (determinant +1): a
    reflection would turn an L molecule into its D mirror image, so it is never used.

    Args:
        x: positions (n, n_atoms, 3) in nm.
        reference: one configuration (n_atoms, 3) in nm.
        masses: (n_atoms,) weights in daltons, or None for equal weights (as mdtraj).

    Returns:
        (n, n_atoms, 3) in nm, dtype of ``x``: each configuration rotated about its own centre
        (weighted by ``masses``) and moved onto the centre of ``reference``. Computed in float64;
        differentiable except where the SVD is degenerate (e.g. linear configurations).
    """
    pos = check_positions(x, "x")
    return _aligned(pos, reference, masses)[0].to(pos.dtype)


def rmsd(x, reference, masses=None) -> torch.Tensor:
    """Root-mean-square deviation from ``reference`` after optimal alignment (:func:`align`).

    Args:
        x: positions (n, n_atoms, 3) in nm.
        reference: (n_atoms, 3) in nm.
        masses: (n_atoms,) in daltons for the mass-weighted RMSD, or None for the plain one.

    Returns:
        float64 tensor (n,) in nm: sqrt(sum_i w_i |R x_i + t - ref_i|^2), w = masses / sum(masses).
    """
    aligned, ref, w = _aligned(check_positions(x, "x"), reference, masses)
    return torch.sqrt(torch.einsum("a,na->n", w, ((aligned - ref) ** 2).sum(-1)))


# ---- chirality ----------------------------------------------------------------------------------
def chirality(x, centers) -> torch.Tensor:
    """Handedness of chiral centres: the sign of a signed volume (triple product).

    For a row (centre, a, b, c) the signed volume is (a - centre) . ((b - centre) x (c - centre)).
    It is unchanged by rotations and translations and changes sign under any reflection, so it
    tells an enantiomer from its mirror image; swapping two of a, b, c also flips it.

    Args:
        x: positions (n, n_atoms, 3) in nm.
        centers: (k, 4) integer atom indices (centre, a, b, c), e.g. from
            :func:`alpha_carbon_centers`, for which +1 is the L configuration.

    Returns:
        float64 tensor (n, k) of +1.0 / -1.0 (0.0 only for an exactly planar centre). A sign is
        piecewise constant, so it carries no useful gradient.
    """
    pos = check_positions(x, "x").detach().to(torch.float64)
    idx = check_atom_indices(centers, "centers", pos.shape[1], "atom indices: centre, a, b, c").to(pos.device)
    p0, pa, pb, pc = (pos[:, idx[:, k]] for k in range(4))  # each (n, k, 3)
    volume = ((pa - p0) * torch.linalg.cross(pb - p0, pc - p0)).sum(-1)
    return torch.sign(volume)


def alpha_carbon_centers(topology) -> np.ndarray:
    """The chiral alpha carbons of amino-acid residues, as rows for :func:`chirality`.

    Every residue with atoms named N, CA, C and CB (every standard amino acid but glycine) gives
    the row (CA, N, C, CB), in residue order. With this order the L configuration has a positive
    signed volume, so :func:`chirality` returns +1 for L and -1 for D. (Found on the shipped
    L-alanine dipeptide; it agrees with the virtual torsion CA-N-C-CB being about +34 degrees for
    L residues, PROCHECK's zeta angle.) Side-chain centres (CB of Ile and Thr) are not included.

    Args:
        topology: an openmm.app.Topology or mdtraj.Topology (or an object with ``.topology``).

    Returns:
        int64 array (k, 4) of atom indices; k = 0 when no residue has all four atoms.
    """
    rows = []
    for residue in mdtraj_topology(topology).residues:
        atoms = {atom.name: atom.index for atom in residue.atoms}
        if all(name in atoms for name in ("N", "CA", "C", "CB")):
            rows.append([atoms["CA"], atoms["N"], atoms["C"], atoms["CB"]])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def is_l_amino_acid(x, topology) -> torch.Tensor:
    """Whether every alpha carbon of every configuration has the L configuration.

    Boltzmann generators and EBMs on Cartesian coordinates can produce D enantiomers, which the
    force field gives exactly the same energy; use this to filter or report them.

    Args:
        x: positions (n, n_atoms, 3) in nm.
        topology: as for :func:`alpha_carbon_centers`, with n_atoms atoms.

    Returns:
        bool tensor (n,).

    Raises:
        ValueError: if the topology has no alpha carbon with N, C and CB neighbours named as in
            standard residues (an answer of "all L" would then be vacuous).
    """
    top = mdtraj_topology(topology)
    pos = check_positions(x, "x", n_atoms=top.n_atoms)
    centers = alpha_carbon_centers(top)
    if len(centers) == 0:
        raise ValueError("topology has no amino-acid residue with atoms named N, CA, C and CB; "
                         "there is no alpha carbon whose chirality could be checked")
    return (chirality(pos, centers) > 0).all(dim=1)


@dataclass(frozen=True)
class FoldedChirality:
    """Configurations with mirror images reflected onto the L enantiomer.

    Attributes:
        positions: (n, n_atoms, 3) in nm; rows that were the mirror image (every alpha carbon D)
            are reflected, x -> -x, which leaves a force-field energy unchanged.
        was_mirror: (n,) bool, the rows that were reflected.
        mixed: (n,) bool, rows with some but not all alpha carbons D (a diastereomer: no
            reflection makes it L; they are left as they are).
    """

    positions: torch.Tensor
    was_mirror: torch.Tensor
    mixed: torch.Tensor

    @property
    def mirror_fraction(self) -> float:
        """Fraction of rows that were mirror images before folding (the D fraction for one centre)."""
        return float(self.was_mirror.double().mean()) if self.was_mirror.numel() else 0.0


def fold_to_l(x, topology) -> FoldedChirality:
    """Reflect mirror-image (all-D) configurations onto L: exact for a mirror-invariant energy.

    A model that cannot tell mirror images apart samples p(x)/2 + p(-x)/2; since u(-x) = u(x),
    reflecting the D half gives exactly the L distribution (and its log Z is the mirror-invariant
    one minus ln 2). Report :attr:`FoldedChirality.mirror_fraction` before folding: about 1/2 for a
    mirror-invariant model.

    Args:
        x: positions (n, n_atoms, 3) in nm.
        topology: the molecule's topology (alpha carbons as in :func:`alpha_carbon_centers`).
    """
    top = mdtraj_topology(topology)
    pos = check_positions(x, "x", n_atoms=top.n_atoms)
    centers = alpha_carbon_centers(top)
    if len(centers) == 0:
        raise ValueError("topology has no amino-acid residue with atoms named N, CA, C and CB: nothing to fold")
    signs = chirality(pos, centers)
    mirror = (signs < 0).all(dim=1)
    mixed = (signs < 0).any(dim=1) & ~mirror
    folded = torch.where(mirror.to(pos.device)[:, None, None], -pos, pos)
    return FoldedChirality(folded, mirror, mixed)


# ---- invariant features -------------------------------------------------------------------------
def pairwise_distances(x) -> torch.Tensor:
    """All interatomic distances, invariant under rotations, translations and reflections.

    Args:
        x: positions (n, n_atoms, 3) in nm.

    Returns:
        (n, n_atoms * (n_atoms - 1) / 2) in nm, dtype of ``x``, pairs (i, j) with i < j in
        row-major order (as ``torch.triu_indices(n_atoms, n_atoms, 1)``). Differentiable; the
        gradient of a distance is undefined where two atoms coincide.
    """
    pos = check_positions(x, "x")
    i, j = torch.triu_indices(pos.shape[1], pos.shape[1], 1, device=pos.device)
    return torch.linalg.vector_norm(pos[:, i] - pos[:, j], dim=-1)
