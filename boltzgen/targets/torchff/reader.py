"""Read an ``openmm.System`` into the batched torch terms of :mod:`.terms`.

One reader per supported force class turns the force's parameters into plain arrays (units
stripped here, at the boundary: nm, radians, kJ/mol, e). Supported: HarmonicBondForce,
HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce and GBSAOBCForce (NoCutoff), and a
CustomGBForce only when it is exactly OpenMM's Amber OBC1 or OBC2 model
(``openmm.app.internal.customgbforces.GBSAOBC1Force`` / ``GBSAOBC2Force``, as the prmtop loader
builds them; see :func:`recognise_custom_gb`). Anything else that contributes energy (HCT, GBn,
GBn2 or a user's own CustomGBForce included) raises :class:`UnsupportedForceError` naming the
force, so a result can never silently miss a term.
"""
from __future__ import annotations

import functools

import numpy as np
import openmm
import openmm.unit as unit
from openmm.app.internal import customgbforces
from torch import nn

from .terms import (
    GBSAOBC,
    ONE_4PI_EPS0,
    CustomGBOBC,
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


_NONBONDED_METHODS = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME", "LJPME")


def _check_no_cutoff(force, kind: str) -> None:
    if force.getNonbondedMethod() != force.NoCutoff:
        # Only the nonbonded-method names: a CustomGBForce's computation types (ParticlePair, ...)
        # share their integer values.
        names = {getattr(force, n): n for n in _NONBONDED_METHODS if isinstance(getattr(force, n, None), int)}
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


# ---- CustomGBForce: only OpenMM's own Amber OBC1 / OBC2 models ----------------------------------
# A CustomGBForce is recognised by rebuilding the reference force with OpenMM's class from the
# constants the force carries (its dielectrics and kappa, written into its energy expressions) and
# comparing everything that defines the energy as exact strings: per-particle parameter names,
# global parameters, computed values (name, expression, type), energy terms (expression, type),
# tabulated functions and parameter derivatives. Any other CustomGBForce is refused.
_CUSTOM_GB_MODELS = {"OBC1": customgbforces.GBSAOBC1Force, "OBC2": customgbforces.GBSAOBC2Force}
_CUSTOM_GB_SUPPORTED = (
    "supported CustomGBForces: OpenMM's Amber OBC1 and OBC2 models exactly as "
    "openmm.app.internal.customgbforces.GBSAOBC1Force / GBSAOBC2Force build them (a prmtop's "
    "implicitSolvent=OBC1, or OBC2 with salt; implicit/obc1.xml, implicit/obc2.xml), with or without the ACE "
    "surface term, any dielectrics and salt, NoCutoff; use the OpenMM target for others "
    "(boltzgen.targets.fast_target falls back to it)"
)


def _custom_gb_signature(force: openmm.CustomGBForce) -> tuple:
    """Everything that defines a CustomGBForce's energy except its particles' parameter values."""
    return (
        tuple(force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())),
        tuple((force.getGlobalParameterName(k), force.getGlobalParameterDefaultValue(k))
              for k in range(force.getNumGlobalParameters())),
        tuple(tuple(force.getComputedValueParameters(k)) for k in range(force.getNumComputedValues())),
        tuple(tuple(force.getEnergyTermParameters(k)) for k in range(force.getNumEnergyTerms())),
        force.getNumTabulatedFunctions(),
        force.getNumEnergyParameterDerivatives(),
    )


def _custom_gb_constants(force: openmm.CustomGBForce) -> dict[str, float]:
    """The ``name=value`` definitions after the first ';' of the force's first energy term (where
    customgbforces writes solventDielectric, soluteDielectric, kappa and offset); {} if none parse."""
    if force.getNumEnergyTerms() == 0:
        return {}
    constants = {}
    for piece in force.getEnergyTermParameters(0)[0].split(";")[1:]:
        name, equals, value = piece.partition("=")
        if equals:
            try:
                constants[name.strip()] = float(value)
            except ValueError:
                return {}
    return constants


def recognise_custom_gb(force: openmm.CustomGBForce) -> dict | None:
    """Which of OpenMM's Amber OBC CustomGBForces ``force`` is, or None.

    Returns ``{"model": "OBC1" | "OBC2", "solvent_dielectric", "solute_dielectric", "kappa" (1/nm),
    "surface_area" (bool: the ACE term is present)}`` when rebuilding that model's force with
    ``customgbforces.GBSAOBC1Force`` / ``GBSAOBC2Force`` (no cutoff) from the force's own constants
    gives exactly the same parameters and expressions; None otherwise (HCT, GBn, GBn2, anything else).
    """
    constants = _custom_gb_constants(force)
    try:
        solvent, solute, kappa = (constants[k] for k in ("solventDielectric", "soluteDielectric", "kappa"))
    except KeyError:
        return None
    signature = _custom_gb_signature(force)
    for model, cls in _CUSTOM_GB_MODELS.items():
        for surface_area in (None, "ACE"):
            try:
                reference = cls(solvent, solute, surface_area, None, kappa)
            except (ValueError, TypeError, ZeroDivisionError):  # e.g. a negative kappa
                return None
            if _custom_gb_signature(reference) == signature:
                return dict(model=model, solvent_dielectric=solvent, solute_dielectric=solute, kappa=kappa,
                            surface_area=surface_area == "ACE")
    return None


