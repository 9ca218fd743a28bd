"""Alanine tetrapeptide (ACE-ALA-ALA-ALA-NME, 42 atoms): a named system whose structure the package builds.

The structure is what systems/alanine-tetrapeptide/make_tetrapeptide.py makes (ideal geometry placed from
internal coordinates, minimised with amber99sb-ildn in vacuum); it is L with trans amides and relaxed bonds;
the declared CVs phi1..psi3 are the backbone dihedrals the builder set; the torch force field agrees with
OpenMM (vacuum and OBC implicit solvent); the internal-coordinate space (default Z-matrix) round-trips and
has every phi and psi as a coordinate; `boltzgen md` + `boltzgen analyze` report the six CVs and the three
per-residue dF.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import pytest
import torch

from boltzgen import systems
from boltzgen.analysis import cv_values
from boltzgen.cli import main
from boltzgen.coordinates import is_l_amino_acid, rmsd
from boltzgen.coordinates.internal import (
    InternalSpace,
    internal_from_positions,
    zmatrix,
)
from boltzgen.cvs import atom_indices
from boltzgen.targets import torch_target

FOLDER = Path(__file__).resolve().parent.parent / "systems" / "alanine-tetrapeptide"
NAMES = ("alanine-tetrapeptide", "alanine-tetrapeptide-implicit")
CVS = ("phi1", "psi1", "phi2", "psi2", "phi3", "psi3")
ABS_TOL, REL_TOL = 1e-3, 1e-6  # kJ/mol (or kJ/mol/nm), as tests/test_torchff.py


def _make():
    spec = importlib.util.spec_from_file_location("make_tetrapeptide", FOLDER / "make_tetrapeptide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make():
    return _make()


@pytest.fixture(scope="module")
def target():
    t = systems.load("alanine-tetrapeptide", platform="Reference")
    yield t
    t.close()


def _perturbed(x0: np.ndarray, n: int = 4, scale: float = 0.01, seed: int = 0) -> np.ndarray:
    """(n, 42, 3) nm: the structure with Gaussian displacements of ``scale`` nm."""
    return x0 + scale * np.random.default_rng(seed).standard_normal((n, *x0.shape))


def _omegas(topology, make) -> np.ndarray:
    return np.array([q for q, (name, _) in make.named_torsions(topology).items() if name.startswith("omega")])


# ---- the system -----------------------------------------------------------------------------------
def test_both_setups_are_listed_and_load(capsys):
    assert set(NAMES) <= set(systems.names())
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)
    for name in NAMES:
        with systems.load(name, platform="Reference") as t:
            assert (t.name, t.n_atoms, t.temperature) == (name, 42, 300.0)
            kinds = {type(f).__name__ for f in t.system.getForces()}
            assert ("GBSAOBCForce" in kinds) == name.endswith("-implicit")
            assert "CMMotionRemover" not in kinds and t.system.getNumConstraints() == 0
            assert [r.name for r in t.topology.residues()] == ["ACE", "ALA", "ALA", "ALA", "NME"]
        assert systems.collective_variables(name).names == CVS


def test_the_shipped_structure_is_what_make_tetrapeptide_builds(make):
    topology, _, x, figures = make.build()
    pdb = app.PDBFile(str(FOLDER / "alanine-tetrapeptide.pdb"))
    # read back with the names it was written with (OpenMM's reader renames nothing), bonds and all
    assert [(a.residue.name, a.residue.id, a.name) for a in pdb.topology.atoms()] == \
        [(a.residue.name, a.residue.id, a.name) for a in topology.atoms()]
    assert pdb.topology.getNumBonds() == topology.getNumBonds() == 41
    np.testing.assert_allclose(pdb.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer), x, atol=2e-4)
    assert -60.0 < figures["energy_kj_per_mol"] < 0.0  # -35.2 kJ/mol when made (OpenMM 8.6.1)


def test_structure_is_l_with_trans_amides_and_relaxed_bonds(target, make):
    x = torch.from_numpy(target.positions)[None]
    assert bool(is_l_amino_acid(x, target.topology)[0])
    omega = make.dihedrals_deg(target.positions, _omegas(target.topology, make))
    assert np.all(np.abs(omega) > 170), omega
    for force in target.system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for n in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(n)
                r = np.linalg.norm(target.positions[i] - target.positions[j])
                assert abs(r - r0.value_in_unit(openmm.unit.nanometer)) < 0.01, (i, j)
    u = float(target.reduced_energy(x)[0]) * target.kT  # kJ/mol
    assert math.isfinite(u) and -60.0 < u < 0.0
    traj = mdtraj.Trajectory(target.positions[None], mdtraj.Topology.from_openmm(target.topology))
    assert len(mdtraj.compute_phi(traj)[0]) == 3 and len(mdtraj.compute_psi(traj)[0]) == 3


def test_declared_cvs_are_the_backbone_dihedrals_the_builder_set(target, make):
    cvs = systems.collective_variables("alanine-tetrapeptide")
    # before minimisation: exactly the ideal values
    topology, x0, _ = make.build_unminimised()
    built = {k: np.degrees(v[0]) for k, v in cv_values(x0[None], topology, cvs).items()}
    ideal = {f"{a}{i}": (make.PHI_DEG if a == "phi" else make.PSI_DEG) for i in (1, 2, 3) for a in ("phi", "psi")}
    for name in CVS:
        assert built[name] == pytest.approx(ideal[name], abs=1e-9), name
    # and a different backbone: the CVs follow it (each CV is the dihedral the builder set, not a neighbour)
    topology, x1, _ = make.build_unminimised(phi_deg=-63.0, psi_deg=-41.0)
    helix = {k: np.degrees(v[0]) for k, v in cv_values(x1[None], topology, cvs).items()}
    assert all(helix[n] == pytest.approx(-63.0 if n.startswith("phi") else -41.0, abs=1e-9) for n in CVS)
    # the minimised structure: the same quadruples as mdtraj's phi/psi, within 30 deg of the ideal values
    shipped = {k: np.degrees(v[0]) for k, v in cv_values(target.positions[None], target.topology, cvs).items()}
    traj = mdtraj.Trajectory(target.positions[None], mdtraj.Topology.from_openmm(target.topology))
    (phi_idx, phi), (psi_idx, psi) = mdtraj.compute_phi(traj), mdtraj.compute_psi(traj)
    idx = atom_indices(cvs, target.topology)
    for k in range(3):
        assert idx[f"phi{k + 1}"].tolist() == phi_idx[k].tolist()
        assert idx[f"psi{k + 1}"].tolist() == psi_idx[k].tolist()
        assert shipped[f"phi{k + 1}"] == pytest.approx(np.degrees(phi[0, k]), abs=1e-4)
        assert shipped[f"psi{k + 1}"] == pytest.approx(np.degrees(psi[0, k]), abs=1e-4)
    for name in CVS:
        assert abs(shipped[name] - ideal[name]) < 30.0, (name, shipped[name])


# ---- the torch force field --------------------------------------------------------------------------
def _assert_close(actual, expected, what: str):
    actual, expected = np.asarray(actual), np.asarray(expected)
    tol = np.maximum(ABS_TOL, REL_TOL * np.abs(expected))
    assert np.all(np.abs(actual - expected) <= tol), f"{what}: max |difference| {np.max(np.abs(actual - expected)):.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_torch_force_field_matches_openmm(name):
    with systems.load(name, platform="Reference") as reference:
        fast = torch_target(reference, compile=False)
        x = torch.from_numpy(np.concatenate([reference.positions[None], _perturbed(reference.positions, 5, 0.015, 1)]))
        u_ref, f_ref = reference.energy_and_forces(x)
        u, f = fast.energy_and_forces(x)
        kT = reference.kT
        _assert_close(u.numpy() * kT, u_ref.numpy() * kT, f"{name} energies (kJ/mol)")
        _assert_close(f.numpy() * kT, f_ref.numpy() * kT, f"{name} forces (kJ/mol/nm)")


# ---- internal coordinates ----------------------------------------------------------------------------
def test_internal_space_round_trips_and_holds_every_phi_and_psi(target):
    zm = zmatrix(target.topology)  # the default main chain (ACE CH3 ... NME C) is the backbone: no ends needed
    x = torch.from_numpy(_perturbed(target.positions, 4, 0.01, 2))
    space = InternalSpace.fit(zm, x)
    assert space.dim == 3 * 42 - 6
    z = space.to_flat(x)
    back = space.to_positions(z)
    for a, b in zip(internal_from_positions(x, zm), internal_from_positions(back, zm)):  # bonds, angles, dihedrals
        d = torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi  # (a no-op for the tiny bond/angle differences)
        assert float(d.abs().max()) < 1e-9
    for k in range(len(x)):  # the same molecule up to a proper rigid motion (no mirror image)
        assert float(rmsd(back[k:k + 1], x[k]).max()) < 1e-9
    assert bool(is_l_amino_acid(back, target.topology).all())
    torch.testing.assert_close(target.reduced_energy(back), target.reduced_energy(x), rtol=0, atol=1e-6)
    cvs = systems.collective_variables("alanine-tetrapeptide")
    values = cv_values(x.numpy(), target.topology, cvs)
    for name, quad in atom_indices(cvs, target.topology).items():
        column = space.dihedral_index(*quad.tolist())  # raises if the dihedral is no coordinate
        assert space.periodic[column]
        diff = np.angle(np.exp(1j * (z[:, column].numpy() - values[name])))
        assert np.abs(diff).max() < 1e-9, name


# ---- md + analyze smoke ---------------------------------------------------------------------------------
def test_md_and_analyze_report_the_six_cvs_and_three_free_energies(tmp_path, capsys):
    run = tmp_path / "md"
    assert main(["md", "alanine-tetrapeptide", "--ns", "0.002", "--out", str(run), "--seed", "1",
                 "--save-every", "0.5", "--equilibration", "1", "--platform", "Reference"]) == 0
    assert "4 frames (0.002 ns, Reference platform)" in capsys.readouterr().out
    report = tmp_path / "figures.json"
    plots = tmp_path / "plots"
    assert main(["analyze", str(run), "--blocks", "2", "--json", str(report), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    # a Ramachandran plot per residue (no plain phi/psi pair here)
    assert {p.name for p in plots.glob("ramachandran*.png")} == {f"ramachandran_phi{i}_psi{i}.png" for i in (1, 2, 3)}
    assert all(re.search(rf"\b{cv} = dihedral \[", out) for cv in CVS)
    for i in (1, 2, 3):
        assert f"dF(phi{i}>0 vs phi{i}<0) kT" in out
    assert re.search(r"L configurations\s+1\.000", out)
    figures = json.loads(report.read_text())
    assert list(figures["collective_variables"]) == list(CVS)
    assert {f"delta_f_phi{i}_positive_kT" for i in (1, 2, 3)} <= set(figures)
    joint = ["---", "--+", "-+-", "-++", "+--", "+-+", "++-", "+++"]
    assert sum(figures["populations"][s]["p"] for s in joint) == pytest.approx(1.0)
    for i in (1, 2, 3):
        p = figures["populations"]
        assert p[f"phi{i}<0"]["p"] + p[f"phi{i}>0"]["p"] == pytest.approx(1.0)


def test_the_branch_sign_at_the_alpha_carbons_decides_l_or_d(make, monkeypatch):
    from boltzgen.coordinates import alpha_carbon_centers, chirality

    topology, x0, _ = make.build_unminimised()
    assert chirality(torch.from_numpy(x0)[None], alpha_carbon_centers(topology)).tolist() == [[1.0, 1.0, 1.0]]
    monkeypatch.setattr(make, "SP3_SIGN", -make.SP3_SIGN)
    topology, x0, _ = make.build_unminimised()
    assert chirality(torch.from_numpy(x0)[None], alpha_carbon_centers(topology)).tolist() == [[-1.0, -1.0, -1.0]]


# ---- the shipped models: boltzgen run end to end ----------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_each_set_up_ships_a_model_trained_on_its_own_force_field(name):
    """Vacuum and implicit each sample with a model trained for their own Hamiltonian (no recalibration), and
    each model has its provenance file next to it."""
    from boltzgen.models import check_compatible, load_model_file

    path = systems.shipped_model(name)
    assert path.name == f"{name}.model.pt" and path.with_suffix(".json").is_file()
    with systems.load(name) as target:
        assert check_compatible(load_model_file(path), target) is True


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_model_met_its_must_show_at_the_settings_its_runs_use(name):
    """The provenance's must-show run: every residue within 2 combined s.e. of the reference with an error
    bar <= 0.15 kT, made with the sampler settings the model file recommends (so `boltzgen run` samples as
    the must-show did)."""
    from boltzgen.models import load_model_file
    from boltzgen.sampling import SampleSettings, model_settings

    path = systems.shipped_model(name)
    must = json.loads(path.with_suffix(".json").read_text())["must_show"]
    assert all(abs(z) <= 2 for z in must["z_vs_reference"].values()) and len(must["z_vs_reference"]) == 3
    assert all(e <= 0.15 for e in must["error_kT"].values())
    settings, default = model_settings(load_model_file(path)), SampleSettings()
    for flag, field in (("--levels", "n_levels"), ("--level-moves", "level_moves")):
        value = getattr(settings, field)
        assert (f"{flag} {value}" in must["command"]) == (value != getattr(default, field)), flag


@pytest.mark.parametrize("name", NAMES)
def test_run_samples_with_the_shipped_model_and_reports_every_residue(tmp_path, capsys, name):
    """`boltzgen run` of either set-up on tiny settings: every residue's dF, the eight phi-sign states,
    a Ramachandran plot per residue, the SMC diagnostics (figures meaningless at this size)."""
    out = tmp_path / "run"
    code = main(["run", name, "--out", str(out), "--particles", "16", "--runs", "2",
                 "--levels", "6", "--level-moves", "1", "--bridge-moves", "1", "--mixing-moves", "4",
                 "--threads", "1", "--no-compile"])
    text = capsys.readouterr().out
    assert code == 0 and "one-step bridge ESS" in text
    for i in (1, 2, 3):
        assert f"dF(phi{i}>0 vs phi{i}<0) kT" in text
    for state in ("---", "+++"):
        assert f"P({state})" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == 2 and set(summary["populations"]) >= {"---", "+--", "phi3>0"}
    assert {p.name for p in out.glob("ramachandran*.png")} == {f"ramachandran_phi{i}_psi{i}.png" for i in (1, 2, 3)}
    assert (out / "smc_diagnostics.png").is_file()
