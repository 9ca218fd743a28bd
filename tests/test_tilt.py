"""A tilted run: the model's calibration moved into the target, and the exact correction at the end."""
import json
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
from boltzgen.cvs import read_cvs
from boltzgen.cli import main
from boltzgen.models import ModelFile
from boltzgen.pipeline.tilting import fit_sampling_tilt
from boltzgen.tilt import (balance_tilt, combine, run_tilt, scaled, stored_tilt, tilt_fraction, tilt_metadata,
                            tilted_energy, tilted_model, untilt)


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
@pytest.mark.parametrize("calibrated", [False, True])
def test_the_tilted_model_plus_the_tilt_is_the_model(fraction, calibrated):
    model, z = small_model()
    model = model.with_calibration(calibration(3, 3)) if calibrated else model
    tilt = calibration(3, 2, seed=5)
    levels_model, tilt_fn = tilted_model(model, tilt, fraction)
    t_min = float(model.schedule.t_min)
    # at t_min the noise is tiny: the run's model plus the tilt is the model (damping ~ 1 - 1e-4)
    assert torch.allclose(levels_model.energy(t_min, z) + tilt_fn(z), model.energy(t_min, z), atol=1e-3)
    assert torch.allclose(tilt_fn(z), fraction * tilt(z[:, 2:], torch.zeros(200)))
    assert tilt_fn(z).shape == (200,) and tilt_fn(z).dtype == z.dtype
    assert (model.calibration is None) == (not calibrated)  # the model is unchanged
    # at t = 1 both vanish: the top level stays the analytic one
    assert torch.allclose(levels_model.energy(1.0, z), model.energy(1.0, z), atol=1e-8)


def test_a_tilt_must_fit_the_model_and_a_run_tilt_needs_a_stored_one():
    model, _ = small_model()
    with pytest.raises(ValueError, match="the tilt covers 2 dihedrals but the model has 3"):
        tilted_model(model, calibration(2), 1.0)
    with pytest.raises(ValueError, match="tilt must be a probability"):
        tilted_model(model, calibration(3), 1.5)
    with pytest.raises(ValueError, match="tilt must be a probability"):
        SampleSettings(tilt=-0.1)
    plain = ModelFile(model, None, {})
    assert run_tilt(plain, 0.0) == (model, None) and run_tilt(plain, None) == (model, None)
    carrying = ModelFile(model, None, {"sampling_tilt": tilt_metadata(calibration(3))})
    assert tilt_fraction(plain, None) == 0.0 and tilt_fraction(carrying, None) == 1.0  # the default: the file's
    assert tilt_fraction(carrying, 0.0) == 0.0 and run_tilt(carrying, 0.0) == (model, None)
    with pytest.raises(ValueError, match="tilt=0.5 needs a model file that carries a sampling tilt"):
        run_tilt(plain, 0.5)


def test_a_stored_tilt_round_trips_through_json_metadata():
    tilt = calibration(3, 2, seed=2)
    entry = json.loads(json.dumps(tilt_metadata(tilt, samples=10)))
    back = stored_tilt({"sampling_tilt": entry})
    assert torch.equal(back.cos_coefficients, tilt.cos_coefficients) and back.n_harmonics == 2
    assert entry["samples"] == 10 and stored_tilt({}) is None


def test_combine_pads_the_harmonics():
    a, b = calibration(3, 3, seed=1), calibration(3, 1, seed=2)
    both = combine(a, b, -0.5)
    assert both.n_harmonics == 3
    assert torch.allclose(both.sin_coefficients[:, 0], a.sin_coefficients[:, 0] - 0.5 * b.sin_coefficients[:, 0])
    assert torch.allclose(both.cos_coefficients[:, 1:], a.cos_coefficients[:, 1:])
    assert torch.allclose(scaled(b, 2.0).cos_coefficients, 2 * b.cos_coefficients)


def balance_cvs():
    return read_cvs({"collective_variables": {"a": [0, 1, 2, 3], "b": [1, 2, 3, 4]},
                     "basins_deg": {"a<0": {"a": [-180, 0]}, "a>0": {"a": [0, 180]},
                                    "b<0": {"b": [-180, 0]}, "b>0": {"b": [0, 180]}},
                     "free_energies": {"a_positive": {"state": "a>0", "reference": "a<0"},
                                       "b_positive": {"state": "b>0", "reference": "b<0"}}}, "test")


