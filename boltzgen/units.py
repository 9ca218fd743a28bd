"""Energy units at the boundary: free energies are computed in kT and also reported in kJ/mol and kcal/mol.

Everything inside boltzgen is in reduced units (kT at the system's temperature); these helpers
convert only for printing and for the summary files.
"""
from __future__ import annotations

import math

KJ_PER_KCAL = 4.184  # thermochemical calorie


def kt_in_kj_per_mol(temperature: float) -> float:
    """kT (per mole) in kJ/mol at ``temperature`` in K (2.494 kJ/mol at 300 K)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature!r}")
    from .targets.openmm import kT_kj_per_mol  # OpenMM's gas constant, as the force field uses

    return kT_kj_per_mol(float(temperature))


def kt_in_kcal_per_mol(temperature: float) -> float:
    """kT (per mole) in kcal/mol at ``temperature`` in K (0.596 kcal/mol at 300 K)."""
    return kt_in_kj_per_mol(temperature) / KJ_PER_KCAL


def format_in_molar_units(value_kT: float | None, err_kT: float | None, temperature: float | None,
                          digits: int = 2) -> str:
    """``"(9.44 +- 0.33 kJ/mol, 2.26 +- 0.08 kcal/mol)"`` for a free energy ``value_kT`` +- ``err_kT``
    (kT) at ``temperature`` (K); empty when the value or the temperature is unknown."""
    if value_kT is None or temperature is None or not math.isfinite(value_kT):
        return ""
    parts = []
    for scale, name in ((kt_in_kj_per_mol(temperature), "kJ/mol"), (kt_in_kcal_per_mol(temperature), "kcal/mol")):
        text = f"{value_kT * scale:.{digits}f}"
        if err_kT is not None and math.isfinite(err_kT):
            text += f" +- {err_kT * scale:.{digits}f}"
        parts.append(f"{text} {name}")
    return "(" + ", ".join(parts) + ")"
