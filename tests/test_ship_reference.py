"""benchmarks/ship_reference.py: a system's reference file from independent MD runs, as `boltzgen run` reads it."""
import json
import math
import statistics

import pytest

from boltzgen import md, systems
from boltzgen.analysis import run_figures


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("ref")
    with systems.load("butane") as target:  # plain MD visits trans and gauche within picoseconds
        for seed in (1, 2):
            md.run_md(target, 0.2, work / f"md{seed}", seed=seed, equilibration_ps=1.0, chunk_frames=100)
    return [str(work / "md1"), str(work / "md2")]


def test_the_file_holds_the_runs_figures_with_errors_over_runs(tmp_path, two_runs):
    import benchmarks_path  # noqa: F401
    from _record import read_records
    from ship_reference import main

    out = tmp_path / "ref.json"
    main(["butane", *two_runs, "--source", "phi metadynamics", "--command", "boltzgen md ...",
          "--note", "rule X", "--out", str(out), "--record", str(tmp_path / "r.jsonl")])
    ref = json.loads(out.read_text())
    expected = run_figures(two_runs).to_dict()
    assert ref["source"] == "phi metadynamics" and ref["note"] == "rule X"
    assert ref["delta_f_gauche_kT"] == expected["delta_f_gauche_kT"]
    assert ref["populations"] == expected["populations"] and ref["n_frames"] == expected["n_frames"]
    per_run = ref["per_run_delta_f_kT"]["gauche"]
    p, r = expected["per_unit"]["p_gauche"], expected["per_unit"]["p_reference_gauche"]
    assert per_run == [round(-math.log(a / b), 4) for a, b in zip(p, r)]
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record["name"] == "reference_md_butane" and record["figures"]["runs"] == 2
    assert record["figures"]["per_run_sd_gauche_kT"] == pytest.approx(statistics.stdev(per_run), abs=1e-3)
    # the keys `boltzgen run` compares with (pipeline.sample.reference_comparison)
    from boltzgen.pipeline.sample import reference_comparison
    summary = {"free_energies": [{"key": "gauche"}], "delta_f_gauche_kT": 0.6, "delta_f_gauche_err_kT": 0.1,
               "populations": {k: {"p": v["p"], "err": v["err"]} for k, v in ref["populations"].items()}}
    compared = reference_comparison(summary, ref)
    assert compared["free_energies"]["gauche"]["reference"] == ref["delta_f_gauche_kT"]


def test_without_out_the_file_goes_where_boltzgen_run_reads_it():
    from boltzgen.pipeline.sample import reference_file, shipped_reference

    path = reference_file("butane")
    assert path == systems.spec("butane").path.with_name("butane.reference.json") and path.is_file()
    assert shipped_reference("butane") == json.loads(path.read_text())


def test_bad_input_is_refused_and_nothing_is_written(tmp_path, two_runs):
    import benchmarks_path  # noqa: F401
    from ship_reference import main

    out = tmp_path / "ref.json"
    base = ["--source", "s", "--command", "c", "--out", str(out)]
    with pytest.raises(SystemExit):  # errors are over runs: one run is not enough
        main(["butane", two_runs[0], *base])
    with pytest.raises(SystemExit):  # the runs are of another system
        main(["alanine-dipeptide", *two_runs, *base])
    with pytest.raises(SystemExit):
        main(["no-such-system", *two_runs, *base])
    assert not out.exists()
    out.write_text("{}")
    with pytest.raises(SystemExit):  # an existing reference is kept without --replace
        main(["butane", *two_runs, *base])
    assert out.read_text() == "{}"
    main(["butane", *two_runs, *base, "--replace"])
    assert "delta_f_gauche_kT" in json.loads(out.read_text())


def test_runs_kept_as_per_run_files_ship_the_same_reference_as_their_folders(tmp_path, two_runs):
    import benchmarks_path  # noqa: F401
    from ship_reference import main

    kept = main(["butane", *two_runs, "--keep-runs", str(tmp_path / "runs")])
    files = sorted(kept)
    assert [json.loads(open(f).read())["system"] for f in files] == ["butane", "butane"]
    base = ["--source", "s", "--command", "c"]
    from_dirs = main(["butane", *two_runs, *base, "--out", str(tmp_path / "a.json")])
    from_files = main(["butane", *base, "--run-figures", files[0], "--run-figures", files[1],
                       "--out", str(tmp_path / "b.json")])
    mixed = main(["butane", two_runs[1], *base, "--run-figures", files[0], "--out", str(tmp_path / "c.json")])
    expected = run_figures(two_runs).to_dict()  # the reduction `boltzgen analyze DIR DIR` makes
    for ref in (from_dirs, from_files, mixed):
        assert ref["delta_f_gauche_kT"] == pytest.approx(expected["delta_f_gauche_kT"], rel=1e-12)
        assert ref["delta_f_gauche_err_kT"] == pytest.approx(expected["delta_f_gauche_err_kT"], rel=1e-9)
        for name, e in expected["populations"].items():
            assert ref["populations"][name]["p"] == pytest.approx(e["p"], rel=1e-12)
            assert ref["populations"][name]["err"] == pytest.approx(e["err"], rel=1e-9)
        assert ref["energy_mean_kT"] == pytest.approx(expected["energy_mean_kT"], rel=1e-12)
        assert ref["n_frames"] == expected["n_frames"]
        assert sorted(ref["per_run_delta_f_kT"]["gauche"]) == sorted(from_dirs["per_run_delta_f_kT"]["gauche"])


def test_per_run_files_of_another_system_or_kind_are_refused(tmp_path, two_runs):
    import benchmarks_path  # noqa: F401
    from ship_reference import main

    with pytest.raises(SystemExit):  # the runs are not of the system: nothing is kept
        main(["alanine-dipeptide", *two_runs, "--keep-runs", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
    (kept,) = main(["butane", two_runs[0], "--keep-runs", str(tmp_path / "runs")])
    other = json.loads(open(kept).read())
    other["system"] = "alanine-dipeptide"
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "plain.json").write_text(json.dumps(other["figures"]))
    redeclared = json.loads(open(kept).read())
    redeclared["figures"]["free_energies"] = {}  # states defined otherwise in another session
    (tmp_path / "redeclared.json").write_text(json.dumps(redeclared))
    out = tmp_path / "ref.json"
    base = ["--source", "s", "--command", "c", "--out", str(out)]
    for bad in ("other.json", "plain.json", "missing.json", "redeclared.json"):
        with pytest.raises(SystemExit):
            main(["butane", two_runs[1], *base, "--run-figures", str(tmp_path / bad)])
    with pytest.raises(SystemExit):  # one run in all
        main(["butane", *base, "--run-figures", kept])
    with pytest.raises(SystemExit):  # shipping needs --source and --command
        main(["butane", *two_runs, "--out", str(out)])
    with pytest.raises(SystemExit):  # the same run twice would shrink the error bar
        main(["butane", two_runs[0], *base, "--run-figures", kept])
    with pytest.raises(SystemExit):  # a kept run is not overwritten without --replace
        main(["butane", two_runs[0], "--keep-runs", str(tmp_path / "runs")])
    assert not out.exists()
    main(["butane", two_runs[0], "--keep-runs", str(tmp_path / "runs"), "--replace"])
