"""MD for data: chunked output that mdtraj reads, energies, and resume without lost/duplicate frames."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import md, systems
from boltzgen.cli import main

# A short run: 2 ps equilibration, 6 ps production, a frame every 0.25 ps, 5 frames per chunk
# (24 frames in 5 chunks, the last one partial).
SHORT = dict(save_every_ps=0.25, chunk_frames=5, equilibration_ps=2.0)
NS = 0.006


@pytest.fixture(scope="module")
def target():
    with systems.load("alanine-dipeptide", platform="Reference") as t:
        yield t


@pytest.fixture(scope="module")
def uninterrupted(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("md") / "full"
    result = md.run_md(target, NS, out, seed=11, **SHORT)
    return out, result


def test_short_run_writes_frames_mdtraj_reads(target, uninterrupted):
    out, result = uninterrupted
    assert result.complete and not result.resumed and result.n_frames == 24 and result.platform == "Reference"
    traj = md.load_trajectory(out)
    assert traj.n_frames == 24 and traj.n_atoms == 22
    np.testing.assert_allclose(traj.time, 0.25 * np.arange(1, 25))
    # Plain mdtraj on the chunk files, as a user without boltzgen would read them.
    plain = mdtraj.load(sorted(str(p) for p in out.glob("chunk_*.trr")), top=str(out / "topology.pdb"))
    assert np.array_equal(plain.xyz, traj.xyz)
    assert not list(out.glob("*.tmp")) and len(list(out.glob("checkpoint_*.chk"))) == 1
    # The run moved: no two frames alike, atoms stayed bonded (C-N peptide bond ~0.13 nm).
    assert len({f.tobytes() for f in traj.xyz}) == 24
    bond = mdtraj.compute_distances(traj, [[4, 6]])
    assert (bond > 0.11).all() and (bond < 0.16).all()


def test_energies_are_those_of_the_frames(target, uninterrupted):
    """Stored energies (OpenMM, full-precision positions) vs the target on the float32 frames.

    Rounding the positions to float32 moves each coordinate by at most half a float32 spacing, so
    the energy changes by at most sum |F| * spacing / 2 (first order): that is the tolerance.
    """
    out, _ = uninterrupted
    xyz = md.load_trajectory(out).xyz
    u_stored = md.load_energies(out)
    u, f = target.energy_and_forces(torch.from_numpy(xyz.astype(np.float64)))
    bound = (f.abs().numpy() * np.spacing(np.abs(xyz)) / 2).sum(axis=(1, 2))
    assert (np.abs(u.numpy() - u_stored) <= 2 * bound + 1e-9).all()
    assert u_stored.std() > 1.0  # thermal fluctuations of a 22-atom molecule are several kT


def test_resume_after_stopping_gives_the_same_frames(target, uninterrupted, tmp_path):
    full, _ = uninterrupted
    first = md.run_md(target, NS, tmp_path, seed=11, max_chunks=2, **SHORT)
    assert not first.complete and first.n_frames == 10
    second = md.run_md(target, NS, tmp_path, seed=11, **SHORT)
    assert second.resumed and second.complete and second.n_frames == 24
    a, b = md.load_trajectory(full), md.load_trajectory(tmp_path)
    # Reference platform + checkpoints (which hold the RNG state): bitwise the same trajectory.
    assert np.array_equal(a.xyz, b.xyz) and np.array_equal(a.time, b.time)
    assert np.array_equal(md.load_energies(full), md.load_energies(tmp_path))
    # Running again is a no-op; a larger ns extends the run with continuing times.
    assert md.run_md(target, NS, tmp_path, seed=11, **SHORT).n_frames == 24
    longer = md.run_md(target, NS + 0.001, tmp_path, seed=11, **SHORT)
    assert longer.n_frames == 28
    np.testing.assert_allclose(md.load_trajectory(tmp_path).time, 0.25 * np.arange(1, 29))


def test_leftovers_of_a_killed_write_are_ignored(target, uninterrupted, tmp_path):
    """A kill between writing a chunk and recording it leaves files progress.json does not list."""
    full, _ = uninterrupted
    md.run_md(target, NS, tmp_path, seed=11, max_chunks=1, **SHORT)
    (tmp_path / "chunk_00001.trr").write_bytes(b"half a file")
    (tmp_path / "chunk_00001.npy.tmp").write_bytes(b"junk")
    assert md.load_trajectory(tmp_path).n_frames == 5
    md.run_md(target, NS, tmp_path, seed=11, **SHORT)
    assert np.array_equal(md.load_trajectory(tmp_path).xyz, md.load_trajectory(full).xyz)


def test_md_log_has_one_row_per_saved_frame(target, uninterrupted):
    out, _ = uninterrupted
    lines = (out / "md.log").read_text().splitlines()
    assert lines[0] == "step,time_ps,potential_kJ_per_mol,kinetic_kJ_per_mol,temperature_K,speed_ns_per_day"
    log = md.load_log(out)
    assert len(log["step"]) == 24  # one row per saved frame, not per chunk
    steps_per_frame = round(SHORT["save_every_ps"] * 1000 / md.DEFAULT_TIMESTEP_FS)
    np.testing.assert_array_equal(log["step"], steps_per_frame * np.arange(1, 25))
    np.testing.assert_allclose(log["time_ps"], md.load_trajectory(out).time)
    np.testing.assert_allclose(log["potential_kJ_per_mol"], md.load_energies(out) * target.kT, rtol=1e-9)
    # 22 atoms, no constraints, no CMMotionRemover: 66 degrees of freedom
    k_b = 0.00831446261815324  # kJ/(mol K)
    np.testing.assert_allclose(log["temperature_K"], 2 * log["kinetic_kJ_per_mol"] / (66 * k_b), rtol=1e-5)
    assert (log["kinetic_kJ_per_mol"] > 0).all() and (log["speed_ns_per_day"] > 0).all()


def test_a_damaged_md_log_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"md\.log is missing"):
        md.load_log(tmp_path)
    (tmp_path / "md.log").write_text("step,time\n1,2\n")
    with pytest.raises(ValueError, match=r"md\.log: the header must be step,time_ps,"):
        md.load_log(tmp_path)
    (tmp_path / "md.log").write_text(",".join(md.LOG_COLUMNS) + "\n1,2,3,4,5,6\n7,8,9\n")
    with pytest.raises(ValueError, match=r"md\.log holds a row that is not 6 numbers"):
        md.load_log(tmp_path)


def test_md_log_temperature_averages_to_the_thermostat(target, tmp_path):
    """2,000 frames of 0.1 ps: the mean instantaneous temperature is 300 K within 4 standard errors (from
    the series' own statistical inefficiency) plus 1% (LangevinMiddleIntegrator's kinetic energy at 1 fs)."""
    from boltzgen.analysis.timeseries import correlated_error

    md.run_md(target, 0.2, tmp_path, seed=4, save_every_ps=0.1, chunk_frames=500, equilibration_ps=5.0)
    temperature = md.load_log(tmp_path)["temperature_K"]
    assert len(temperature) == 2000
    se = correlated_error(temperature).standard_error
    assert abs(temperature.mean() - 300.0) < 4 * se + 3.0, (temperature.mean(), se)


def test_md_log_is_appended_across_resumed_chunks_and_cut_back_after_a_kill(target, uninterrupted, tmp_path):
    full, _ = uninterrupted
    md.run_md(target, NS, tmp_path, seed=11, max_chunks=2, **SHORT)
    assert len(md.load_log(tmp_path)["step"]) == 10
    # A kill after appending chunk 2's rows but before recording the chunk: rows progress.json does not list.
    with open(tmp_path / "md.log", "a") as fh:
        step = round(SHORT["save_every_ps"] * 1000 / md.DEFAULT_TIMESTEP_FS)
        fh.write(f"{11 * step},2.75,1.0,2.0,3.0,4.0\n{12 * step},3.0,1.0,2.0,3.0,4.0\n{13 * step},3.2")
    md.run_md(target, NS, tmp_path, seed=11, **SHORT)
    resumed, whole = md.load_log(tmp_path), md.load_log(full)
    np.testing.assert_array_equal(resumed["step"], whole["step"])
    # Reference platform: the resumed run's energies are those of the uninterrupted one
    for column in ("potential_kJ_per_mol", "kinetic_kJ_per_mol", "temperature_K"):
        np.testing.assert_array_equal(resumed[column], whole[column])


def test_resume_refuses_other_settings(target, uninterrupted):
    out, _ = uninterrupted
    with pytest.raises(ValueError, match="other settings \\(seed: 11 on disk, 12 now\\)"):
        md.run_md(target, NS, out, seed=12, **SHORT)
    with pytest.raises(ValueError, match="run on the Reference platform"):
        md.run_md(target, NS, out, seed=11, platform="CPU", **SHORT)


def test_a_run_made_at_the_old_default_step_says_how_to_resume(target, tmp_path):
    md.run_md(target, 0.001, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0, timestep_fs=1.0, max_chunks=0)
    with pytest.raises(ValueError, match="timestep_fs: 1.0 on disk, 0.5 now.*add timestep_fs=1 \(--timestep 1\)"):
        md.run_md(target, 0.001, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0)


def test_bad_arguments(target, tmp_path):
    with pytest.raises(ValueError, match="seed must be an integer"):
        md.run_md(target, 0.001, tmp_path, seed=-1)
    with pytest.raises(ValueError, match="save_every_ps=0.0015 ps must be a positive multiple of the time step"):
        md.run_md(target, 0.001, tmp_path, seed=0, save_every_ps=0.0015, timestep_fs=1.0)
    with pytest.raises(ValueError, match="ns must be a finite positive number"):
        md.run_md(target, 0.0, tmp_path, seed=0)
    with pytest.raises(TypeError, match="target must be an OpenMMTarget"):
        md.run_md("alanine-dipeptide", 0.001, tmp_path, seed=0)
    with pytest.raises(ValueError, match="holds no complete MD chunk"):
        md.load_trajectory(tmp_path)


def test_progress_callback_reports_both_stages(target, tmp_path):
    seen = []
    md.run_md(target, 0.002, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=2.0, progress=seen.append)
    stages = [p.stage for p in seen]
    assert stages == ["equilibration"] * 2 + ["production"] * 4
    assert seen[-1].ps_done == seen[-1].ps_total == 2.0


def test_cli_md_runs_and_resumes(tmp_path, capsys):
    args = ["md", "alanine-dipeptide", "--ns", "0.002", "--out", str(tmp_path), "--seed", "3",
            "--save-every", "0.5", "--equilibration", "1", "--platform", "Reference"]
    assert main(args) == 0
    assert "4 frames (0.002 ns, Reference platform)" in capsys.readouterr().out
    assert main(args) == 0
    assert "already holds this complete run: 4 frames" in capsys.readouterr().out
    record = json.loads((tmp_path / "progress.json").read_text())
    assert record["platform"] == "Reference" and len(record["system_sha256"]) == 64
    assert main(args[:4] + ["--out", str(tmp_path), "--seed", "4"]) == 2  # other settings: one-line error
    assert "other settings" in capsys.readouterr().err


def test_cli_analyze_prints_basins_and_saves_a_ramachandran_plot(tmp_path, capsys):
    import re

    run = tmp_path / "run"
    assert main(["md", "alanine-dipeptide", "--ns", "0.01", "--out", str(run), "--seed", "2",
                 "--equilibration", "1", "--platform", "Reference"]) == 0
    capsys.readouterr()
    png = tmp_path / "plots" / "ramachandran.png"
    assert main(["analyze", str(run), "--blocks", "2", "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "10 MD frames" in out and re.search(r"L configurations\s+1\.000", out)
    populations = [float(v) for v in re.findall(r"^\s+\S+\s+([01]\.\d{3}) \+- ", out, flags=re.M)]
    assert len(populations) == 3 and abs(sum(populations) - 1.0) < 2e-3  # three basins cover the torus
    assert png.stat().st_size > 10_000
    assert main(["analyze", str(run), "--blocks", "1"]) == 2
    assert "--blocks must be at least 2" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    assert "no complete MD chunk" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--bias", "phi", "--deposition", "20"]], ids=["plain", "metadynamics"])
def test_killed_process_resumes_without_lost_or_duplicated_frames(tmp_path, extra):
    """SIGKILL a real `boltzgen md` process mid-run (plain or biased), rerun it, compare with an uninterrupted run."""
    args = ["--ns", "0.2", "--seed", "5", "--save-every", "0.5", "--chunk-frames", "20",
            "--equilibration", "5", "--platform", "Reference", *extra]
    command = [sys.executable, "-m", "boltzgen.cli", "md", "alanine-dipeptide"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command + args + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until at least two chunks are recorded
        try:
            if len(json.loads((killed / "progress.json").read_text())["chunks"]) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sum(c["n_frames"] for c in json.loads((killed / "progress.json").read_text())["chunks"])
    assert 0 < done_before < 400
    subprocess.run(command + args + ["--out", str(killed)], env=env, check=True, capture_output=True)
    whole = tmp_path / "whole"
    subprocess.run(command + args + ["--out", str(whole)], env=env, check=True, capture_output=True)
    a, b = md.load_trajectory(whole), md.load_trajectory(killed)
    assert a.n_frames == b.n_frames == 400
    np.testing.assert_allclose(b.time, 0.5 * np.arange(1, 401))
    assert np.array_equal(a.xyz, b.xyz)
    assert np.array_equal(md.load_log_weights(whole), md.load_log_weights(killed))


def test_dihedrals_of_a_100_ps_run_are_sensible(target, tmp_path):
    """Alanine dipeptide in vacuum at 300 K lives at phi < 0 (C7eq/C5/alpha_R); phi > 0 (alpha_L,
    C7ax) holds ~1% and is reached on ns time scales, so a 100 ps run from the PDB structure stays
    at phi < 0. Broken dynamics (wrong units, exploding integrator) would not."""
    md.run_md(target, 0.1, tmp_path, seed=2, save_every_ps=0.5)
    traj = md.load_trajectory(tmp_path)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    assert phi.shape == psi.shape == (200, 1)
    assert (phi < 0).mean() > 0.95


def test_default_time_step_is_the_reference_one(uninterrupted):
    """The default step is 0.5 fs (1 fs biased alanine dipeptide's dF(phi>0) by ~0.07 kT, see md's
    docstring), the same in run_md and the CLI, and recorded in the run."""
    import inspect

    from boltzgen.cli import build_parser

    out, _ = uninterrupted
    assert md.DEFAULT_TIMESTEP_FS == 0.5
    assert inspect.signature(md.run_md).parameters["timestep_fs"].default == md.DEFAULT_TIMESTEP_FS
    args = build_parser().parse_args(["md", "alanine-dipeptide", "--ns", "1", "--out", "x"])
    assert args.timestep == md.DEFAULT_TIMESTEP_FS
    assert json.loads((out / "progress.json").read_text())["timestep_fs"] == md.DEFAULT_TIMESTEP_FS
