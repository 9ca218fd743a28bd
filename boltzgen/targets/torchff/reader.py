"""Read an ``openmm.System`` into the batched torch terms of :mod:`.terms`.

One reader per supported force class turns the force's parameters into plain arrays (units
stripped here, at the boundary: nm, radians, kJ/mol, e). Anything else that contributes energy
raises :class:`UnsupportedForceError` naming the force, so a result can never silently miss a term.
"""
from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as unit
from torch import nn

from .terms import (
    GBSAOBC,
    ONE_4PI_EPS0,
    HarmonicAngles,
    HarmonicBonds,
    PairNonbonded,
    PeriodicTorsions,
)

# Forces that add no energy (CMMotionRemover only changes velocities during dynamics).
_IGNORED = (openmm.CMMotionRemover,)


class UnsupportedForceError(ValueError):
    """An OpenMM force (or force setting) the torch force field cannot evaluate."""


def _plain(value, unit_):
    """A float from a number or an openmm Quantity in ``unit_``."""
    return float(value.value_in_unit(unit_)) if unit.is_quantity(value) else float(value)


def _rows(force, getter: str, count: int, units) -> list[list[float]]:
    """Parameter rows of a force, each entry converted with its unit (None: an integer index)."""
    get = getattr(force, getter)
    rows = []
    for index in range(count):
        values = get(index)
        rows.append([int(v) if u is None else _plain(v, u) for v, u in zip(values, units)])
    return rows


def _check_not_periodic(force) -> None:
    if force.usesPeriodicBoundaryConditions():
        raise UnsupportedForceError(
            f"{type(force).__name__} with periodic boundary conditions is not supported by the torch force field")


def _bonds(force: openmm.HarmonicBondForce) -> nn.Module | None:
    _check_not_periodic(force)
    rows = _rows(force, "getBondParameters", force.getNumBonds(),
                 (None, None, unit.nanometer, unit.kilojoule_per_mole / unit.nanometer**2))
    if not rows:
        return None
    p = np.array(rows)
    return HarmonicBonds(p[:, :2].astype(int), p[:, 2], p[:, 3])


def _angles(force: openmm.HarmonicAngleForce) -> nn.Module | None:
    _check_not_periodic(force)
    rows = _rows(force, "getAngleParameters", force.getNumAngles(),
                 (None, None, None, unit.radian, unit.kilojoule_per_mole / unit.radian**2))
    if not rows:
        return None
    p = np.array(rows)
    return HarmonicAngles(p[:, :3].astype(int), p[:, 3], p[:, 4])


def _torsions(force: openmm.PeriodicTorsionForce) -> nn.Module | None:
    _check_not_periodic(force)
    rows = _rows(force, "getTorsionParameters", force.getNumTorsions(),
                 (None, None, None, None, None, unit.radian, unit.kilojoule_per_mole))
    rows = [row for row in rows if row[6] != 0.0]
    if not rows:
        return None
    quads: dict[tuple[int, ...], int] = {}
    dihedral = [quads.setdefault(tuple(row[:4]), len(quads)) for row in rows]
    p = np.array(rows)
    return PeriodicTorsions(list(quads), dihedral, p[:, 4], p[:, 5], p[:, 6])


def _check_no_cutoff(force, kind: str) -> None:
    if force.getNonbondedMethod() != force.NoCutoff:
        names = {getattr(force, n): n for n in dir(force) if n[0].isupper() and isinstance(getattr(force, n), int)}
        method = names.get(force.getNonbondedMethod(), str(force.getNonbondedMethod()))
        raise UnsupportedForceError(
            f"{kind} with nonbonded method {method} is not supported by the torch force field "
            "(only NoCutoff); use the OpenMM target instead"
        )


