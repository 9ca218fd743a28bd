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
