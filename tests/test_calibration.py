"""Dihedral calibration: the Fourier fit, its heat-kernel damping, and calibrated internal-coordinate models."""
import math

import numpy as np
import pytest
import torch

from boltzgen.diffusion.calibration import (DihedralCalibration, calibrate, calibrate_on_samples,
                                            fit_dihedral_calibration, fit_dihedral_calibration_on_samples)
from boltzgen.diffusion.internal import InternalEnergy
from boltzgen.diffusion.networks import model_from_config
from boltzgen.diffusion.schedule import LogSNRSchedule


def known_calibration(n_periodic=3, n_harmonics=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = DihedralCalibration(n_periodic, n_harmonics).double()
    c.cos_coefficients.copy_(torch.randn(n_periodic, n_harmonics, generator=g, dtype=torch.float64))
    c.sin_coefficients.copy_(torch.randn(n_periodic, n_harmonics, generator=g, dtype=torch.float64))
    return c


def uniform_dihedrals(n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(n, d, generator=g, dtype=torch.float64) - 1) * math.pi


def test_the_fit_recovers_a_known_fourier_series_up_to_a_constant():
    # residuals that are exactly a tilt: the tilted model is the target (KL 0), whatever the frames' weights
    truth = known_calibration()
    phi = uniform_dihedrals(4000, 3)
    residuals = truth(phi, torch.zeros(4000)) + 7.5  # the constant (log Z) is free
    weights = torch.rand(4000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fitted = fit_dihedral_calibration(phi, residuals, 2, weights=weights, ridge=0.0)
    assert torch.allclose(fitted.cos_coefficients.double(), truth.cos_coefficients, atol=1e-4)
    assert torch.allclose(fitted.sin_coefficients.double(), truth.sin_coefficients, atol=1e-4)


def test_the_tilted_model_matches_the_datas_fourier_moments():
    # the optimum of KL(p || p_c) is moment matching: E_{p_c}[f] = E_p[f] for every fitted feature, where
    # the tilted model reweighs the frames by exp(r - c); residuals here are not a Fourier series
    g = torch.Generator().manual_seed(3)
    phi = uniform_dihedrals(3000, 2)
    residuals = 2.0 * (phi[:, 0] > 1.0).double() + 0.5 * torch.randn(3000, generator=g, dtype=torch.float64)
    weights = torch.rand(3000, generator=g, dtype=torch.float64)
    fitted = fit_dihedral_calibration(phi, residuals, 3, weights=weights, ridge=0.0).double()
    cos, sin = fitted.features(phi)
    features = torch.cat([cos.reshape(3000, -1), sin.reshape(3000, -1)], 1)
    p = weights / weights.sum()
    tilted = p * torch.exp(residuals - fitted(phi, torch.zeros(3000)))
    tilted = tilted / tilted.sum()
    assert torch.allclose(tilted @ features, p @ features, atol=1e-6)
    # the mask leaves the other dihedrals untouched
    only_first = fit_dihedral_calibration(phi, residuals, 3, weights=weights, fitted=torch.tensor([True, False]))
    assert only_first.cos_coefficients[1].abs().max() == 0 and only_first.cos_coefficients[0].abs().max() > 0


def test_damping_is_the_expectation_over_wrapped_normal_noise():
    # c_t(phi) = E[c(phi + s eps)], eps ~ N(0, 1): Gauss-Hermite quadrature as the reference
    truth = known_calibration(2, 3)
    phi = uniform_dihedrals(50, 2)
    nodes, quad_weights = np.polynomial.hermite_e.hermegauss(80)
    for s in (0.0, 0.3, 1.0, 2.5):
        shifted = torch.stack([truth(phi + s * float(x), torch.zeros(50)) for x in nodes])  # (q, n)
        expected = (torch.as_tensor(quad_weights)[:, None] * shifted).sum(0) / math.sqrt(2 * math.pi)
        got = truth(phi, torch.full((50,), s**2, dtype=torch.float64))
        assert torch.allclose(got, expected, atol=1e-9), s


def model_with_base(seed=0, n_linear=4, n_periodic=3):
    torch.manual_seed(seed)
    model = InternalEnergy(n_linear, n_periodic, LogSNRSchedule(), hidden=16, n_blocks=1).double()
    z = torch.cat([torch.randn(500, n_linear, dtype=torch.float64), uniform_dihedrals(500, n_periodic, seed)], 1)
    model.fit(z)
    with torch.no_grad():  # a non-zero network, so the calibration must be told apart from it
        for p in model.correction.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, z


def test_a_calibrated_model_adds_the_correction_at_low_noise_and_nothing_at_t_1():
    model, z = model_with_base()
    calibrated = model.with_calibration(known_calibration())
    t_min = float(model.schedule.t_min)
    added = calibrated.energy(t_min, z) - model.energy(t_min, z)
    assert torch.allclose(added, known_calibration()(z[:, 4:], torch.zeros(500)), atol=1e-4)
    assert torch.allclose(calibrated.energy(1.0, z), model.energy(1.0, z), atol=1e-12)
    assert model.calibration is None  # the original is unchanged


def test_calibrate_recovers_the_offsets_between_dihedral_basins():
    model, z = model_with_base()
    t_min = float(model.schedule.t_min)
    truth = known_calibration()
    energies = model.energy(t_min, z).detach() + truth(z[:, 4:], torch.zeros(500)) - 3.0
    calibrated = calibrate(model, z, energies, 2)
    residual = energies - calibrated.energy(t_min, z).detach()
    # the default ridge (1e-4) shrinks each coefficient by ~ridge / Var(feature) ~ 2e-4 of itself: 1 % is ample
    offsets = truth(z[:, 4:], torch.zeros(500))
    assert float(residual.std()) < 0.01 * float(offsets.std())
    # refitting a calibrated model starts from the bare one (no double counting)
    again = calibrate(calibrated, z, energies, 2)
    assert torch.allclose(again.calibration.cos_coefficients, calibrated.calibration.cos_coefficients, atol=1e-6)


def test_a_calibrated_model_round_trips_through_its_config_and_state(tmp_path):
    model, z = model_with_base()
    calibrated = model.with_calibration(known_calibration())
    rebuilt = model_from_config(calibrated.config).double()
    rebuilt.load_state_dict(calibrated.state_dict())
    assert torch.allclose(rebuilt.energy(0.3, z), calibrated.energy(0.3, z))
    # an uncalibrated model's config is as before calibration existed, so older model files and training
    # checkpoints (whose resume compares configs exactly) still match; removing a calibration restores it
    assert "calibration_harmonics" not in model.config
    assert calibrated.with_calibration(None).config == model.config
    plain = model_from_config(model.config).double()
    plain.load_state_dict(model.state_dict())
    assert plain.calibration is None and torch.allclose(plain.energy(0.3, z), model.energy(0.3, z))


def test_bad_inputs_name_the_argument():
    phi = uniform_dihedrals(10, 2)
    with pytest.raises(ValueError, match="residuals"):
        fit_dihedral_calibration(phi, torch.zeros(9), 2)
    with pytest.raises(ValueError, match="weights"):
        fit_dihedral_calibration(phi, torch.zeros(10), 2, weights=-torch.ones(10))
    with pytest.raises(ValueError, match="n_harmonics"):
        DihedralCalibration(2, 0)
    model, _ = model_with_base()
    with pytest.raises(ValueError, match="dihedrals"):
        model.with_calibration(DihedralCalibration(5, 2))
    with pytest.raises(TypeError, match="internal-coordinate"):
        calibrate(object(), phi, torch.zeros(10), 2)


def test_the_fit_on_the_models_own_samples_matches_their_tilted_moments_to_the_datas():
    # the optimum of E_p[c] + log E_q[exp(-c)] is moment matching between the frames and the model's own
    # samples reweighted by exp(-c); the two sets need not share a single point
    g = torch.Generator().manual_seed(5)
    phi, own = uniform_dihedrals(2000, 2, seed=6), uniform_dihedrals(3000, 2, seed=7)
    weights = torch.exp(1.5 * torch.cos(phi[:, 0]) - (phi[:, 1] > 0).double())
    own_log_weights = 0.3 * torch.randn(3000, generator=g, dtype=torch.float64)
    fitted = fit_dihedral_calibration_on_samples(phi, weights, own, own_log_weights, 3, ridge=0.0).double()

    def moments(angles, log_w):
        cos, sin = fitted.features(angles)
        w = torch.softmax(log_w, 0)
        return w @ torch.cat([cos.reshape(len(angles), -1), sin.reshape(len(angles), -1)], 1)

    tilted = moments(own, own_log_weights - fitted(own, torch.zeros(3000)))
    assert torch.allclose(tilted, moments(phi, torch.log(weights)), atol=1e-6)


def test_the_fit_on_samples_recovers_a_known_tilt_when_both_sides_share_their_points():
    truth = known_calibration()
    phi = uniform_dihedrals(4000, 3)
    offsets = truth(phi, torch.zeros(4000))
    own_log_weights = torch.randn(4000, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    weights = torch.exp(own_log_weights - offsets)  # p = q exp(-c_true), up to a constant
    fitted = fit_dihedral_calibration_on_samples(phi, weights, phi, own_log_weights, 2, ridge=0.0)
    assert torch.allclose(fitted.cos_coefficients.double(), truth.cos_coefficients, atol=1e-4)
    assert torch.allclose(fitted.sin_coefficients.double(), truth.sin_coefficients, atol=1e-4)


def test_calibrate_on_samples_reads_a_calibrated_models_draws_as_the_bare_models():
    # draw() weighs fixed points by the current model's exp(-E(t_min)): every round must land on the
    # same tilt, which only holds if the current calibration is divided out of the draws
    model, z = model_with_base()
    t_min = float(model.schedule.t_min)
    truth = known_calibration()
    log_p = -(model.energy(t_min, z).detach() + truth(z[:, 4:], torch.zeros(500)))
    rounds_seen = []

    def draw(current):
        rounds_seen.append(current.calibration is not None)
        return z, -current.energy(t_min, z).detach()

    weights = torch.exp(log_p - log_p.max())
    calibrated = calibrate_on_samples(model, z, draw, 2, weights=weights, rounds=3)
    assert rounds_seen == [False, True, True]
    # every round is the one fit on the bare model's own weights
    direct = fit_dihedral_calibration_on_samples(z[:, 4:], weights, z[:, 4:], -model.energy(t_min, z).detach(), 2)
    assert torch.allclose(calibrated.calibration.cos_coefficients, direct.cos_coefficients, atol=1e-5)
    assert torch.allclose(calibrated.calibration.sin_coefficients, direct.sin_coefficients, atol=1e-5)
    # and that fit finds the tilt (the frames' weights have an ESS of ~18 of 500, so the default ridge
    # shrinks the coefficients by ~1 %)
    assert torch.allclose(direct.cos_coefficients.double(), truth.cos_coefficients, atol=0.03)
    assert torch.allclose(direct.sin_coefficients.double(), truth.sin_coefficients, atol=0.03)
    assert model.calibration is None  # the input is unchanged


def test_bad_inputs_to_the_fit_on_samples_name_the_argument():
    phi = uniform_dihedrals(10, 2)
    with pytest.raises(ValueError, match="sample_phi"):
        fit_dihedral_calibration_on_samples(phi, None, uniform_dihedrals(5, 3), torch.zeros(5), 2)
    with pytest.raises(ValueError, match="sample_log_weights"):
        fit_dihedral_calibration_on_samples(phi, None, phi, torch.full((10,), -math.inf), 2)
    with pytest.raises(ValueError, match="weights"):
        fit_dihedral_calibration_on_samples(phi, -torch.ones(10), phi, torch.zeros(10), 2)
    model, z = model_with_base()
    with pytest.raises(ValueError, match="rounds"):
        calibrate_on_samples(model, z, lambda m: (z, torch.zeros(500)), 2, rounds=0)
