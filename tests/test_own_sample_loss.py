"""The reverse direction: own_sample_loss on the model's own samples, and training with a pool of them."""
import math

import pytest
import torch

from boltzgen.diffusion.losses import capped_energies, own_sample_loss
from boltzgen.diffusion.schedule import LogSNRSchedule
from boltzgen.diffusion.training import TrainingConfig, train
from test_training import CONFIG, params, small_problem


class Quadratic(torch.nn.Module):
    """E_theta(t, x) = theta |x|^2 / 2 at every t: q_theta = N(0, 1/theta) per coordinate."""

    def __init__(self, theta):
        super().__init__()
        self.schedule = LogSNRSchedule(12.0, -8.0)
        self.theta = torch.nn.Parameter(torch.tensor(float(theta), dtype=torch.float64))

    def energy(self, t, x):
        return 0.5 * self.theta * (x**2).sum(1)


def test_its_gradient_at_the_models_own_samples_is_twice_the_reverse_kl_gradient():
    """q = N(0, 1/theta), p = N(0, 1/a) in d dimensions: d/dtheta KL(q || p) = d (1/theta - a/theta^2) / 2.
    The loss's gradient on exact draws of q matches twice that within 4 standard errors over 20 batches."""
    theta, a, d = 2.0, 1.0, 3
    g = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(20):
        model = Quadratic(theta)
        y = torch.randn(20000, d, generator=g, dtype=torch.float64) / math.sqrt(theta)
        u = 0.5 * a * (y**2).sum(1) + 3.0  # the target up to a constant
        own_sample_loss(model, y, u).backward()
        grads.append(float(model.theta.grad))
    grads = torch.tensor(grads)
    expected = 2 * d * (1 / theta - a / theta**2) / 2
    assert abs(float(grads.mean()) - expected) < 4 * float(grads.std()) / math.sqrt(len(grads))
    # and it vanishes where the model is the target
    model = Quadratic(a)
    y = torch.randn(1000, d, generator=g, dtype=torch.float64)
    assert own_sample_loss(model, y, 0.5 * a * (y**2).sum(1) - 5.0).item() < 1e-20


