"""SMC / AIS over paths: unbiased log Z and mode weights on analytic targets, diagnostics, bad input.

About the log Z checks. SMC estimates Z without bias, so log Z is biased low by about
Var(log Z_hat) / 2 for a finite number of particles. Each statistical test therefore checks
  * Z_hat / Z: its mean over independent seeds within 4 standard errors of 1 (exactly unbiased), and
  * log Z_hat - log Z: its mean within 4 standard errors of 0, *after* checking that the run-to-run
    standard deviation s is small enough (s < 0.2) that the bias s^2 / 2 is below a quarter of the
    standard error s / sqrt(R) for R = 20 seeds; with more spread the log-space check would be
    testing the known bias, not the sampler.
Mode weights: the mean over seeds within 0.02 of the truth and within 4 standard errors.
"""
import math

import pytest
import torch

from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.smc import (
    HMC,
    MALA,
    GaussianProposal,
    Path,
    Segment,
    SMCResult,
    SMCStep,
    ais,
    diffusion_path,
    energy_path,
    family_path,
    geometric_path,
    smc,
)
from boltzgen.targets import DoubleWell, GaussianMixture

SEEDS = range(20)


def check_unbiased(log_z_errors, mode_errors=None):
    errors = torch.tensor(log_z_errors, dtype=torch.float64)
    r = errors.numel()
    sd = float(errors.std())
    assert sd < 0.2, f"log Z spread {sd:.3f} too large for a log-space bias test (bias ~ sd^2/2)"
    ratio = errors.exp()
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(ratio.std()) / math.sqrt(r), f"Z_hat/Z = {ratio.mean():.4f}"
    assert abs(float(errors.mean())) < 4 * sd / math.sqrt(r), f"log Z error {errors.mean():.4f} +- {sd / math.sqrt(r):.4f}"
    if mode_errors is not None:
        m = torch.stack(mode_errors)
        mean, se = m.mean(0), m.std(0) / math.sqrt(r)
        assert (mean.abs() < 0.02).all(), f"mode weight errors {mean}"
        assert (mean.abs() < 4 * se + 1e-12).all(), f"mode weight errors {mean} vs standard errors {se}"


def mixture_2d():
    """Three separated, unequal-width modes with unequal weights and a non-zero log Z."""
    return GaussianMixture(
        torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]), stds=torch.tensor([0.5, 0.7, 0.9]),
        weights=torch.tensor([0.5, 0.3, 0.2]), log_Z=1.3,
    )


def responsibilities(gmm, x):
    # E_p[responsibility_k] = w_k exactly, so overlapping modes cause no labelling error
    return torch.softmax(gmm.component_log_probs(x), dim=1)


# --- unbiasedness on analytic targets ---------------------------------------------------------
def check_geometric_path_on_mixture(gmm, q, step_size):
    """SMC from q to the mixture over the geometric path: log Z and mode weights unbiased over SEEDS."""
    path = geometric_path(lambda x: -q.log_prob(x), gmm.reduced_energy)
    errors, modes = [], []
    for seed in SEEDS:
        r = smc(path, q, 4000, kernel=MALA(step_size=step_size), n_moves=3, seed=seed)
        errors.append(r.log_z - gmm.log_Z)
        modes.append(r.expectation(responsibilities(gmm, r.particles)) - gmm.weights)
    check_unbiased(errors, modes)


def test_smc_log_z_and_mode_weights_on_gaussian_mixture():
    check_geometric_path_on_mixture(mixture_2d(), GaussianProposal(2, variance=9.0), step_size=0.1)


def test_smc_log_z_and_mode_weights_on_double_well():
    dw = DoubleWell(dim=2)
    q = GaussianProposal(2, variance=9.0)
    path = geometric_path(lambda x: -q.log_prob(x), dw.reduced_energy)
    errors, modes = [], []
    for seed in SEEDS:
        r = smc(path, q, 2000, kernel=MALA(step_size=0.1), n_moves=3, seed=seed)
        errors.append(r.log_z - dw.log_Z)
        labels = torch.nn.functional.one_hot(dw.assign(r.particles), 2)
        modes.append(r.expectation(labels) - dw.mode_weights)
    check_unbiased(errors, modes)