@pytest.mark.parametrize("harmonics", [1, 4])
def test_the_balance_tilt_evens_out_each_free_energy(harmonics):
    # dihedral columns: 0 holds b (P(b > 0) = 0.6), 1 holds a (P(a > 0) = 0.1), 2 no CV; von Mises-like basins
    # at +-1.2 rad
    g = torch.Generator().manual_seed(3)
    n = 200_000
    sides = torch.stack([torch.rand(n, generator=g) < p for p in (0.6, 0.1)], 1)
    centre = torch.where(sides, 1.2, -1.2).double()
    theta = torch.remainder(centre + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64) + math.pi,
                            2 * math.pi) - math.pi
    theta = torch.cat([theta, torch.zeros(n, 1, dtype=torch.float64)], 1)
    tilt, balanced = balance_tilt(theta.numpy(), np.zeros(n), balance_cvs(), {"a": 1, "b": 0}, 3, harmonics)
    assert tilt.n_harmonics == harmonics
    assert balanced["a_positive"] == pytest.approx(math.log(0.9 / 0.1), abs=0.03)
    assert balanced["b_positive"] == pytest.approx(math.log(0.4 / 0.6), abs=0.03)
    assert tilt.cos_coefficients[2].abs().max() == 0 and tilt.sin_coefficients[2].abs().max() == 0  # untouched
    # the tilted samples (weights exp(b)) hold both sides of each about equally
    lw = tilt(theta, torch.zeros(n))
    w = torch.exp(lw - lw.max())
    for k in range(2):
        share = float(w[theta[:, k] > 0].sum() / w.sum())
        assert 0.45 < share < 0.55  # first-order balance: exact only for point basins


def test_settings_records_resolve_the_tilt_and_leave_untilted_runs_as_before():
    from dataclasses import asdict

    from boltzgen.sampling import settings_record

    model, _ = small_model()
    plain = ModelFile(model, None, {})
    carrying = ModelFile(model, None, {"sampling_tilt": tilt_metadata(calibration(3))})
    untilted = asdict(SampleSettings())
    untilted.pop("tilt")
    assert settings_record(SampleSettings(), plain) == untilted  # the record of a job made before tilts existed
    assert settings_record(SampleSettings(tilt=0.0), carrying) == untilted
    default, explicit = settings_record(SampleSettings(), carrying), settings_record(SampleSettings(tilt=1.0), carrying)
    assert default == explicit and default["tilt"] == 1.0 and len(default["tilt_sha256"]) == 64
    other = ModelFile(model, None, {"sampling_tilt": tilt_metadata(calibration(3, seed=9))})
    assert settings_record(SampleSettings(), other) != default  # another tilt is another job


def test_more_harmonics_make_the_tilt_flatter_within_each_side():
    # the tilt's spread within phi < 0, relative to its gap between the sides, for a step at 0 and pi
    cvs = balance_cvs()
    theta = np.linspace(-math.pi, math.pi, 2001)[:-1]
    both = np.stack([theta, theta], 1)
    relative = []
    for harmonics in (1, 4):
        rare = np.where(theta > 0, math.log(1 / 9), 0.0)  # P(a > 0) = 0.1: a 2.2 kT gap to balance
        tilt, _ = balance_tilt(both, rare, cvs, {"a": 0}, 2, harmonics)
        b = tilt(torch.from_numpy(both), torch.zeros(len(theta))).numpy()
        inner = (theta < -0.5) & (theta > -math.pi + 0.5)  # away from the two steps
        relative.append(np.ptp(b[inner]) / abs(b[theta > 0].mean() - b[theta < 0].mean()))
    assert relative[1] < 0.5 * relative[0]


def test_the_balance_tilt_needs_mass_on_both_sides():
    theta = np.full((10, 2), -1.0)
    with pytest.raises(ValueError, match="hold no mass in 'a>0'"):
        balance_tilt(theta, np.zeros(10), balance_cvs(), {"a": 0}, 2)