def test_far_gaps_and_broken_energies_are_capped_above_the_weighted_median_gap():
    model = Quadratic(1.0)
    y = torch.randn(202, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = model.energy(None, y).detach()
    u = e + torch.linspace(0.0, 1.0, 202, dtype=torch.float64)
    far = u.clone()
    far[:4] = torch.tensor([1e7, math.inf, math.nan, -math.inf], dtype=torch.float64)
    # the median over the finite gaps (as own_sample_quality's), with 1e7 among them: 199 values, the middle one
    gaps = (far - e)[torch.isfinite(far)]
    median = float(gaps.sort().values[99])
    capped = capped_energies(model, y, far, clip=2.0)
    torch.testing.assert_close(capped[4:], u[4:])
    torch.testing.assert_close(capped[:4], e[:4] + median + 2.0)  # a far gap and any non-finite u are capped
    # weights move the median: all weight on the 11 smallest gaps
    lw = torch.full((202,), -math.inf, dtype=torch.float64)
    lw[4:15] = 0.0
    weighted = capped_energies(model, y, far, clip=0.01, log_weights=lw)
    low_median = float((u - e)[4:15].sort().values[5])
    torch.testing.assert_close(weighted[100:], e[100:] + low_median + 0.01)
    with pytest.raises(ValueError, match="energy0 must have shape"):
        capped_energies(model, y, u[:10])
    with pytest.raises(ValueError, match="clip"):
        capped_energies(model, y, u, clip=0.0)
    with pytest.raises(ValueError, match="log_weights"):
        capped_energies(model, y, u, log_weights=torch.zeros(3))
    with pytest.raises(ValueError, match="typical gap"):
        capped_energies(model, y, torch.full_like(u, math.nan))
    with pytest.raises(ValueError, match="capped_energies"):  # the loss itself takes only finite targets
        own_sample_loss(model, y, far)


def test_a_sample_whose_model_energy_is_not_finite_gets_no_target():
    class Broken(Quadratic):
        def energy(self, t, x):
            e = super().energy(t, x)
            return torch.where(x[:, 0] > 2.0, torch.full_like(e, math.nan), e)

    model = Broken(1.0)
    y = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y[0, 0] = 3.0
    target = capped_energies(model, y, 0.5 * (y**2).sum(1))
    assert math.isnan(float(target[0])) and torch.isfinite(target[1:]).all()


def test_a_capped_clash_is_pushed_up_by_a_bounded_amount():
    """With the targets fixed when the pool is drawn, descent on the loss raises a clash's energy by the
    capped gap and then stops (a floating cap would push it up without end)."""
    y = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    shift = torch.zeros(100, dtype=torch.float64, requires_grad=True)

    class Shifted(Quadratic):
        def energy(self, t, x):
            return super().energy(t, x) + shift

    model = Shifted(1.0)
    u = model.energy(None, y).detach() + 1.0
    u[0] = 1e6  # a clash
    target = capped_energies(model, y, u, clip=5.0)
    optimiser = torch.optim.SGD([shift], lr=20.0)
    for _ in range(500):
        optimiser.zero_grad()
        own_sample_loss(model, y, target).backward()
        optimiser.step()
    raised = shift.detach() - shift.detach()[1:].mean()
    assert float(raised[0]) == pytest.approx(5.0, abs=1e-3) and float(raised[1:].abs().max()) < 1e-3


def _exact_sampler(calls):
    """own_sampler stand-in: deterministic in its seed; records the steps it was asked at."""

    def draw(model, n, seed):
        assert not any(p.requires_grad for p in model.parameters()) and not model.training  # a frozen copy
        calls.append(seed)
        y = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        return y, 0.5 * (y.double() ** 2).sum(1), torch.zeros(n, dtype=torch.float64)

    return draw


def test_training_with_own_samples_redraws_the_pool_and_resumes_exactly(tmp_path):
    config = TrainingConfig(**{**CONFIG.__dict__, "own_weight": 0.5, "own_every": 5, "own_pool": 64})
    calls = []
    reference = train(*small_problem(), config, own_sampler=_exact_sampler(calls))
    assert calls == [config.seed + s for s in (0, 5, 10)]  # steps 0, 5 and 10 of 12
    assert all(p.own == p.own for p in reference.history)  # the term is logged at every step
    plain = train(*small_problem(), CONFIG)
    assert not torch.equal(params(plain.model), params(reference.model))

    ckpt = tmp_path / "run.pt"

    def interrupt(step, parts):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(*small_problem(), config, checkpoint=ckpt, callback=interrupt, own_sampler=_exact_sampler([]))
    again = []
    resumed = train(*small_problem(seed=99), config, checkpoint=ckpt, own_sampler=_exact_sampler(again))
    assert again == [config.seed + 10]  # the pool of step 5 came back from the checkpoint
    assert torch.equal(params(resumed.raw_model), params(reference.raw_model))
    assert torch.equal(params(resumed.model), params(reference.model))  # the EMA weights too


def test_own_weight_needs_a_sampler_that_returns_matching_shapes():
    config = TrainingConfig(**{**CONFIG.__dict__, "own_weight": 1.0})
    with pytest.raises(ValueError, match="own_sampler"):
        train(*small_problem(), config)
    with pytest.raises(ValueError, match="own_sampler must return"):
        train(*small_problem(), config, own_sampler=lambda m, n, s: (torch.zeros(n, 2), torch.zeros(3), torch.zeros(n)))
    with pytest.raises(ValueError, match="own_pool = 1000"):  # the pool size is the config's
        train(*small_problem(), config, own_sampler=lambda m, n, s: (torch.zeros(4, 2), torch.zeros(4), torch.zeros(4)))
    with pytest.raises(ValueError, match="own_weight"):
        TrainingConfig(own_weight=-1.0)
    with pytest.raises(ValueError, match="own_every"):
        TrainingConfig(own_every=0)
    with pytest.raises(ValueError, match="own_clip"):
        TrainingConfig(own_clip=0.0)
    with pytest.raises(ValueError, match="own_pool"):
        TrainingConfig(own_pool=0)
