"""Collective variables declared with the molecule (boltzgen.cvs, system YAMLs, molecule files) and the
figures that follow from them: every declared CV, basin and free energy is reported, and a molecule
that declares none still gets its energies, log Z and ESS."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from boltzgen import systems
from boltzgen.analysis import WeightedRun, load_run, run_figures
from boltzgen.cli import format_sample_summary, main
from boltzgen.cvs import MoleculeCVs, Region, atom_indices, read_cvs

ROOT = Path(__file__).resolve().parent.parent
ALA_DIR = ROOT / "systems" / "alanine-dipeptide"
ALA_PDB = ALA_DIR / "alanine-dipeptide.pdb"


def declare(text: str, where: str = "test.yaml") -> MoleculeCVs:
    import yaml

    return read_cvs(yaml.safe_load(text), where)


# ---- the declaration --------------------------------------------------------------------------
def test_atom_names_in_every_form_resolve_to_the_same_atoms():
    forms = {
        "residue name and number": "[ACE1-C, ALA2-N, ALA2-CA, ALA2-C]",
        "residue number": "[1-C, 2-N, 2-CA, 2-C]",
        "residue name": "[ACE-C, ALA-N, ALA-CA, ALA-C]",
        "indices": "[4, 6, 8, 14]",
    }
    with systems.load("alanine-dipeptide") as target:
        for form, atoms in forms.items():
            cvs = declare(f"collective_variables: {{phi: {atoms}}}")
            assert atom_indices(cvs, target.topology)["phi"].tolist() == [4, 6, 8, 14], form


@pytest.mark.parametrize("text, message", [
    ("collective_variables: {phi: [ACE1-C, ALA2-N, ALA2-CA]}", r"'phi': a dihedral needs four atoms, got 3"),
    ("collective_variables: {phi: ACE1-C}", r"'phi' must be a list of four atoms"),
    ("collective_variables: {phi: [a b, c, d, e]}", r"atom 'a b' is not RESNAME<resnum>-ATOM"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {x: {psi: [0, 10]}}",
     r"basins_deg 'x' uses 'psi', which is no declared collective variable \(declared: phi\)"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {x: {phi: [0, 200]}}",
     r"arc of 'phi' must have low and high in \[-180, 180\] deg"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {x: {phi: [10, 10]}}", r"low != high"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {x: {phi: 10}}", r"must be \[low, high\] in degrees"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {x: {phi: [0, 10]}}\nstates_deg: {x: {phi: [0, 20]}}",
     r"x named more than once"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {a: {phi: [0, 10]}}\n"
     "free_energies: {d: {state: a, reference: b}}", r"free_energies 'd': reference 'b' is no basin or state"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\nbasins_deg: {a: {phi: [0, 10]}}\nfree_energies: {d: [a, a]}",
     r"free_energies 'd' must be \{state: REGION, reference: REGION\}"),
    ("basins_deg: {a: {}}", r"basins, states and free energies need collective_variables"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\ntransition_cores_deg: {phi: {a: [0, 10]}}", r"must hold two cores"),
    ("collective_variables: {phi: [1, 2, 3, 4]}\ntransition_cores_deg: {phi: {a: [10, 0], b: [20, 30]}}",
     r"transition core 'a' must be \[low, high\] with -180 <= low < high <= 180"),
])
def test_bad_declarations_name_the_file_and_the_entry(text, message):
    with pytest.raises(ValueError, match=message) as info:
        declare(text, "mine.yaml")
    assert str(info.value).startswith("mine.yaml: ")


def test_atoms_the_molecule_lacks_or_holds_twice_are_named():
    with systems.load("alanine-dipeptide") as target:
        with pytest.raises(ValueError, match=r"'phi': no atom 'ALA3-CA' in the molecule \(residues: ACE1, ALA2, NME3\)"):
            atom_indices(declare("collective_variables: {phi: [ACE1-C, ALA2-N, ALA3-CA, ALA2-C]}"), target.topology)
        with pytest.raises(ValueError, match=r"atom 'C' is ambiguous \(3 atoms match\); add the residue name and "
                                             r"number, e\.g\. ACE1-C"):
            atom_indices(declare("collective_variables: {phi: [C, ALA2-N, ALA2-CA, ALA2-C]}"), target.topology)
        with pytest.raises(ValueError, match=r"atom index 40 is out of range \(the molecule has 22 atoms\)"):
            atom_indices(declare("collective_variables: {phi: [40, 6, 8, 14]}"), target.topology)


def test_arcs_are_half_open_and_wrap_through_180():
    trans = declare("collective_variables: {t: [0, 1, 2, 3]}\nbasins_deg: {trans: {t: [120, -120]}}").basins[0]
    deg = np.array([-180.0, -150.0, -120.0, -119.9, 0.0, 119.9, 120.0, 179.9, 180.0, np.nan])
    inside = trans.contains({"t": np.radians(deg)})
    assert inside.tolist() == [True, True, False, False, False, False, True, True, True, False]
    whole = Region("all", (("t", -math.pi, math.pi),))
    assert whole.contains({"t": np.radians(deg[:-1])}).all()


# ---- alanine dipeptide: its facts live in its molecule file, shared by every set-up ------------
def test_every_alanine_dipeptide_setup_shares_one_declaration_and_molecule_files_are_no_systems():
    names = [n for n in systems.names() if n.startswith("alanine-dipeptide")]
    assert len(names) == 5 and not any(n.endswith(".molecule") for n in systems.names())
    declared = {n: systems.collective_variables(n) for n in names}
    first = declared[names[0]]
    assert all(c == first for c in declared.values())
    assert first.source.endswith("alanine-dipeptide.molecule.yaml") and first.names == ("phi", "psi")
    assert [b.name for b in first.basins] == ["beta/C7eq", "alpha_R", "alpha_L/C7ax"]
    assert [(f.key, f.state, f.reference) for f in first.free_energies] == [
        ("phi_positive", "phi>0", "phi<0"), ("phi_0_to_2", "0<=phi<2", "phi<0 or phi>=2")]
    # the vacuum PDB and the ff96 prmtop number their residues alike: phi/psi are mdtraj's backbone dihedrals
    from boltzgen.analysis import backbone_atoms

    for name in ("alanine-dipeptide", "alanine-dipeptide-ff96"):
        with systems.load(name) as target:
            idx, backbone = atom_indices(first, target.topology), backbone_atoms(target.topology)
            assert idx["phi"].tolist() == backbone["phi"][0].tolist()
            assert idx["psi"].tolist() == backbone["psi"][0].tolist()


def test_the_old_alanine_dipeptide_constants_are_read_from_the_molecule_file_unchanged():
    """The radian values the constants had when they were written in free_energy.py, bit for bit."""
    from boltzgen.analysis import (ALANINE_DIPEPTIDE_BASINS, PHI_0_TO_2, PHI_NEGATIVE, PHI_OUTSIDE_0_TO_2,
                                   PHI_POSITIVE)

    deg = math.pi / 180.0
    assert {n: (b.phi_range, b.psi_range) for n, b in ALANINE_DIPEPTIDE_BASINS.items()} == {
        "beta/C7eq": ((-math.pi, 0.0), (0.0, -100.0 * deg)),
        "alpha_R": ((-math.pi, 0.0), (-100.0 * deg, 0.0)),
        "alpha_L/C7ax": ((0.0, math.pi), (-math.pi, math.pi))}
    assert (PHI_POSITIVE.phi_range, PHI_NEGATIVE.phi_range) == ((0.0, math.pi), (-math.pi, 0.0))
    assert (PHI_0_TO_2.phi_range, PHI_OUTSIDE_0_TO_2.phi_range) == ((0.0, 2.0), (2.0, 0.0))
    cores = systems.collective_variables("alanine-dipeptide").transitions.cores
    assert [(low, high) for _, low, high in cores] == [(-math.pi, -0.5), (0.5, 2.0)]


def test_a_molecule_file_and_its_yaml_may_not_both_declare_a_key(tmp_path):
    (tmp_path / "m.molecule.yaml").write_text("collective_variables: {phi: [ACE1-C, ALA2-N, ALA2-CA, ALA2-C]}\n")
    (tmp_path / "s.yaml").write_text(f"structure: {ALA_PDB}\nforcefield: [amber99sbildn.xml]\n"
                                     "molecule: m.molecule.yaml\ncollective_variables: {psi: [1, 2, 3, 4]}\n")
    with pytest.raises(ValueError, match=r"s\.yaml: collective_variables given both here and in its molecule file"):
        systems.collective_variables(str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text(f"structure: {ALA_PDB}\nforcefield: [amber99sbildn.xml]\nmolecule: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"molecule file not found: .*gone\.yaml \(named by .*s\.yaml\)"):
        systems.collective_variables(str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text(f"structure: {ALA_PDB}\nforcefield: [amber99sbildn.xml]\nmolecule: m.molecule.yaml\n")
    assert systems.collective_variables(str(tmp_path / "s.yaml")).names == ("phi",)
    assert systems.load(str(tmp_path / "s.yaml")).n_atoms == 22  # the CV keys are no from_files arguments


# ---- figures: what is declared is reported; nothing declared is no crash ----------------------
def _run(values: dict, cvs: MoleculeCVs, n: int = 40, seed: int = 0, path: str = "run") -> WeightedRun:
    rng = np.random.default_rng(seed)
    return WeightedRun(path=path, log_weights=rng.normal(size=n), cv_values=values, cvs=cvs,
                       energies=rng.normal(5.0, 1.0, size=n), kind="samples")


def test_every_declared_basin_and_free_energy_is_reported_exactly():
    cvs = declare("""
