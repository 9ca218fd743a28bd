"""benchmarks/aldp_vs_md.py --quick runs every arm end to end and ends with a JSON line (figures meaningless)."""
import contextlib
import functools
import io
import json
import math

import pytest


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
    assert methods == ["biased MD", "biased MD (1 fs)", "MCMC alone", "Cartesian generator", "IC generator",
                       "IC generator, no mixing"]
    assert [r["timestep_fs"] for r in result["rows"][:2]] == [0.5, 1.0]
    assert result["rows"][0]["target_evaluations"] == 2 * result["rows"][1]["target_evaluations"]  # steps per ns
    mcmc = result["rows"][2]
    assert len(mcmc["per_run_dF_kT"]) == mcmc["runs"] == 2  # one estimate per independent set of chains
    generators = result["rows"][3:]
    assert all(r["model_evaluations"] > 0 and len(r["lineages"]) == r["runs"] for r in generators)
    table = [line for line in lines if line.startswith(("biased MD", "MCMC alone", "Cartesian", "IC generator"))]
    assert len(table) == 6  # one printed row per arm
    (record,) = read_records(tmp_path / "r.jsonl")  # --record: the figures as one result record
    assert record["name"] == "aldp_vs_md" and record["command"] == "python benchmarks/aldp_vs_md.py --quick --threads 1"
    assert record["figures"]["ic_generator_seconds"] == result["rows"][4]["seconds"]
    assert "biased_md_1_fs_dF_kT" in record["figures"]
    assert "figures meaningless" in record["note"]


def test_ratios_leave_out_a_baseline_that_misses_the_reference():
    import benchmarks_path  # noqa: F401
    from _arms import ratios as _ratios
    from aldp_vs_md import _row, reference_of

    reference = reference_of("alanine-dipeptide")
    ref = reference["delta_f_phi_positive_kT"]
    _row = functools.partial(_row, reference=reference)
    rows = [_row("biased MD", ref, 0.05, 100.0, 1000), _row("MCMC alone", ref + 1.3, 0.07, 200.0, 1000),
            _row("IC generator", ref + 0.1, 0.2, 50.0, 1000, 500), _row("biased MD (1 fs)", ref - 0.05, 0.05, 50.0, 500)]
    assert abs(rows[1]["z_vs_reference"]) > 2 and abs(rows[0]["z_vs_reference"]) < 1e-9
    ratios = _ratios(rows)
    # biased MD needs 100 * (0.05 / 0.1)^2 = 25 s, the generator 50 * (0.2 / 0.1)^2 = 200 s
    assert ratios == {"biased MD / IC generator": 25.0 / 200.0, "biased MD (1 fs) / IC generator": 12.5 / 200.0}


def test_a_baseline_that_misses_the_reference_bounds_the_ratio_from_below():
    import benchmarks_path  # noqa: F401
    from _arms import lower_bounds
    from aldp_vs_md import _row, reference_of

    reference = reference_of("alanine-dipeptide")
    ref = reference["delta_f_phi_positive_kT"]
    _row = functools.partial(_row, reference=reference)
    rows = [_row("biased MD", ref, 0.05, 100.0, 1000), _row("MCMC alone", ref + 1.3, 0.07, 800.0, 1000),
            _row("IC generator", ref + 0.1, 0.2, 50.0, 1000, 500)]
    # MCMC alone ran 800 s without a right answer; the generator needs 50 * (0.2 / 0.1)^2 = 200 s
    assert lower_bounds(rows) == {"MCMC alone / IC generator": 800.0 / 200.0}
    assert lower_bounds(rows[:1] + rows[2:]) == {}  # every baseline sound: no bound


def test_a_ratio_comes_with_the_spread_its_runs_allow():
    import math

    import benchmarks_path  # noqa: F401
    from _arms import ratio_factors
    from aldp_vs_md import _row, reference_of

    reference = reference_of("alanine-dipeptide")
    ref = reference["delta_f_phi_positive_kT"]
    _row = functools.partial(_row, reference=reference)
    rows = [_row("biased MD", ref, 0.05, 100.0, 1000, runs=4), _row("IC generator", ref, 0.2, 50.0, 1000, 500, runs=16),
            _row("biased MD (1 fs)", ref, 0.05, 50.0, 500)]
    factors = ratio_factors(rows)
    # ln s^2 from k runs has s.e. sqrt(2 / (k - 1)): 4 and 16 runs give exp(sqrt(2/3 + 2/15))
    assert math.isclose(factors["biased MD / IC generator"], math.exp(math.sqrt(2 / 3 + 2 / 15)))
    assert factors["biased MD (1 fs) / IC generator"] is None  # an arm that does not say its runs


def test_quick_benchmark_of_the_implicit_set_up_compares_with_its_own_reference(tmp_path):
    import benchmarks_path  # noqa: F401
    from aldp_vs_md import main, reference_of

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick", "--threads", "1", "--system", "alanine-dipeptide-implicit", "--cartesian-model", "none",
              "--biased-timesteps", "0.5"])
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["system"] == "alanine-dipeptide-implicit"
    assert [r["method"] for r in result["rows"]] == ["biased MD", "MCMC alone", "IC generator", "IC generator, no mixing"]
    implicit, vacuum = reference_of("alanine-dipeptide-implicit"), reference_of("alanine-dipeptide")
    assert implicit["delta_f_phi_positive_kT"] != vacuum["delta_f_phi_positive_kT"]
    assert f"reference: {implicit['delta_f_phi_positive_kT']:.3f} +- " in out.getvalue()  # the implicit one, printed
    for row in result["rows"]:  # every z is against the implicit reference, not the vacuum one
        if row["z_vs_reference"] is not None:
            expected = (row["dF_kT"] - implicit["delta_f_phi_positive_kT"]) / math.hypot(
                row["se_kT"], implicit["delta_f_phi_positive_err_kT"])
            assert row["z_vs_reference"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="ships no reference"):
        reference_of("alanine-dipeptide-ff96-implicit")
