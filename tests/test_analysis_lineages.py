"""Lineages per declared state (boltzgen.analysis.lineages): hand-built runs with known answers."""
import numpy as np
import pytest

from boltzgen import systems
from boltzgen.analysis.lineages import FEW_LINEAGES, effective_lineages, state_lineages
from boltzgen.analysis.runs import WeightedRun
from boltzgen.cli import format_sample_summary


def test_equal_lineages_count_fully_and_a_dominant_one_counts_as_about_one():
    origins = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert effective_lineages(origins, np.zeros(8), np.ones(8, bool)) == pytest.approx(4.0)
    # the weights' offset does not matter; zero weights (-inf) carry nothing
    assert effective_lineages(origins, np.full(8, -700.0), np.ones(8, bool)) == pytest.approx(4.0)
    lw = np.array([0.0, 0.0, -np.inf, -np.inf, 0.0, -np.inf, -np.inf, -np.inf])
    assert effective_lineages(origins, lw, np.ones(8, bool)) == pytest.approx(1.8)  # masses 2 and 1: 9 / 5
    dominant = np.log([100.0, 100.0, 1, 1, 1, 1, 1, 1])
    assert 1.0 <= effective_lineages(origins, dominant, np.ones(8, bool)) < 1.2
    # only the particles in the mask count
    mask = np.array([True, True, True, False, False, False, False, False])
    assert effective_lineages(origins, np.zeros(8), mask) == pytest.approx(9 / 5)


def test_an_empty_state_has_no_lineages_and_shapes_must_agree():
    origins = np.arange(4)
    assert effective_lineages(origins, np.zeros(4), np.zeros(4, bool)) == 0.0
    assert effective_lineages(origins, np.full(4, -np.inf), np.ones(4, bool)) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        effective_lineages(origins, np.zeros(3), np.ones(4, bool))


def _run(phi, origins, log_weights=None):
    n = len(phi)
    return WeightedRun(path="hand-built", log_weights=np.zeros(n) if log_weights is None else log_weights,
                       cv_values={"phi": np.asarray(phi, float), "psi": np.zeros(n)},
                       cvs=systems.collective_variables("alanine-dipeptide"), kind="samples",
                       origins=None if origins is None else np.asarray(origins))


def test_state_lineages_take_the_side_fewer_lineages_carry():
    # phi > 0 (the state) is held by lineage 5 alone; phi < 0 by lineages 0-3 equally
    run = _run([-1.0] * 8 + [1.0] * 2, [0, 0, 1, 1, 2, 2, 3, 3, 5, 5])
    lineages = state_lineages(run)
    assert lineages["phi_positive"] == pytest.approx(1.0)
    assert set(lineages) == {"phi_positive", "phi_0_to_2"}
    # indexing a run keeps each frame's lineage
    assert np.array_equal(run[np.array([8, 0])].origins, [5, 0])


def test_state_lineages_need_the_runs_lineages():
    with pytest.raises(ValueError, match="records no lineages"):
        state_lineages(_run([-1.0, 1.0], None))


def _summary(per_state):
    return {"system": "alanine-dipeptide", "n_runs": 2, "n_particles_per_run": 10, "model": "m",
            "recalibration": False, "free_energies": [], "log_z": 0.0, "log_z_err": 0.1, "ess_fraction": 1.0,
            "bridge_ess_fraction": 0.5, "levels_ess_fraction": 0.5, "lineages": [5, 6], "levels_lineages": [6, 7],
            "settings": {"mixing": {"moves": 10}}, "torsion_acceptance": 0.2, "target_evaluations": 1,
            "model_evaluations": 1, "seconds": 1.0, "state_lineages": per_state}


def test_the_summary_prints_lineages_per_state_and_warns_below_the_rule_of_thumb():
    many = format_sample_summary(_summary({"phi_positive": [2 * FEW_LINEAGES, 3 * FEW_LINEAGES]}))
    assert f"phi_positive {2.5 * FEW_LINEAGES:.1f}" in many and "fewer than" not in many
    few = format_sample_summary(_summary({"phi_positive": [1.0, 2.0], "phi_0_to_2": [30.0, 40.0]}))
    assert "fewer than" in few and "phi_positive: each run" in few


def test_the_summary_keeps_a_place_for_runs_that_saved_no_lineages():
    from boltzgen.analysis.lineages import lineages_over_runs

    saved = _run([-1.0] * 8 + [1.0] * 2, [0, 0, 1, 1, 2, 2, 3, 3, 5, 5])
    older = _run([-1.0, 1.0], None)  # e.g. pooled in from a job written before runs saved lineages
    assert lineages_over_runs([saved, older]) == {"phi_positive": [1.0, None], "phi_0_to_2": [1.0, None]}
    assert lineages_over_runs([older, older]) == {}
    table = format_sample_summary(_summary({"phi_positive": [3.0, None]}))
    assert "phi_positive 3.0" in table and "1 of 2 runs saved their lineages" in table


def test_lineage_lines_leave_out_runs_without_lineages_and_say_nothing_when_none_saved_them():
    from boltzgen.analysis.lineages import format_state_lineages, lineages_over_runs

    saved = _run([-1.0] * 8 + [1.0] * 2, [0, 0, 1, 1, 2, 2, 3, 3, 5, 5])
    md_like = _run([-1.0, 1.0], None)
    per_state = lineages_over_runs([saved, md_like])
    lines = format_state_lineages(per_state, 2)
    assert "phi_positive 1.0" in lines[0] and "1 of 2 runs saved their lineages" in lines[0]
    assert "fewer than" in lines[1]
    assert format_state_lineages(lineages_over_runs([md_like]), 1) == []
