"""EnergyMLP, losses and samplers: interfaces, exactness checks, bad input."""
import math

import pytest
import torch

from boltzgen.diffusion.evaluation import (ExactEnergyModel, energy_r2, mode_weights_from_energy,
                                           mode_weights_from_samples)
from boltzgen.diffusion.losses import combined_loss, diffclf_loss, dsm_loss, sample_levels
from boltzgen.diffusion.networks import EnergyMLP
from boltzgen.diffusion.sampling import sample_ode, sample_sde
from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.targets import GaussianMixture


def two_modes(weights=(0.7, 0.3), d=2):
    means = torch.zeros(2, d, dtype=torch.float64)
    means[0, 0], means[1, 0] = 2.0, -2.0
    return GaussianMixture(means, stds=0.5, weights=list(weights))


def test_untrained_model_is_the_noised_data_gaussian():
    s = VPSchedule()
    mean, var = torch.tensor([0.5, -1.0, 0.0]), 2.0
    model = EnergyMLP(3, s, mean, var, hidden=16, n_blocks=1)
    x, t = torch.randn(6, 3), torch.rand(6) * 0.9 + 0.05
    a, v = s.alpha(t), s.marginal_variance(t, var)
    expected = 0.5 * ((x - a[:, None] * mean) ** 2).sum(1) / v
    torch.testing.assert_close(model.energy(t, x), expected)
    # its normaliser at t = 1 is the Gaussian one (the anchor of DiffCLF)
    assert model.log_normaliser(1.0).item() == pytest.approx(1.5 * math.log(2 * math.pi * v.new_tensor(s.marginal_variance(1.0, var).item())), rel=1e-5)


def test_subspace_dim_sets_the_gaussian_anchor_and_survives_the_config():
    # Centre-of-mass-free molecules: 2 atoms x 3 coordinates live in a 3-dimensional subspace.
    s = VPSchedule()
    model = EnergyMLP(6, s, hidden=16, n_blocks=1, subspace_dim=3)
    v1 = s.marginal_variance(torch.tensor(1.0), 1.0).item()
    assert model.log_normaliser(1.0).item() == pytest.approx(1.5 * math.log(2 * math.pi * v1), rel=1e-5)
    assert EnergyMLP.from_config(model.config).log_normaliser_net.dim == 3
    with pytest.raises(ValueError, match="subspace_dim must be at most dim = 6"):
        EnergyMLP(6, s, subspace_dim=7)


def test_score_is_minus_energy_gradient():
    torch.manual_seed(0)
    model = EnergyMLP(4, VPSchedule(), hidden=32, n_blocks=2)
    torch.nn.init.normal_(model.correction.out.weight)  # make the network part non-trivial
    x, t = torch.randn(5, 4, requires_grad=True), torch.rand(5)
    (grad,) = torch.autograd.grad(model.energy(t, x).sum(), x)
    torch.testing.assert_close(model.score(t, x), -grad)
    # create_graph keeps a graph to the parameters (needed by DSM), the sampling path does not
    assert model.score(t, x, create_graph=True).requires_grad
    assert not model.score(t, x.detach()).requires_grad


