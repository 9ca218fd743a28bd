"""Error bars of one correlated run (boltzgen.analysis.timeseries, run_figures of a single MD run) against
an AR(1) series, whose autocorrelation is known exactly.

AR(1): x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t, stationary N(0, 1), corr(x_t, x_{t+k}) = rho^k. For the
mean of n frames Var = (g / n) with g = 1 + 2 sum_k (1 - k/n) rho^k (-> (1 + rho)/(1 - rho) = 19 at
rho = 0.9). The sign of x has corr (2/pi) arcsin(rho^k) (Gaussian orthant probability), so the
fraction of frames with x > 0 (p = 1/2) has Var = p (1 - p) g_sign / n with g_sign = 1 + 2 sum_k
(1 - k/n) (2/pi) arcsin(rho^k) (13.3 at rho = 0.9).

Tolerance: pymbar's g is itself estimated; on 50,000 frames with tau ~ 9 its spread over seeds is
about 6% (measured over 8 seeds: 0.95-1.14 for g, 0.96-1.08 for the standard error), so one series
must give the standard error within 15% (2.5 sigma), and the mean over 8 seeds within 5% (2 sigma of
that mean, sigma = 6%/sqrt(8)).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import lfilter

from boltzgen import systems
from boltzgen.analysis import WeightedRun, run_figures
from boltzgen.analysis.timeseries import correlated_error, suggested_burn_in

N, RHO = 50_000, 0.9
LAGS = np.arange(1, N)
G_MEAN = 1 + 2 * np.sum((1 - LAGS / N) * RHO ** LAGS)
G_SIGN = 1 + 2 * np.sum((1 - LAGS / N) * (2 / math.pi) * np.arcsin(RHO ** LAGS))
ALANINE = systems.collective_variables("alanine-dipeptide")


def ar1(n: int, rho: float, seed: int) -> np.ndarray:
    """A stationary AR(1) series (n,) with unit variance and lag-k correlation rho^k."""
    e = np.random.default_rng(seed).standard_normal(n)
    e[0] /= math.sqrt(1 - rho ** 2)  # x_0 ~ N(0, 1): stationary from the first frame
    return lfilter([math.sqrt(1 - rho ** 2)], [1.0, -rho], e)


def as_run(x: np.ndarray) -> WeightedRun:
    """An MD run whose phi is > 0 exactly where x > 0 (p = 1/2) and whose energies are x (kT), plain weights."""
    phi = np.where(x > 0, 1.0, -1.5)
    return WeightedRun(path="ar1", log_weights=np.zeros(len(x)), cv_values={"phi": phi, "psi": np.full_like(phi, 2.0)},
                       cvs=ALANINE, energies=x, kind="md")


def test_standard_error_of_a_mean_matches_the_exact_ar1_value():
    ratios = []
    for seed in range(8):
        e = correlated_error(ar1(N, RHO, seed))
        ratios.append(e.standard_error / math.sqrt(G_MEAN / N))
        assert ratios[-1] == pytest.approx(1.0, rel=0.15), seed
        assert e.effective_samples == pytest.approx(N / e.statistical_inefficiency)
    assert np.mean(ratios) == pytest.approx(1.0, rel=0.05)


def test_run_figures_of_one_md_run_give_the_exact_errors_of_populations_free_energy_and_energy():
    se_p = math.sqrt(0.25 * G_SIGN / N)
    f = run_figures([as_run(ar1(N, RHO, seed=3))])
    assert "statistical inefficiency" in f.error_method and f.n_error_units == 1
    assert f.p_phi_positive.standard_error == pytest.approx(se_p, rel=0.15)
    # dF = ln(P(phi<0) / P(phi>0)): at p = 1/2 its error is SE(p) / (p (1 - p)) = 4 SE(p) (delta method)
    assert f.delta_f_phi_positive.standard_error == pytest.approx(4 * se_p, rel=0.15)
    assert f.energy.standard_error == pytest.approx(math.sqrt(G_MEAN / N), rel=0.15)
    # the effective sample size is n / g of each figure's series
    assert f.energy.n == pytest.approx(N / G_MEAN, rel=0.15)
    assert f.statistical_inefficiency["delta_f_phi_positive"] == pytest.approx(G_SIGN, rel=0.3)
    d = f.to_dict()
    assert d["statistical_inefficiency"]["energy_mean"] == pytest.approx(f.statistical_inefficiency["energy_mean"])
    assert d["suggested_burn_in_frames"] == f.burn_in_frames


def test_weights_that_differ_by_a_constant_change_nothing():
    x = ar1(5000, RHO, seed=5)
    plain, shifted = as_run(x), as_run(x)
    shifted = WeightedRun(**{**shifted.__dict__, "log_weights": np.full(len(x), 7.5)})
    a, b = run_figures([plain]), run_figures([shifted])
    assert a.delta_f_phi_positive.standard_error == pytest.approx(b.delta_f_phi_positive.standard_error, rel=1e-9)


def test_burn_in_is_suggested_and_not_dropped():
    """A run that starts 5 kT high and relaxes over 2,000 frames: the burn-in is found; every frame still counts."""
    x = ar1(20_000, RHO, seed=1)
    x[:2000] += np.linspace(5.0, 0.0, 2000)
    assert 1000 <= suggested_burn_in(x) <= 3000
    f = run_figures([as_run(x)])
    assert 1000 <= f.burn_in_frames <= 3000 and f.n_frames == 20_000
    assert f.energy.mean == pytest.approx(x.mean())  # the whole run, burn-in included


def test_blocks_are_still_there_when_asked():
    f = run_figures([as_run(ar1(1000, RHO, seed=2))], blocks=4)
    assert "4 contiguous blocks" in f.error_method and f.n_error_units == 4 and not f.statistical_inefficiency
    assert f.burn_in_frames is None


def test_constant_series_has_zero_error():
    e = correlated_error(np.full(100, 0.3))
    assert e.standard_error == 0.0 and e.statistical_inefficiency == 1.0
    with pytest.raises(ValueError, match=r"z must have shape \(n,\)"):
        correlated_error([1.0])