def _nonbonded(force: openmm.NonbondedForce) -> nn.Module | None:
    _check_no_cutoff(force, "NonbondedForce")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise UnsupportedForceError("NonbondedForce with parameter offsets is not supported by the torch force field")
    particles = np.array(_rows(force, "getParticleParameters", force.getNumParticles(),
                               (unit.elementary_charge, unit.nanometer, unit.kilojoule_per_mole)))
    q, sigma, eps = particles.T
    n_atoms = len(q)
    i, j = np.triu_indices(n_atoms, k=1)
    # Start from the combining rules for every pair, then let exceptions overwrite their pairs.
    qq = ONE_4PI_EPS0 * q[:, None] * q[None, :]
    sig = 0.5 * (sigma[:, None] + sigma[None, :])
    ep = np.sqrt(eps[:, None] * eps[None, :])
    exceptions = _rows(force, "getExceptionParameters", force.getNumExceptions(),
                       (None, None, unit.elementary_charge**2, unit.nanometer, unit.kilojoule_per_mole))
    for a, b, charge_product, s, e in exceptions:
        for u, v in ((a, b), (b, a)):
            qq[u, v], sig[u, v], ep[u, v] = ONE_4PI_EPS0 * charge_product, s, e
    qq, sig, ep = qq[i, j], sig[i, j], ep[i, j]
    keep = (qq != 0.0) | (ep != 0.0)  # exclusions contribute nothing
    if not keep.any():
        return None
    return PairNonbonded(np.stack((i[keep], j[keep]), axis=1), qq[keep], sig[keep], ep[keep])


def _gbsa_obc(force: openmm.GBSAOBCForce) -> nn.Module:
    _check_no_cutoff(force, "GBSAOBCForce")
    p = np.array(_rows(force, "getParticleParameters", force.getNumParticles(),
                       (unit.elementary_charge, unit.nanometer, unit.dimensionless)))
    return GBSAOBC(
        p[:, 0], p[:, 1], p[:, 2],
        solute_dielectric=float(force.getSoluteDielectric()),
        solvent_dielectric=float(force.getSolventDielectric()),
        surface_area_energy=_plain(force.getSurfaceAreaEnergy(), unit.kilojoule_per_mole / unit.nanometer**2),
    )


_READERS = {
    openmm.HarmonicBondForce: _bonds,
    openmm.HarmonicAngleForce: _angles,
    openmm.PeriodicTorsionForce: _torsions,
    openmm.NonbondedForce: _nonbonded,
    openmm.GBSAOBCForce: _gbsa_obc,
}


# What to do instead, for unsupported forces users meet often.
_HINTS = {
    "CustomGBForce": "OpenMM's implicit/*.xml models and the prmtop OBC1/HCT/GBn models are CustomGBForces; "
                     "amber99_obc.xml (or implicitSolvent=OBC2 from a prmtop) gives a supported GBSAOBCForce",
    "CMAPTorsionForce": "CHARMM and ff19SB-style CMAP corrections are evaluated by OpenMM only",
}


def _unsupported_message(force, index: int) -> str:
    name = type(force).__name__
    hint = f" ({_HINTS[name]})" if name in _HINTS else ""
    return f"{name} (force {index}) is not supported by the torch force field{hint}"


def _reader(force):
    """The reader of a force's exact class, or None if the class is unsupported."""
    return _READERS.get(type(force))


def unsupported_forces(system: openmm.System) -> list[str]:
    """Why each force of ``system`` the torch force field cannot evaluate is unsupported.

    Returns one message per unsupported force (an empty list when the whole system is supported).
    """
    problems = []
    for index, force in enumerate(system.getForces()):
        if isinstance(force, _IGNORED):
            continue
        read = _reader(force)
        if read is None:
            problems.append(_unsupported_message(force, index))
            continue
        try:
            read(force)
        except UnsupportedForceError as exc:
            problems.append(str(exc))
    return problems


def read_terms(system: openmm.System) -> list[tuple[str, nn.Module]]:
    """The energy terms of ``system`` as (name, module) pairs, named like ``NonbondedForce[2]``.

    Raises:
        UnsupportedForceError: for the first force that is not supported (the message names it).
        TypeError: if ``system`` is not an openmm.System.
    """
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    if any(system.isVirtualSite(i) for i in range(system.getNumParticles())):
        raise UnsupportedForceError("systems with virtual sites are not supported by the torch force field")
    terms = []
    for index, force in enumerate(system.getForces()):
        if isinstance(force, _IGNORED):
            continue
        read = _reader(force)
        if read is None:
            raise UnsupportedForceError(
                _unsupported_message(force, index) + "; supported: " + ", ".join(cls.__name__ for cls in _READERS)
                + ". Use the OpenMM target (boltzgen.targets.fast_target falls back to it)"
            )
        module = read(force)
        if module is not None:
            terms.append((f"{type(force).__name__}[{index}]", module))
    return terms
