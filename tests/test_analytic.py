import math

import numpy as np
import pytest
import torch
from scipy import stats

from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.targets import DoubleWell, GaussianMixture


def random_mixture(d=3, k=3, seed=0, full=True):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    if full:
        a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
        covs = a @ a.transpose(1, 2) / d + 0.2 * torch.eye(d, dtype=torch.float64)
        return GaussianMixture(means, covs=covs, weights=[1.0, 2.0, 3.0][:k], log_Z=1.5)
    return GaussianMixture(means, stds=0.3 + torch.rand(k, d, generator=g, dtype=torch.float64), weights=[1.0, 2.0, 3.0][:k])


def test_log_prob_matches_scipy_and_normaliser_convention():
    gmm = random_mixture()
    x = torch.randn(20, 3, dtype=torch.float64) * 3
    ref = np.log(sum(w * stats.multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
                     for w, m, c in zip(gmm.weights.tolist(), gmm.means, gmm.covariances)))
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(gmm.reduced_energy(x), -gmm.log_prob(x) - 1.5)


@pytest.mark.parametrize("full", [True, False])
def test_scores_match_autograd(full):
    gmm, s = random_mixture(full=full), VPSchedule()
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(10, dtype=torch.float64)
    (g0,) = torch.autograd.grad(gmm.log_prob(x).sum(), x)
    (gt,) = torch.autograd.grad(gmm.noised_log_prob(s, t, x).sum(), x)
    torch.testing.assert_close(gmm.score(x), g0)
    torch.testing.assert_close(gmm.noised_score(s, t, x), gt)


def test_noised_marginal_matches_monte_carlo_noising():
    """x_t = alpha x0 + sigma eps with x0 from the mixture follows noised(t): moments and a KS test."""
    gmm, s, t, n = random_mixture(), VPSchedule(), 0.15, 40000
    g = torch.Generator().manual_seed(1)
    x0 = gmm.sample(n, g)
    xt = s.noise(x0, torch.tensor(t, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64))
    marginal = gmm.noised(s, t)
    # mean: each coordinate within 4 standard errors
    mean = (marginal.weights[:, None] * marginal.means).sum(0)
    se = xt.std(0) / math.sqrt(n)
    assert ((xt.mean(0) - mean).abs() < 4 * se).all()
    # the 1-D projection on a random direction has the mixture-of-normals CDF
    u = torch.randn(3, generator=g, dtype=torch.float64)
    u /= u.norm()
    mu = (marginal.means @ u).numpy()
    sd = torch.sqrt(torch.einsum("d,kde,e->k", u, marginal.covariances, u)).numpy()
    w = marginal.weights.numpy()
    cdf = lambda z: sum(wk * stats.norm.cdf(z, m, sk) for wk, m, sk in zip(w, mu, sd))  # noqa: E731
    assert stats.kstest((xt @ u).numpy(), cdf).pvalue > 1e-3
    # and the per-sample-time density agrees with the fixed-time one
    torch.testing.assert_close(gmm.noised_log_prob(s, t, xt[:50]), marginal.log_prob(xt[:50]))


def test_samples_follow_weights():
    gmm = random_mixture()
    _, labels = gmm.sample_with_labels(30000, torch.Generator().manual_seed(0))
    freq = torch.bincount(labels, minlength=3).double() / 30000
    se = torch.sqrt(gmm.weights * (1 - gmm.weights) / 30000)
    assert ((freq - gmm.weights).abs() < 4 * se).all()


def test_double_well_log_z_and_weights_by_quadrature():
    from scipy.integrate import quad

    dw = DoubleWell(dim=3)
    z1, _ = quad(lambda x: math.exp(-(x**4 / 4 - 3 * x**2 + x)), -10, 10, points=[-2.5, 0, 2.4])
    assert dw.log_Z == pytest.approx(math.log(z1) + math.log(2 * math.pi), abs=1e-8)
    left, _ = quad(lambda x: math.exp(-(x**4 / 4 - 3 * x**2 + x)), -10, dw.barrier)
    assert dw.mode_weights[0].item() == pytest.approx(left / z1, abs=1e-8)
    x = dw.sample(40000, torch.Generator().manual_seed(0))
    frac = (dw.assign(x) == 0).double().mean().item()
    p = dw.mode_weights[0].item()
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / 40000)
    assert abs(x[:, 1].var().item() - 1.0) < 4 * math.sqrt(2 / 40000)


def test_bad_input():
    with pytest.raises(ValueError, match="exactly one of stds"):
        GaussianMixture(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), stds=1.0, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(2), stds=1.0)
    gmm = random_mixture()
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        gmm.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        gmm.log_prob(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="t must lie"):
        gmm.noised_log_prob(VPSchedule(), 1.5, torch.zeros(2, 3))
