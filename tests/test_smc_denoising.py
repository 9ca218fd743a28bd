"""denoising_smc (reverse-diffusion proposals with exact weights) and smc_from on exact Gaussian models.

An EnergyMLP whose correction is zero (its output layer starts at zero) is exactly the energy of
noised Gaussian data N(mu, s^2 I) at every level, so log Z of its t_min level is known in closed
form: (k / 2) ln(2 pi v_tmin) on a k-dimensional subspace.
"""
import math

import pytest
import torch

from boltzgen.diffusion.networks import EnergyMLP
from boltzgen.diffusion.schedule import LogSNRSchedule
from boltzgen.smc import GaussianProposal, denoising_smc, geometric_path, initial_gaussian, level_grid, smc, smc_from
from boltzgen.coordinates.cartesian import MolecularSpace

DIM = 6
S2 = 0.3  # data variance


def _model(mean):
    return EnergyMLP(DIM, LogSNRSchedule(), data_mean=mean, data_variance=S2, hidden=8, n_blocks=1).double()


def _exact_log_z(model, k):
    t = torch.tensor([model.schedule.t_min], dtype=torch.float64)
    v = float(model.schedule.alpha(t)) ** 2 * S2 + float(model.schedule.sigma(t)) ** 2
    return 0.5 * k * math.log(2 * math.pi * v)


def _runs(model, n_runs=4, **kw):
    return [denoising_smc(model, 400, n_levels=60, seed=s, chunk_size=None, **kw) for s in range(n_runs)]


def _check_log_z(results, exact):
    values = torch.tensor([r.log_z for r in results], dtype=torch.float64)
    se = float(values.std() / math.sqrt(len(values)))
    # 4 standard errors over independent runs, plus 0.01 for the small bias of a log of a mean
    assert abs(float(values.mean()) - exact) < 4 * se + 0.01, (values.tolist(), exact, se)


def test_log_z_of_an_exact_gaussian_model_and_high_ess():
    model = _model(torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3, -0.4], dtype=torch.float64))
    results = _runs(model)
    _check_log_z(results, _exact_log_z(model, DIM))
    for r in results:
        # with the x0 variance of Gaussian data the step is the exact reverse kernel: equal weights
        assert r.ess_fraction == pytest.approx(1.0, abs=1e-9)
        assert len(r.diagnostics) == 61 and r.diagnostics[-1].value == pytest.approx(model.schedule.t_min)
        assert r.origin.shape == (400,) and 1 <= r.n_lineages <= 400


def test_on_a_subspace_log_z_counts_its_dimension_only():
    space = MolecularSpace(2)  # 6 coordinates, 3-dimensional centre-free subspace
    model = _model(torch.zeros(DIM, dtype=torch.float64))
    results = _runs(model, project=space.project)
    _check_log_z(results, _exact_log_z(model, 3))
    for r in results:
        assert space.contains(r.particles)


def test_moves_and_resampling_are_recorded():
    model = _model(torch.zeros(DIM, dtype=torch.float64))
    # the plain DDPM step (no x0 variance) is not exact here, so the weights are never all equal
    r = denoising_smc(model, 200, n_levels=20, n_moves=2, resample_threshold=1.0, seed=1, x0_variance=False)
    steps = r.diagnostics[1:]
    assert all(s.resampled for s in steps)  # threshold 1: every level with unequal weights resamples
    assert all(s.moves["acceptance"] > 0.2 for s in steps)  # real MALA moves, adapted toward 0.574
    assert steps[-1].step_size != steps[0].step_size  # the step size follows the levels
    assert all(s.moves == {} for s in denoising_smc(model, 50, n_levels=5).diagnostics[1:])


def test_without_the_x0_variance_the_step_is_too_narrow_but_log_z_stays_exact():
    model = _model(torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3, -0.4], dtype=torch.float64))
    results = _runs(model, x0_variance=False)
    _check_log_z(results, _exact_log_z(model, DIM))
    assert all(min(s.conditional_ess_fraction for s in r.diagnostics[1:]) < 0.99 for r in results)


