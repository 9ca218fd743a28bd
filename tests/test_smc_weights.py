"""Weights: normalisation, ESS, conditional ESS, log Z increments, clipped ESS."""
import math

import numpy as np
import pytest
import torch

from boltzgen.smc import weights as W


def _direct_ess(w: np.ndarray) -> float:
    return w.sum() ** 2 / (w**2).sum()


def test_ess_matches_direct_formula_and_is_shift_invariant():
    g = torch.Generator().manual_seed(0)
    log_w = 3.0 * torch.randn(500, generator=g, dtype=torch.float64)
    expected = _direct_ess(np.exp(log_w.numpy()))
    assert W.ess(log_w) == pytest.approx(expected, rel=1e-12)
    # huge offsets would overflow a naive exp; the result must not move
    assert W.ess(log_w + 1e4) == pytest.approx(expected, rel=1e-10)
    assert W.ess(log_w - 1e4) == pytest.approx(expected, rel=1e-10)
    assert W.ess_fraction(log_w) == pytest.approx(expected / 500, rel=1e-12)


def test_ess_closed_forms():
    n = 64
    assert W.ess(torch.zeros(n)) == pytest.approx(n)
    one = torch.full((n,), -math.inf)
    one[3] = 0.0
    assert W.ess(one) == pytest.approx(1.0)
    k_equal = torch.full((n,), -math.inf)
    k_equal[:10] = 2.5
    assert W.ess(k_equal) == pytest.approx(10.0)
    assert W.max_weight_share(k_equal) == pytest.approx(0.1)
    assert W.ess(torch.full((n,), -math.inf)) == 0.0


def test_ess_matches_gaussian_closed_form():
    # q = N(0, s_q^2), p = N(0, s_p^2) in d dims: ESS/N -> 1 / E_q[(p/q)^2] with
    # E_q[(p/q)^2] = (s_q / (s_p^2 sqrt(2/s_p^2 - 1/s_q^2)))^d.
    d, s_q, s_p, n = 3, 1.3, 1.0, 400_000
    g = torch.Generator().manual_seed(1)
    x = s_q * torch.randn(n, d, generator=g, dtype=torch.float64)
    log_w = -0.5 * (x**2).sum(1) / s_p**2 + 0.5 * (x**2).sum(1) / s_q**2  # log p/q up to a constant
    second_moment = (s_q / (s_p**2 * math.sqrt(2 / s_p**2 - 1 / s_q**2))) ** d
    expected = 1.0 / second_moment
    # relative error of a ratio of sample moments, ~ sd(w^2) / (E w^2 sqrt(n)); 4 standard errors
    w = torch.exp(log_w - log_w.max())
    rel_se = float((w**2).std() / (w**2).mean()) / math.sqrt(n) + float(w.std() / w.mean()) / math.sqrt(n)
    assert W.ess_fraction(log_w) == pytest.approx(expected, rel=4 * rel_se)


def test_nonfinite_log_weights_count_as_zero():
    log_w = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 0.0])
    assert W.ess(log_w) == pytest.approx(2.0)
    w = W.normalized_weights(log_w)
    assert torch.equal(w, torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5], dtype=torch.float64))
    assert W.log_mean_exp(log_w) == pytest.approx(math.log(2 / 5))
    s = W.summarize(log_w)
    assert s.n_zero == 3 and s.ess == pytest.approx(2.0)