collective_variables: {a: [0, 1, 2, 3], b: [1, 2, 3, 4]}
basins_deg: {left: {a: [-180, 0]}, right: {a: [0, 180]}}
states_deg: {corner: {a: [0, 90], b: [0, 90]}}
free_energies: {corner: {state: corner, reference: left}}
""")
    a = np.radians(np.tile([-90.0, 45.0, 135.0, 45.0], 5))
    b = np.radians(np.tile([10.0, 10.0, 10.0, -10.0], 5))
    run = WeightedRun(path="r", log_weights=np.zeros(20), cv_values={"a": a, "b": b}, cvs=cvs, kind="samples")
    f = run_figures([run])
    assert f.populations["left"].mean == pytest.approx(0.25) and f.populations["right"].mean == pytest.approx(0.75)
    assert f.free_energies["corner"].mean == pytest.approx(0.0)  # P(corner) = P(left) = 1/4
    d = f.to_dict()
    assert d["delta_f_corner_kT"] == pytest.approx(0.0) and d["p_corner"] == pytest.approx(0.25)
    assert d["collective_variables"] == {"a": [0, 1, 2, 3], "b": [1, 2, 3, 4]}
    assert d["basins_rad"]["left"] == {"a": [-math.pi, 0.0], "b": [-math.pi, math.pi]}
    assert "delta_f_phi_positive_kT" not in d and f.delta_f_phi_positive is None
    json.dumps(d)


def test_a_molecule_without_collective_variables_gets_energies_and_ess():
    runs = [_run({}, MoleculeCVs(), seed=k, path=f"run{k}") for k in range(3)]
    f = run_figures(runs)
    assert f.populations == {} and f.free_energies == {} and f.l_fraction is None and f.transitions_per_run is None
    assert 0 < f.ess <= 120 and math.isfinite(f.energy.mean) and f.energy.standard_error > 0
    d = f.to_dict()
    assert d["populations"] == {} and d["collective_variables"] == {} and d["energy_mean_kT"] == f.energy.mean
    assert f.summary_figures() == {"populations": {}, "free_energies": [], "collective_variables": {}}


def test_runs_of_different_declarations_are_refused():
    cvs = declare("collective_variables: {a: [0, 1, 2, 3]}")
    with pytest.raises(ValueError, match=r"runs one and two declare different collective variables"):
        run_figures([_run({"a": np.zeros(40)}, cvs, path="one"), _run({}, MoleculeCVs(), path="two")])


@pytest.fixture(scope="module")
def no_cv_yaml(tmp_path_factory) -> Path:
    """Alanine dipeptide as a system YAML (given by its path) that declares no collective variables."""
    folder = tmp_path_factory.mktemp("nocvs")
    path = folder / "plain-ala.yaml"
    path.write_text(f"structure: {ALA_PDB}\nforcefield: [amber99sbildn.xml]\ntemperature: 300.0\n")
    return path


def test_sampling_a_molecule_without_collective_variables_writes_its_summary(tmp_path, no_cv_yaml, capsys):
    from boltzgen.pipeline import sample_model
    from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings

    tiny = SampleSettings(n_levels=8, level_moves=1, bridge=BridgeSettings(moves=1), mixing=MixingSettings(moves=4))
    with systems.load(str(no_cv_yaml)) as target:
        assert systems.collective_variables(str(no_cv_yaml)).is_empty
        report = sample_model(target, systems.shipped_model("alanine-dipeptide"), tmp_path / "s", particles=12,
                              runs=2, settings=tiny, seed=2, compile=False,
                              cvs=systems.collective_variables(str(no_cv_yaml)))
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(report.summary))
    assert math.isfinite(summary["log_z"]) and summary["log_z_err"] is not None and 0 < summary["ess_fraction"] <= 1
    assert summary["populations"] == {} and summary["free_energies"] == []
    assert not any(k.startswith("delta_f_") for k in summary)
    text = format_sample_summary(summary)
    assert "log Z" in text and "dF(" not in text
    # analyze on the job folder: the recorded system is no named system, so no CVs, and it says why
    assert main(["analyze", str(tmp_path / "s"), "--json", str(tmp_path / "a.json"), "--plots", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "24 SMC samples from 2 runs" in out and "no collective variables declared" in out and "<u> kT" in out
    assert "is no named system" in out and "--system" in out
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["energy_histogram.png"]
    # --system names the declaration: the YAML's (none) or alanine dipeptide's (phi, psi, its basins)
    assert main(["analyze", str(tmp_path / "s"), "--system", str(no_cv_yaml)]) == 0
    assert "is no named system" not in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "s"), "--system", "alanine-dipeptide", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "P(alpha_R)" in out and "dF(phi>0 vs phi<0)" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    assert set(saved["populations"]) == {"beta/C7eq", "alpha_R", "alpha_L/C7ax"} and "delta_f_phi_positive_kT" in saved
    assert main(["analyze", str(tmp_path / "s"), "--system", "alanine-dipeptid"]) == 2
    assert "--system alanine-dipeptid: unknown system" in capsys.readouterr().err


def test_the_alanine_dipeptide_summary_reports_every_declared_free_energy(tmp_path):
    from boltzgen.pipeline import sample_model
    from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings

    tiny = SampleSettings(n_levels=8, level_moves=1, bridge=BridgeSettings(moves=1), mixing=MixingSettings(moves=4))
    with systems.load("alanine-dipeptide") as target:
        report = sample_model(target, systems.shipped_model("alanine-dipeptide"), tmp_path / "s", particles=12,
                              runs=2, settings=tiny, seed=2, compile=False)
    s = report.summary
    for key in ("delta_f_phi_positive_kT", "delta_f_phi_positive_err_kT", "delta_f_phi_0_to_2_kT",
                "delta_f_phi_0_to_2_err_kT", "populations", "free_energies", "collective_variables"):
        assert key in s, key
    assert set(s["populations"]) == {"beta/C7eq", "alpha_R", "alpha_L/C7ax"}
    assert sum(p["p"] for p in s["populations"].values()) == pytest.approx(1.0)
    assert s["collective_variables"]["phi"] == ["ACE1-C", "ALA2-N", "ALA2-CA", "ALA2-C"]
    figures = run_figures([load_run(d) for d in report.run_dirs])
    df = figures.free_energies["phi_positive"]
    assert s["delta_f_phi_positive_kT"] == (None if df is None else df.mean)
