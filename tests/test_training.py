"""Training loop: reproducibility, checkpoints, resume, bad input, and (slow) DiffCLF's effect."""
import pytest
import torch

from boltzgen.diffusion.networks import EnergyMLP
from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.diffusion.training import TrainingConfig, learning_rate, load_model, train
from boltzgen.targets import GaussianMixture

CONFIG = TrainingConfig(dsm_steps=6, clf_steps=6, batch_size=32, clf_batch_size=16, clf_levels=3,
                        checkpoint_every=4, seed=3)


def small_problem(seed=0):
    torch.manual_seed(seed)
    gmm = GaussianMixture(torch.tensor([[1.5, 0.0], [-1.5, 0.0]]), stds=0.4, weights=[0.7, 0.3])
    data = gmm.sample(500, torch.Generator().manual_seed(0)).float()
    model = EnergyMLP(2, VPSchedule(), data.mean(0), float(data.var(0).mean()), hidden=16, n_blocks=1)
    return model, data


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_same_model_and_different_seed_differs():
    a = train(*small_problem(), CONFIG)
    b = train(*small_problem(), CONFIG)
    c = train(*small_problem(), TrainingConfig(**{**CONFIG.__dict__, "seed": 4}))
    assert torch.equal(params(a.model), params(b.model))
    assert not torch.equal(params(a.model), params(c.model))
    assert a.step == CONFIG.total_steps and len(a.history) == CONFIG.total_steps
    # the DSM phase reports no CLF loss, the fine-tuning phase does
    assert all(p.clf != p.clf for p in a.history[:6]) and all(p.clf == p.clf for p in a.history[6:])


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference = train(*small_problem(), CONFIG)
    ckpt = tmp_path / "run.pt"

    def interrupt(step, parts):
        if step == 7:  # inside the CLF phase, between periodic checkpoints
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(*small_problem(), CONFIG, checkpoint=ckpt, callback=interrupt)
    assert torch.load(ckpt, weights_only=False)["step"] == 7  # nothing lost
    resumed = train(*small_problem(seed=99), CONFIG, checkpoint=ckpt)  # fresh init is overwritten
    assert resumed.step == CONFIG.total_steps and len(resumed.history) == CONFIG.total_steps
    assert torch.equal(params(resumed.model), params(reference.model))
    assert torch.equal(params(resumed.raw_model), params(reference.raw_model))
    # the checkpoint round-trips into an equal model
    loaded = load_model(ckpt)
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(loaded.energy(t, x), reference.model.energy(t, x))