def noised_mixture_path(gmm, schedule, n_levels, target=None):
    return diffusion_path(lambda t, x: -gmm.noised_log_prob(schedule, t, x), schedule.levels(n_levels), target,
                          lambdas=[0.0, 1.0])


def test_exact_intermediate_targets_keep_the_ess_near_n():
    """Along the exact noised marginals (a perfect model) no step loses more than a sliver of
    ESS: with 200 levels the accumulated chi^2 between levels is ~0.05, so ESS/N stays >= 0.9
    and never triggers resampling. The same levels of a model with the wrong mode weights do
    lose the ESS (the contrast shows the check can fail)."""
    schedule = VPSchedule()
    gmm = mixture_2d()
    wrong = GaussianMixture(gmm.means, stds=torch.tensor([0.5, 0.7, 0.9]), weights=torch.tensor([0.2, 0.3, 0.5]))
    results = {}
    for name, model in (("exact", gmm), ("wrong", wrong)):
        path = noised_mixture_path(model, schedule, 200, gmm.reduced_energy)
        # the model's own top level is sampled exactly, as the diffusion EBM's Gaussian level is
        results[name] = smc(path, model.noised(schedule, 1.0), 500, n_moves=2, kernel=MALA(step_size=0.1),
                            resample_threshold=0.3, seed=0)
    exact = results["exact"]
    assert min(s.ess_fraction for s in exact.diagnostics) > 0.9
    assert not any(s.resampled for s in exact.diagnostics)
    # Without resampling the run is one importance-sampling estimate: sd(log Z) ~ sqrt((N/ESS - 1)/N).
    sd = math.sqrt((1.0 / exact.ess_fraction - 1.0) / 500)
    assert abs(exact.log_z - gmm.log_Z) < 4 * sd + 1e-3
    assert results["wrong"].ess_fraction < 0.7


# --- Gaussian targets with exact log Z --------------------------------------------------------
def test_tempering_family_with_adaptive_steps_and_hmc():
    """energy(beta, x) = beta |x|^2 / 2 from beta = 1/4 (sampled exactly) to 1: log Z = d/2 log(2 pi)."""
    d = 3
    path = family_path(lambda beta, x: 0.5 * beta * (x**2).sum(1), start=0.25, end=1.0, cess_target=0.8, name="beta")
    q = GaussianProposal(d, variance=4.0)
    errors = [smc(path, q, 500, kernel=HMC(step_size=0.3, n_leapfrog=3), seed=s).log_z - 0.5 * d * math.log(2 * math.pi)
              for s in range(10)]
    e = torch.tensor(errors)
    assert abs(float(e.mean())) < 4 * float(e.std()) / math.sqrt(10) + 1e-3


def test_energy_list_path_and_ais():
    """A list of Gaussians N(0, s_k^2) with log Z offsets; AIS reaches the last one's log Z."""
    scales = [2.0, 1.5, 1.0, 0.7]
    energies = [lambda x, s=s: 0.5 * (x**2).sum(1) / s**2 - 2.0 for s in scales]
    d = 2
    true = 0.5 * d * math.log(2 * math.pi * scales[-1] ** 2) + 2.0
    path = energy_path(energies, values=scales, name="scale")
    q = GaussianProposal(d, variance=scales[0] ** 2)
    r = ais(path, q, 2000, seed=1)
    assert [s.value for s in r.diagnostics] == scales
    assert not any(s.resampled for s in r.diagnostics)
    assert all(s.n_ancestors == 2000 for s in r.diagnostics)  # AIS never resamples
    se = math.sqrt((1 / r.ess_fraction - 1) / 2000)  # delta method for the final weights
    assert abs(r.log_z - true) < 4 * se + 0.02


