"""Build united-atom n-butane (TraPPE-UA) as an OpenMM System and write the files of systems/butane/.

    python systems/butane/make_butane.py        # writes butane.xml, butane.pdb, butane.reference.json here

Four sites CH3-CH2-CH2-CH3 (C1 ... C4), TraPPE-UA (Martin & Siepmann, J. Phys. Chem. B 102, 2569 (1998)):

* masses: CH3 15.035 u, CH2 14.027 u.
* bonds: TraPPE fixes them at 0.154 nm. boltzgen systems have no constraints (a Boltzmann generator
  samples every coordinate), so each bond is a stiff harmonic spring at 0.154 nm,
  U = k_b/2 (r - 0.154 nm)^2 with k_b = 259,408 kJ/(mol nm^2) (Amber's CT-CT constant, 310 kcal/(mol A^2)
  in Amber's K (r - r0)^2 form: 2 x 310 x 4.184 x 100). Bonds do not depend on the dihedral, so this
  choice leaves the dihedral distribution exactly as with fixed bonds (see butane.reference.json).
* angle CHx-CH2-CH2: theta0 = 114 deg, U = k_theta/2 (theta - theta0)^2 with k_theta/k_B = 62,500 K/rad^2.
  OpenMM's HarmonicAngleForce uses the same k/2 form, so its k is k_theta itself in kJ/mol:
  k = 62,500 K x R = 62,500 x 0.00831446261815324 kJ/(mol K) = 519.654 kJ/(mol rad^2).
* torsion: U = c1 (1 + cos phi) + c2 (1 - cos 2 phi) + c3 (1 + cos 3 phi), c1/k_B = 355.03 K,
  c2/k_B = -68.19 K, c3/k_B = 791.32 K, phi in the IUPAC convention (trans = 180 deg, U = 0 there).
  As an OpenMM PeriodicTorsionForce, k (1 + cos(n phi - phi0)), three terms: (n = 1, phi0 = 0, k = c1),
  (n = 2, phi0 = pi, k = c2: 1 + cos(2 phi - pi) = 1 - cos 2 phi; k is negative, which OpenMM allows),
  (n = 3, phi0 = 0, k = c3), each c in kJ/mol = (c/k_B) x R. tests/test_butane.py checks it against a
  direct evaluation of the formula.
* no nonbonded interactions: TraPPE's intramolecular Lennard-Jones acts between sites more than three
  bonds apart, and butane has none.

No cutoff, no constraints, no CMMotionRemover: the System holds only energy terms, as every named
system. The structure is the trans (phi = 180 deg) conformation at the bond length and angle minimum.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
R_KJ_PER_MOL_K = 0.00831446261815324  # molar gas constant, kJ/(mol K)
MASSES_U = (15.035, 14.027, 14.027, 15.035)  # CH3, CH2, CH2, CH3
BOND_NM = 0.154
BOND_K_KJ_PER_MOL_NM2 = 2.0 * 310.0 * 4.184 * 100.0  # 259,408: Amber CT-CT, stiff stand-in for a fixed bond
ANGLE_RAD = math.radians(114.0)
ANGLE_K_KELVIN_PER_RAD2 = 62500.0
TORSION_K = (355.03, -68.19, 791.32)  # c1, c2, c3 / k_B in K


def build_system() -> openmm.System:
    """The TraPPE-UA n-butane System (4 particles; bonds, angles and the torsion only)."""
    system = openmm.System()
    for mass in MASSES_U:
        system.addParticle(mass * unit.amu)
    bonds = openmm.HarmonicBondForce()
    for i in range(3):
        bonds.addBond(i, i + 1, BOND_NM, BOND_K_KJ_PER_MOL_NM2)
    angles = openmm.HarmonicAngleForce()
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, ANGLE_RAD, ANGLE_K_KELVIN_PER_RAD2 * R_KJ_PER_MOL_K)
    torsion = openmm.PeriodicTorsionForce()
    c1, c2, c3 = (c * R_KJ_PER_MOL_K for c in TORSION_K)
    torsion.addTorsion(0, 1, 2, 3, 1, 0.0, c1)
    torsion.addTorsion(0, 1, 2, 3, 2, math.pi, c2)
    torsion.addTorsion(0, 1, 2, 3, 3, 0.0, c3)
    for force in (bonds, angles, torsion):
        system.addForce(force)
    return system


def build_topology() -> app.Topology:
    """One residue BUT (number 1) of four carbon sites C1-C2-C3-C4, bonded in a chain."""
    topology = app.Topology()
    residue = topology.addResidue("BUT", topology.addChain("A"), id="1")
    atoms = [topology.addAtom(f"C{k + 1}", app.element.carbon, residue) for k in range(4)]
    for a, b in zip(atoms[:-1], atoms[1:]):
        topology.addBond(a, b)
    return topology


def trans_positions() -> np.ndarray:
    """(4, 3) positions in nm: the planar zig-zag with phi = 180 deg, bonds 0.154 nm, angles 114 deg."""
    b, t = BOND_NM, ANGLE_RAD
    c2, c3 = np.zeros(3), np.array([b, 0.0, 0.0])
    c1 = c2 + b * np.array([math.cos(t), math.sin(t), 0.0])
    c4 = c3 + b * np.array([-math.cos(t), -math.sin(t), 0.0])
    return np.stack([c1, c2, c3, c4]) + np.array([0.5, 0.5, 0.5])  # away from the origin, for the PDB


def main() -> None:
    system = build_system()
    (HERE / "butane.xml").write_text(openmm.XmlSerializer.serialize(system))
    with open(HERE / "butane.pdb", "w") as fh:
        app.PDBFile.writeFile(build_topology(), trans_positions() * unit.nanometer, fh, keepIds=True)
    from boltzgen import systems
    from boltzgen.targets.exact_dihedral import butane_reference

    spec = systems.specs()["butane"]
    reference = butane_reference(spec.cvs, temperature=float(spec.options["temperature"]))
    (HERE / "butane.reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote butane.xml, butane.pdb and butane.reference.json in {HERE}")


if __name__ == "__main__":
    main()
