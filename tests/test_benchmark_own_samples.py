"""benchmarks/own_samples.py: the reverse-direction figures of a shipped model over seeds, and its record."""
import contextlib
import io
import json
import statistics

import pytest


def test_figures_are_means_over_seeds_with_their_errors_and_are_recorded(tmp_path):
    import benchmarks_path  # noqa: F401
    from _record import read_records
    from own_samples import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        figures = main(["alanine-dipeptide", "--samples", "20", "--seeds", "1", "2", "--record", str(tmp_path / "r.jsonl")])
    printed = json.loads(out.getvalue().strip().splitlines()[-1])
    assert printed["seeds"] == 2 and printed["samples_per_seed"] == 20
    per_seed = [float(v) for v in printed["one_step_ess_per_seed"].split(", ")]
    assert statistics.fmean(per_seed) == pytest.approx(figures["one_step_ess_fraction"], abs=1e-4)
    assert 0 < figures["one_step_ess_fraction"] <= 1 and 0 <= figures["far_fraction"] <= 1
    assert figures["one_step_ess_fraction_err"] is not None and figures["delta_iqr_kT"] >= 0
    # the model's own population of the declared state, per seed and averaged, beside the shipped reference's
    own = [float(v) for v in printed["own_p_phi_positive_per_seed"].split(", ")]
    assert len(own) == 2 and all(0 <= p <= 1 for p in own)
    assert statistics.fmean(own) == pytest.approx(figures["own_p_phi_positive"], abs=1e-4)
    assert 0 < figures["reference_p_phi_positive"] < 0.1
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record["name"] == "own_samples" and record["figures"]["seeds"] == 2
    assert "--record" not in record["command"]


def test_mean_and_error_over_seeds():
    import benchmarks_path  # noqa: F401
    from own_samples import mean_and_error

    assert mean_and_error([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, statistics.stdev([1.0, 2.0, 4.0]) / 3 ** 0.5))
    assert mean_and_error([0.5]) == (0.5, None)


def test_bad_arguments_are_refused():
    import benchmarks_path  # noqa: F401
    from own_samples import main

    for argv in (["no-such-system"], ["butane", "--samples", "0"], ["butane", "--model", "/nowhere/model.pt"]):
        with pytest.raises(SystemExit):
            main(argv)
