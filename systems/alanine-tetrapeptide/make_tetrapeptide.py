"""Build alanine tetrapeptide (ACE-ALA-ALA-ALA-NME, 42 atoms) from ideal peptide geometry.

    python systems/alanine-tetrapeptide/make_tetrapeptide.py     # writes alanine-tetrapeptide.pdb here

Nothing is read from an existing structure: the molecule is built from its bond graph and ideal internal
coordinates with boltzgen's own Z-matrix builder, then minimised with the force field it is simulated with.

1. **Topology.** Residues ACE 1, ALA 2, ALA 3, ALA 4, NME 5 in one chain, all hydrogens, bonded explicitly.
   Atom names are those OpenMM's (and mdtraj's) PDB reader gives these residues, the names
   ``systems/alanine-dipeptide/alanine-dipeptide.pdb`` loads with: ACE H1 CH3 H2 H3 C O; ALA N H CA HA CB
   HB1 HB2 HB3 C O; NME N H C H1 H2 H3. (amber99sbildn.xml's templates spell the methyl hydrogens
   HH31/HH32/HH33 and the NME carbon CH3; OpenMM's pdbNames.xml maps those spellings to these, and the
   templates are matched by element and bond graph, which :func:`check` verifies.) Written this way the
   PDB reads back with exactly the names it was written with, which the collective variables of
   ``alanine-tetrapeptide.molecule.yaml`` use.
2. **Z-matrix.** ``boltzgen.coordinates.internal.zmatrix(topology)`` with its default main chain: the
   longest heavy-atom path, ACE CH3 to NME C, i.e. the backbone, so every phi, psi and omega is itself a
   dihedral coordinate (:func:`dihedral_values` raises if one is not).
3. **Ideal internal coordinates.**

   * Bond lengths: the equilibrium length r0 of the force field's HarmonicBondForce term of that bond
     (amber99sbildn.xml, i.e. the ff99SB bond parameters of parm99: e.g. C-N 0.1335 nm, N-CT 0.1449 nm,
     CT-C 0.1522 nm, C=O 0.1229 nm, CT-CT 0.1526 nm, CT-HC/H1 0.1090 nm, N-H 0.1010 nm).
   * Bond angles: the equilibrium angle theta0 of the force field's HarmonicAngleForce term of that angle
     (same source; e.g. C-N-CT 121.9 deg, N-CT-C 110.1 deg, CT-C-N 116.6 deg, O=C-N 122.9 deg,
     sp3 angles with hydrogens 109.5 deg).
   * Backbone dihedrals (IUPAC convention, trans = 180 deg): every peptide bond trans, omega = 180 deg
     (ACE-ALA2, ALA2-ALA3, ALA3-ALA4, ALA4-NME); each alanine in the antiparallel beta-sheet conformation
     phi = -139 deg, psi = +135 deg (IUPAC-IUB Commission on Biochemical Nomenclature, Biochemistry 9,
     3471 (1970), Table: standard values of the antiparallel pleated sheet).
   * Branches at a centre j (two substituents i and l of j seen along the bond j-k, the Z-matrix's
     "improper-like" dihedrals): 180 deg at a planar sp2 centre (three neighbours: carbonyl C, amide N),
     which puts O and the amide H in the peptide plane; +-120 deg at a tetrahedral sp3 centre (four
     neighbours: the exact value for ideal tetrahedral angles), the second substituent placed with sign
     ``SP3_SIGN`` and the third with the opposite sign. At each CA the second and third substituents
     are CB and HA, and ``SP3_SIGN`` = -1 gives the L configuration (checked with
     ``boltzgen.coordinates.is_l_amino_acid``; +1 would build D-alanines).
   * Methyl groups (staggered): the first hydrogen anti to a backbone heavy atom, HB1-CB-CA-N = 180 deg
     (staggered about the sp3-sp3 bond; HB2, HB3 at +-120 deg from it), ACE H1-CH3-C-N = 180 deg (H1
     eclipses O, the minimum of an acetyl methyl) and NME H1-C-N-C(ALA4) = 180 deg (H1 anti to the
     carbonyl carbon, in the amide plane).

   Atoms are placed with ``boltzgen.coordinates.internal.positions_from_internal`` (NeRF, float64).
4. **Minimisation.** The System is built as ``boltzgen.systems.from_files`` builds every named system
   (amber99sbildn.xml, vacuum, NoCutoff, no constraints, flexible, no CMMotionRemover) and minimised with
   OpenMM's L-BFGS (``LocalEnergyMinimizer``, Reference platform, RMS force tolerance
   ``MINIMISE_TOLERANCE``). Minimisation moves phi/psi to the nearby vacuum minimum; the structure stays
   all-L with trans amides (:func:`check`).
5. **Checks** (:func:`check`, run before writing): amber99sbildn.xml matches templates ACE, ALA, NME;
   every residue is L; every bond within 0.01 nm of the force field's r0; finite energy below zero (a
   compact, strain-free peptide in vacuum has a negative amber energy); every omega trans
   (|omega| > 150 deg); mdtraj finds three phi and three psi.

tests/test_tetrapeptide.py imports this file to rebuild the unminimised structure and compare.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

HERE = Path(__file__).resolve().parent
PDB_NAME = "alanine-tetrapeptide.pdb"
FORCEFIELD = "amber99sbildn.xml"
PHI_DEG, PSI_DEG, OMEGA_DEG = -139.0, 135.0, 180.0  # antiparallel beta sheet (IUPAC-IUB 1970); trans amides
SP2_BRANCH_DEG, SP3_BRANCH_DEG = 180.0, 120.0
SP3_SIGN = -1  # sign of the second substituent's branch dihedral at an sp3 centre; -1 makes every CA L
METHYL_DEG = 180.0
MINIMISE_TOLERANCE = 0.01  # kJ/mol/nm, RMS force at which L-BFGS stops
BOND_TOLERANCE_NM = 0.01

# (residue name, [(atom name, element symbol)], [bonds within the residue]); inter-residue bonds: C(i)-N(i+1)
RESIDUES = {
    "ACE": ([("H1", "H"), ("CH3", "C"), ("H2", "H"), ("H3", "H"), ("C", "C"), ("O", "O")],
            [("H1", "CH3"), ("CH3", "H2"), ("CH3", "H3"), ("CH3", "C"), ("C", "O")]),
    "ALA": ([("N", "N"), ("H", "H"), ("CA", "C"), ("HA", "H"), ("CB", "C"), ("HB1", "H"), ("HB2", "H"),
             ("HB3", "H"), ("C", "C"), ("O", "O")],
            [("N", "H"), ("N", "CA"), ("CA", "HA"), ("CA", "CB"), ("CB", "HB1"), ("CB", "HB2"), ("CB", "HB3"),
             ("CA", "C"), ("C", "O")]),
    "NME": ([("N", "N"), ("H", "H"), ("C", "C"), ("H1", "H"), ("H2", "H"), ("H3", "H")],
            [("N", "H"), ("N", "C"), ("C", "H1"), ("C", "H2"), ("C", "H3")]),
}
SEQUENCE = ("ACE", "ALA", "ALA", "ALA", "NME")  # residue numbers 1..5


def build_topology() -> app.Topology:
    """ACE-ALA-ALA-ALA-NME with all hydrogens and every bond (42 atoms, 41 bonds), residues numbered 1-5."""
    top = app.Topology()
    chain = top.addChain("A")
    previous_c = None
    for number, name in enumerate(SEQUENCE, start=1):
        atoms_spec, bonds_spec = RESIDUES[name]
        residue = top.addResidue(name, chain, id=str(number))
        atoms = {a: top.addAtom(a, app.Element.getBySymbol(e), residue) for a, e in atoms_spec}
        if previous_c is not None:
            top.addBond(previous_c, atoms["N"])
        for a, b in bonds_spec:
            top.addBond(atoms[a], atoms[b])
        previous_c = atoms.get("C") if name != "NME" else None
    return top


def create_system(topology: app.Topology, forcefield=(FORCEFIELD,)) -> openmm.System:
    """The System as boltzgen.systems.from_files builds it: NoCutoff, no constraints, flexible, no CM remover."""
    return app.ForceField(*forcefield).createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None,
                                                    rigidWater=False, removeCMMotion=False)


def atom_index(topology, residue_number: int, name: str) -> int:
    """The 0-based index of atom ``name`` of residue number ``residue_number`` (1-based, as in the PDB)."""
    found = [a.index for a in topology.atoms() if int(a.residue.id) == residue_number and a.name == name]
    if len(found) != 1:
        raise ValueError(f"no unique atom {name} in residue {residue_number}")
    return found[0]


def named_torsions(topology, phi_deg=PHI_DEG, psi_deg=PSI_DEG) -> dict[tuple[int, int, int, int], tuple[str, float]]:
    """{(a, b, c, d): (name, degrees)}: the backbone torsions and the first hydrogen of every methyl."""
    def at(r, n):
        return atom_index(topology, r, n)

    out = {}
    # omega: CA(i)-C(i)-N(i+1)-CA(i+1), with ACE's CH3 and NME's C standing in for CA
    alpha = {1: "CH3", 2: "CA", 3: "CA", 4: "CA", 5: "C"}
    for r in range(1, 5):
        out[(at(r, alpha[r]), at(r, "C"), at(r + 1, "N"), at(r + 1, alpha[r + 1]))] = (f"omega{r}", OMEGA_DEG)
    for i, r in enumerate((2, 3, 4), start=1):
        out[(at(r - 1, "C"), at(r, "N"), at(r, "CA"), at(r, "C"))] = (f"phi{i}", phi_deg)
        out[(at(r, "N"), at(r, "CA"), at(r, "C"), at(r + 1, "N"))] = (f"psi{i}", psi_deg)
        out[(at(r, "HB1"), at(r, "CB"), at(r, "CA"), at(r, "N"))] = (f"methyl CB{r}", METHYL_DEG)
    out[(at(1, "H1"), at(1, "CH3"), at(1, "C"), at(2, "N"))] = ("methyl ACE1", METHYL_DEG)
    out[(at(5, "H1"), at(5, "C"), at(5, "N"), at(4, "C"))] = ("methyl NME5", METHYL_DEG)
    return out


def force_field_geometry(system: openmm.System) -> tuple[dict, dict]:
    """({frozenset(i, j): r0 in nm}, {(i, j, k) and (k, j, i): theta0 in rad}) of the harmonic terms."""
    bonds, angles = {}, {}
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for n in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(n)
                bonds[frozenset((i, j))] = r0.value_in_unit(unit.nanometer)
        elif isinstance(force, openmm.HarmonicAngleForce):
            for n in range(force.getNumAngles()):
                i, j, k, theta0, _ = force.getAngleParameters(n)
                angles[(i, j, k)] = angles[(k, j, i)] = theta0.value_in_unit(unit.radian)
    return bonds, angles


def dihedral_values(zmat, topology, phi_deg=PHI_DEG, psi_deg=PSI_DEG) -> tuple[np.ndarray, list[str]]:
    """The ideal value (radians) of every Z-matrix dihedral, and what each is (module docstring, step 3).

    Raises:
        ValueError: a Z-matrix dihedral that is neither a named torsion nor a branch at a centre, or a named
            backbone torsion (phi, psi, omega) that is no coordinate of the Z-matrix.
    """
    neighbours = {a.index: set() for a in topology.atoms()}
    for a, b in topology.bonds():
        neighbours[a.index].add(b.index)
        neighbours[b.index].add(a.index)
    named = named_torsions(topology, phi_deg, psi_deg)
    values, kinds, seen_branch, used = [], [], {}, set()
    for i, j, k, l in zmat.dihedral_atoms.tolist():
        key = next((q for q in ((i, j, k, l), (l, k, j, i)) if q in named), None)
        if key is not None:
            name, value = named[key]
            used.add(key)
        elif l in neighbours[j]:  # i and l both bonded to j, seen along j-k: a branch at the centre j
            if len(neighbours[j]) == 3:
                name, value = "sp2 branch", SP2_BRANCH_DEG
            elif len(neighbours[j]) == 4:
                nth = seen_branch[(j, k, l)] = seen_branch.get((j, k, l), 0) + 1
                if nth > 2:
                    raise ValueError(f"sp3 centre {j}: more than three substituents placed about {j}-{k}")
                name, value = "sp3 branch", SP3_SIGN * SP3_BRANCH_DEG * (1 if nth == 1 else -1)
            else:
                raise ValueError(f"atom {j} has {len(neighbours[j])} neighbours: no ideal branch dihedral")
        else:
            raise ValueError(f"Z-matrix dihedral {i}-{j}-{k}-{l} is no named torsion and no branch")
        values.append(math.radians(value))
        kinds.append(name)
    missing = [n for q, (n, _) in named.items() if q not in used and not n.startswith("methyl")]
    if missing:
        raise ValueError(f"backbone torsions {missing} are not coordinates of the Z-matrix")
    return np.array(values), kinds


def build_unminimised(phi_deg=PHI_DEG, psi_deg=PSI_DEG):
    """(topology, positions (42, 3) nm float64, Z-matrix): the ideal-geometry structure before minimisation."""
    from boltzgen.coordinates.internal import positions_from_internal, zmatrix

    topology = build_topology()
    bonds_ff, angles_ff = force_field_geometry(create_system(topology))
    zmat = zmatrix(topology)
    bonds = [bonds_ff[frozenset(ij)] for ij in zmat.bond_atoms.tolist()]
    angles = [angles_ff[tuple(ijk)] for ijk in zmat.angle_atoms.tolist()]
    dihedrals, _ = dihedral_values(zmat, topology, phi_deg, psi_deg)
    x = positions_from_internal(torch.tensor([bonds], dtype=torch.float64), torch.tensor([angles], dtype=torch.float64),
                                torch.from_numpy(dihedrals)[None], zmat)[0]
    return topology, x.numpy(), zmat


def energy_kj(system: openmm.System, positions_nm: np.ndarray) -> float:
    """Potential energy in kJ/mol (Reference platform)."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm * unit.nanometer)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def minimise(system: openmm.System, positions_nm: np.ndarray) -> np.ndarray:
    """L-BFGS to an RMS force of MINIMISE_TOLERANCE kJ/mol/nm, Reference platform; positions (N, 3) nm."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, MINIMISE_TOLERANCE, 0)
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


def dihedrals_deg(positions_nm: np.ndarray, quadruples) -> np.ndarray:
    """Dihedral angles (IUPAC sign, degrees) of the atom quadruples, via mdtraj."""
    import mdtraj

    frame = mdtraj.Trajectory(positions_nm[None], None)
    return np.degrees(mdtraj.compute_dihedrals(frame, np.asarray(quadruples), periodic=False)[0])


def _require(condition, message: str) -> None:
    if not condition:
        raise RuntimeError(f"make_tetrapeptide check failed: {message}")


def check(topology: app.Topology, positions_nm: np.ndarray, system: openmm.System) -> dict:
    """The checks of the module docstring (step 5); raises RuntimeError naming the failure. Returns figures."""
    import mdtraj

    from boltzgen.coordinates import is_l_amino_acid, mdtraj_topology

    matched = [t.name for t in app.ForceField(FORCEFIELD).getMatchingTemplates(topology)]
    _require(matched == list(SEQUENCE), f"{FORCEFIELD} matched templates {matched}, expected {list(SEQUENCE)}")
    _require(bool(is_l_amino_acid(torch.from_numpy(positions_nm)[None], topology)[0]), "not all residues are L")
    bonds_ff, _ = force_field_geometry(system)
    worst = max(abs(np.linalg.norm(positions_nm[i] - positions_nm[j]) - r0)
                for (i, j), r0 in ((tuple(k), v) for k, v in bonds_ff.items()))
    _require(worst < BOND_TOLERANCE_NM, f"a bond is {worst:.4f} nm from its equilibrium length")
    energy = energy_kj(system, positions_nm)
    _require(math.isfinite(energy) and energy < 0, f"energy {energy} kJ/mol is not finite and negative")
    omegas = dihedrals_deg(positions_nm, [q for q, (n, _) in named_torsions(topology).items() if n.startswith("omega")])
    _require(np.all(np.abs(omegas) > 150), f"an amide is not trans: omega = {omegas} deg")
    traj = mdtraj.Trajectory(positions_nm[None], mdtraj_topology(topology))
    phi_idx, phi = mdtraj.compute_phi(traj)
    psi_idx, psi = mdtraj.compute_psi(traj)
    _require(len(phi_idx) == 3 and len(psi_idx) == 3, f"mdtraj finds {len(phi_idx)} phi and {len(psi_idx)} psi")
    return {"energy_kj_per_mol": energy, "worst_bond_deviation_nm": worst, "omega_deg": omegas.tolist(),
            "phi_deg": np.degrees(phi[0]).tolist(), "psi_deg": np.degrees(psi[0]).tolist()}


def build() -> tuple[app.Topology, np.ndarray, np.ndarray, dict]:
    """(topology, unminimised positions, minimised positions (42, 3) nm, figures of :func:`check`)."""
    topology, x0, _ = build_unminimised()
    system = create_system(topology)
    x = minimise(system, x0)
    figures = check(topology, x, system)
    figures["unminimised_energy_kj_per_mol"] = energy_kj(system, x0)
    return topology, x0, x, figures


def write_pdb(topology: app.Topology, positions_nm: np.ndarray, fh) -> None:
    """The PDB file: two REMARKs naming this script, then the model (no date: the file is reproducible)."""
    print("REMARK   1 ACE-ALA-ALA-ALA-NME built from ideal geometry by make_tetrapeptide.py", file=fh)
    print("REMARK   1 (amber99sbildn.xml r0/theta0, phi -139 psi 135 omega 180), minimised in vacuum", file=fh)
    # writeModel + writeFooter: writeFile's header would add the date
    app.PDBFile.writeModel(topology, positions_nm * 10.0 * unit.angstrom, fh, keepIds=True)
    app.PDBFile.writeFooter(topology, fh)


def main() -> int:
    topology, _, x, figures = build()
    with open(HERE / PDB_NAME, "w") as fh:
        write_pdb(topology, x, fh)
    print(f"wrote {HERE / PDB_NAME}: 42 atoms, unminimised {figures['unminimised_energy_kj_per_mol']:.2f} kJ/mol, "
          f"minimised {figures['energy_kj_per_mol']:.2f} kJ/mol; worst bond {figures['worst_bond_deviation_nm']:.4f} "
          "nm from r0")
    print("phi", np.round(figures["phi_deg"], 1), "psi", np.round(figures["psi_deg"], 1),
          "omega", np.round(figures["omega_deg"], 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
