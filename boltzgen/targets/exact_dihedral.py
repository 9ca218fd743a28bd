"""Exact dihedral populations of molecules whose only dihedral-dependent energy is one torsion term.

For a chain of four united atoms (n-butane, TraPPE-UA) the potential energy splits as
U = U_bonds(r1, r2, r3) + U_angles(theta1, theta2) + U_torsion(phi), with no nonbonded pair (the
TraPPE-UA intramolecular Lennard-Jones acts only between sites more than three bonds apart). In the
internal coordinates of the chain, with rigid-body motion removed, the Cartesian volume element is
r1^2 r2^2 r3^2 sin(theta1) sin(theta2) dr dtheta dphi (times the rotations and the centre of mass), and
none of it depends on phi. The Boltzmann marginal of the dihedral is therefore exactly

    p(phi) = exp(-U_torsion(phi) / kT) / Z,    Z = integral over [-pi, pi) of exp(-U_torsion / kT),

whatever the bond and angle terms are (stiff bonds or fixed ones, as in TraPPE, give the same p(phi)).
Populations of arcs of phi and free energies between them follow by one-dimensional quadrature
(scipy.integrate.quad), which is what this module does. Angles in radians, energies in kT.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: TraPPE-UA torsion of CHx-(CH2)-(CH2)-CHy (Martin & Siepmann, J. Phys. Chem. B 102, 2569 (1998)):
#: U(phi) = c1 (1 + cos phi) + c2 (1 - cos 2 phi) + c3 (1 + cos 3 phi), (c1, c2, c3) / k_B in K, phi in the
#: IUPAC convention (trans = 180 deg, where U = 0).
TRAPPE_ALKANE_TORSION_K = (355.03, -68.19, 791.32)

#: Molar gas constant R = k_B N_A in kJ/(mol K) (CODATA 2018, exact), for K -> kJ/mol.
GAS_CONSTANT_KJ_PER_MOL_K = 0.00831446261815324


def trappe_torsion_kelvin(phi, coefficients_k=TRAPPE_ALKANE_TORSION_K) -> np.ndarray:
    """The TraPPE torsion energy U(phi) / k_B in K.

    Args:
        phi: dihedral angle(s) in radians (any shape), IUPAC/mdtraj convention (trans = pi).
        coefficients_k: (c1, c2, c3) / k_B in K.
    Returns:
        float64 array of U / k_B in K, the shape of ``phi``.
    """
    c1, c2, c3 = (float(c) for c in coefficients_k)
    phi = np.asarray(phi, dtype=np.float64)
    return c1 * (1.0 + np.cos(phi)) + c2 * (1.0 - np.cos(2.0 * phi)) + c3 * (1.0 + np.cos(3.0 * phi))


def _pieces(low: float, high: float) -> list[tuple[float, float]]:
    """The half-open arc [low, high) (radians, through pi when low > high) as intervals within [-pi, pi]."""
    pieces = [(low, high)] if low < high else [(low, math.pi), (-math.pi, high)]
    return [(a, b) for a, b in pieces if b > a]


def arc_probability(reduced_energy: Callable[[float], float], low: float, high: float) -> float:
    """P(low <= phi < high) for the density proportional to exp(-reduced_energy(phi)) on the circle.

    Args:
        reduced_energy: u(phi) in kT for phi in radians (a scalar function, smooth and 2 pi periodic).
        low, high: the arc in radians within [-pi, pi] (through pi when low > high).
    Returns:
        the probability, float64, by adaptive quadrature (relative error about 1e-12).
    """
    from scipy.integrate import quad

    u_min = min(reduced_energy(p) for p in np.linspace(-math.pi, math.pi, 721))

    def integral(a, b):
        value, _ = quad(lambda p: math.exp(-(reduced_energy(p) - u_min)), a, b, epsabs=0.0, epsrel=1e-12,
                        limit=500)
        return value

    return sum(integral(a, b) for a, b in _pieces(low, high)) / integral(-math.pi, math.pi)


def exact_dihedral_figures(reduced_energy: Callable[[float], float], cvs, cv: str) -> dict:
    """Exact populations and free energies of the regions a molecule declares on one dihedral CV.

    Args:
        reduced_energy: u(phi) in kT of the dihedral's marginal, p(phi) proportional to exp(-u(phi)).
        cvs: the molecule's :class:`boltzgen.cvs.MoleculeCVs`; every basin and state used must
            restrict only ``cv``.
        cv: the CV's name.
    Returns:
        {"populations": {basin: P}, "state_populations": {state: P}, "free_energies": {key: dF in kT}},
        dF = F(state) - F(reference) = -ln(P(state) / P(reference)).
    """
    def probability(region) -> float:
        if set(region.cvs) - {cv}:
            raise ValueError(f"region {region.name!r} restricts {region.cvs}, not only {cv!r}: no 1-D answer")
        if not region.arcs:
            return 1.0
        (_, low, high), = region.arcs
        return arc_probability(reduced_energy, low, high)

    populations = {b.name: probability(b) for b in cvs.basins}
    states = {s.name: probability(s) for s in cvs.states}
    every = {**populations, **states}
    free_energies = {f.key: -math.log(every[f.state] / every[f.reference]) for f in cvs.free_energies}
    return {"populations": populations, "state_populations": states, "free_energies": free_energies}


def butane_reference(cvs, temperature: float = 300.0) -> dict:
    """The exact trans/gauche figures of TraPPE-UA n-butane, as ``butane.reference.json`` holds them.

    Args:
        cvs: the declaration of the named system ``butane`` (``systems.collective_variables("butane")``):
            one dihedral CV, its basins and free energies.
        temperature: in K.
    Returns:
        a JSON-ready dict: ``delta_f_<key>_kT`` (and ``_err_kT`` = 0.0: exact) for every declared free
        energy, ``p_<state>`` of its state, ``populations`` {basin: {p, err}}, ``basins_rad``, and how
        it was computed.
    """
    if len(cvs.names) != 1:
        raise ValueError(f"cvs must declare one dihedral (the C-C-C-C torsion), got {cvs.names}")
    cv = cvs.names[0]
    kelvin = float(temperature)

    def u(phi: float) -> float:
        return float(trappe_torsion_kelvin(phi)) / kelvin  # U/kT = (U/k_B) / T

    figures = exact_dihedral_figures(u, cvs, cv)
    out = {
        "source": f"exact: the Boltzmann marginal of the C1-C2-C3-C4 dihedral at {kelvin:g} K, "
                  "p(phi) proportional to exp(-U_torsion(phi)/kT) (bonds and angles do not depend on phi, the "
                  "Cartesian Jacobian r1^2 r2^2 r3^2 sin(theta1) sin(theta2) neither, and there is no 1-4 or "
                  "other nonbonded term), integrated by scipy.integrate.quad (relative error ~1e-12)",
        "command": "python systems/butane/make_butane.py  (boltzgen.targets.exact_dihedral.butane_reference)",
        "torsion_coefficients_K": list(TRAPPE_ALKANE_TORSION_K),
        "temperature_K": kelvin,
    }
    for f in cvs.free_energies:
        out[f"delta_f_{f.key}_kT"] = figures["free_energies"][f.key]
        out[f"delta_f_{f.key}_err_kT"] = 0.0
        p_state = {**figures["populations"], **figures["state_populations"]}[f.state]
        out[f"p_{f.key}"], out[f"p_{f.key}_err"] = p_state, 0.0
    out["populations"] = {name: {"p": p, "err": 0.0} for name, p in figures["populations"].items()}
    out["error_method"] = "none: exact (quadrature)"
    out["basins_rad"] = {b.name: b.arcs_rad(cvs.names) for b in cvs.basins}
    return out


__all__ = ["GAS_CONSTANT_KJ_PER_MOL_K", "TRAPPE_ALKANE_TORSION_K", "arc_probability", "butane_reference",
           "exact_dihedral_figures", "trappe_torsion_kelvin"]
