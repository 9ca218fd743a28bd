"""Importance reweighting against direct formulas and an exact normaliser."""
import math

import numpy as np
import pytest
import torch

from boltzgen.smc import GaussianProposal, importance_reweight, importance_sample
from boltzgen.targets import GaussianMixture


def test_weights_and_diagnostics_match_direct_formulas():
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(300, 3, generator=g, dtype=torch.float64)
    q = GaussianProposal(3, variance=2.25)
    u = lambda x: 0.5 * ((x - 0.3) ** 2).sum(1) + 0.1 * (x**4).sum(1)  # noqa: E731
    r = importance_reweight(u, q.log_prob, x, chunk_size=64)
    log_w = (-u(x) - q.log_prob(x)).numpy()
    w = np.exp(log_w - log_w.max())
    assert np.allclose(r.log_weights.numpy(), log_w)
    assert r.log_z == pytest.approx(np.log(np.mean(np.exp(log_w))), rel=1e-12)
    assert np.allclose(r.weights.numpy(), w / w.sum())
    ess = w.sum() ** 2 / (w**2).sum()
    assert r.ess == pytest.approx(ess, rel=1e-12) and r.ess_fraction == pytest.approx(ess / 300, rel=1e-12)
    assert r.diagnostics.max_weight_share == pytest.approx(w.max() / w.sum(), rel=1e-12)
    assert r.log_z_std_error == pytest.approx(math.sqrt((300 / ess - 1) / 300), rel=1e-12)
    # values instead of callables give the same answer
    r2 = importance_reweight(u(x), q.log_prob(x))
    assert torch.equal(r2.log_weights, r.log_weights)
    f = x[:, 0]
    assert float(r.expectation(f)) == pytest.approx(float((f.numpy() * w).sum() / w.sum()), rel=1e-12)


def test_log_z_unbiased_for_a_mixture_target():
    """Z_hat / Z over 20 independent batches: mean within 4 standard errors of 1."""
    gmm = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.5, 0.5]]), stds=torch.tensor([0.6, 0.8]),
                          weights=torch.tensor([0.7, 0.3]), log_Z=0.9)
    q = GaussianProposal(2, variance=4.0)
    ratios, errs = [], []
    for seed in range(20):
        _, r = importance_sample(q, gmm.reduced_energy, 2000, seed=seed)
        ratios.append(math.exp(r.log_z - gmm.log_Z))
        errs.append(r.log_z - gmm.log_Z)
    ratios = torch.tensor(ratios)
    assert abs(float(ratios.mean()) - 1) < 4 * float(ratios.std()) / math.sqrt(20)
    # the delta-method standard error agrees with the spread over batches: 20 batches give the
    # sample sd to a relative standard error of 1/sqrt(2 * 19) ~ 0.16; allow 4 of those
    assert float(torch.tensor(errs).std()) == pytest.approx(r.log_z_std_error, rel=4 / math.sqrt(38))


def test_nonfinite_values_are_zero_weights():
    u = torch.tensor([1.0, float("nan"), 2.0, float("inf")])
    log_q = torch.tensor([0.0, 0.0, float("nan"), 0.0])
    r = importance_reweight(u, log_q)
    assert r.n_nonfinite == 3 and r.ess == pytest.approx(1.0)
    assert math.isfinite(r.log_z) and r.log_z == pytest.approx(-1.0 - math.log(4))


def test_bad_input():
    with pytest.raises(ValueError, match="samples"):
        importance_reweight(lambda x: x.sum(1), torch.zeros(3))
    with pytest.raises(ValueError, match=r"proposal_log_prob must have shape \(3,\)"):
        importance_reweight(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="no samples"):
        importance_reweight(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="zero weight"):
        importance_reweight(torch.full((3,), float("nan")), torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        importance_reweight(lambda x: x.sum(1), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        importance_sample(GaussianProposal(2), lambda x: x.sum(1), 0)