def test_untilted_weights_of_exact_tilted_draws_give_the_untilted_expectation():
    # one dihedral: u(phi) = 3 cos(phi) + cos(2 phi); the tilted target exp(-(u - c)) is drawn exactly
    # (inverse CDF on a fine grid), so untilt's weights must give E_p[cos phi] of exp(-u) itself
    c = calibration(1, 3, scale=1.5, seed=4)
    _, tilt = tilted_model(small_model(0, 1)[0], c, 1.0)
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
        b = calibration(model_file.model.n_periodic, scale=0.5)
        tilted_file = replace(model_file, metadata={**model_file.metadata, "sampling_tilt": tilt_metadata(b)})
        run = sample_molecule(tilted_file, target, 24, replace(TINY, tilt=1.0), seed=2,
                              target_energy=fast.reduced_energy)
    finally:
        target.close()
    _, tilt = run_tilt(tilted_file, 1.0)
    z = model_file.space.to_flat(torch.from_numpy(run.positions).to(model_file.model.data_mean.dtype))
    # mixing leaves equal weights toward the tilted target; the correction is exp(-tilt) per particle
    restored = run.log_weights + tilt(z).detach().double().numpy()
    assert np.allclose(restored, restored[0], atol=1e-4)
    assert run.log_z == pytest.approx(W.log_mean_exp(torch.from_numpy(run.log_weights)))
    assert run.tilt_ess_fraction == pytest.approx(W.ess_fraction(torch.from_numpy(run.log_weights)))
    assert run.tilt_ess_fraction < 1.0 and run.diagnostics()["totals"]["tilt_ess_fraction"] == run.tilt_ess_fraction


def test_the_tilt_command_writes_a_tilted_copy_and_refuses_a_used_folder(tmp_path, capsys):
    shipped = str(systems.shipped_model("alanine-dipeptide"))
    assert main(["tilt", "alanine-dipeptide", "--model", shipped, "--out", str(tmp_path / "t"), "--samples", "32",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "phi_positive" in out and f"{tmp_path / 't'}/model.pt" in out
    assert stored_tilt(load_model_file(tmp_path / "t" / "model.pt").metadata) is not None
    assert main(["tilt", "alanine-dipeptide", "--model", shipped, "--out", str(tmp_path / "t"), "--samples", "8"]) == 2
    assert "boltzgen tilt: error: out" in capsys.readouterr().err


def test_fit_sampling_tilt_writes_a_model_file_whose_runs_apply_it(tmp_path, capsys):
    target = systems.load("alanine-dipeptide")
    try:
        shipped = systems.shipped_model("alanine-dipeptide")
        cvs = systems.collective_variables("alanine-dipeptide")
        entry = fit_sampling_tilt(target, shipped, tmp_path / "tilted", cvs, samples=64, seed=1, settings=TINY)
        with pytest.raises(ValueError, match="must be a new or empty folder"):
            fit_sampling_tilt(target, shipped, tmp_path / "tilted", cvs, samples=8)
    finally:
        target.close()
    assert "phi_positive" in entry["balanced_delta_f_kT"] and entry["samples"] == 64
    tilted = load_model_file(tmp_path / "tilted" / "model.pt")
    assert stored_tilt(tilted.metadata).n_periodic == tilted.model.n_periodic
    assert main(["sample", "alanine-dipeptide", "--model", str(tmp_path / "tilted"), "--out", str(tmp_path / "s"),
                 "--tilt", "1", "--particles", "16", "--runs", "2", "--levels", "8", "--mixing-moves", "4",
                 "--no-compile", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tilt                    1 of the model's sampling tilt" in out
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["settings"]["tilt"] == 1.0 and summary["tilt_applied"] == 1.0 and 0 < summary["tilt_ess_fraction"] <= 1
    # without --tilt a file that carries one is sampled with it; --tilt 0 turns it off
    assert main(["sample", "alanine-dipeptide", "--model", str(tmp_path / "tilted"), "--out", str(tmp_path / "d"),
                 "--tilt", "0", "--particles", "8", "--runs", "1", "--levels", "4", "--mixing-moves", "2",
                 "--no-compile", "--threads", "1"]) == 0
    assert "tilt " not in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["tilt_applied"] == 0.0