def test_seed_reproduces_a_run():
    model = _model(torch.zeros(DIM, dtype=torch.float64))
    a, b = (denoising_smc(model, 50, n_levels=10, seed=7) for _ in range(2))
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_weights, b.log_weights)


def test_initial_gaussian_is_the_top_level_exactly():
    model = _model(torch.ones(DIM, dtype=torch.float64))
    q = initial_gaussian(model)
    x = q.sample(100, torch.Generator().manual_seed(0))
    log_w = -model.energy(1.0, x).double() - q.log_prob(x)
    assert float(log_w.max() - log_w.min()) < 1e-6  # constant: the proposal is the level itself


def test_level_grid_and_bad_arguments():
    grid = level_grid(0.001, 4)
    assert grid[0] == 1.0 and grid[-1] == 0.001 and len(grid) == 5
    assert all(a > b for a, b in zip(grid, grid[1:]))
    model = _model(torch.zeros(DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_levels"):
        denoising_smc(model, 10, n_levels=0)
    with pytest.raises(ValueError, match="resample_threshold"):
        denoising_smc(model, 10, resample_threshold=2.0)
    with pytest.raises(ValueError, match="resampler"):
        denoising_smc(model, 10, resampler="best")
    with pytest.raises(ValueError, match="n_particles"):
        denoising_smc(model, 0)


def test_smc_continues_from_weighted_particles_with_log_z_and_lineages():
    """Gaussian N(0, 1) -> N(0, 0.25) in two stages equals one run: log Z adds up, lineages carry over."""
    d = 4
    e_a = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    e_b = lambda x: 2.0 * (x**2).sum(1)  # noqa: E731
    e_mid = lambda x: 1.0 * (x**2).sum(1)  # noqa: E731
    exact = 0.5 * d * math.log(2 * math.pi * 0.25)  # log Z of exp(-e_b)
    log_z = []
    for seed in range(4):
        first = smc(geometric_path(e_a, e_mid), GaussianProposal(d), 500, seed=seed)
        second = smc_from(first, geometric_path(e_mid, e_b), seed=100 + seed)
        assert set(second.origin.tolist()) <= set(first.origin.tolist())
        assert second.n_lineages <= first.n_lineages
        log_z.append(second.log_z)
    values = torch.tensor(log_z)
    se = float(values.std() / 2)
    assert abs(float(values.mean()) - exact) < 4 * se + 0.01, (log_z, exact)


def test_smc_from_needs_a_result():
    first = smc(geometric_path(lambda x: (x**2).sum(1), lambda x: 2 * (x**2).sum(1)), GaussianProposal(2), 20)
    path = geometric_path(lambda x: 2 * (x**2).sum(1), lambda x: 3 * (x**2).sum(1))
    with pytest.raises(TypeError, match="SMCResult"):
        smc_from(first.particles, path)


def test_adaptive_levels_keep_the_conditional_ess_and_log_z_exact():
    """Without the x0 widening the reverse step is not exact, so the weights vary; adaptive levels keep each
    step's conditional ESS at the target, take fewer levels where the model changes slowly, and log Z stays
    exact (Student-t interval over independent runs)."""
    from boltzgen.smc.denoising import levels_stages
    from boltzgen.smc.engine import StepOptions, as_generator, empty_state, run
    from stats import assert_covers

    model = _model(torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3, -0.4], dtype=torch.float64))
    log_z, counts = [], []
    for seed in range(6):
        stages = levels_stages(model, x0_variance=False, options=StepOptions(0.5, "systematic", True, None, None),
                               cess=0.95)
        result = run(empty_state(400), stages, as_generator(seed))
        steps = result.steps("levels")
        assert steps[-1].value == pytest.approx(float(model.schedule.t_min))
        cess = [s.conditional_ess_fraction for s in steps]
        # the real step's fresh noise scatters around the trial's target, never far below it
        assert sum(cess) / len(cess) > 0.93 and min(cess) > 0.8, cess
        log_z.append(result.log_z)
        counts.append(len(steps))
    assert_covers(log_z, _exact_log_z(model, DIM))
    assert len(set(counts)) > 1  # the grid follows the particles, run by run