def test_projected_smc_estimates_the_subspace_normaliser():
    """exp(-|x|^2 / (2 s^2)) on {sum_i x_i = 0} in d = 4 has log Z = (d - 1)/2 log(2 pi s^2)."""
    d, s2 = 4, 0.5
    project = lambda v: v - v.mean(1, keepdim=True)  # noqa: E731
    q = GaussianProposal(d, project=project)
    path = geometric_path(lambda x: -q.log_prob(x), lambda x: 0.5 * (x**2).sum(1) / s2)
    errors = []
    for seed in range(10):
        r = smc(path, q, 500, project=project, seed=seed)
        assert r.particles.sum(1).abs().max() < 1e-10
        errors.append(r.log_z - 0.5 * (d - 1) * math.log(2 * math.pi * s2))
    e = torch.tensor(errors)
    assert abs(float(e.mean())) < 4 * float(e.std()) / math.sqrt(10)
    # the unprojected normaliser would be off by 1/2 log(2 pi s^2) ~ 0.58: clearly distinguishable
    assert float(e.std()) / math.sqrt(10) < 0.1


# --- diagnostics, structure, reproducibility ---------------------------------------------------
def test_diagnostics_are_consistent():
    gmm = mixture_2d()
    q = GaussianProposal(2, variance=9.0)
    seen = []
    r = smc(geometric_path(lambda x: -q.log_prob(x), gmm.reduced_energy), q, 300, seed=3, progress=seen.append)
    assert isinstance(r, SMCResult) and all(isinstance(s, SMCStep) for s in r.diagnostics)
    assert seen == list(r.diagnostics)
    steps = r.diagnostics
    assert [s.index for s in steps] == list(range(len(steps)))
    assert steps[0].value == 0.0 and steps[-1].value == 1.0
    assert all(a.value < b.value for a, b in zip(steps, steps[1:]))
    assert r.log_z == pytest.approx(steps[-1].log_z)
    assert math.fsum(s.log_z_increment for s in steps) == pytest.approx(r.log_z, abs=1e-9)
    assert all(s.resampled == (s.ess_fraction < 0.5) for s in steps)
    assert all(a.n_ancestors >= b.n_ancestors for a, b in zip(steps, steps[1:]))
    assert any(s.resampled for s in steps) and steps[-1].n_ancestors < 300
    # adaptive steps aim at a conditional ESS of 0.9 N (the last step may overshoot it)
    assert all(s.conditional_ess_fraction >= 0.9 - 1e-9 for s in steps[1:])
    assert r.log_weights.dtype == torch.float64 and r.particles.shape == (300, 2)
    assert r.weights.sum() == pytest.approx(1.0) and r.ess == pytest.approx(r.ess_fraction * 300)
    assert 0 < r.summary().ess_clipped
    with pytest.raises(AttributeError):
        steps[0].ess = 1.0  # frozen


def test_same_seed_same_result_and_chunking_does_not_change_it():
    gmm = mixture_2d()
    q = GaussianProposal(2, variance=9.0)
    path = geometric_path(lambda x: -q.log_prob(x), gmm.reduced_energy)
    a = smc(path, q, 200, seed=7, chunk_size=None)
    b = smc(path, q, 200, seed=7, chunk_size=33)
    g = torch.Generator().manual_seed(7)
    c = smc(path, q, 200, seed=g)
    assert a.log_z == pytest.approx(b.log_z, abs=1e-10) and torch.allclose(a.particles, b.particles)
    assert a.log_z == pytest.approx(c.log_z, abs=1e-10)
    assert smc(path, q, 200, seed=8).log_z != a.log_z


def test_diffusion_path_structure():
    schedule = VPSchedule()
    gmm = mixture_2d()
    calls = []

    def energy(t, x):
        calls.append(t)
        return -gmm.noised_log_prob(schedule, t, x)

    path = diffusion_path(energy, schedule.levels(5), gmm.reduced_energy)  # given ascending
    assert [s.name for s in path.segments] == ["t", "lambda"]
    assert path.segments[0].grid == tuple(sorted(schedule.levels(5).tolist(), reverse=True))
    assert path.segments[1].adaptive
    r = smc(path, GaussianProposal(2), 200, seed=0)
    names = [s.name for s in r.diagnostics]
    # the bridge starts where the levels end, so the junction adds no step
    assert names.count("t") == 5 and names[5:] == ["lambda"] * (len(names) - 5)
    assert r.diagnostics[5].value > 0.0
    assert isinstance(calls[0], float) and max(calls) == 1.0
    adaptive = diffusion_path(energy, (1.0, schedule.t_min), adaptive_times=True)
    assert adaptive.segments[0].adaptive and len(adaptive.segments) == 1