def _custom_gb_kind(force: openmm.CustomGBForce) -> str:
    """A name for an unsupported CustomGBForce in messages: the Amber model it looks like, if any."""
    names = tuple(force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters()))
    if names == ("charge", "or", "sr", "radindex"):
        return "the Amber GBn model"
    if names == ("charge", "or", "sr", "alpha", "beta", "gamma", "radindex"):
        return "the Amber GBn2 model"
    constants = _custom_gb_constants(force)
    try:
        hct = customgbforces.GBSAHCTForce(constants["solventDielectric"], constants["soluteDielectric"], None, None,
                                          constants["kappa"])
        computed = tuple(tuple(hct.getComputedValueParameters(k)) for k in range(hct.getNumComputedValues()))
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        computed = None
    if computed == _custom_gb_signature(force)[2]:
        return "the Amber HCT model"
    return "not one of OpenMM's Amber OBC models"


def _custom_gb(force: openmm.CustomGBForce, index: int | None = None) -> nn.Module:
    where = f"CustomGBForce (force {index})" if index is not None else "CustomGBForce"
    if force.getNonbondedMethod() != force.NoCutoff:
        _check_no_cutoff(force, where)
    found = recognise_custom_gb(force)
    if found is None:
        raise UnsupportedForceError(f"{where}, {_custom_gb_kind(force)}, is not supported by the torch force field; "
                                    + _CUSTOM_GB_SUPPORTED)
    if not (found["solute_dielectric"] > 0 and found["solvent_dielectric"] > 0):
        raise UnsupportedForceError(f"{where} ({found['model']}) with a dielectric <= 0 is not supported by the "
                                    "torch force field")
    # Per particle: charge (e), or = offset radius R - 0.009 (nm), sr = screen * or (nm), unitless floats.
    p = np.array([force.getParticleParameters(k) for k in range(force.getNumParticles())], dtype=float).reshape(-1, 3)
    return CustomGBOBC(p[:, 0], p[:, 1], p[:, 2], found["model"], solute_dielectric=found["solute_dielectric"],
                       solvent_dielectric=found["solvent_dielectric"], kappa=found["kappa"],
                       surface_area=found["surface_area"])


_READERS = {
    openmm.HarmonicBondForce: _bonds,
    openmm.HarmonicAngleForce: _angles,
    openmm.PeriodicTorsionForce: _torsions,
    openmm.NonbondedForce: _nonbonded,
    openmm.GBSAOBCForce: _gbsa_obc,
    openmm.CustomGBForce: _custom_gb,  # only OpenMM's Amber OBC1 / OBC2 models; see recognise_custom_gb
}


# What to do instead, for unsupported forces users meet often.
_HINTS = {
    "CMAPTorsionForce": "CHARMM and ff19SB-style CMAP corrections are evaluated by OpenMM only",
}


def _unsupported_message(force, index: int) -> str:
    name = type(force).__name__
    hint = f" ({_HINTS[name]})" if name in _HINTS else ""
    return f"{name} (force {index}) is not supported by the torch force field{hint}"


def _supported_names() -> str:
    return ", ".join(cls.__name__ + (" (Amber OBC1/OBC2 only)" if cls is openmm.CustomGBForce else "")
                     for cls in _READERS)


def _reader(force, index: int):
    """The reader of a force's exact class (a CustomGBForce subclass counts as one), or None if the
    class is unsupported; the CustomGBForce reader names the force index in its refusals."""
    if isinstance(force, openmm.CustomGBForce):
        return functools.partial(_custom_gb, index=index)
    return _READERS.get(type(force))


def unsupported_forces(system: openmm.System) -> list[str]:
    """Why each force of ``system`` the torch force field cannot evaluate is unsupported.

    Returns one message per unsupported force (an empty list when the whole system is supported).
    """
    problems = []
    for index, force in enumerate(system.getForces()):
        if isinstance(force, _IGNORED):
            continue
        read = _reader(force, index)
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
        read = _reader(force, index)
        if read is None:
            raise UnsupportedForceError(
                _unsupported_message(force, index) + "; supported: " + _supported_names()
                + ". Use the OpenMM target (boltzgen.targets.fast_target falls back to it)"
            )
        module = read(force)
        if module is not None:
            terms.append((f"{type(force).__name__}[{index}]", module))
    return terms