def test_ctrl_c_inside_a_step_finishes_the_step_and_resumes_exactly(tmp_path, monkeypatch):
    """A real SIGINT arrives mid-step (here: inside the loss of step 8); the step completes,
    the checkpoint holds a consistent state, and resuming reproduces the uninterrupted run."""
    import os
    import signal

    import boltzgen.diffusion.training as training

    reference = train(*small_problem(), CONFIG)
    calls, original = [], training.combined_loss
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell

    def loss_with_sigint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "combined_loss", loss_with_sigint)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(*small_problem(), CONFIG, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["step"] == 8  # the interrupted step was completed
    monkeypatch.setattr(training, "combined_loss", original)
    resumed = train(*small_problem(), CONFIG, checkpoint=ckpt)
    assert torch.equal(params(resumed.raw_model), params(reference.raw_model))
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_resume_refuses_a_different_config(tmp_path):
    ckpt = tmp_path / "run.pt"
    train(*small_problem(), CONFIG, checkpoint=ckpt)
    with pytest.raises(ValueError, match="different training config"):
        train(*small_problem(), TrainingConfig(**{**CONFIG.__dict__, "learning_rate": 5e-4}), checkpoint=ckpt)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")


def test_learning_rate_decays_within_each_phase():
    c = TrainingConfig(dsm_steps=100, clf_steps=50, learning_rate=1e-3, min_lr_fraction=0.1)
    assert learning_rate(0, c) == pytest.approx(1e-3)
    assert learning_rate(99, c) == pytest.approx(1e-4, rel=0.01)
    assert learning_rate(100, c) == pytest.approx(1e-3)  # fine-tuning restarts the schedule


def test_bad_training_input():
    model, data = small_problem()
    with pytest.raises(ValueError, match="data"):
        train(model, torch.cat([data, torch.full((1, 2), float("nan"))]), CONFIG)
    with pytest.raises(ValueError, match=r"data must have shape \(n, 2\)"):
        train(model, data[:, :1], CONFIG)
    with pytest.raises(ValueError, match="batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="clf_levels"):
        TrainingConfig(clf_levels=1)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="clf_window"):
        TrainingConfig(clf_window=0.0)  # refused up front, not after the DSM phase


@pytest.mark.slow
def test_diffclf_fixes_the_mode_weight_that_dsm_misses():
    """The benchmark in miniature (d = 4, ~2 minutes): DiffCLF's error must be small, and not
    larger than DSM's. 0.05 is about three times the spread of DiffCLF's error seen over seeds
    at this size; DSM's error is typically 0.05-0.2 (mode blindness)."""
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    import json
    import io
    import contextlib
    from gmm_mode_weights import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--dim", "4", "--seed", "0", "--pretrain-steps", "2000", "--steps", "1500",
              "--sde-samples", "1000", "--sde-steps", "200", "--is-samples", "5000"])
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["diffclf_weight_error"] < 0.05
    assert result["diffclf_weight_error"] <= result["dsm_weight_error"] + 0.01


def test_config_counts_become_plain_ints_and_bad_ones_are_named():
    import json
    from dataclasses import asdict

    import numpy as np

    config = TrainingConfig(dsm_steps=np.int64(5), clf_levels=np.int32(4))
    assert type(config.dsm_steps) is int and type(config.clf_levels) is int
    json.dumps(asdict(config))  # checkpoints and logs can store it
    with pytest.raises(ValueError, match="clf_levels must be an integer >= 2, got 1"):
        TrainingConfig(clf_levels=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 2.0"):
        TrainingConfig(batch_size=2.0)


def test_energy_matching_pins_the_offset_between_two_modes_that_scores_cannot_see():
    """Two Gaussian modes whose relative offset b only the energies fix: the loss is smallest at the true b,
    and gradient descent on b alone recovers it."""
    from boltzgen.diffusion.losses import energy_matching_loss
    from boltzgen.diffusion.schedule import LogSNRSchedule

    class TwoModes(torch.nn.Module):
        def __init__(self, b):
            super().__init__()
            self.schedule = LogSNRSchedule(12.0, -8.0)
            self.b = torch.nn.Parameter(torch.tensor(float(b)))

        def energy(self, t, x):
            side = torch.sigmoid(20.0 * x[:, 0])  # which mode, smoothly
            centre = torch.where(x[:, :1] > 0, torch.ones_like(x[:, :1]), -torch.ones_like(x[:, :1])) * 3.0
            return 0.5 * ((x - centre) ** 2).sum(1) / 0.25 + self.b * side

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 2, generator=g) * 0.5
    x0[:, 0] += torch.where(torch.rand(4000, generator=g) < 0.3, 3.0, -3.0)
    true_b = 2.5
    u0 = TwoModes(true_b).energy(0.0, x0).detach().double() + 7.0  # the target up to a constant
    losses = {b: float(energy_matching_loss(TwoModes(b), x0, u0, torch.Generator().manual_seed(1)))
              for b in (true_b - 1.0, true_b, true_b + 1.0)}
    assert losses[true_b] < 1e-2 < min(losses[true_b - 1.0], losses[true_b + 1.0])
    model = TwoModes(0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.1)
    for step in range(300):
        optimiser.zero_grad()
        energy_matching_loss(model, x0, u0, torch.Generator().manual_seed(step)).backward()
        optimiser.step()
    assert abs(float(model.b) - true_b) < 0.05
    with pytest.raises(ValueError, match="energy0"):
        energy_matching_loss(model, x0, u0[:10])