def test_a_mismatched_junction_becomes_a_reweighting_step():
    """Two segments that do not meet: the junction is reweighted, so log Z stays exact."""
    d = 2
    q = GaussianProposal(d)
    first = geometric_path(lambda x: 0.5 * (x**2).sum(1), lambda x: 0.5 * (x**2).sum(1) / 0.8)
    second = geometric_path(lambda x: 0.5 * (x**2).sum(1) / 0.7, lambda x: 0.5 * (x**2).sum(1) / 0.5)
    runs = [smc(first + second, q, 500, seed=seed) for seed in range(10)]
    junction = [s for s in runs[0].diagnostics if s.value == 0.0]
    assert len(junction) == 2  # the initial step and the junction
    true = 0.5 * d * math.log(2 * math.pi * 0.5)  # q is normalised, so log Z is the last target's own
    errors = torch.tensor([r.log_z - true for r in runs])
    # unbiased up to O(1/N): the mean error lies within 4 standard errors of the spread over seeds
    assert abs(float(errors.mean())) < 4 * float(errors.std()) / math.sqrt(len(runs)) + 1e-3


def test_plot_helper_draws_three_panels():
    from boltzgen.smc.plots import plot_smc_diagnostics

    q = GaussianProposal(2, variance=9.0)
    r = smc(geometric_path(lambda x: -q.log_prob(x), mixture_2d().reduced_energy), q, 200, seed=0)
    fig = plot_smc_diagnostics(r)
    assert len(fig.axes) == 4  # three panels plus the step-size twin axis
    with pytest.raises(TypeError, match="SMCResult"):
        plot_smc_diagnostics(r.diagnostics)


def test_run_diagnostics_plot_reads_diagnostics_json_records():
    from dataclasses import asdict

    from boltzgen.smc.plots import plot_run_diagnostics

    q = GaussianProposal(2, variance=9.0)
    runs = [smc(geometric_path(lambda x: -q.log_prob(x), mixture_2d().reduced_energy), q, 100, seed=s) for s in (0, 1)]
    records = [{"steps": [asdict(d) for d in r.diagnostics]} for r in runs]
    fig = plot_run_diagnostics(records, title="two runs")
    ess, lineages, _ = fig.axes
    assert len(ess.lines) == 2 and len(lineages.lines) == 2  # one line per run
    assert list(lineages.lines[0].get_ydata()) == [d.n_ancestors / d.n_particles for d in runs[0].diagnostics]
    with pytest.raises(ValueError, match="steps"):
        plot_run_diagnostics([{"steps": []}])


# --- bad input -------------------------------------------------------------------------------
def test_nan_energies_give_zero_weight_never_nan_log_z():
    gmm = mixture_2d()
    q = GaussianProposal(2, variance=9.0)

    def broken(x):  # NaN in a slab that holds a few percent of the particles
        e = gmm.reduced_energy(x)
        return torch.where((x[:, 0] > 3.0) & (x[:, 0] < 3.3), torch.full_like(e, float("nan")), e)

    with pytest.warns(RuntimeWarning, match="zero weight"):
        r = smc(geometric_path(lambda x: -q.log_prob(x), broken), q, 500, seed=0)
    assert math.isfinite(r.log_z) and torch.isfinite(r.particles).all()
    assert r.n_nonfinite > 0 and sum(s.n_nonfinite for s in r.diagnostics) == r.n_nonfinite
    assert not torch.isnan(r.log_weights).any()


def test_all_nan_energies_raise():
    q = GaussianProposal(2)
    path = geometric_path(lambda x: 0.5 * (x**2).sum(1), lambda x: torch.full((x.shape[0],), float("nan")))
    with pytest.raises(RuntimeError, match="all particles have zero weight"):
        smc(path, q, 50, seed=0)


