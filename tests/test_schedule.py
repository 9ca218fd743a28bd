import pytest
import torch

from boltzgen.diffusion.schedule import LogSNRSchedule, VESchedule, VPSchedule, schedule_config, schedule_from_config

SCHEDULES = [VPSchedule(), VESchedule(), LogSNRSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "ve", "logsnr"])
def test_derivatives_match_autograd(schedule):
    t = torch.linspace(0.01, 1.0, 17, dtype=torch.float64, requires_grad=True)
    for value, derivative in ((schedule.alpha, schedule.d_alpha), (schedule.sigma, schedule.d_sigma)):
        v = value(t)
        auto = torch.autograd.grad(v.sum(), t)[0] if v.requires_grad else torch.zeros_like(t)  # constant alpha (VE)
        torch.testing.assert_close(auto, derivative(t).detach(), rtol=1e-10, atol=1e-12)


def test_vp_preserves_variance_and_reaches_gaussian():
    s = VPSchedule()
    t = torch.linspace(s.t_min, 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
    assert s.alpha(1.0) < 0.01 and s.sigma(s.t_min) < 0.02
    # for VP the SDE diffusion coefficient is beta(t)
    torch.testing.assert_close(s.diffusion_squared(t), s.beta(t))


def test_ve_is_geometric():
    s = VESchedule(sigma_min=0.01, sigma_max=10.0)
    assert s.alpha(0.3) == 1.0
    torch.testing.assert_close(s.sigma(torch.tensor([0.0, 1.0], dtype=torch.float64)),
                               torch.tensor([0.01, 10.0], dtype=torch.float64))


def test_noise_and_levels():
    s = VPSchedule()
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.rand(4)
    xt = s.noise(x0, t, eps)
    torch.testing.assert_close(xt, s.alpha(t)[:, None] * x0 + s.sigma(t)[:, None] * eps)
    levels = s.levels(5)
    assert levels[0] == s.t_min and levels[-1] == 1.0 and levels.shape == (5,)
    with pytest.raises(ValueError, match="n_levels"):
        s.levels(1)


def test_config_round_trip_and_bad_parameters():
    for s in SCHEDULES:
        assert schedule_from_config(schedule_config(s)) == s
    with pytest.raises(ValueError, match="beta_min"):
        VPSchedule(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="t_min"):
        VPSchedule(t_min=0.0)
    with pytest.raises(ValueError, match="kind"):
        schedule_from_config({"kind": "cosine"})


def test_logsnr_is_variance_preserving_with_linear_log_snr():
    s = LogSNRSchedule(log_snr_max=12.0, log_snr_min=-9.0)
    t = torch.linspace(s.t_min, 1.0, 41, dtype=torch.float64)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
    log_snr = torch.log(s.alpha(t) ** 2 / s.sigma(t) ** 2)
    torch.testing.assert_close(log_snr, torch.linspace(12.0, -9.0, 41, dtype=torch.float64))
    # uniform times cover every noise scale: a fifth of them have sigma below 1e-2 (log SNR > 9.2)
    assert float((s.sigma(t) < 1e-2).double().mean()) > 0.1
    with pytest.raises(ValueError, match="log_snr_min"):
        LogSNRSchedule(log_snr_max=-1.0, log_snr_min=1.0)
