"""A job killed with SIGKILL resumes: the same command on the same folder ends with the results of an
uninterrupted job, bit for bit; a changed setting is refused in one line.

Each job runs in a subprocess (``python -m boltzgen``) that is killed as soon as the run in progress
has written its checkpoint, i.e. between two SMC steps of a run after the first run completed.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TINY = ["--particles", "24", "--runs", "2", "--levels", "12", "--level-moves", "1", "--bridge-moves", "2",
        "--mixing-moves", "40", "--threads", "1", "--no-compile", "--checkpoint-every", "0"]
ROOT = Path(__file__).resolve().parents[1]


def _command(args):
    return [sys.executable, "-m", "boltzgen", *args]


def _environment():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run(args, check=True):
    done = subprocess.run(_command(args), cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_when(args, marker: Path, timeout: float = 600.0) -> None:
    """Start the job and SIGKILL it as soon as ``marker`` exists."""
    process = subprocess.Popen(_command(args), cwd=ROOT, env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while not marker.exists():
            assert process.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() - start < timeout, "the job never reached the point to kill it at"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def _same_runs(a: Path, b: Path) -> None:
    runs = sorted(p.name for p in a.glob("run-[0-9][0-9][0-9]"))
    assert runs and runs == sorted(p.name for p in b.glob("run-[0-9][0-9][0-9]"))
    for name in runs:
        for array in ("log_weights.npy", "energies.npy", "origins.npy"):
            assert (a / name / array).is_file() == (b / name / array).is_file(), (name, array)
            if (a / name / array).is_file():  # free-energy runs save no lineages
                assert np.array_equal(np.load(a / name / array), np.load(b / name / array)), (name, array)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("log_z", "delta_f_phi_positive_kT", "lineages", "state_lineages", "ess_fraction", "bridge_ess_fraction",
                "delta_f_kT", "delta_f_log_z_kT"):
        assert sa.get(key) == sb.get(key), key


@pytest.mark.slow
def test_a_killed_sample_job_resumes_to_the_uninterrupted_result(tmp_path):
    base = ["sample", "alanine-dipeptide", "--model", "alanine-dipeptide", *TINY]
    _run(base + ["--out", str(tmp_path / "whole")])
    killed = tmp_path / "killed"
    _kill_when(base + ["--out", str(killed)], killed / "run-001.checkpoint")
    assert (killed / "run-000").is_dir() and not (killed / "run-001").exists()
    assert not (killed / "summary.json").exists()
    _run(base + ["--out", str(killed)])
    assert not (killed / "run-001.checkpoint").exists()
    _same_runs(tmp_path / "whole", killed)
    # another setting on the same folder is refused in one line, and nothing is touched
    other = _run(["sample", "alanine-dipeptide", "--model", "alanine-dipeptide", *TINY, "--seed", "7",
                  "--out", str(killed)], check=False)
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and len(lines) == 1 and "holds another job (different seed)" in lines[0], other.stderr
    _same_runs(tmp_path / "whole", killed)


@pytest.mark.slow
def test_a_killed_run_job_resumes_to_the_uninterrupted_result(tmp_path):
    base = ["run", "alanine-dipeptide", *TINY]
    _run(base + ["--out", str(tmp_path / "whole")])
    killed = tmp_path / "killed"
    _kill_when(base + ["--out", str(killed)], killed / "run-000.checkpoint")
    _run(base + ["--out", str(killed)])
    _same_runs(tmp_path / "whole", killed)
    assert (killed / "ramachandran.png").is_file()


@pytest.mark.slow
def test_a_killed_free_energy_job_resumes_to_the_uninterrupted_result(tmp_path):
    base = ["free-energy", "--from", "alanine-dipeptide", "--to", "alanine-dipeptide-implicit",
            "--model", "alanine-dipeptide", *TINY]
    _run(base + ["--out", str(tmp_path / "whole")])
    killed = tmp_path / "killed"
    _kill_when(base + ["--out", str(killed)], killed / "run-001.to.checkpoint")
    assert (killed / "run-000").is_dir() and not (killed / "run-001").exists()
    _run(base + ["--out", str(killed)])
    _same_runs(tmp_path / "whole", killed)
