"""United-atom n-butane (TraPPE-UA): a named system whose dihedral distribution is known exactly.

The shipped files are what systems/butane/make_butane.py builds; OpenMM's energy depends on the
C-C-C-C dihedral exactly as the TraPPE formula says; the torch force field agrees with OpenMM; the
exact populations (quadrature) agree with an independent periodic sum; and `boltzgen md` +
`boltzgen analyze` report the dihedral and its basins with no peptide-specific path.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
import torch

from boltzgen import systems
from boltzgen.analysis import cv_values
from boltzgen.cli import main
from boltzgen.targets import fast_target, torch_target
from boltzgen.targets.exact_dihedral import (GAS_CONSTANT_KJ_PER_MOL_K, TRAPPE_ALKANE_TORSION_K, butane_reference,
                                             trappe_torsion_kelvin)

FOLDER = Path(__file__).resolve().parent.parent / "systems" / "butane"
REFERENCE = json.loads((FOLDER / "butane.reference.json").read_text())


def _make_butane():
    spec = importlib.util.spec_from_file_location("make_butane", FOLDER / "make_butane.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def butane():
    target = systems.load("butane", platform="Reference")
    yield target
    target.close()


def _rotated(x0: np.ndarray, angles) -> np.ndarray:
    """Copies of ``x0`` (4, 3) with C4 turned about the C2-C3 axis by each angle (bonds and angles kept)."""
    axis = (x0[2] - x0[1]) / np.linalg.norm(x0[2] - x0[1])
    v = x0[3] - x0[2]
    out = []
    for a in angles:
        x = x0.copy()
        x[3] = x0[2] + v * math.cos(a) + np.cross(axis, v) * math.sin(a) + axis * (axis @ v) * (1 - math.cos(a))
        out.append(x)
    return np.stack(out)


def test_the_shipped_files_are_what_make_butane_builds(butane):
    make = _make_butane()
    assert (FOLDER / "butane.xml").read_text() == openmm.XmlSerializer.serialize(make.build_system())
    assert np.allclose(butane.positions, make.trans_positions(), atol=1e-4)  # the PDB keeps 0.001 A
    top = mdtraj.load_topology(str(FOLDER / "butane.pdb"))
    assert [(a.residue.name, a.residue.resSeq, a.name) for a in top.atoms] == [("BUT", 1, f"C{k}") for k in range(1, 5)]
    assert sorted((b[0].index, b[1].index) for b in top.bonds) == [(0, 1), (1, 2), (2, 3)]
    system = butane.system
    assert [system.getParticleMass(i)._value for i in range(4)] == [15.035, 14.027, 14.027, 15.035]
    assert sorted(type(f).__name__ for f in system.getForces()) == ["HarmonicAngleForce", "HarmonicBondForce",
                                                                     "PeriodicTorsionForce"]
    assert system.getNumConstraints() == 0
    angles = next(f for f in system.getForces() if isinstance(f, openmm.HarmonicAngleForce))
    *_, theta0, k = angles.getAngleParameters(0)
    assert math.degrees(theta0._value) == pytest.approx(114.0) and k._value == pytest.approx(62500.0 * 0.00831446261815324)


def test_the_openmm_energy_depends_on_the_dihedral_exactly_as_the_trappe_torsion(butane):
    x0 = np.asarray(butane.positions, dtype=np.float64)
    cvs = systems.collective_variables("butane")
    phi0 = cv_values(torch.from_numpy(x0[None]), butane.topology, cvs)["torsion"][0]
    assert abs(phi0) == pytest.approx(math.pi, abs=1e-3)  # the shipped structure is trans
    xs = _rotated(x0, np.linspace(0.0, 2.0 * math.pi, 73))
    phi = cv_values(torch.from_numpy(xs), butane.topology, cvs)["torsion"]
    # the CV is mdtraj's dihedral (IUPAC convention) of C1-C2-C3-C4
    assert np.allclose(phi, mdtraj.compute_dihedrals(mdtraj.Trajectory(xs, mdtraj.load_topology(
        str(FOLDER / "butane.pdb"))), [[0, 1, 2, 3]])[:, 0], atol=1e-6)
    u = butane.reduced_energy(xs).numpy()
    rest = u - trappe_torsion_kelvin(phi) / 300.0  # U/kT = (U/k_B)/T; the bonds and angles do not change
    assert np.ptp(rest) < 1e-9 and abs(rest[0]) < 1e-4  # (the PDB's rounding leaves 1.5e-5 kT at the minimum)
    # trans is the minimum (U = 0), cis is 2 c1 + 2 c3, gauche (+-60 deg) 1.5 (c1 + c2)
    c1, c2, c3 = TRAPPE_ALKANE_TORSION_K
    assert trappe_torsion_kelvin([math.pi, 0.0, math.pi / 3]) == pytest.approx([0.0, 2 * c1 + 2 * c3, 1.5 * (c1 + c2)])
    # the OpenMM energy in kJ/mol at cis (C4 turned by 180 deg): R x (2 c1 + 2 c3) plus the tiny residual
    assert abs(phi[36]) < 1e-6
    kj = butane.reduced_energy(xs[36:37]).item() * GAS_CONSTANT_KJ_PER_MOL_K * 300.0
    assert kj == pytest.approx(GAS_CONSTANT_KJ_PER_MOL_K * (2 * c1 + 2 * c3), abs=1e-3)


def test_the_torch_force_field_agrees_with_openmm_on_butane(butane):
    assert fast_target(butane) is not butane  # every force is supported: no fallback to OpenMM
    fast = torch_target(butane, compile=False)
    rng = np.random.default_rng(0)
    x0 = np.asarray(butane.positions, dtype=np.float64)
    xs = _rotated(x0, rng.uniform(-math.pi, math.pi, 64)) + 0.01 * rng.standard_normal((64, 4, 3))
    u_omm, forces_omm = butane.energy_and_forces(xs)
    assert np.allclose(fast.reduced_energy(torch.from_numpy(xs)).detach().numpy(), butane.reduced_energy(xs).numpy(),
                       rtol=1e-10, atol=1e-9)
    x = torch.from_numpy(xs).requires_grad_(True)
    u = fast.reduced_energy(x)
    (grad,) = torch.autograd.grad(u.sum(), x)
    assert np.allclose(-grad.numpy(), forces_omm.numpy(), rtol=1e-8, atol=1e-6)  # both -du/dx in kT/nm
    assert np.allclose(u.detach().numpy(), u_omm.numpy(), rtol=1e-10, atol=1e-9)


def test_the_exact_populations_match_an_independent_periodic_sum():
    # The midpoint rule with m cells over [-pi, pi): with m divisible by 6 the basin edges (+-120 deg) are
    # cell edges, so each basin is summed by its own midpoint rule (error ~ h^2/24 ~ 1e-10, h = 2 pi/m),
    # independently of scipy's adaptive quadrature.
    m = 60000
    phi = -math.pi + (np.arange(m) + 0.5) * (2 * math.pi / m)
    w = np.exp(-trappe_torsion_kelvin(phi) / 300.0)
    p_gauche = w[np.abs(phi) < 2 * math.pi / 3].sum() / w.sum()
    assert REFERENCE["populations"]["gauche"]["p"] == pytest.approx(p_gauche, abs=1e-9)
    assert REFERENCE["populations"]["trans"]["p"] == pytest.approx(1.0 - p_gauche, abs=1e-9)
    assert REFERENCE["delta_f_gauche_kT"] == pytest.approx(-math.log(p_gauche / (1 - p_gauche)), abs=1e-8)
    # and the shipped file is what the shipped function computes from the YAML's declaration
    again = butane_reference(systems.collective_variables("butane"), temperature=300.0)
    for key in ("delta_f_gauche_kT", "p_gauche"):
        assert again[key] == pytest.approx(REFERENCE[key], rel=1e-12)
    assert REFERENCE["delta_f_gauche_err_kT"] == 0.0 and REFERENCE["basins_rad"]["trans"]["torsion"] == pytest.approx(
        [2 * math.pi / 3, -2 * math.pi / 3])


def test_md_and_analyze_report_the_dihedral_and_its_basins(tmp_path, capsys):
    out = tmp_path / "md"
    assert main(["md", "butane", "--ns", "0.2", "--equilibration", "10", "--seed", "1", "--platform", "Reference",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--json", str(tmp_path / "a.json"), "--plots", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "200 MD frames" in text and "torsion = dihedral [BUT1-C1, BUT1-C2, BUT1-C3, BUT1-C4]" in text
    for row in ("P(trans)", "P(gauche)", "dF(gauche vs trans) kT", "<u> kT"):
        assert row in text, row
    for peptide in ("phi", "Ramachandran", "L configurations"):
        assert peptide not in text, peptide
    d = json.loads((tmp_path / "a.json").read_text())
    assert set(d["populations"]) == {"trans", "gauche"} and "delta_f_gauche_kT" in d
    assert d["populations"]["trans"]["p"] + d["populations"]["gauche"]["p"] == pytest.approx(1.0)
    assert d["l_fraction"] is None and d["collective_variables"] == {"torsion": ["BUT1-C1", "BUT1-C2", "BUT1-C3", "BUT1-C4"]}
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["energy_histogram.png", "torsion_profile.png"]


@pytest.mark.slow
def test_long_md_reproduces_the_exact_gauche_population(tmp_path):
    """4 x 10 ns of Langevin MD (about 40 s): P(gauche) and <u> within 4 standard errors over runs of the
    exact values (<u> = 5 x 1/2 for the harmonic bonds and angles + <U_torsion>/kT)."""
    from scipy.integrate import quad

    from boltzgen import md
    from boltzgen.analysis import run_figures

    dirs = []
    with systems.load("butane", platform="Reference") as target:
        for seed in range(4):
            md.run_md(target, 10.0, tmp_path / f"run{seed}", seed=seed + 1, save_every_ps=2.0, chunk_frames=5000,
                      equilibration_ps=20.0)
            dirs.append(tmp_path / f"run{seed}")
    f = run_figures(dirs)
    p = f.populations["gauche"]
    assert abs(p.mean - REFERENCE["populations"]["gauche"]["p"]) < 4 * p.standard_error, p
    def u(phi):
        return float(trappe_torsion_kelvin(phi)) / 300.0

    z = quad(lambda t: math.exp(-u(t)), -math.pi, math.pi)[0]
    mean_u = 2.5 + quad(lambda t: u(t) * math.exp(-u(t)), -math.pi, math.pi)[0] / z
    assert abs(f.energy.mean - mean_u) < 4 * f.energy.standard_error, (f.energy, mean_u)
