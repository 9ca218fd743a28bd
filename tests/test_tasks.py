"""Runs as tasks: a run's result does not depend on where it ran (this process, local workers, Ray),
parts of one job made separately pool into the one job's summary, and the CLI options that spread them.

Tiny settings of the shipped alanine-dipeptide model (16 particles, 6 levels), eager force field.
"""
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from boltzgen import systems
from boltzgen.cli import main
from boltzgen.pipeline import SystemRef, run_seeds, sample_model, summarize
from boltzgen.pipeline.tasks import Spread, compile_cache_dir, parse_run_range, parse_seeds, share_compile_cache
from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings

ROOT = Path(__file__).resolve().parents[1]
TINY = SampleSettings(n_levels=6, level_moves=1, bridge=BridgeSettings(moves=2), mixing=MixingSettings(moves=10))
MODEL = systems.shipped_model("alanine-dipeptide")
TIMINGS = {"seconds", "wall_seconds", "command"}  # what may differ between two makings of the same runs


def _sample(out, spread=None, runs=2, run_range=None):
    return sample_model(SystemRef("alanine-dipeptide"), MODEL, out, particles=16, runs=runs, settings=TINY, seed=11,
                        compile=False, checkpoint_every=1e9, spread=spread, run_range=run_range)


def _same_runs(a: Path, b: Path, runs=2) -> None:
    for k in range(runs):
        for array in ("log_weights.npy", "energies.npy", "origins.npy"):
            left, right = np.load(a / f"run-{k:03d}" / array), np.load(b / f"run-{k:03d}" / array)
            assert np.array_equal(left, right), (k, array)  # bit for bit


def _figures(summary):
    """The summary without timings (nested per-run totals included)."""
    if isinstance(summary, dict):
        return {k: _figures(v) for k, v in summary.items() if k not in TIMINGS}
    if isinstance(summary, list):
        return [_figures(v) for v in summary]
    return summary


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-process") / "job"
    return _sample(out), out


def test_two_local_workers_give_the_runs_of_one_process_bit_for_bit(one_process, tmp_path):
    report, whole = one_process
    spread = _sample(tmp_path / "spread", Spread(workers=2, threads=2))  # 1 torch thread each, as in this process
    _same_runs(whole, tmp_path / "spread")
    assert _figures(spread.summary) == _figures(report.summary)
    seeds = [json.loads((whole / f"run-{k:03d}" / "diagnostics.json").read_text())["seed"] for k in range(2)]
    assert seeds == run_seeds(11, 2)  # the seeds of one process


