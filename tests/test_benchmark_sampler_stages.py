"""benchmarks/sampler_stages.py: --quick runs every stage end to end (figures meaningless), and its arithmetic."""
import contextlib
import io
import json
import math

import numpy as np
import pytest


def test_quick_run_reports_every_stage_and_records_it(tmp_path):
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    from _record import read_records
    from sampler_stages import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick", "--threads", "1", "--record", str(tmp_path / "r.jsonl")])
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert list(result["stages"]) == ["initial", "levels", "bridge", "mixing"]
    for row in result["stages"].values():
        assert 0.0 <= row["p"] <= 1.0 and 0 <= row["ancestors_in"] <= row["n_in"] <= 16
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record["name"] == "sampler_stages" and record["figures"]["level_torsions"] == 4
    assert "--record" not in record["command"] and "figures meaningless" in record["note"]


def test_summary_arithmetic():
    import benchmarks_path  # noqa: F401
    from sampler_stages import summarise

    p = [0.02, 0.03, 0.025, 0.025]
    per_run = [{"mixing": {"p": x, "n_in": 25, "ancestors_in": 10}} for x in p]
    s = summarise(per_run, [10.0, 12.0, 8.0, 10.0])
    row = s["stages"]["mixing"]
    mean, sd = 0.025, float(np.std(p, ddof=1))
    assert row["p"] == pytest.approx(mean) and row["relative_sd"] == pytest.approx(sd / mean)
    assert row["dF_kT"] == pytest.approx(-math.log(mean / (1 - mean)))
    assert row["dF_se_kT"] == pytest.approx(sd / 2 / (mean * (1 - mean)))
    # cost to 0.1 kT: per-run SD of dF squared times seconds per run, over 0.1^2
    assert s["per_run_sd_kT"] == pytest.approx(row["dF_se_kT"] * 2)
    assert s["seconds_to_0.1"] == pytest.approx(s["per_run_sd_kT"] ** 2 * 10.0 / 0.01)
    # the variance behind that cost comes from 4 runs: uncertain by a factor exp(sqrt(2 / 3))
    assert s["seconds_to_0.1_factor"] == pytest.approx(math.exp(math.sqrt(2 / 3)))
    assert row["p_per_run"] == p  # printed, so that runs at other seeds can be pooled
