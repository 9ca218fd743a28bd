import math

import numpy as np
import pytest

from boltzgen.analysis.plots import plot_profiles
from boltzgen.analysis.profiles import Profile, compute_profile


def _runs(seed, n_runs=4, n=4000, p_right=0.2):
    """Angles in two halves: [-pi, 0) with probability 1 - p_right, [0, pi) with p_right."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_runs):
        right = rng.random(n) < p_right
        out.append(np.where(right, rng.uniform(0, math.pi, n), rng.uniform(-math.pi, 0, n)))
    return out


def test_profile_of_a_two_level_density_and_its_error_over_runs():
    p = compute_profile(_runs(0), bins=2)
    assert p.free_energy[0] == 0.0
    # F(right) - F(left) = ln(0.8 / 0.2). Delta method on 16,000 draws in all: its s.e. is
    # sqrt(1 / (n p (1 - p))) = sqrt(1 / (16000 * 0.2 * 0.8)) = 0.0198 kT; 4 s.e. as the tolerance
    se = math.sqrt(1 / (16000 * 0.2 * 0.8))
    assert p.free_energy[1] == pytest.approx(math.log(4.0), abs=4 * se)
    # the band: per run sd(-ln p_right) = sqrt((1 - p) / (n p)) = 0.0316, over sqrt(4) runs 0.0158;
    # its estimate from 4 runs is that times sqrt(chi2_3 / 3), inside [0.07, 2.43] with probability 0.999
    sigma = math.sqrt(0.8 / (4000 * 0.2)) / 2
    assert 0.07 * sigma < p.error[1] < 2.43 * sigma and p.n_runs == 4


def test_weights_move_the_profile_exactly():
    runs = _runs(1, n_runs=1, p_right=0.5)  # one run: runs are averaged after normalising each
    # weight the right half by 3: F(right) - F(left) moves by -ln 3 from the unweighted profile
    lw = [np.where(x >= 0, math.log(3.0), 0.0) for x in runs]
    plain, weighted = compute_profile(runs, bins=2), compute_profile(runs, lw, bins=2)
    shift = (weighted.free_energy[1] - weighted.free_energy[0]) - (plain.free_energy[1] - plain.free_energy[0])
    assert shift == pytest.approx(-math.log(3.0), abs=1e-12)


def test_empty_bins_and_one_run_have_no_error():
    x = [np.full(10, -1.0)]
    p = compute_profile(x, bins=4)
    assert np.isnan(p.error).all() and np.isnan(p.free_energy).sum() == 3 and p.n_runs == 1
    two = compute_profile([np.full(10, -1.0), np.array([-1.0, 2.0])], bins=4)
    assert np.isnan(two.error[3])  # one run left the bin of 2.0 empty: no error there


def test_round_trip_through_json_lists():
    p = compute_profile(_runs(2), bins=12)
    q = Profile.from_dict(p.to_dict())
    assert np.allclose(q.edges, p.edges) and np.allclose(q.free_energy, p.free_energy, atol=1e-5)
    assert np.allclose(q.error, p.error, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(values=np.zeros(3)), "one array of angles per run"),
    (dict(values=[np.array([4.0])]), r"values\[0\]"),
    (dict(values=[np.zeros(3)], log_weights=[np.zeros(2)]), r"log_weights\[0\]"),
    (dict(values=[np.zeros(3)], log_weights=[]), "one array per run"),
    (dict(values=[np.zeros(3)], bins=1), "bins"),
])
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_profile(**kwargs)


def test_plot_draws_each_profile_with_a_band():
    p = compute_profile(_runs(3), bins=12)
    fig = plot_profiles({"samples": p, "reference": p}, name="phi")
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    assert ax.get_xlabel() == "φ (deg)" and "4 runs" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(TypeError, match="Profile"):
        plot_profiles({"samples": 1.0})
