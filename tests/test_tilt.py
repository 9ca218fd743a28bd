"""A tilted run: the model's calibration moved into the target, and the exact correction at the end."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.diffusion.calibration import DihedralCalibration
from boltzgen.diffusion.internal import InternalEnergy
from boltzgen.diffusion.schedule import LogSNRSchedule
from boltzgen.models import load_model_file
from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings, sample_molecule
from boltzgen.smc import weights as W
from boltzgen.targets import torch_target
from boltzgen.tilt import split_calibration, tilted_energy, untilt


def calibration(n_periodic, n_harmonics=2, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = DihedralCalibration(n_periodic, n_harmonics).double()
    c.cos_coefficients.copy_(scale * torch.randn(n_periodic, n_harmonics, generator=g, dtype=torch.float64))
    c.sin_coefficients.copy_(scale * torch.randn(n_periodic, n_harmonics, generator=g, dtype=torch.float64))
    return c


def small_model(n_linear=2, n_periodic=3):
    torch.manual_seed(0)
    model = InternalEnergy(n_linear, n_periodic, LogSNRSchedule(), hidden=8, n_blocks=1).double()
    z = torch.cat([torch.randn(200, n_linear, dtype=torch.float64),
                   (2 * torch.rand(200, n_periodic, dtype=torch.float64) - 1) * math.pi], 1)
    return model.fit(z), z


@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_the_split_keeps_the_models_energy_plus_the_tilt(fraction):
    model, z = small_model()
    calibrated = model.with_calibration(calibration(3))
    kept, tilt = split_calibration(calibrated, fraction)
    t_min = float(model.schedule.t_min)
    # at t_min the noise is tiny: the kept model plus the tilt is the calibrated model (damping ~ 1 - 1e-4)
    assert torch.allclose(kept.energy(t_min, z) + tilt(z), calibrated.energy(t_min, z), atol=1e-3)
    assert (kept.calibration is None) == (fraction == 1.0)
    assert calibrated.calibration is not None and torch.equal(  # the original is unchanged
        calibrated.calibration.cos_coefficients, calibration(3).cos_coefficients)
    assert tilt(z).shape == (200,) and tilt(z).dtype == z.dtype


def test_no_tilt_returns_the_model_itself_and_a_tilt_needs_a_calibration():
    model, _ = small_model()
    assert split_calibration(model, 0.0) == (model, None)
    with pytest.raises(ValueError, match="tilt=0.5 needs a model with a dihedral calibration"):
        split_calibration(model, 0.5)
    with pytest.raises(ValueError, match="tilt must be a probability"):
        split_calibration(model.with_calibration(calibration(3)), 1.5)
    with pytest.raises(ValueError, match="tilt must be a probability"):
        SampleSettings(tilt=-0.1)


def test_untilted_weights_of_exact_tilted_draws_give_the_untilted_expectation():
    # one dihedral: u(phi) = 3 cos(phi) + cos(2 phi); the tilted target exp(-(u - c)) is drawn exactly
    # (inverse CDF on a fine grid), so untilt's weights must give E_p[cos phi] of exp(-u) itself
    c = calibration(1, 3, scale=1.5, seed=4)
    _, tilt = split_calibration(small_model(0, 1)[0].with_calibration(c), 1.0)
    grid = torch.linspace(-math.pi, math.pi, 200_001, dtype=torch.float64)[:-1]
    u = 3 * torch.cos(grid) + torch.cos(2 * grid)
    tilted = torch.exp(-(u - tilt(grid[:, None])))
    cdf = torch.cumsum(tilted, 0) / tilted.sum()
    g = torch.Generator().manual_seed(1)
    phi = grid[torch.searchsorted(cdf, torch.rand(40_000, generator=g, dtype=torch.float64)).clamp(max=len(grid) - 1)]
    log_w = untilt(torch.zeros(len(phi), dtype=torch.float64), phi[:, None], tilt, chunk_size=7_000)
    p = torch.exp(-u) / torch.exp(-u).sum()
    exact = float((p * torch.cos(grid)).sum())
    w = W.normalized_weights(log_w)
    estimate = float((w * torch.cos(phi)).sum())
    # self-normalised IS error: sqrt(Var_p(cos) / ESS)
    variance = float((p * (torch.cos(grid) - exact) ** 2).sum())
    error = math.sqrt(variance / W.ess(log_w))
    assert abs(estimate - exact) < 4 * error
    # and log Z: log mean exp(log_w) estimates log(Z_p / Z_tilted)
    log_ratio = math.log(float(torch.exp(-u).sum() / tilted.sum()))
    assert W.log_mean_exp(log_w) == pytest.approx(log_ratio, abs=4 * math.sqrt(1 / W.ess(log_w)))


def test_tilted_energy_subtracts_the_tilt():
    u = lambda z: (z**2).sum(1)  # noqa: E731
    tilt = lambda z: z[:, 0]  # noqa: E731
    z = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(tilted_energy(u, tilt)(z), (z**2).sum(1) - z[:, 0])


TINY = SampleSettings(n_levels=12, level_moves=1, bridge=BridgeSettings(moves=2), mixing=MixingSettings(moves=10))


def test_a_tilted_run_corrects_its_equal_mixing_weights_by_the_tilt():
    target = systems.load("alanine-dipeptide")
    try:
        fast = torch_target(target, compile=False)
        model_file = load_model_file(systems.shipped_model("alanine-dipeptide"))
        model = model_file.model
        calibrated = replace(model_file, model=model.with_calibration(calibration(model.n_periodic, scale=0.5).float()
                                                                      .to(model.data_mean.dtype)))
        run = sample_molecule(calibrated, target, 24, replace(TINY, tilt=1.0), seed=2,
                              target_energy=fast.reduced_energy)
    finally:
        target.close()
    _, tilt = split_calibration(calibrated.model, 1.0)
    z = calibrated.space.to_flat(torch.from_numpy(run.positions).to(model.data_mean.dtype))
    # mixing leaves equal weights toward the tilted target; the correction is exp(-tilt) per particle
    restored = run.log_weights + tilt(z).detach().double().numpy()
    assert np.allclose(restored, restored[0], atol=1e-4)
    assert run.log_z == pytest.approx(W.log_mean_exp(torch.from_numpy(run.log_weights)))
    assert run.tilt_ess_fraction == pytest.approx(W.ess_fraction(torch.from_numpy(run.log_weights)))
    assert run.tilt_ess_fraction < 1.0 and run.diagnostics()["totals"]["tilt_ess_fraction"] == run.tilt_ess_fraction