def test_all_zero_weights_raise_on_normalisation():
    with pytest.raises(ValueError, match="zero weight"):
        W.normalized_weights(torch.full((3,), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        W.ess(torch.zeros(0))
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        W.ess(torch.zeros(3, 2))


def test_conditional_ess_closed_forms_and_direct_formula():
    g = torch.Generator().manual_seed(2)
    n = 300
    log_w = torch.randn(n, generator=g, dtype=torch.float64)
    inc = 0.7 * torch.randn(n, generator=g, dtype=torch.float64)
    Wn = np.exp(log_w.numpy()) / np.exp(log_w.numpy()).sum()
    gi = np.exp(inc.numpy())
    direct = n * (Wn * gi).sum() ** 2 / (Wn * gi**2).sum()
    assert W.conditional_ess(log_w, inc) == pytest.approx(direct, rel=1e-12)
    # constant increment: CESS = N whatever the weights
    assert W.conditional_ess(log_w, torch.full((n,), 4.0)) == pytest.approx(n)
    # uniform current weights: CESS = ESS of the increments
    assert W.conditional_ess(torch.zeros(n), inc) == pytest.approx(W.ess(inc), rel=1e-12)


def test_reweight_log_z_increment_and_running_log_z():
    g = torch.Generator().manual_seed(3)
    log_w = torch.randn(50, generator=g, dtype=torch.float64)
    inc = torch.randn(50, generator=g, dtype=torch.float64)
    new, dlogz = W.reweight(log_w, inc)
    Wn = torch.softmax(log_w, 0)
    assert dlogz == pytest.approx(math.log(float((Wn * inc.exp()).sum())), rel=1e-12)
    # running log Z is log_mean_exp of the unnormalised weights
    assert W.log_mean_exp(new) - W.log_mean_exp(log_w) == pytest.approx(dlogz, rel=1e-12)
    # a zero-weight particle stays at zero weight even if its increment is +inf or NaN
    log_w[0] = -math.inf
    inc[0] = math.inf
    inc[1] = math.nan
    new, dlogz = W.reweight(log_w, inc)
    assert new[0] == -math.inf and new[1] == -math.inf and math.isfinite(dlogz)


def test_clipped_ess_is_a_diagnostic_of_a_heavy_tail():
    n = 100
    log_w = torch.zeros(n, dtype=torch.float64)
    log_w[:3] = 8.0  # three particles carry almost everything
    big = math.exp(8.0)
    assert W.ess(log_w) == pytest.approx((3 * big + 97) ** 2 / (3 * big**2 + 97), rel=1e-12)
    # clipping the top 10 to the 11th largest (a uniform weight) gives back the full ESS
    assert W.ess_clipped(log_w, 10) == pytest.approx(n)
    assert W.ess_clipped(log_w, 0) == pytest.approx(W.ess(log_w))
    s = W.summarize(log_w)
    assert s.n_clipped == 10 and s.ess_clipped == pytest.approx(n)
    # estimates never use clipped weights
    assert s.log_mean_weight == pytest.approx(W.log_mean_exp(log_w))


def test_weighted_mean_ignores_zero_weight_nans():
    log_w = torch.tensor([0.0, math.log(3.0), -math.inf])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.nan, math.nan]])
    assert torch.allclose(W.weighted_mean(values, log_w), torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="values must have shape"):
        W.weighted_mean(torch.zeros(4), log_w)


def test_weighted_quantiles_match_numpy_inverted_cdf_and_follow_the_weights():
    import numpy as np

    from boltzgen.smc.weights import weighted_quantiles

    values = torch.randn(101, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    expected = np.quantile(values.numpy(), levels, method="inverted_cdf")
    np.testing.assert_allclose(weighted_quantiles(values, torch.zeros(101), levels), expected)
    # all weight on the three largest values (and zero weight, -inf, elsewhere); +inf sorts last
    log_w = torch.full((101,), -math.inf, dtype=torch.float64)
    top = values.argsort()[-3:]
    log_w[top] = 0.0
    assert weighted_quantiles(values, log_w, (0.5,)) == [float(values[top[1]])]
    with_inf = torch.cat([values, torch.tensor([math.inf], dtype=torch.float64)])
    assert weighted_quantiles(with_inf, torch.zeros(102), (1.0,)) == [math.inf]
    with pytest.raises(ValueError, match="values must have shape"):
        weighted_quantiles(values[:5], torch.zeros(101), (0.5,))
