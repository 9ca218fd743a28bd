"""benchmarks/aldp_vs_md.py --quick runs every method end to end and ends with a JSON line (figures meaningless)."""
import contextlib
import io
import json


def test_quick_benchmark_prints_a_table_and_json(tmp_path):
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    from _record import read_records
    from aldp_vs_md import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick", "--threads", "1", "--record", str(tmp_path / "r.jsonl")])
    lines = out.getvalue().strip().splitlines()
    result = json.loads(lines[-1])
    assert [r["method"] for r in result["rows"]] == ["boltzgen", "plain MD", "biased MD"]
    assert all(r["seconds"] > 0 and r["target_evaluations"] > 0 for r in result["rows"])
    assert result["rows"][0]["training_seconds"] > 1000  # read from the shipped model's provenance
    assert any(line.startswith("boltzgen") for line in lines)
    (record,) = read_records(tmp_path / "r.jsonl")  # --record: the figures as one result record
    assert record["name"] == "aldp_vs_md" and record["command"] == "python benchmarks/aldp_vs_md.py --quick --threads 1"
    assert record["figures"]["boltzgen_seconds"] == result["rows"][0]["seconds"]
    assert "biased_md_dF_kT" in record["figures"] and "figures meaningless" in record["note"]
