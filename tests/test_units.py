import math

import pytest

from boltzgen.units import format_in_molar_units, kt_in_kcal_per_mol, kt_in_kj_per_mol


def test_kt_at_300_kelvin_in_molar_units():
    assert kt_in_kj_per_mol(300.0) == pytest.approx(2.494339, abs=1e-6)  # R T, R = 8.314462618 J/(mol K)
    assert kt_in_kcal_per_mol(300.0) == pytest.approx(2.494339 / 4.184, abs=1e-6)
    assert kt_in_kj_per_mol(600) == pytest.approx(2 * kt_in_kj_per_mol(300))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "300"])
def test_temperature_must_be_positive_kelvin(bad):
    with pytest.raises(ValueError, match="temperature"):
        kt_in_kj_per_mol(bad)


def test_free_energies_print_in_both_molar_units():
    text = format_in_molar_units(2.0, 0.1, 300.0)
    assert text == "(4.99 +- 0.25 kJ/mol, 1.19 +- 0.06 kcal/mol)"
    assert format_in_molar_units(2.0, None, 300.0) == "(4.99 kJ/mol, 1.19 kcal/mol)"
    assert format_in_molar_units(None, 0.1, 300.0) == "" and format_in_molar_units(2.0, 0.1, None) == ""
