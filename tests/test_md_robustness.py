"""MD hardening: blow-ups, runs identified by their Hamiltonian, and one-line errors for bad folders/files.

Every bad input through the CLI must exit 2 with one line that names the path or argument, no
traceback, and leave the chunks already written untouched.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from boltzgen import md, systems
from boltzgen.cli import main

SYSTEMS = Path(__file__).resolve().parents[1] / "systems" / "alanine-dipeptide"
QUICK = ["--save-every", "0.5", "--equilibration", "1", "--chunk-frames", "2", "--platform", "Reference"]


@pytest.fixture(scope="module")
def target():
    with systems.load("alanine-dipeptide", platform="Reference") as t:
        yield t


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


@pytest.fixture
def run_dir(tmp_path, capsys):
    """A complete 3-chunk CLI run (6 frames)."""
    out = tmp_path / "run"
    assert main(["md", "alanine-dipeptide", "--ns", "0.003", "--out", str(out), "--seed", "1", *QUICK]) == 0
    capsys.readouterr()
    return out


# ---- blow-ups ------------------------------------------------------------------------------------
def test_too_large_time_step_stops_with_one_line_and_no_complete_run(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["md", "alanine-dipeptide", "--timestep", "5", "--ns", "0.1", "--out", str(out),
                 "--platform", "Reference", "--equilibration", "1"]) == 2
    err = _one_line_error(capsys, out, "non-finite energy or positions at", "5 fs", "--timestep 1", "not complete")
    assert "equilibration step 200 (1 ps)" in err
    assert not (out / "progress.json").exists()  # never recorded, let alone complete
    assert not list(out.glob("chunk_*"))


def test_blow_up_in_production_keeps_earlier_chunks(target, tmp_path, monkeypatch):
    """Inject NaN positions after production frame 5: chunks 0-1 (frames 1-4) survive, nothing after."""
    contexts, frames = [], []
    make_context, step = md._make_context, md._step

    def capture(*args, **kwargs):
        context, integrator = make_context(*args, **kwargs)
        contexts.append(context)
        return context, integrator

    def blow_up(integrator, n, out, where, *args):
        step(integrator, n, out, where, *args)
        if where.startswith("production"):
            frames.append(where)
            if len(frames) == 5:
                contexts[-1].setPositions(np.full((target.n_atoms, 3), np.nan))

    monkeypatch.setattr(md, "_make_context", capture)
    monkeypatch.setattr(md, "_step", blow_up)
    expected = "production frame 5 \\(1.25 ps into production, step 1250 of production\\)"
    with pytest.raises(md.MDInstabilityError, match=expected) as info:
        md.run_md(target, 0.003, tmp_path, seed=4, save_every_ps=0.25, chunk_frames=2, equilibration_ps=1.0,
                  timestep_fs=1.0)
    assert "the 2 complete chunk(s) before it are kept" in str(info.value)
    assert "with a 1 fs time step the likely cause is the structure" in str(info.value)
    monkeypatch.undo()
    record = json.loads((tmp_path / "progress.json").read_text())
    assert [c["n_frames"] for c in record["chunks"]] == [2, 2]
    assert md.load_trajectory(tmp_path).n_frames == 4 and np.isfinite(md.load_energies(tmp_path)).all()


# ---- already longer than asked -----------------------------------------------------------------
def test_shorter_ns_on_a_longer_run_says_nothing_was_done(run_dir, capsys):
    before = (run_dir / "progress.json").read_bytes()
    assert main(["md", "alanine-dipeptide", "--ns", "0.002", "--out", str(run_dir), "--seed", "1", *QUICK]) == 0
    out = capsys.readouterr().out
    assert f"{run_dir} already holds 6 frames (0.003 ns), longer than the 0.002 ns asked; nothing was done" in out
    assert (run_dir / "progress.json").read_bytes() == before


# ---- the Hamiltonian ---------------------------------------------------------------------------
def test_resume_with_another_system_is_refused(target, tmp_path):
    md.run_md(target, 0.001, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0)
    before = md.load_trajectory(tmp_path).xyz
    # same name, same atoms, other force field (implicit solvent)
    with systems.from_files(SYSTEMS / "alanine-dipeptide.pdb", ["amber99sbildn.xml", "amber99_obc.xml"],
                            name="alanine-dipeptide", platform="Reference") as other:
        with pytest.raises(ValueError, match="holds a run of another Hamiltonian"):
            md.run_md(other, 0.002, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0)
    assert np.array_equal(md.load_trajectory(tmp_path).xyz, before)
    # the same system built again has the same fingerprint: resuming works
    with systems.load("alanine-dipeptide", platform="Reference") as again:
        assert md.run_md(again, 0.002, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0).n_frames == 4


def test_cli_refuses_an_edited_yaml(tmp_path, capsys):
    yaml_path = tmp_path / "dipeptide.yaml"
    text = (SYSTEMS / "alanine-dipeptide.yaml").read_text().replace(
        "structure: alanine-dipeptide.pdb", f"structure: {SYSTEMS / 'alanine-dipeptide.pdb'}").replace(
        "molecule: alanine-dipeptide.molecule.yaml", f"molecule: {SYSTEMS / 'alanine-dipeptide.molecule.yaml'}")
    yaml_path.write_text(text)
    out = tmp_path / "run"
    args = ["md", str(yaml_path), "--ns", "0.002", "--out", str(out), "--seed", "1", *QUICK]
    assert main(args) == 0
    capsys.readouterr()
    yaml_path.write_text(text.replace("[amber99sbildn.xml]", "[amber99sbildn.xml, amber99_obc.xml]"))
    assert main(args[:2] + ["--ns", "0.003"] + args[4:]) == 2
    _one_line_error(capsys, out, "another Hamiltonian")
    assert md.load_trajectory(out).n_frames == 4


def test_record_without_fingerprint_is_not_resumed(target, tmp_path):
    md.run_md(target, 0.001, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0)
    record = json.loads((tmp_path / "progress.json").read_text())
    del record["system_sha256"]
    (tmp_path / "progress.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="before boltzgen recorded the system's fingerprint"):
        md.run_md(target, 0.002, tmp_path, seed=1, save_every_ps=0.5, equilibration_ps=1.0)
    assert md.load_trajectory(tmp_path).n_frames == 2  # still readable


# ---- bad folders and files -----------------------------------------------------------------------
def test_analyze_missing_path(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    _one_line_error(capsys, f"{tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize("damage", ["missing trr", "truncated trr", "corrupt progress", "missing topology"])
def test_analyze_damaged_run_names_the_file(run_dir, capsys, damage):
    path = {"missing trr": "chunk_00001.trr", "truncated trr": "chunk_00001.trr",
            "corrupt progress": "progress.json", "missing topology": "topology.pdb"}[damage]
    target = run_dir / path
    if damage.startswith("missing"):
        target.unlink()
    elif damage.startswith("truncated"):
        target.write_bytes(target.read_bytes()[:-20])
    else:
        target.write_text(target.read_text()[:-40])
    assert main(["analyze", str(run_dir), "--blocks", "2"]) == 2
    err = _one_line_error(capsys, target)
    assert {"missing": "is missing", "truncated": "is truncated", "corrupt": "is corrupt"}[damage.split()[0]] in err


def test_damaged_energies_name_the_file(run_dir):
    npy = run_dir / "chunk_00002.npy"
    npy.write_bytes(npy.read_bytes()[:-20])
    with pytest.raises(ValueError, match=f"{npy} is truncated or damaged"):
        md.load_energies(run_dir)
    npy.unlink()
    with pytest.raises(ValueError, match=f"{npy} is missing"):
        md.load_energies(run_dir)


def test_md_into_a_corrupt_progress_file_names_it(run_dir, capsys):
    (run_dir / "progress.json").write_text("{not json")
    assert main(["md", "alanine-dipeptide", "--ns", "0.004", "--out", str(run_dir), "--seed", "1", *QUICK]) == 2
    _one_line_error(capsys, run_dir / "progress.json", "corrupt")
    assert len(list(run_dir.glob("chunk_*.trr"))) == 3


def test_out_is_a_regular_file(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("hello")
    assert main(["md", "alanine-dipeptide", "--ns", "0.001", "--out", str(path), *QUICK]) == 2
    _one_line_error(capsys, f"out_dir {path} exists and is not a folder")
    assert path.read_text() == "hello"
    assert main(["analyze", str(path)]) == 2
    _one_line_error(capsys, f"{path} is not a folder")


def test_out_is_not_writable(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes anywhere except on read-only file systems such as /proc
        read_only = Path("/proc")
        if not read_only.is_dir():
            pytest.skip("needs a read-only folder")
    else:
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o500)
    try:
        assert main(["md", "alanine-dipeptide", "--ns", "0.001", "--out", str(read_only), *QUICK]) == 2
        _one_line_error(capsys, f"out_dir {read_only} cannot be created or written")
        assert main(["md", "alanine-dipeptide", "--ns", "0.001", "--out", str(read_only / "sub"), *QUICK]) == 2
        _one_line_error(capsys, f"out_dir {read_only / 'sub'} cannot be created or written")
    finally:
        if read_only != Path("/proc"):
            read_only.chmod(0o700)


def test_refused_resume_leaves_the_chunks(run_dir, capsys):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert main(["md", "alanine-dipeptide", "--ns", "0.004", "--out", str(run_dir), "--seed", "2", *QUICK]) == 2
    _one_line_error(capsys, run_dir, "seed: 1 on disk, 2 now")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_missing_checkpoint_names_it(run_dir, capsys):
    record = json.loads((run_dir / "progress.json").read_text())
    (run_dir / record["checkpoint"]).unlink()
    assert main(["md", "alanine-dipeptide", "--ns", "0.004", "--out", str(run_dir), "--seed", "1", *QUICK]) == 2
    _one_line_error(capsys, run_dir / record["checkpoint"], "missing")
    shutil.rmtree(run_dir)
