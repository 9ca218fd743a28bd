"""Named systems and from_files: energies and forces against OpenMM built directly, and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from boltzgen import systems
from boltzgen.cli import main

FOLDER = Path(__file__).resolve().parent.parent / "systems" / "alanine-dipeptide"
PDB = FOLDER / "alanine-dipeptide.pdb"
PRMTOP = FOLDER / "alanine-dipeptide-ff96.prmtop"
INPCRD = FOLDER / "alanine-dipeptide-ff96.inpcrd"
KJ = unit.kilojoule_per_mole


# ---- an independent OpenMM evaluation -------------------------------------------------------------
def direct_system_from_xmls(*xmls, residue_templates=None):
    pdb = app.PDBFile(str(PDB))
    return app.ForceField(*xmls).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None,
                                              rigidWater=False, residueTemplates=residue_templates or {})


def direct_system_from_prmtop(implicit_solvent=app.OBC1):
    return app.AmberPrmtopFile(str(PRMTOP)).createSystem(nonbondedMethod=app.NoCutoff, constraints=None,
                                                         implicitSolvent=implicit_solvent)


DIRECT = {
    "alanine-dipeptide": lambda: direct_system_from_xmls("amber99sbildn.xml"),
    "alanine-dipeptide-implicit": lambda: direct_system_from_xmls("amber99sbildn.xml", "amber99_obc.xml"),
    "alanine-dipeptide-amber14": lambda: direct_system_from_xmls("amber14-all.xml"),
    "alanine-dipeptide-ff96": lambda: direct_system_from_prmtop(None),
    "alanine-dipeptide-ff96-implicit": direct_system_from_prmtop,
}


def direct_energy_forces(system, x: np.ndarray, temperature=300.0):
    """Energies (n,) and forces (n, n_atoms, 3) in kT and kT/nm from a Reference Context."""
    kT = (unit.MOLAR_GAS_CONSTANT_R * temperature * unit.kelvin).value_in_unit(KJ)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for xi in x:
        context.setPositions(xi * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ) / kT)
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer) / kT)
    return np.array(energies), np.array(forces)


def md_configurations(system, positions, n_frames=4, seed=1):
    """A few frames of plain OpenMM Langevin dynamics (0.5 fs steps, 0.1 ps apart), nm."""
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    frames = []
    for _ in range(n_frames):
        integrator.step(200)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)


def sample_configurations(target, seed=0):
    """Perturbed (0.01 nm Gaussian) and short-MD configurations of a target, (8, n_atoms, 3) nm."""
    rng = np.random.default_rng(seed)
    perturbed = target.positions + 0.01 * rng.standard_normal((4,) + target.positions.shape)
    return np.concatenate([perturbed, md_configurations(target.system, target.positions)])


def assert_matches_direct(target, direct_system, temperature=300.0):
    x = sample_configurations(target)
    u_ref, f_ref = direct_energy_forces(direct_system, x, temperature)
    u, f = target.energy_and_forces(torch.from_numpy(x))
    # Both are double-precision Reference evaluations of the same System: agreement to rounding.
    np.testing.assert_allclose(u.numpy(), u_ref, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(f.numpy(), f_ref, rtol=1e-10, atol=1e-7)




# ---- named systems --------------------------------------------------------------------------------
def test_names_lists_the_alanine_dipeptide_setups():
    assert set(DIRECT) <= set(systems.names())


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_named_system_matches_direct_openmm(name):
    target = systems.load(name, platform="Reference")
    assert target.name == name and target.n_atoms == 22 and target.temperature == 300.0
    assert_matches_direct(target, DIRECT[name]())


def test_named_systems_have_the_expected_forces_and_no_constraints():
    kinds = {n: {type(f).__name__ for f in systems.load(n, platform="Reference").system.getForces()} for n in DIRECT}
    assert "GBSAOBCForce" in kinds["alanine-dipeptide-implicit"]
    assert "CustomGBForce" in kinds["alanine-dipeptide-ff96-implicit"]  # OpenMM's prmtop OBC1
    for vacuum in ("alanine-dipeptide", "alanine-dipeptide-amber14", "alanine-dipeptide-ff96"):
        assert not {"GBSAOBCForce", "CustomGBForce"} & kinds[vacuum]
    for n, k in kinds.items():
        assert "CMMotionRemover" not in k, n
        assert systems.load(n, platform="Reference").system.getNumConstraints() == 0


def test_load_overrides_and_unknown_name():
    hot = systems.load("alanine-dipeptide", temperature=600.0, platform="Reference")
    cold = systems.load("alanine-dipeptide", platform="Reference")
    x = torch.from_numpy(cold.positions[None])
    assert hot.reduced_energy(x).item() == pytest.approx(cold.reduced_energy(x).item() / 2, rel=1e-12)
    with pytest.raises(ValueError, match="unknown system 'alanine-dipeptid'.*Did you mean alanine-dipeptide"):
        systems.load("alanine-dipeptid")


def test_a_system_yaml_by_path_and_a_bad_yaml(tmp_path):
    (tmp_path / "mol").mkdir()
    (tmp_path / "mol" / "mol.pdb").write_bytes(PDB.read_bytes())
    (tmp_path / "mol" / "my-ala.yaml").write_text(
        "description: test\nstructure: mol.pdb\nforcefield: [amber14-all.xml]\ntemperature: 310\n")
    target = systems.load(str(tmp_path / "mol" / "my-ala.yaml"), platform="Reference")
    assert target.name == "my-ala" and target.temperature == 310.0
    assert systems.names(tmp_path) == ["my-ala"]
    (tmp_path / "mol" / "bad.yaml").write_text("structure: mol.pdb\nforce_field: [amber14-all.xml]\n")
    with pytest.raises(ValueError, match="unknown keys \\['force_field'\\]"):
        systems.names(tmp_path)


def test_cli_lists_systems(capsys):
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    assert "alanine-dipeptide-ff96-implicit" in out and "CustomGBForce" in out


# ---- from_files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("xmls", [("amber14-all.xml",), ("amber14-all.xml", "implicit/gbn2.xml"), ("amber03.xml",),
                                  ("amber19-all.xml",)])
def test_from_files_force_fields_match_direct_openmm(xmls):
    target = systems.from_files(PDB, list(xmls), temperature=300.0, platform="Reference")
    assert_matches_direct(target, direct_system_from_xmls(*xmls))


def test_from_files_prmtop_vacuum_and_pdb_coordinates():
    target = systems.from_files(PRMTOP, coordinates=PDB, platform="Reference")
    direct = app.AmberPrmtopFile(str(PRMTOP)).createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    assert_matches_direct(target, direct)


def test_from_files_pdbx(tmp_path):
    pdb = app.PDBFile(str(PDB))
    with open(tmp_path / "ala.cif", "w") as fh:
        app.PDBxFile.writeFile(pdb.topology, pdb.positions, fh)
    target = systems.from_files(tmp_path / "ala.cif", "amber14-all.xml", platform="Reference")
    assert_matches_direct(target, direct_system_from_xmls("amber14-all.xml"))


def test_from_files_serialized_system(tmp_path):
    system = direct_system_from_xmls("amber14-all.xml")  # has a CMMotionRemover
    (tmp_path / "system.xml").write_text(openmm.XmlSerializer.serialize(system))
    target = systems.from_files(PDB, system=tmp_path / "system.xml", platform="Reference")
    assert not any(isinstance(f, openmm.CMMotionRemover) for f in target.system.getForces())
    assert_matches_direct(target, system)
    with pytest.raises(ValueError, match="serialized OpenMM System, not a force field; pass it as system="):
        systems.from_files(PDB, [str(tmp_path / "system.xml")])


def test_from_files_refuses_constraints_and_wrong_atom_counts(tmp_path):
    pdb = app.PDBFile(str(PDB))
    constrained = app.ForceField("amber14-all.xml").createSystem(pdb.topology, constraints=app.HBonds)
    (tmp_path / "c.xml").write_text(openmm.XmlSerializer.serialize(constrained))
    with pytest.raises(ValueError, match="12 constraints; boltzgen samples every atom"):
        systems.from_files(PDB, system=tmp_path / "c.xml")
    small = openmm.System()
    small.addParticle(1.0)
    (tmp_path / "s.xml").write_text(openmm.XmlSerializer.serialize(small))
    with pytest.raises(ValueError, match="1 particles but the structure has 22 atoms"):
        systems.from_files(PDB, system=tmp_path / "s.xml")


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="structure file not found: .*nothere.pdb"):
        systems.from_files(tmp_path / "nothere.pdb", ["amber14-all.xml"])
    with pytest.raises(FileNotFoundError, match="force field file not found: my_ff.xml"):
        systems.from_files(PDB, ["amber14-all.xml", "my_ff.xml"])
    with pytest.raises(FileNotFoundError, match="coordinates file not found: .*x.inpcrd"):
        systems.from_files(PRMTOP, coordinates=tmp_path / "x.inpcrd")


def test_inconsistent_arguments_are_named():
    with pytest.raises(ValueError, match="pass coordinates="):
        systems.from_files(PRMTOP)
    with pytest.raises(ValueError, match="prmtop carries its own force field"):
        systems.from_files(PRMTOP, ["amber14-all.xml"], coordinates=INPCRD)
    with pytest.raises(ValueError, match="forcefield= is required"):
        systems.from_files(PDB)
    with pytest.raises(ValueError, match="implicit_solvent must be None or one of"):
        systems.from_files(PRMTOP, coordinates=INPCRD, implicit_solvent="OBC")
    with pytest.raises(ValueError, match="system_kwargs may not set \\['constraints'\\]"):
        systems.from_files(PDB, ["amber14-all.xml"], system_kwargs={"constraints": app.HBonds})


# ---- residues the force field does not know / cannot decide -----------------------------------------
def test_unknown_residue_names_it_and_says_what_to_do(tmp_path):
    modeller = app.Modeller(app.PDBFile(str(PDB)).topology, app.PDBFile(str(PDB)).positions)
    water = app.Modeller(app.Topology(), [])
    water.addSolvent(app.ForceField("amber14-all.xml", "amber14/tip3p.xml"), boxSize=openmm.Vec3(1, 1, 1) * unit.nanometer)
    first = next(water.topology.residues())
    water.delete([r for r in water.topology.residues() if r is not first])
    modeller.add(water.topology, water.positions)
    path = tmp_path / "ala_water.pdb"
    with open(path, "w") as fh:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, fh)
    with pytest.raises(ValueError, match=r"no template for residue HOH \(index 3\).*What to do.*tip3p.xml"):
        systems.from_files(path, ["amber99sbildn.xml"])
    # Following the advice works.
    assert systems.from_files(path, ["amber99sbildn.xml", "tip3p.xml"], platform="Reference").n_atoms == 25


def test_missing_hydrogen_names_the_residue(tmp_path):
    lines = [l for l in PDB.read_text().splitlines() if " HA  ALA" not in l]
    (tmp_path / "noha.pdb").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"no template for residue ALA \(index 1\).*missing 1 H atom.*addHydrogens"):
        systems.from_files(tmp_path / "noha.pdb", ["amber14-all.xml"])


def test_charmm36_ambiguity_is_explained():
    with pytest.raises(ValueError) as info:
        systems.from_files(PDB, ["charmm36.xml"])
    message = str(info.value)
    assert "ALAD" in message and "AANM" in message
    assert "residue_templates={('ACE', 'ALA', 'NME'): 'ALAD'}" in message
    assert "ACE (index 0), ALA (index 1), NME (index 2)" in message


def charmm36_direct(template):
    """charmm36 with ``template`` for the whole dipeptide, built with OpenMM's residueTemplates on a
    topology whose three residues the test merges into one."""
    pdb = app.PDBFile(str(PDB))
    merged = app.Topology()
    residue = merged.addResidue("DIP", merged.addChain())
    atoms = {a: merged.addAtom(a.name, a.element, residue) for a in pdb.topology.atoms()}
    for a, b in pdb.topology.bonds():
        merged.addBond(atoms[a], atoms[b])
    return app.ForceField("charmm36.xml").createSystem(merged, nonbondedMethod=app.NoCutoff, constraints=None,
                                                        residueTemplates={residue: template})


def test_charmm36_choosing_a_template_works_and_matches_openmm():
    target = systems.from_files(PDB, ["charmm36.xml"], residue_templates={("ACE", "ALA", "NME"): "ALAD"},
                                platform="Reference")
    assert target.topology.getNumResidues() == 3  # the target keeps the original residues
    assert_matches_direct(target, charmm36_direct("ALAD"))


@pytest.mark.slow
@pytest.mark.parametrize("template", ["ALAD", "AANM"])
def test_charmm36_choice_matches_openmm_template_matcher(template):
    """A second independent route: OpenMM's own matching of the merged molecule, steered by a
    template matcher (slow: OpenMM first tries every charmm36 patch on ACE and NME)."""
    target = systems.from_files(PDB, ["charmm36.xml"], residue_templates={("ACE", "ALA", "NME"): template},
                                platform="Reference")
    ff = app.ForceField("charmm36.xml")
    ff.registerTemplateMatcher(lambda ff, res, *args: ff._templates[template] if res.name == "Merged" else None)
    pdb = app.PDBFile(str(PDB))
    direct = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    assert_matches_direct(target, direct)
    assert_matches_direct(target, charmm36_direct(template))


def test_residue_templates_bad_names():
    with pytest.raises(ValueError, match="no template 'ALAN'.*close names: .*ALA"):
        systems.from_files(PDB, ["amber14-all.xml"], residue_templates={("ACE", "ALA", "NME"): "ALAN"})
    with pytest.raises(ValueError, match="key 'GLY' matches no residue; residues \\(index:name\\): 0:ACE, 1:ALA"):
        systems.from_files(PDB, ["amber14-all.xml"], residue_templates={"GLY": "GLY"})
    with pytest.raises(ValueError, match="residue_templates: User-supplied template GLY does not match"):
        systems.from_files(PDB, ["amber14-all.xml"], residue_templates={1: "GLY"})


def test_a_renamed_residue_is_blamed_not_its_innocent_neighbour(tmp_path):
    """ALA renamed XYZ: the PDB reader gives XYZ no bonds, so ACE (index 0) loses its bond to it and
    OpenMM reports ACE first ("missing 1 C atom ... capping group?"). The message names XYZ first."""
    (tmp_path / "xyz.pdb").write_text(PDB.read_text().replace(" ALA ", " XYZ "))
    with pytest.raises(ValueError) as info:
        systems.from_files(tmp_path / "xyz.pdb", ["amber99sbildn.xml"])
    message = str(info.value)
    assert message.startswith("the force field (amber99sbildn.xml) has no template for residue XYZ (index 1). "
                              "OpenMM says: The set of atoms matches ALA, but the residue has no bonds")
    # the neighbour is still mentioned, after the culprit
    assert message.index("ACE (index 0)") > message.index("XYZ (index 1)")
    assert "What to do" in message


@pytest.mark.parametrize("content, problem", [
    ("", r"the file is empty \(expected a PDB file\)"),
    ("hello\nthis is not a pdb\n", r"not a PDB file \(no ATOM or HETATM records\)"),
    (bytes(range(256)) * 4, r"not a PDB file \(no ATOM or HETATM records\)"),
    ("ATOM      1  CA  ALA A   1      xx.xxx   1.000   1.000\n",
     r"cannot be read as a PDB file \(ValueError: could not convert string to float"),
])
def test_unreadable_structures_name_the_path_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "mol.pdb"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ValueError, match=rf"^structure {path}: {problem}"):
        systems.from_files(path, ["amber14-all.xml"])
    # the same through a system YAML (what `boltzgen md my.yaml` loads)
    (tmp_path / "mol.yaml").write_text("structure: mol.pdb\nforcefield: [amber14-all.xml]\n")
    with pytest.raises(ValueError, match=rf"^structure {path}: {problem}"):
        systems.load(str(tmp_path / "mol.yaml"))


def test_unreadable_amber_files_and_yaml_name_the_path(tmp_path):
    (tmp_path / "bad.prmtop").write_text("garbage\n")
    (tmp_path / "bad.inpcrd").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"^structure .*bad\.prmtop: cannot be read as an Amber prmtop file \("):
        systems.from_files(tmp_path / "bad.prmtop", coordinates=INPCRD)
    with pytest.raises(ValueError, match=r"^coordinates .*bad\.inpcrd: cannot be read as an Amber inpcrd/rst7 file"):
        systems.from_files(PRMTOP, coordinates=tmp_path / "bad.inpcrd")
    (tmp_path / "broken.yaml").write_text("structure: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not a readable system YAML \(ParserError: [^\n]*\)$"):
        systems.load(str(tmp_path / "broken.yaml"))
    (tmp_path / "latin1.yaml").write_bytes(b"description: caf\xe9\nstructure: mol.pdb\n")
    with pytest.raises(ValueError, match=r"latin1\.yaml: not a readable system YAML \(UnicodeDecodeError"):
        systems.load(str(tmp_path / "latin1.yaml"))


def test_a_structure_file_is_not_a_system():
    with pytest.raises(ValueError, match=r"alanine-dipeptide\.pdb is a structure file, not a system: .*system YAML "
                                         r"\(e\.g\. 'structure: alanine-dipeptide\.pdb'"):
        systems.load(str(PDB))