@pytest.mark.slow  # starting a local Ray cluster takes 10-15 s on 2 cores
def test_ray_tasks_give_the_runs_of_one_process_bit_for_bit(one_process, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    _, whole = one_process
    # Ray's workers import boltzgen from this tree
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _sample(tmp_path / "ray", Spread(ray="auto", threads=1))  # connected already: the address is not used
    finally:
        ray.shutdown()
    _same_runs(whole, tmp_path / "ray")


def test_two_halves_made_apart_summarize_to_the_whole_job(tmp_path):
    whole = _sample(tmp_path / "whole", runs=4)
    first = _sample(tmp_path / "first", runs=4, run_range=range(0, 2))
    second = _sample(tmp_path / "second", runs=4, run_range=range(2, 4))
    assert [d.name for d in first.run_dirs] == ["run-000", "run-001"]
    assert [d.name for d in second.run_dirs] == ["run-002", "run-003"]
    assert (tmp_path / "first" / "job.json").read_text() == (tmp_path / "second" / "job.json").read_text()
    for d in second.run_dirs:
        shutil.copytree(d, tmp_path / "first" / d.name)
    pooled = summarize(tmp_path / "first")
    _same_runs(tmp_path / "whole", tmp_path / "first", runs=4)
    assert _figures(pooled) == _figures(whole.summary)


@pytest.mark.slow
def test_cli_sample_spreads_runs_over_workers_with_a_run_range(tmp_path, capsys):
    tiny = ["--particles", "16", "--runs", "3", "--levels", "6", "--level-moves", "1", "--bridge-moves", "2",
            "--mixing-moves", "10", "--no-compile", "--seed", "11"]
    assert main(["sample", "alanine-dipeptide", "--model", "alanine-dipeptide", *tiny, "--workers", "2",
                 "--threads", "2", "--run-range", "1:3", "--out", str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").glob("run-*")) == ["run-001", "run-002"]
    job = json.loads((tmp_path / "cli" / "job.json").read_text())
    assert "workers" not in job and "run_range" not in job  # they do not change results
    seeds = [json.loads((tmp_path / "cli" / f"run-00{k}" / "diagnostics.json").read_text())["seed"] for k in (1, 2)]
    assert seeds == run_seeds(11, 3)[1:]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(compile_cache_dir())


def test_ray_missing_is_one_line_saying_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    code = main(["sample", "alanine-dipeptide", "--model", "alanine-dipeptide", "--particles", "8", "--runs", "2",
                 "--levels", "2", "--mixing-moves", "0", "--no-compile", "--ray", "auto", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--ray needs Ray, which is not installed" in err and 'pip install -e ".[cluster]"' in err


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--ray", "auto"], "either --workers N"),
    (["--run-range", "2:9"], "need 0 <= A < B <= 4"),
    (["--run-range", "x"], "--run-range must be A:B"),
])
def test_bad_spread_options_are_named(tmp_path, capsys, argv, message):
    code = main(["sample", "alanine-dipeptide", "--model", "alanine-dipeptide", "--runs", "4", *argv,
                 "--out", str(tmp_path / "bad")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_run_range_and_seed_lists_parse():
    assert parse_run_range(None, 3) == range(3)
    assert parse_run_range("1:3", 4) == range(1, 3) and parse_run_range(":2", 4) == range(0, 2)
    assert parse_run_range("2:", 4) == range(2, 4)
    assert parse_seeds("1-4,9") == [1, 2, 3, 4, 9] and parse_seeds("7") == [7] and parse_seeds("0-1") == [0, 1]
    for bad in ("4-1", "a", "1,1", "-3"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert Spread(workers=4, threads=8).threads_per_task() == 2 and Spread(workers=4, threads=2).threads_per_task() == 1


def test_ray_tasks_take_one_thread_unless_told():
    pytest.importorskip("ray")  # Spread(ray=...) refuses at once without Ray
    assert Spread(ray="auto").threads_per_task() == 1 and Spread(ray="auto", threads=3).threads_per_task() == 3


def test_tasks_on_a_gpu_reserve_it_on_ray():
    from boltzgen.pipeline.tasks import task_device

    assert task_device("cuda:1", Spread(workers=2)) == ("cuda:1", 0.0)
    assert task_device("cpu", Spread(workers=2)) == ("cpu", 0.0)
    if importlib.util.find_spec("ray") is not None:
        assert task_device("cuda:1", Spread(ray="auto")) == ("cuda", 1.0)  # Ray renumbers the GPU it hands out


def test_the_compile_cache_is_shared_through_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert share_compile_cache() == tmp_path / "boltzgen" / "torchinductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "boltzgen" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice is kept
    assert share_compile_cache() == tmp_path / "mine"


def test_md_seeds_over_two_workers_are_the_single_seed_runs(tmp_path, capsys):
    common = ["md", "alanine-dipeptide", "--ns", "0.003", "--equilibration", "0", "--chunk-frames", "2",
              "--platform", "Reference"]
    assert main([*common, "--seeds", "1-2", "--workers", "2", "--out", str(tmp_path / "many")]) == 0
    assert main([*common, "--seed", "2", "--out", str(tmp_path / "one")]) == 0
    from boltzgen import md

    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["seed-1", "seed-2"]
    one = md.load_trajectory(tmp_path / "one").xyz
    assert np.array_equal(md.load_trajectory(tmp_path / "many" / "seed-2").xyz, one)
    assert not np.array_equal(md.load_trajectory(tmp_path / "many" / "seed-1").xyz, one)
    out = capsys.readouterr().out
    assert "seed 1: 3 frames" in out and "seed 2: 3 frames" in out


def test_md_spread_options_need_seeds_and_a_single_seed(tmp_path, capsys):
    common = ["md", "alanine-dipeptide", "--ns", "0.001", "--out", str(tmp_path / "x")]
    assert main([*common, "--workers", "2"]) == 2
    assert "give --seeds too" in capsys.readouterr().err
    assert main([*common, "--seeds", "1-2", "--seed", "3"]) == 2
    assert "either --seed" in capsys.readouterr().err


def test_md_on_a_missing_gpu_platform_falls_back_with_a_notice(tmp_path, capsys):
    from boltzgen import md

    if "CUDA" in md.available_platforms():
        pytest.skip("OpenMM has a CUDA platform here")
    assert main(["md", "alanine-dipeptide", "--ns", "0.001", "--equilibration", "0", "--platform", "CUDA",
                 "--out", str(tmp_path / "gpu")]) == 0
    captured = capsys.readouterr()
    assert "OpenMM's CUDA platform is not available here" in captured.err
    assert "running MD on the fastest available platform instead" in captured.err
    with pytest.warns(UserWarning, match="CUDA platform is not available"):
        with systems.load("alanine-dipeptide", platform="Reference") as target:
            md.run_md(target, 0.001, tmp_path / "api", 0, equilibration_ps=0, platform="CUDA")
    assert main(["md", "alanine-dipeptide", "--ns", "0.001", "--platform", "Nope", "--out", str(tmp_path / "n")]) == 2
    assert "'Nope' is not an OpenMM platform here" in capsys.readouterr().err


@pytest.mark.slow
def test_free_energy_runs_over_two_workers_are_those_of_one_process(tmp_path):
    from boltzgen.pipeline import free_energy_between
    from boltzgen.switching import SwitchSettings

    def job(out, spread=None):
        return free_energy_between(SystemRef("alanine-dipeptide"), SystemRef("alanine-dipeptide-implicit"), MODEL, out,
                                   particles=16, runs=2, settings=TINY, switch_settings=SwitchSettings(
                                       BridgeSettings(moves=1)), seed=5, compile=False, spread=spread)

    one, two = job(tmp_path / "one"), job(tmp_path / "two", Spread(workers=2, threads=2))
    _same_runs(tmp_path / "one", tmp_path / "two")
    assert _figures(one.summary) == _figures(two.summary)