def test_drawn_regression_frames_ignore_the_weights_and_dsm_frames_keep_them():
    """With regression_frames="drawn" TSM and energy matching see frames drawn uniformly over the data
    as given, while the DSM batch stays drawn by weight (here all weight on frame 0)."""
    from boltzgen.diffusion.training import _training_data

    model, data = small_problem()
    log_weights = torch.full((data.shape[0],), -float("inf"))
    log_weights[0] = 0.0
    batches = _training_data(model, data, log_weights, None, None, None, torch.device("cpu"), CONFIG)
    g = torch.Generator().manual_seed(0)
    weighted, _, _ = batches.batch(400, g)
    drawn, _, _ = batches.batch(400, g, drawn=True)
    assert torch.equal(weighted, data[:1].expand(400, 2))
    assert torch.unique(drawn, dim=0).shape[0] > 200  # ~ 500 (1 - e^-0.8) = 275 distinct frames expected


def test_combined_loss_fits_the_regressions_on_the_frames_it_is_given():
    """x_regression: TSM and energy matching are computed on those frames (the same numbers as the
    separate losses with the same random stream), DSM on x0."""
    from boltzgen.diffusion.losses import combined_loss, dsm_loss, energy_matching_loss, target_score_loss

    model, data = small_problem()
    x0, xr = data[:32], data[100:140]
    scores, energies = -xr, 0.5 * (xr**2).sum(1)
    _, parts = combined_loss(model, x0, torch.Generator().manual_seed(5), clf_weight=0.0, score0=scores,
                             tsm_weight=1.0, tsm_max_sigma=0.05, energy0=energies, energy_weight=1.0,
                             x_regression=xr)
    g = torch.Generator().manual_seed(5)
    dsm = dsm_loss(model, x0, g)
    tsm = target_score_loss(model, xr, scores, g, max_sigma=0.05)
    energy = energy_matching_loss(model, xr, energies, g, max_sigma=0.05)
    assert parts.dsm == pytest.approx(float(dsm)) and parts.tsm == pytest.approx(float(tsm))
    assert parts.energy == pytest.approx(float(energy))
    with pytest.raises(ValueError, match="score0"):  # the scores must belong to the regression frames
        combined_loss(model, x0, score0=scores, tsm_weight=1.0)


def test_regression_frames_option_trains_resumes_and_is_checked(tmp_path):
    from dataclasses import asdict

    model, data = small_problem()
    log_weights = torch.linspace(-3.0, 0.0, data.shape[0])
    energies = 0.5 * (data.double() ** 2).sum(1)
    config = TrainingConfig(**{**CONFIG.__dict__, "energy_weight": 1.0, "tsm_max_sigma": 0.05,
                                            "regression_frames": "drawn"})
    drawn = train(model, data, config, log_weights=log_weights, energies=energies)
    weighted = train(*small_problem(), TrainingConfig(**{**config.__dict__, "regression_frames": "weighted"}),
                     log_weights=log_weights, energies=energies)
    assert not torch.equal(params(drawn.model), params(weighted.model))
    # a checkpoint written before the option existed resumes as "weighted"
    ckpt = tmp_path / "old.pt"
    old = TrainingConfig(**{**CONFIG.__dict__, "dsm_steps": 2, "clf_steps": 0})
    train(*small_problem(), old, checkpoint=ckpt)
    payload = torch.load(ckpt, weights_only=False)
    del payload["training_config"]["regression_frames"]
    torch.save(payload, ckpt)
    resumed = train(*small_problem(), TrainingConfig(**{**asdict(old), "dsm_steps": 2}), checkpoint=ckpt)
    assert resumed.step == 2
    with pytest.raises(ValueError, match="regression_frames must be one of"):
        TrainingConfig(regression_frames="uniform")