def test_model_rejects_bad_input():
    model = EnergyMLP(3, VPSchedule(), hidden=8, n_blocks=1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        model.energy(0.5, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="t must lie in"):
        model.energy(1.5, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        model.energy(torch.rand(3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        model.energy(0.5, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="data_variance"):
        EnergyMLP(3, VPSchedule(), data_variance=-1.0)
    with pytest.raises(TypeError, match="data_variance"):
        EnergyMLP(3, VPSchedule(), data_variance="big")
    # a variance straight from the data (0-d tensor, numpy scalar) is fine
    assert EnergyMLP(3, VPSchedule(), data_variance=torch.ones(5).var() + 1).data_variance == pytest.approx(1.0)


def test_config_round_trip_rebuilds_same_function():
    model = EnergyMLP(3, VPSchedule(t_min=1e-2), torch.ones(3), 1.5, hidden=8, n_blocks=1)
    torch.nn.init.normal_(model.correction.out.weight)
    clone = EnergyMLP.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(clone.energy(t, x), model.energy(t, x))


# --- losses: the exact energies minimise them ------------------------------------------------

def _loss_with_seed(loss_fn, model, x0, seed, **kw):
    return loss_fn(model, x0, torch.Generator().manual_seed(seed), **kw).item()


def test_dsm_is_minimised_by_exact_scores():
    """Same data, times and noise (common random numbers) for the true and a wrong mixture."""
    s = VPSchedule()
    true, wrong = two_modes((0.7, 0.3)), two_modes((0.3, 0.7))
    x0 = true.sample(20000, torch.Generator().manual_seed(0))
    diffs = [_loss_with_seed(dsm_loss, ExactEnergyModel(wrong, s), x0, seed)
             - _loss_with_seed(dsm_loss, ExactEnergyModel(true, s), x0, seed) for seed in range(8)]
    diffs = torch.tensor(diffs)
    # the exact score is the minimiser: the wrong mixture's loss is higher by many standard errors
    assert diffs.mean() > 4 * diffs.std() / math.sqrt(len(diffs))


@pytest.mark.parametrize("k", [2, 4])
def test_diffclf_is_minimised_by_exact_energies(k):
    s = VPSchedule()
    true, wrong = two_modes((0.7, 0.3)), two_modes((0.3, 0.7))
    x0 = true.sample(20000, torch.Generator().manual_seed(0))
    diffs = torch.tensor([_loss_with_seed(diffclf_loss, ExactEnergyModel(wrong, s), x0, seed, n_levels=k, window=0.2)
                          - _loss_with_seed(diffclf_loss, ExactEnergyModel(true, s), x0, seed, n_levels=k, window=0.2)
                          for seed in range(8)])
    assert diffs.mean() > 4 * diffs.std() / math.sqrt(len(diffs))
    # a wrong normaliser (shifting f at some levels) also costs: the logits are then miscalibrated
    exact = ExactEnergyModel(true, s)

    class ShiftedNormaliser(ExactEnergyModel):
        def log_normaliser(self, t):
            return 0.5 * torch.as_tensor(t, dtype=torch.float64)

    shifted = ShiftedNormaliser(true, s)
    assert _loss_with_seed(diffclf_loss, shifted, x0, 0, n_levels=k) > _loss_with_seed(diffclf_loss, exact, x0, 0, n_levels=k)


def test_binary_clf_equals_the_logistic_form():
    """k = 2 softmax cross-entropy equals 1/2 softplus(l_t(x_s) - l_s(x_s)) + 1/2 softplus(l_s(x_t) - l_t(x_t))."""
    s = VPSchedule()
    model = ExactEnergyModel(two_modes(), s)
    x0 = two_modes().sample(64, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    loss = diffclf_loss(model, x0, g, n_levels=2, window=0.3)
    # replay the same draws
    g = torch.Generator().manual_seed(3)
    t = sample_levels(64, 2, s, g, torch.float64, 0.3)
    eps = torch.randn((64, 2, 2), generator=g, dtype=torch.float64)
    xs = s.alpha(t[:, 0])[:, None] * x0 + s.sigma(t[:, 0])[:, None] * eps[:, 0]
    xt = s.alpha(t[:, 1])[:, None] * x0 + s.sigma(t[:, 1])[:, None] * eps[:, 1]
    ell = lambda tt, x: -model.energy(tt, x)  # noqa: E731  (normaliser 0)
    sp = torch.nn.functional.softplus
    ref = 0.5 * sp(ell(t[:, 1], xs) - ell(t[:, 0], xs)) + 0.5 * sp(ell(t[:, 0], xt) - ell(t[:, 1], xt))
    assert loss.item() == pytest.approx(ref.mean().item(), rel=1e-6)


def test_levels_are_marginally_uniform_and_close():
    s = VPSchedule()
    t = sample_levels(20000, 3, s, torch.Generator().manual_seed(0), torch.float64, window=0.1)
    assert t.min() >= s.t_min and t.max() <= 1.0
    assert (t.max(1).values - t.min(1).values).max() <= 0.2 + 1e-9
    # every level column uniform on [t_min, 1]: mean within 4 standard errors
    se = math.sqrt((1 - s.t_min) ** 2 / 12 / 20000)
    assert ((t.mean(0) - (1 + s.t_min) / 2).abs() < 4 * se).all()


def test_losses_reject_bad_data():
    model = EnergyMLP(2, VPSchedule(), hidden=8, n_blocks=1)
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(model, torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="NaN"):
        diffclf_loss(model, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"x0 must have shape"):
        dsm_loss(model, torch.zeros(3))
    with pytest.raises(ValueError, match="n_levels"):
        diffclf_loss(model, torch.zeros(3, 2), n_levels=1)
    with pytest.raises(ValueError, match="clf_weight"):
        combined_loss(model, torch.zeros(3, 2), clf_weight=-1.0)


# --- evaluation helpers ----------------------------------------------------------------------

def test_mode_weights_and_r2_of_exact_energy():
    s, gmm = VPSchedule(), two_modes((0.8, 0.2), d=3)
    noised = gmm.noised(s, 0.05)
    exact = lambda x: -noised.log_prob(x)  # noqa: E731
    w = mode_weights_from_energy(exact, noised, n_samples=4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, gmm.weights, atol=0.01, rtol=0)  # IS error ~1e-3 here
    x = noised.sample(3000, torch.Generator().manual_seed(1))
    assert energy_r2(exact, noised.log_prob, x) == pytest.approx(1.0, abs=1e-6)
    wrong = lambda x: -two_modes((0.2, 0.8), d=3).noised(s, 0.05).log_prob(x)  # noqa: E731
    assert energy_r2(wrong, noised.log_prob, x) < 0.95
    assert mode_weights_from_energy(wrong, noised, n_samples=4000)[0] < 0.3
    ws = mode_weights_from_samples(x, noised)
    se = torch.sqrt(gmm.weights * (1 - gmm.weights) / 3000)
    assert ((ws - gmm.weights).abs() < 4 * se).all()


# --- samplers --------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,steps", [(sample_sde, 400), (sample_ode, 100)])
def test_samplers_with_exact_score_recover_the_mixture(sampler, steps):
    """With the exact score the only errors are discretisation and Monte Carlo.

    Tolerance: 4 standard errors of a binomial proportion plus 0.02 for discretisation (measured
    below 0.01 at these step counts).
    """
    s, gmm, n = VPSchedule(), two_modes((0.75, 0.25)), 4000
    x = sampler(ExactEnergyModel(gmm, s), n, n_steps=steps, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and torch.isfinite(x).all()
    w = mode_weights_from_samples(x, gmm)
    assert abs(w[0].item() - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n) + 0.02
    within = x[gmm.assign(x) == 0, 1]  # the off-axis coordinate of mode 0 has std 0.5
    assert abs(within.std().item() - 0.5) < 0.05


def test_sampler_bad_arguments():
    model = EnergyMLP(2, VPSchedule(), hidden=8, n_blocks=1)
    with pytest.raises(ValueError, match="n must be"):
        sample_sde(model, 0)
    with pytest.raises(ValueError, match="n_steps"):
        sample_ode(model, 4, n_steps=0)
