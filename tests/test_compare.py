"""Distances between weighted sample sets (boltzgen.analysis.compare) and the comparison plots."""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402

from boltzgen.analysis.compare import (  # noqa: E402
    KL_BINS,
    energy_w2,
    histogram_bins,
    ramachandran_kl,
    torus_w2,
    weighted_histogram,
)
from boltzgen.analysis.plots import plot_energy_histogram, plot_phi_profile  # noqa: E402

from angle_samples import DEG, cluster, no_pyplot_figures  # noqa: E402,F401  (autouse fixture)


# ---- ramachandran_kl ----------------------------------------------------------------------------
def test_kl_default_bins_are_ten_degrees():
    assert KL_BINS == 36


def test_kl_of_identical_sets_is_zero():
    a = cluster(-70, 140, 500, 20, seed=0)
    lw = np.random.default_rng(1).normal(size=500)
    assert ramachandran_kl(a, lw, a, lw) == 0.0
    assert ramachandran_kl(a, lw + 123.0, a, lw) == pytest.approx(0.0, abs=1e-12)  # offsets are irrelevant


def test_kl_hand_built_two_bins_per_angle():
    """bins=2: four cells; the formula with the pseudocount written out by hand."""
    c = 0.01
    # Q: 3/4 in cell (phi<0, psi<0), 1/4 in (phi>=0, psi>=0); P: 1/2 and 1/2 in the same cells
    angles_q = np.array([[-1.0, -1.0], [1.0, 1.0]])
    angles_p = np.array([[-2.0, -0.5], [math.pi, 0.3]])  # phi = pi wraps to -pi: cell (0, 1)
    q_raw = np.array([0.75, 0.0, 0.0, 0.25])  # cells (0,0), (0,1), (1,0), (1,1)
    p_raw = np.array([0.5, 0.5, 0.0, 0.0])
    q = (q_raw + c) / (1 + 4 * c)
    p = (p_raw + c) / (1 + 4 * c)
    expected = float(np.sum(q * np.log(q / p)))
    got = ramachandran_kl(angles_p, None, angles_q, np.log([3.0, 1.0]), bins=2, pseudocount=c)
    assert got == pytest.approx(expected, rel=1e-12)


