"""benchmarks/gb_nonpolar_offset.py: the nonpolar term FEAT's lambda = 0 end keeps, on a few ps of MD."""
import contextlib
import io
import json

import numpy as np
import pytest

from boltzgen import systems


def test_quick_offset_is_the_positive_surface_term_and_ends_with_json():
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    from gb_nonpolar_offset import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick"])
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert len(result["per_run_kT"]) == 2 and result["offset_err_kT"] is not None
    # the ACE surface term is positive on every configuration, a few kT for a 22-atom solute
    assert 1.0 < result["offset_kT"] < 20.0


def test_charges_off_keeps_only_the_nonpolar_term_and_refuses_other_forces():
    import benchmarks_path  # noqa: F401
    from gb_nonpolar_offset import charges_off

    with systems.load("alanine-dipeptide-ff96") as vacuum, systems.load("alanine-dipeptide-ff96-implicit") as gb:
        x = np.stack([vacuum.positions, vacuum.positions * 1.01])
        with charges_off(gb) as off:
            nonpolar = (off.reduced_energy(x) - vacuum.reduced_energy(x)).numpy()
            polar = (gb.reduced_energy(x) - off.reduced_energy(x)).numpy()
        assert (nonpolar > 0).all() and (polar < 0).all()  # cavity cost; the charges' solvation gain
        with pytest.raises(ValueError, match="expected one CustomGBForce"):
            charges_off(vacuum)
