"""benchmarks/aldp_vs_md.py --quick runs every arm end to end and ends with a JSON line (figures meaningless)."""
import contextlib
import io
import json


def test_quick_benchmark_runs_every_arm_and_records_them(tmp_path):
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    from _record import read_records
    from aldp_vs_md import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick", "--threads", "1", "--record", str(tmp_path / "r.jsonl")])
    lines = out.getvalue().strip().splitlines()
    result = json.loads(lines[-1])
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["biased MD", "MCMC alone", "Cartesian generator", "IC generator", "IC generator, no mixing"]
    mcmc = result["rows"][1]
    assert len(mcmc["per_run_dF_kT"]) == mcmc["runs"] == 2  # one estimate per independent set of chains
    generators = result["rows"][2:]
    assert all(r["model_evaluations"] > 0 and len(r["lineages"]) == r["runs"] for r in generators)
    table = [line for line in lines if line.startswith(("biased MD", "MCMC alone", "Cartesian", "IC generator"))]
    assert len(table) == 5  # one printed row per arm
    (record,) = read_records(tmp_path / "r.jsonl")  # --record: the figures as one result record
    assert record["name"] == "aldp_vs_md" and record["command"] == "python benchmarks/aldp_vs_md.py --quick --threads 1"
    assert record["figures"]["ic_generator_seconds"] == result["rows"][3]["seconds"]
    assert "figures meaningless" in record["note"]