def test_bad_arguments_raise_clear_errors():
    q = GaussianProposal(2)
    good = geometric_path(lambda x: 0.5 * (x**2).sum(1), lambda x: (x**2).sum(1))
    with pytest.raises(ValueError, match="n_particles must be a positive integer"):
        smc(good, q, 0)
    with pytest.raises(TypeError, match="path must be"):
        smc([lambda x: x], q, 10)
    with pytest.raises(TypeError, match="proposal must have"):
        smc(good, object(), 10)
    with pytest.raises(ValueError, match="resampler must be one of"):
        smc(good, q, 10, resampler="bogus")
    with pytest.raises(ValueError, match="resample_threshold"):
        smc(good, q, 10, resample_threshold=2.0)
    with pytest.raises(TypeError, match="seed"):
        smc(good, q, 10, seed=1.5)
    # a path of length one
    with pytest.raises(ValueError, match="at least two targets"):
        energy_path([lambda x: (x**2).sum(1)])
    with pytest.raises(ValueError, match="at least two"):
        Segment("lambda", lambda v, x: x.sum(1), 0.0, 0.0)
    with pytest.raises(ValueError, match="at least two distinct levels"):
        diffusion_path(lambda t, x: x.sum(1), [0.5, 0.5])
    with pytest.raises(ValueError, match="lambdas must run from 0 to 1"):
        geometric_path(lambda x: x.sum(1), lambda x: x.sum(1), lambdas=[0.0, 0.5])
    with pytest.raises(ValueError, match="cess_target"):
        geometric_path(lambda x: x.sum(1), lambda x: x.sum(1), cess_target=1.0)
    with pytest.raises(ValueError, match="at least one segment"):
        Path(())
    # mismatched shapes
    with pytest.raises(ValueError, match=r"must return shape \(10,\)"):
        smc(geometric_path(lambda x: 0.5 * (x**2).sum(1), lambda x: x), q, 10)
    with pytest.raises(ValueError, match=r"proposal.log_prob\(x\) must return shape"):
        smc(good, type("Q", (), {"sample": lambda self, n, g: torch.zeros(n, 2), "log_prob": lambda self, x: x})(), 10)
    with pytest.raises(ValueError, match=r"proposal.sample\(10, generator\) must return shape"):
        smc(good, type("Q", (), {"sample": lambda self, n, g: torch.zeros(n), "log_prob": lambda self, x: x})(), 10)
    with pytest.raises(ValueError, match="project must map"):
        smc(good, q, 10, project=lambda v: v[:, :1])
    with pytest.raises(TypeError, match="ais never resamples"):
        ais(good, q, 10, resample_threshold=0.5)


# --- slow: larger mixtures -------------------------------------------------------------------
def sphere_mixture(d, k=4, radius=3.0, std=0.5, seed=0):
    """Modes on a sphere (equal norms, equal widths) with unequal weights 1:2:...:k."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(k, d, generator=g, dtype=torch.float64)
    means = radius * directions / directions.norm(dim=1, keepdim=True)
    return GaussianMixture(means, stds=std, weights=torch.arange(1.0, k + 1), log_Z=-0.7)


@pytest.mark.slow
def test_smc_geometric_path_on_an_8d_mixture():
    check_geometric_path_on_mixture(sphere_mixture(8), GaussianProposal(8), step_size=0.05)


@pytest.mark.slow
def test_smc_exact_noised_path_on_a_32d_mixture():
    """d = 32, unequal weights, through the exact noised marginals (a perfect model's path,
    adaptive levels). In d = 32 the accuracy is limited by MCMC mixing within each step rather
    than by N (2 MALA moves per step leave a log Z spread of ~0.1 and mode-weight errors of ~0.05
    per run at N = 1000 or 4000 alike), hence 20 moves per step here."""
    schedule = VPSchedule()
    gmm = sphere_mixture(32)
    path = diffusion_path(lambda t, x: -gmm.noised_log_prob(schedule, t, x), (1.0, schedule.t_min), gmm.reduced_energy,
                          adaptive_times=True)
    errors, modes = [], []
    for seed in SEEDS:
        r = smc(path, GaussianProposal(32), 1000, kernel=MALA(step_size=0.05), n_moves=20, seed=seed)
        errors.append(r.log_z - gmm.log_Z)
        modes.append(r.expectation(responsibilities(gmm, r.particles)) - gmm.weights)
    check_unbiased(errors, modes)
