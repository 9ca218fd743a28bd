"""Benchmark result records (benchmarks/_record.py) and the page rendered from them (make_docs.py).

docs/benchmarks.md must be exactly what benchmarks/make_docs.py renders from the committed records,
so the figures the documentation quotes cannot drift from the records of what was run.
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest

import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
import make_docs
from _record import KEYS, append_record, command_line, make_record, read_records


def test_docs_benchmarks_md_is_what_make_docs_renders_from_the_committed_records():
    assert make_docs.OUTPUT.read_text(encoding="utf-8") == make_docs.render(make_docs.load_all()), (
        "docs/benchmarks.md is out of date: run python benchmarks/make_docs.py")
    assert make_docs.main(["--check"]) == 0


def test_committed_records_are_well_formed_and_historical_ones_say_so():
    records = make_docs.load_all()
    assert records
    for r in records:
        assert all(key in r for key in KEYS)
        assert r["name"] and r["command"] and r["figures"]
        if r.get("historical"):
            assert r["note"].startswith("Historical: measured by an earlier session, copied from the README")


def test_append_record_writes_one_json_line_per_call(tmp_path):
    path = tmp_path / "results" / "x.jsonl"
    first = append_record(path, "demo", "python benchmarks/demo.py", {"dF_kT": 3.5, "dF_kT_err": 0.1, "n": 3})
    append_record(path, "demo", "python benchmarks/demo.py --seed 1", {"dF_kT": float("nan"), "ok": True}, "note")
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == first
    assert list(first) == list(KEYS)
    records = read_records(path)
    assert records[1]["figures"] == {"dF_kT": None, "ok": True}  # non-finite floats become null
    assert first["date"][:4].isdigit() and first["machine"]


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="figures"):
        make_record("demo", "cmd", {})
    with pytest.raises(TypeError, match="figures"):
        make_record("demo", "cmd", {"x": [1, 2]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "x"}\n')
    with pytest.raises(ValueError, match="lacks"):
        read_records(bad)


def test_command_line_drops_the_record_option():
    assert command_line("/a/b/smc_gmm.py", ["--dim", "8", "--record", "out.jsonl", "--seed", "1"]) == (
        "python benchmarks/smc_gmm.py --dim 8 --seed 1")
    assert command_line("smc_gmm.py", ["--record=out.jsonl", "--note", "a b"]) == (
        "python benchmarks/smc_gmm.py --note 'a b'")


def test_render_groups_by_name_newest_first_with_errors_joined(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rec = lambda name, date, fig, **kw: {**make_record(name, f"cmd {date}", fig, "n", date=date,  # noqa: E731
                                                       machine_text="m", commit="abc"), **kw}
    lines = [rec("b", "2026-01-01", {"x": 1.0}), rec("b", "2026-02-01", {"x": 2.0, "x_err": 0.5}),
             rec("a", "2026-01-05", {"y": None, "z": "1–2"}, historical=True)]
    (results / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = make_docs.render(make_docs.load_all(results))
    assert page.index("## a") < page.index("## b")
    assert page.index("| x = 2 ± 0.5 |") < page.index("| x = 1 |")  # newest first
    assert "y = n/a<br>z = 1–2" in page and "*historical*" in page and "`cmd 2026-02-01`" in page
    out = tmp_path / "page.md"
    assert make_docs.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    with contextlib.redirect_stdout(io.StringIO()):
        assert make_docs.main(["--results", str(results), "--out", str(out)]) == 0
    assert make_docs.main(["--results", str(results), "--out", str(out), "--check"]) == 0


def test_smc_gmm_record_option(tmp_path):
    from smc_gmm import main

    path = tmp_path / "r.jsonl"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--dim", "2", "--modes", "2", "--particles", "64", "--repeats", "2", "--record", str(path)])
    printed = json.loads(out.getvalue().strip().splitlines()[-1])
    (record,) = read_records(path)
    assert record["name"] == "smc_gmm"
    assert record["command"] == "python benchmarks/smc_gmm.py --dim 2 --modes 2 --particles 64 --repeats 2"
    assert record["figures"]["logz_error"] == pytest.approx(printed["logz_error"])
    assert "noised_logz_error" in record["figures"] and "record" not in printed["config"]


def test_record_job_turns_a_summary_into_a_record(tmp_path):
    from record_job import main

    summary = {"command": "/x/bin/boltzgen sample butane --runs 2", "system": "butane", "n_runs": 2,
               "n_particles_per_run": 100, "settings": {"mixing": {"moves": 0}, "n_levels": 50},
               "free_energies": [{"key": "gauche", "state": "gauche", "reference": "trans"}],
               "delta_f_gauche_kT": 0.66321, "delta_f_gauche_err_kT": 0.01234, "log_z": -27.3851, "log_z_err": 0.0041,
               "bridge_ess_fraction": 0.88612, "levels_ess_fraction": 0.9, "ess_fraction": 0.8, "lineages": [90, 100],
               "target_evaluations": 1000, "model_evaluations": 500, "seconds": 12.34}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    out = tmp_path / "r.jsonl"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(path), "--name", "butane", "--record", str(out), "--commit", "abc"]) == 0
    (record,) = read_records(out)
    assert record["command"] == "boltzgen sample butane --runs 2" and record["commit"] == "abc"
    f = record["figures"]
    assert (f["delta_f_gauche_kT"], f["delta_f_gauche_kT_err"], f["one_step_bridge_ess_fraction"]) == (0.663, 0.012, 0.8861)
    assert f["lineages_fraction_mean"] == 0.95 and f["lineages"] == "90, 100"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(tmp_path / "missing.json"), "--name", "x", "--record", str(out)]) == 2
