"""Dihedral angles of batched positions, differentiable in torch, and backbone (phi, psi) indices.

The angle follows the IUPAC sign convention used by mdtraj (and OpenMM): looking along the
central bond from atom 1 to atom 2, the angle is positive when atom 0 must turn clockwise to
eclipse atom 3. Angles lie in (-pi, pi] radians; a trans arrangement is +pi, never -pi.
Which atoms make up phi and psi is left to mdtraj, which knows residue and atom names.
"""
from __future__ import annotations

import math


import numpy as np
import torch

from .._checks import check_atom_indices, check_positions
from ..coordinates import mdtraj_topology
from ..cvs import backbone_atoms  # molecule facts live with the molecule; re-exported here


def _check_atoms(atoms, n_atoms: int) -> torch.Tensor:
    """Dihedral atom quadruples as an int64 tensor (m, 4) of distinct indices in [0, n_atoms)."""
    a = check_atom_indices(atoms, "atoms", n_atoms, "atom indices per dihedral")
    # a repeated atom makes the angle undefined (atan2(0, 0)); refuse it rather than return 0
    repeated = (a[:, :, None] == a[:, None, :]).sum((1, 2)) > 4
    if repeated.any():
        row = int(torch.nonzero(repeated)[0])
        raise ValueError(f"atoms row {row} repeats an atom: {a[row].tolist()}; a dihedral needs four distinct atoms")
    return a


def dihedrals(x, atoms) -> torch.Tensor:
    """Dihedral angles of every configuration, batched and differentiable.

    Args:
        x: positions (n, n_atoms, 3) in nm, a torch tensor (gradients flow through it) or array.
        atoms: (m, 4) integer atom indices, one dihedral per row (e.g. from :func:`backbone_atoms`).

    Returns:
        float64 tensor (n, m) of angles in radians in (-pi, pi], IUPAC/mdtraj sign convention,
        computed as atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)) with b_k the bond vectors.
    """
    pos = check_positions(x, "x").to(torch.float64)
    idx = _check_atoms(atoms, pos.shape[1]).to(pos.device)
    p0, p1, p2, p3 = (pos[:, idx[:, k]] for k in range(4))  # each (n, m, 3)
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1 = torch.linalg.cross(b1, b2)
    n2 = torch.linalg.cross(b2, b3)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    angle = torch.atan2(y, (n1 * n2).sum(-1))
    # atan2 gives -pi for y = -0.0 and a trans arrangement; the convention's interval is (-pi, pi]
    return torch.where(angle <= -math.pi, angle + 2.0 * math.pi, angle)


def phi_psi(x, topology) -> torch.Tensor:
    """Backbone (phi, psi) of every configuration, for each residue that has both.

    Args:
        x: positions (n, n_atoms, 3) in nm (torch tensor, differentiable, or array).
        topology: as for :func:`backbone_atoms`; must have n_atoms atoms.

    Returns:
        float64 tensor (n, k, 2) in radians in (-pi, pi]: [..., 0] is phi, [..., 1] is psi,
        residues in the order of :func:`backbone_atoms` (k = 1 for alanine dipeptide).
    """
    top = mdtraj_topology(topology)
    pos = check_positions(x, "x", n_atoms=top.n_atoms)
    idx = backbone_atoms(top)
    angles = dihedrals(pos, np.concatenate([idx["phi"], idx["psi"]]))  # (n, 2k)
    k = len(idx["phi"])
    return torch.stack([angles[:, :k], angles[:, k:]], dim=-1)
