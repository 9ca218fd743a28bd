"""Metadynamics MD: deposition, then production under the frozen bias with exact log-weights +V/kT."""
from __future__ import annotations

import json

import mdtraj
import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from boltzgen import md, systems
from boltzgen.cli import main

# 2 ps deposition (a Gaussian every 50 steps, so 40 of them, tall enough to matter), 2 ps
# equilibration, 6 ps production: 24 frames in 5 chunks, the last one partial.
SHORT = dict(save_every_ps=0.25, chunk_frames=5, equilibration_ps=2.0)
BIAS = md.Metadynamics(("phi",), height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=2.0)
NS = 0.006


@pytest.fixture(scope="module")
def target():
    with systems.load("alanine-dipeptide", platform="Reference") as t:
        yield t


@pytest.fixture(scope="module")
def biased(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "full"
    result = md.run_md(target, NS, out, seed=11, bias=BIAS, **SHORT)
    return out, result


def _float32_bound(target, xyz):
    """|U(x) - U(float32 x)| <= sum |F| * spacing / 2 to first order (kT), per frame, times 2."""
    u, f = target.energy_and_forces(torch.from_numpy(xyz.astype(np.float64)))
    return u.numpy(), 2 * (f.abs().numpy() * np.spacing(np.abs(xyz)) / 2).sum(axis=(1, 2)) + 1e-9


def test_biased_run_writes_frames_energies_and_log_weights(biased):
    out, result = biased
    assert result.complete and result.biased and result.n_frames == 24 and result.frames_written == 24
    record = json.loads((out / "progress.json").read_text())
    assert record["bias"] == ["phi"] and record["bias_atoms"] == [[4, 6, 8, 14]]
    assert record["bias_factor"] == 6.0 and record["deposition_ps"] == 2.0 and record["bias_grid_points"] == 90
    assert record["platform"] == "Reference"
    assert sorted(p.name for p in out.glob("chunk_*_bias.npy")) == [f"chunk_{k:05d}_bias.npy" for k in range(5)]
    assert md.load_trajectory(out).n_frames == len(md.load_energies(out)) == len(md.load_log_weights(out)) == 24
    assert md.is_biased(out)
    bias = md.load_bias(out)
    assert bias.grid.shape == (90,) and bias.grid.max() > 5.0  # kJ/mol: 40 Gaussians were deposited
    assert np.isclose(bias.grid[0], bias.grid[-1])  # the periodic grid repeats its first point


def test_stored_energies_are_unbiased(target, biased):
    """The energies are U of an independent OpenMMTarget (no bias), within float32 TRR rounding."""
    out, _ = biased
    xyz = md.load_trajectory(out).xyz
    u, bound = _float32_bound(target, xyz)
    u_stored = md.load_energies(out)
    assert (np.abs(u - u_stored) <= bound).all()
    assert md.load_log_weights(out).max() > 0.1  # ... and the bias, which they exclude, is not small


def test_log_weights_are_the_frozen_bias_at_the_frames(target, biased):
    out, _ = biased
    traj = md.load_trajectory(out)
    log_w = md.load_log_weights(out)
    bias = md.load_bias(out)
    # OpenMM's bias on the float32 frames
    np.testing.assert_allclose(bias.reduced_energy(traj.xyz), log_w, atol=1e-4)
    # and independently: a periodic cubic spline of the saved grid at mdtraj's phi
    _, phi = mdtraj.compute_phi(traj)
    spline = CubicSpline(np.linspace(-np.pi, np.pi, len(bias.grid)), bias.grid, bc_type="periodic")
    np.testing.assert_allclose(spline(phi[:, 0].astype(np.float64)) / target.kT, log_w, atol=1e-3)
    assert log_w.std() > 0.01


def test_resume_gives_the_same_frames_and_weights(target, biased, tmp_path):
    full, _ = biased
    first = md.run_md(target, NS, tmp_path, seed=11, bias=BIAS, max_chunks=2, **SHORT)
    assert not first.complete and first.n_frames == 10
    second = md.run_md(target, NS, tmp_path, seed=11, bias=BIAS, **SHORT)
    assert second.resumed and second.complete and second.n_frames == 24 and second.frames_written == 14
    assert np.array_equal(md.load_trajectory(full).xyz, md.load_trajectory(tmp_path).xyz)
    assert np.array_equal(md.load_energies(full), md.load_energies(tmp_path))
    assert np.array_equal(md.load_log_weights(full), md.load_log_weights(tmp_path))
    assert np.array_equal(md.load_bias(full).grid, md.load_bias(tmp_path).grid)


def test_resume_refuses_other_bias_settings(target, biased):
    out, _ = biased
    before = md.load_trajectory(out).xyz
    other = md.Metadynamics(("phi",), bias_factor=8.0, height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=2.0)
    with pytest.raises(ValueError, match="other settings \\(bias_factor: 6.0 on disk, 8.0 now\\)"):
        md.run_md(target, NS, out, seed=11, bias=other, **SHORT)
    with pytest.raises(ValueError, match="bias: \\['phi'\\] on disk, \\[\\] now"):
        md.run_md(target, NS, out, seed=11, **SHORT)
    longer = md.Metadynamics(("phi",), height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=3.0)
    with pytest.raises(ValueError, match="deposition_ps: 2.0 on disk, 3.0 now"):
        md.run_md(target, NS, out, seed=11, bias=longer, **SHORT)
    assert np.array_equal(md.load_trajectory(out).xyz, before)


def test_damaged_bias_file_is_refused_on_resume(target, tmp_path):
    md.run_md(target, 0.002, tmp_path, seed=3, bias=BIAS, save_every_ps=0.5, chunk_frames=2, equilibration_ps=1.0)
    grid = np.load(tmp_path / "bias.npy")
    np.save(tmp_path / "bias.npy", grid * 2)
    with pytest.raises(ValueError, match="bias.npy differs from the bias this run was written with"):
        md.run_md(target, 0.003, tmp_path, seed=3, bias=BIAS, save_every_ps=0.5, chunk_frames=2, equilibration_ps=1.0)


def test_progress_reports_deposition_then_equilibration_then_production(target, tmp_path):
    seen = []
    md.run_md(target, 0.001, tmp_path, seed=1, bias=BIAS, save_every_ps=0.5, equilibration_ps=1.0,
              progress=seen.append)
    assert [p.stage for p in seen] == ["deposition"] * 2 + ["equilibration"] + ["production"] * 2
    assert seen[1].ps_done == seen[1].ps_total == 2.0


def test_phi_psi_bias(target, tmp_path):
    bias = md.Metadynamics("phi,psi", height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=1.0, grid_points=24)
    md.run_md(target, 0.002, tmp_path, seed=2, bias=bias, save_every_ps=0.5, equilibration_ps=1.0)
    frozen = md.load_bias(tmp_path)
    assert frozen.variables == ("phi", "psi") and frozen.grid.shape == (24, 24)
    assert frozen.atoms.tolist() == [[4, 6, 8, 14], [6, 8, 14, 16]]
    traj = md.load_trajectory(tmp_path)
    log_w = md.load_log_weights(tmp_path)
    np.testing.assert_allclose(frozen.reduced_energy(traj.xyz), log_w, atol=1e-4)
    u, bound = _float32_bound(target, traj.xyz)
    assert (np.abs(u - md.load_energies(tmp_path)) <= bound).all()


def test_plain_runs_have_zero_log_weights(target, tmp_path):
    md.run_md(target, 0.001, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0)
    assert np.array_equal(md.load_log_weights(tmp_path), np.zeros(2))
    assert not md.is_biased(tmp_path)
    with pytest.raises(ValueError, match="plain MD run"):
        md.load_bias(tmp_path)


def test_bad_metadynamics_settings():
    with pytest.raises(ValueError, match="variables must be"):
        md.Metadynamics(("chi",))
    with pytest.raises(ValueError, match="variables must be"):
        md.Metadynamics("phi,phi")
    with pytest.raises(ValueError, match="bias_factor must be a finite number > 1"):
        md.Metadynamics(bias_factor=1.0)
    with pytest.raises(ValueError, match="width_rad must be a finite positive number"):
        md.Metadynamics(width_rad=0.0)
    with pytest.raises(ValueError, match="frequency_steps must be a positive integer"):
        md.Metadynamics(frequency_steps=0)
    assert md.Metadynamics("phi, psi").variables == ("phi", "psi")


def test_cli_md_bias(tmp_path, capsys):
    args = ["md", "alanine-dipeptide", "--bias", "phi", "--deposition", "1", "--bias-frequency", "100",
            "--ns", "0.002", "--out", str(tmp_path), "--save-every", "0.5", "--equilibration", "1",
            "--platform", "Reference"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "4 frames (0.002 ns, Reference platform)" in out.out and "log-weights" in out.out
    assert "deposition" in out.err  # the progress bar of the deposition stage
    assert main(args + ["--bias-factor", "10"]) == 2
    err = capsys.readouterr().err
    assert "other settings (bias_factor: 6.0 on disk, 10.0 now)" in err and err.count("\n") == 1
    assert main(["md", "alanine-dipeptide", "--bias", "omega", "--ns", "0.001", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--bias and its options: variables must be" in err and err.count("\n") == 1


def test_cli_md_takes_the_width_in_degrees_and_a_temperature(tmp_path, capsys):
    """--bias-width-deg is converted to radians at the boundary; --temperature reaches the integrator and kT."""
    import json
    import math

    assert main(["md", "alanine-dipeptide", "--bias", "phi", "--bias-width-deg", "30", "--deposition", "1",
                 "--temperature", "350", "--ns", "0.002", "--out", str(tmp_path), "--save-every", "0.5",
                 "--equilibration", "1", "--platform", "Reference"]) == 0
    record = json.loads((tmp_path / "progress.json").read_text())
    assert record["bias_width_rad"] == pytest.approx(math.radians(30.0), rel=1e-15)
    assert record["temperature_K"] == 350.0
    assert md.load_bias(tmp_path).temperature_K == 350.0
    assert len(md.load_log(tmp_path)["temperature_K"]) == 4


def test_cli_bias_options_need_bias(tmp_path, capsys):
    assert main(["md", "alanine-dipeptide", "--ns", "0.001", "--out", str(tmp_path), "--bias-factor", "8",
                 "--deposition", "5"]) == 2
    err = capsys.readouterr().err
    assert "--bias-factor, --deposition only apply with --bias" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_is_biased_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(ValueError, match="no MD run yet"):
        md.is_biased(tmp_path)


# ---- a sum of 1-D biases (several slow dihedrals) ----------------------------------------------
SUM = md.Metadynamics("phi+psi", height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=1.0, grid_points=36)


@pytest.fixture(scope="module")
def summed(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("meta-sum") / "run"
    md.run_md(target, 0.003, out, seed=5, bias=SUM, save_every_ps=0.5, chunk_frames=3, equilibration_ps=1.0)
    return out


def test_sum_bias_is_one_periodic_1d_bias_per_variable(target, summed):
    assert SUM.combine == "sum" and SUM.variables == ("phi", "psi")
    record = json.loads((summed / "progress.json").read_text())
    assert record["bias"] == ["phi", "psi"] and record["bias_combine"] == "sum"
    frozen = md.load_bias(summed)
    assert frozen.combine == "sum" and frozen.grid.shape == (2, 36)
    assert frozen.atoms.tolist() == [[4, 6, 8, 14], [6, 8, 14, 16]]
    np.testing.assert_allclose(frozen.grid[:, 0], frozen.grid[:, -1])  # each row repeats its first point
    # 40 Gaussians of 3 kJ/mol, tempered (gamma = 6): each row holds several heights' worth
    assert (frozen.grid.max(axis=1) > 6.0).all()


def test_sum_bias_log_weights_are_the_sum_of_the_1d_splines(target, summed):
    traj = md.load_trajectory(summed)
    log_w = md.load_log_weights(summed)
    frozen = md.load_bias(summed)
    np.testing.assert_allclose(frozen.reduced_energy(traj.xyz), log_w, atol=1e-4)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    axis = np.linspace(-np.pi, np.pi, frozen.grid.shape[1])
    spline = [CubicSpline(axis, row, bc_type="periodic") for row in frozen.grid]
    expected = spline[0](phi[:, 0].astype(np.float64)) + spline[1](psi[:, 0].astype(np.float64))
    np.testing.assert_allclose(expected / target.kT, log_w, atol=1e-3)
    assert log_w.std() > 0.01


def test_sum_bias_resumes_and_refuses_the_joint_one(target, summed, tmp_path):
    first = tmp_path / "killed"
    md.run_md(target, 0.003, first, seed=5, bias=SUM, save_every_ps=0.5, chunk_frames=3, equilibration_ps=1.0,
              max_chunks=1)
    md.run_md(target, 0.003, first, seed=5, bias=SUM, save_every_ps=0.5, chunk_frames=3, equilibration_ps=1.0)
    np.testing.assert_array_equal(md.load_trajectory(first).xyz, md.load_trajectory(summed).xyz)
    np.testing.assert_array_equal(md.load_log_weights(first), md.load_log_weights(summed))
    joint = md.Metadynamics("phi,psi", height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=1.0, grid_points=36)
    with pytest.raises(ValueError, match="bias_combine: 'sum' on disk, 'joint' now"):
        md.run_md(target, 0.003, first, seed=5, bias=joint, save_every_ps=0.5, chunk_frames=3, equilibration_ps=1.0)


def test_sum_deposition_tempers_each_height_by_its_own_bias(target):
    """Two Gaussians at the same point: the second is h exp(-V_i/(k_B dT)) per variable, V_i its own row."""
    settings = {"temperature_K": target.temperature, "friction_per_ps": 1.0, "timestep_fs": 0.5, "seed": 1}
    bias = md.Metadynamics("phi+psi", height_kj_per_mol=2.0, grid_points=37)
    deposit = md._SumDeposition(md.openmm.XmlSerializer.serialize(target.system), settings, bias,
                                np.array([[4, 6, 8, 14], [6, 8, 14, 16]]), md.openmm.Platform.getPlatformByName(
                                    "Reference"), {}, target.topology)
    at = np.array([0.0, np.pi / 2])  # grid points 18 and 27 of linspace(-pi, pi, 37)
    deposit._add_gaussians(at)
    np.testing.assert_allclose(deposit.bias_grid()[[0, 1], [18, 27]], [2.0, 2.0])
    deposit._add_gaussians(np.array([0.0, -np.pi]))
    k_dt = md.kT_kj_per_mol(target.temperature) * 5.0
    first_row_peak = 2.0 + 2.0 * np.exp(-2.0 / k_dt)
    assert deposit.bias_grid()[0, 18] == pytest.approx(first_row_peak, rel=1e-12)
    # psi's second Gaussian sits at -pi, where its first one left exp(-(3 pi/2)^2 / (2 w^2)) * 2 ~ 0
    v_psi = 2.0 * np.exp(-0.5 * (np.pi / 2 / bias.width_rad) ** 2)
    assert deposit.bias_grid()[1, 0] == pytest.approx(v_psi + 2.0 * np.exp(-v_psi / k_dt), rel=1e-9)


def test_sum_deposition_adds_a_gaussian_every_frequency_steps(target, monkeypatch):
    """As openmm.app.Metadynamics: one deposition per ``frequency_steps`` steps, however the steps are split."""
    settings = {"temperature_K": target.temperature, "friction_per_ps": 1.0, "timestep_fs": 0.5, "seed": 1}
    bias = md.Metadynamics("phi+psi", frequency_steps=7)
    deposit = md._SumDeposition(md.openmm.XmlSerializer.serialize(target.system), settings, bias,
                                np.array([[4, 6, 8, 14], [6, 8, 14, 16]]),
                                md.openmm.Platform.getPlatformByName("Reference"), {}, target.topology)
    deposit.context.setPositions(target.positions)
    calls = []
    monkeypatch.setattr(deposit, "_add_gaussians", lambda s: calls.append(deposit.context.getStepCount()))
    for n in (3, 10, 1, 20, 6):  # 40 steps
        deposit.step(n)
    assert calls == [7, 14, 21, 28, 35]


def test_a_bias_grid_of_the_wrong_shape_is_named(target, summed, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(summed, copy)
    record = json.loads((copy / "progress.json").read_text())
    np.save(copy / "bias.npy", np.zeros(36))
    record.pop("bias_sha256")
    (copy / "progress.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="bias.npy holds a grid of shape \(36,\); this run's sum bias on 2 "
                                         "variable\(s\) needs \(2, 36\)"):
        md.load_bias(copy)


def test_bad_sum_bias_settings(target, tmp_path):
    with pytest.raises(ValueError, match="a joint bias takes one or two variables.*'phi1\\+phi2\\+phi3'"):
        md.Metadynamics("phi1,phi2,phi3")
    with pytest.raises(ValueError, match="variables must be distinct"):
        md.Metadynamics("phi+phi1")  # phi is the first residue's phi
    with pytest.raises(ValueError, match="combine must be 'joint' or 'sum'"):
        md.Metadynamics(("phi", "psi"), combine="product")
    with pytest.raises(ValueError, match="spell a sum bias .* but combine='joint'"):
        md.Metadynamics("phi+psi", combine="joint")
    assert md.Metadynamics(("phi", "psi"), combine="sum").combine == "sum"
    assert md.Metadynamics(("phi", "psi")).combine == "joint"
    assert md.Metadynamics("phi2").combine == "joint"  # one variable: nothing to sum
    with pytest.raises(ValueError, match="bias variable 'phi2': alanine-dipeptide has 1 residue"):
        md.run_md(target, 0.001, tmp_path, seed=1, bias=md.Metadynamics("phi+phi2"))
    assert not (tmp_path / "progress.json").exists()


def test_cli_tetrapeptide_sum_of_the_three_phi(tmp_path, capsys):
    from boltzgen.cvs import atom_indices

    assert main(["md", "alanine-tetrapeptide", "--bias", "phi1+phi2+phi3", "--deposition", "0.5",
                 "--bias-frequency", "50", "--ns", "0.001", "--out", str(tmp_path), "--save-every", "0.5",
                 "--equilibration", "0.5", "--platform", "Reference"]) == 0
    frozen = md.load_bias(tmp_path)
    declared = atom_indices(systems.collective_variables("alanine-tetrapeptide"), md.load_topology(tmp_path))
    assert frozen.combine == "sum" and frozen.grid.shape[0] == 3
    assert frozen.atoms.tolist() == [declared[f"phi{i}"].tolist() for i in (1, 2, 3)]
    np.testing.assert_allclose(frozen.reduced_energy(md.load_trajectory(tmp_path).xyz), md.load_log_weights(tmp_path),
                               atol=1e-4)
