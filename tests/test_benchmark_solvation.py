"""benchmarks/solvation_aldp.py --quick runs the free-energy pipeline and BAR end to end and ends with a JSON line."""
import contextlib
import io
import json
import math


def test_quick_solvation_benchmark_prints_a_table_and_json():
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    from solvation_aldp import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick"])
    lines = out.getvalue().strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("delta_f_kT", "delta_f_err_kT", "reference_kT", "ess_fraction", "seconds"):
        assert result[key] is not None and math.isfinite(result[key]), key
    assert result["reference_kT"] < 0  # solvation lowers the free energy of alanine dipeptide
    assert any(line.strip().startswith("BAR on MD") for line in lines)