def test_kl_of_known_discrete_distributions():
    """Weighted points at the bin centres reproduce two discrete distributions on 4 of the 36 x 36 cells."""
    centres = (np.arange(KL_BINS) + 0.5) * (2 * math.pi / KL_BINS) - math.pi
    cells = [(3, 30), (10, 10), (20, 5), (33, 17)]
    angles = np.array([[centres[i], centres[j]] for i, j in cells])
    q = np.array([0.4, 0.3, 0.2, 0.1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    analytic = float(np.sum(q * np.log(q / p)))  # 0.4564 nats
    # the pseudocount 1e-12 shifts every term by O(1e-12 * bins^2): a 1e-8 tolerance covers it
    assert ramachandran_kl(angles, np.log(p), angles, np.log(q)) == pytest.approx(analytic, abs=1e-8)
    # the direction is KL(reference || samples), not the reverse
    assert ramachandran_kl(angles, np.log(q), angles, np.log(p)) == pytest.approx(
        float(np.sum(p * np.log(p / q))), abs=1e-8)


def test_kl_of_a_missed_bin_is_finite_and_large():
    q_angles = np.array([[-1.0, 2.0], [1.0, -2.0]])
    p_angles = np.array([[-1.0, 2.0]])
    kl = ramachandran_kl(p_angles, None, q_angles, None)
    assert math.isfinite(kl) and kl == pytest.approx(0.5 * math.log(0.5 / 1e-12) + 0.5 * math.log(0.5), rel=1e-6)
    assert ramachandran_kl(p_angles, None, q_angles, None, pseudocount=0.0) == math.inf


# ---- energy_w2 ----------------------------------------------------------------------------------
def test_energy_w2_of_gaussians_matches_the_analytic_value():
    m1, s1, m2, s2, n = 0.0, 1.0, 1.0, 2.0, 20000
    g = np.random.default_rng(2)
    u_p, u_q = g.normal(m1, s1, n), g.normal(m2, s2, n)
    analytic = math.hypot(m1 - m2, s1 - s2)  # sqrt(2)
    # Delta method on W2 = sqrt(dm^2 + ds^2): var(mean diff) = (s1^2 + s2^2) / n,
    # var(sd diff) ~ (s1^2 + s2^2) / (2 n), so sd(W2) = sqrt((dm^2 * 5 + ds^2 * 2.5) / n) / W2 = 0.0137;
    # the finite-sample bias (shape noise, O(log log n / n) in W2^2) is below 1e-3. Tolerance: 4 sd.
    sd = math.sqrt(((m1 - m2) ** 2 * (s1**2 + s2**2) + (s1 - s2) ** 2 * (s1**2 + s2**2) / 2) / n) / analytic
    assert energy_w2(u_p, None, u_q, None) == pytest.approx(analytic, abs=4 * sd)


def test_energy_w2_small_exact_cases():
    assert energy_w2([0.0], None, [3.0], None) == pytest.approx(3.0)
    assert energy_w2([0.0, 1.0], None, [0.0], None) == pytest.approx(math.sqrt(0.5))
    # symmetric, shift-equivariant, and zero for identical sets
    x, y = np.array([0.3, -1.0, 4.0]), np.array([2.0, 2.5])
    assert energy_w2(x, None, y, None) == pytest.approx(energy_w2(y, None, x, None), rel=1e-14)
    assert energy_w2(x + 1e4, None, y + 1e4, None) == pytest.approx(energy_w2(x, None, y, None), rel=1e-9)
    lw = np.array([0.1, -3.0, 2.0])
    assert energy_w2(x, lw, x, lw + 7.0) == 0.0


def test_energy_w2_weighted_equals_repeated():
    values, counts = np.array([0.0, 1.0, 2.5]), np.array([1, 2, 3])
    repeated = np.repeat(values, counts)
    other = np.random.default_rng(3).normal(1.0, 1.0, 50)
    weighted = energy_w2(values, np.log(counts), other, None)
    assert weighted == pytest.approx(energy_w2(repeated, None, other, None), rel=1e-12)
    assert energy_w2(values, np.log(counts), repeated, None) == 0.0


def test_energy_w2_ignores_zero_weight_samples():
    u = np.array([0.0, np.nan, 1.0, np.inf])
    lw = np.array([0.0, -np.inf, 0.0, np.nan])
    assert energy_w2(u, lw, [0.0, 1.0], None) == pytest.approx(0.0, abs=1e-12)


# ---- torus_w2 -----------------------------------------------------------------------------------
def test_torus_w2_of_identical_sets_is_zero():
    a = cluster(-70, 140, 300, 30, seed=4)
    lw = np.random.default_rng(5).normal(size=300)
    assert torus_w2(a, lw, a, lw, n_points=200) == 0.0


@pytest.mark.parametrize("shift_deg", [(5.0, 0.0), (3.0, -4.0)])
def test_torus_w2_of_a_shifted_set_is_the_shift(shift_deg):
    """A cluster far from the +-pi seams: the torus is locally flat, where W2(mu, mu + v) = |v| exactly."""
    a = cluster(-60, -40, 200, 15, seed=6)
    shift = np.array(shift_deg) * DEG
    assert torus_w2(a, None, a + shift, None, n_points=200) == pytest.approx(np.hypot(*shift), rel=1e-9)


def test_torus_w2_wraps_around_pi():
    p = np.array([[179.0, 0.0], [179.0, 90.0]]) * DEG
    q = np.array([[-179.0, 0.0], [-179.0, 90.0]]) * DEG
    assert torus_w2(p, None, q, None, n_points=50) == pytest.approx(2.0 * DEG, rel=1e-9)
    # psi across the seam too: 2 deg in each angle
    p2 = np.array([[179.0, 179.0], [179.0, 90.0]]) * DEG
    q2 = np.array([[-179.0, -179.0], [-179.0, 88.0]]) * DEG
    assert torus_w2(p2, None, q2, None, n_points=50) == pytest.approx(2.0 * DEG * math.sqrt(2.0), rel=1e-9)


def test_torus_w2_uses_the_weights():
    a, b = [-1.0, 1.0], [2.0, -2.0]
    weighted = np.array([a, b])  # weights 3 : 1
    repeated = np.array([a, a, a, b])  # equal weights
    assert torus_w2(weighted, np.log([3.0, 1.0]), repeated, None, n_points=8) == 0.0
    # more points than samples: resampled with repetition, still exact
    assert torus_w2(weighted, np.log([3.0, 1.0]), repeated, None, n_points=400) == 0.0
    # equal weights on the weighted set: 1/4 of the mass must move from a to b
    d = math.dist(a, b)
    assert torus_w2(weighted, None, repeated, None, n_points=4) == pytest.approx(d * 0.5, rel=1e-9)


def test_torus_w2_spread_over_seeds_is_small():
    """Two samples of one distribution: estimates over seeds agree within their spread and are small."""
    a = cluster(-70, 140, 400, 20, seed=7)
    b = cluster(-70, 140, 400, 20, seed=8)
    est = np.array([torus_w2(a, None, b, None, n_points=200, seed=s) for s in range(3)])
    assert np.all(est < 10 * DEG)  # sampling noise of two 400-point sets of a 20 deg cluster: a few deg


# ---- histograms ---------------------------------------------------------------------------------
def test_weighted_histogram():
    x = np.array([0.1, 0.5, 1.5, 2.0, 5.0])
    lw = np.log([1.0, 1.0, 2.0, 4.0, 2.0])
    h = weighted_histogram(x, lw, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(h, [0.2, 0.6])  # the last bin includes its right edge; 5.0 is outside
    assert h.shape == (2,) and h.sum() == pytest.approx(0.8)


def test_histogram_bins():
    assert histogram_bins(1000, 0.0, 1.0) == 20  # Rice: 2 * 1000^(1/3)
    assert histogram_bins(125.0, -1.0, 1.0) == 10
    assert histogram_bins(3.0, 0.0, 1.0) == 10  # clipped below
    assert histogram_bins(1e9, 0.0, 1.0) == 100  # clipped above
    assert histogram_bins(1e9, 0.0, 1.0, min_bins=5, max_bins=50) == 50


# ---- bad input ----------------------------------------------------------------------------------
A = cluster(-70, 140, 20, 10, seed=9)
U = np.linspace(0.0, 1.0, 20)


@pytest.mark.parametrize("call, match", [
    (lambda: ramachandran_kl(A[:, 0], None, A, None), "angles_p"),
    (lambda: ramachandran_kl(A, None, A / DEG, None), "angles_q.*degrees"),
    (lambda: ramachandran_kl(A, None, A + 2.0, None), "angles_q"),
    (lambda: ramachandran_kl(A, np.zeros(19), A, None), r"log_weights_p.*\(20,\)"),
    (lambda: ramachandran_kl(A, None, A, np.zeros((20, 1))), "log_weights_q"),
    (lambda: ramachandran_kl(A, None, A, np.full(20, -np.inf)), "log_weights_q.*zero weight"),
    (lambda: ramachandran_kl(np.zeros((0, 2)), None, A, None), "angles_p.*empty"),
    (lambda: ramachandran_kl(A, None, A, None, bins=0), "bins"),
    (lambda: ramachandran_kl(A, None, A, None, pseudocount=-1.0), "pseudocount"),
    (lambda: ramachandran_kl(np.array([[np.nan, 0.0]]), None, A, None), "angles_p.*NaN"),
    (lambda: energy_w2(U[:, None], None, U, None), "energies_p"),
    (lambda: energy_w2(U, None, [], None), "energies_q.*empty"),
    (lambda: energy_w2(U, np.zeros(3), U, None), "log_weights_p"),
    (lambda: energy_w2(U, None, U, np.full(20, np.nan)), "log_weights_q"),
    (lambda: energy_w2(U, None, [0.0, np.inf], None), "energies_q.*infinite"),
    (lambda: torus_w2(A, None, A[:, :1], None), "angles_q"),
    (lambda: torus_w2(A, None, A * 2.0, None), "angles_q"),
    (lambda: torus_w2(A, np.zeros(21), A, None), "log_weights_p"),
    (lambda: torus_w2(A, None, A, np.full(20, -np.inf)), "log_weights_q"),
    (lambda: torus_w2(A, None, A, None, n_points=0), "n_points"),
    (lambda: torus_w2(A, None, A, None, seed=-1), "seed"),
    (lambda: weighted_histogram(U, None, [1.0]), "edges"),
    (lambda: weighted_histogram(U, None, [1.0, 0.0]), "edges"),
    (lambda: weighted_histogram(U, np.zeros(2), [0.0, 1.0]), "log_weights"),
    (lambda: weighted_histogram([], None, [0.0, 1.0]), "values.*empty"),
    (lambda: weighted_histogram([np.nan], None, [0.0, 1.0]), "values.*NaN"),
    (lambda: histogram_bins(0, 0.0, 1.0), "n_effective"),
    (lambda: histogram_bins(10, 1.0, 1.0), "low"),
    (lambda: histogram_bins(10, 0.0, math.inf), "high"),
    (lambda: histogram_bins(10, 0.0, 1.0, min_bins=20, max_bins=10), "min_bins"),
    (lambda: plot_phi_profile(A, None), "phi"),
    (lambda: plot_phi_profile(A[:, 0] / DEG, None), "phi.*degrees"),
    (lambda: plot_phi_profile(A[:, 0], None, reference=A[:, 0]), "reference"),
    (lambda: plot_phi_profile(A[:, 0], None, reference=(A[:, 0], np.zeros(3))), r"reference\[1\]"),
    (lambda: plot_energy_histogram(U, np.zeros(2)), "log_weights"),
    (lambda: plot_energy_histogram(U, None, reference=([np.nan], None)), r"reference\[0\]"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- plots --------------------------------------------------------------------------------------
def test_plot_phi_profile(tmp_path):
    phi = cluster(-70, 0, 2000, 25, seed=10)[:, 0]
    phi_ref = cluster(-60, 0, 1000, 20, seed=11)[:, 0]
    fig = plot_phi_profile(phi, np.zeros(2000), reference=(phi_ref, None), bins=36)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "φ (deg)" and ax.get_ylabel() == "F / kT"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["samples", "reference"]
    assert len(ax.lines) == 2
    for line in ax.lines:
        x, y = line.get_xdata(), line.get_ydata()
        np.testing.assert_allclose(x, np.arange(-175.0, 180.0, 10.0))  # bin centres in degrees
        assert np.nanmin(y) == 0.0
        assert ax.get_ylim()[1] >= np.nanmax(y)
    # the samples' curve is -ln of their histogram
    counts, _ = np.histogram(phi, bins=np.linspace(-math.pi, math.pi, 37))
    with np.errstate(divide="ignore"):
        f = -np.log(counts / counts.sum())
    f = np.where(np.isfinite(f), f - f[np.isfinite(f)].min(), np.nan)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), f)
    fig.savefig(tmp_path / "phi.png")
    assert (tmp_path / "phi.png").stat().st_size > 0


def test_plot_phi_profile_without_reference_picks_bins():
    phi = cluster(-70, 0, 1000, 25, seed=12)[:, 0]
    fig = plot_phi_profile(phi)
    ax = fig.axes[0]
    assert ax.get_legend() is None
    assert len(ax.lines[0].get_xdata()) == histogram_bins(1000, -math.pi, math.pi) == 20


def test_plot_energy_histogram(tmp_path):
    g = np.random.default_rng(13)
    u, u_ref = g.normal(0.0, 1.0, 3000), g.normal(1.0, 2.0, 2000)
    fig = plot_energy_histogram(u, np.zeros(3000), reference=(u_ref, None))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "u / kT" and ax.get_ylabel() == "density (1 / kT)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["samples", "reference"]
    steps = [p for p in ax.patches if isinstance(p, StepPatch)]
    assert len(steps) == 2
    edges = steps[0].get_data().edges
    np.testing.assert_array_equal(edges, steps[1].get_data().edges)  # common bins
    assert len(edges) - 1 == histogram_bins(2000, edges[0], edges[-1])  # the smaller ESS
    # edges span the 0.5 / 99.5 percentiles of both sets: the reference's, here
    assert edges[0] == np.quantile(u_ref, 0.005, method="inverted_cdf")
    assert edges[-1] == np.quantile(u_ref, 0.995, method="inverted_cdf")
    for step in steps:  # densities: about 0.99 of the weight lies inside
        area = float(np.sum(step.get_data().values * np.diff(edges)))
        assert 0.98 <= area <= 1.0
    fig.savefig(tmp_path / "energy.png")
    assert (tmp_path / "energy.png").stat().st_size > 0


def test_plots_draw_into_a_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_energy_histogram([1.0, 1.0, 1.0], None, ax=ax) is fig  # one energy: a unit-wide window
    assert ax.get_xlim() == (0.5, 1.5)
