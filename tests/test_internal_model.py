"""The internal-coordinate diffusion model (InternalEnergy) on targets with exact noised marginals.

An untrained :class:`InternalEnergy` (its correction's last layer starts at zero) whose dihedral
base is set by hand is the exact noised marginal of N(0, I_L) x prod_d WNmix_d at every level:
on the line z_t ~ N(0, v_t), v_t = alpha_t^2 + sigma_t^2; on the circle each mixture component's
variance grows by s_t^2 = (sigma_t / alpha_t)^2. The tests use that to check the wrapped normal
itself, the mixture fit, the noising, the DSM target (and the TSM and DiffCLF ones), the
log-normaliser, SMC through the model's own levels (log Z and mode populations), periodicity and
model files.

Statistical checks use :func:`stats.assert_covers` (Student-t interval over independent
replicates, confidence 0.999, no added slack); a chi-square check of histograms is stated with
its significance level.
"""
import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from stats import assert_covers, t_bound

from boltzgen.diffusion.circular import WrappedMixture, log_wrapped_normal, wrap, wrapped_normal_score
from boltzgen.diffusion.internal import InternalEnergy
from boltzgen.diffusion.losses import diffclf_loss, dsm_loss, target_score_loss
from boltzgen.diffusion.networks import energy_score
from boltzgen.diffusion.schedule import LogSNRSchedule, VESchedule
from boltzgen.smc.denoising import levels_stages
from boltzgen.smc.engine import empty_state, run

F64 = torch.float64
TWO_PI = 2 * math.pi


# ---- helpers ------------------------------------------------------------------------------------
def brute_log_wn(delta, variance, n_images=2000):
    """log sum_k N(delta + 2 pi k; 0, v) over |k| <= n_images, float64 (the definition, by brute force)."""
    k = torch.arange(-n_images, n_images + 1, dtype=F64)
    x = delta.to(F64)[..., None] + TWO_PI * k
    v = torch.as_tensor(variance, dtype=F64)[..., None]
    return torch.logsumexp(-0.5 * x**2 / v - 0.5 * torch.log(TWO_PI * v), dim=-1)


def mixture(means, variances, weights):
    """A WrappedMixture with the given (D, K) parameters (float64 buffers)."""
    means, variances, weights = (torch.as_tensor(a, dtype=F64) for a in (means, variances, weights))
    mix = WrappedMixture(*means.shape).double()
    mix.means.copy_(means)
    mix.variances.copy_(variances)
    mix.log_weights.copy_(torch.log(weights / weights.sum(1, keepdim=True)))
    return mix


def sample_mixture(mix, n, generator):
    """(n, D) angles in [-pi, pi) drawn from each angle's wrapped normal mixture."""
    weights = mix.log_weights.exp()  # (D, K)
    d = weights.shape[0]
    comp = torch.multinomial(weights, n, replacement=True, generator=generator).T  # (n, D)
    mean = torch.gather(mix.means.expand(n, d, -1), 2, comp[..., None])[..., 0]
    sd = torch.gather(mix.variances.expand(n, d, -1), 2, comp[..., None])[..., 0].sqrt()
    return wrap(mean + sd * torch.randn(n, d, generator=generator, dtype=F64))


def grid(n):
    """n equally spaced angles over one period (the periodic trapezoid rule: spectrally accurate)."""
    return -math.pi + TWO_PI * torch.arange(n, dtype=F64) / n


# A bimodal and a trimodal dihedral, both well separated (the 3-component one overlaps a little).
MEANS = [[-2.0, 1.0, 0.0], [2.5, -0.5, 0.9]]
VARIANCES = [[0.08, 0.25, 1.0], [0.1, 0.05, 0.3]]
WEIGHTS = [[0.3, 0.7, 1e-300], [0.2, 0.5, 0.3]]


def exact_model(n_linear=2, schedule=None, seed=0):
    """An untrained InternalEnergy (float64) whose dihedral base is the mixtures MEANS/VARIANCES/WEIGHTS."""
    torch.manual_seed(seed)
    model = InternalEnergy(n_linear, 2, schedule or LogSNRSchedule(), hidden=16, n_blocks=1, n_components=3).double()
    base = mixture(MEANS, VARIANCES, WEIGHTS)
    model.dihedral_base.load_state_dict(base.state_dict())
    return model


# ---- 1. the wrapped normal and its mixtures -----------------------------------------------------
VARIANCES_BOTH_BRANCHES = [1e-4, 0.01, 0.3, 2.0, 8.0, 15.99, 16.0, 16.01, 25.0, 100.0, 2.25e4]


def test_log_wrapped_normal_matches_the_image_sum_in_both_branches():
    delta = torch.linspace(-12.0, 12.0, 241, dtype=F64)  # several periods: any real angle is allowed
    for v in VARIANCES_BOTH_BRANCHES:
        ours = log_wrapped_normal(delta, v)
        exact = brute_log_wn(delta, v)
        if v < 1e-3:  # where the density is ~0 the log reaches -7e5 and agrees only to relative rounding
            keep = exact > -50
            ours, exact = ours[keep], exact[keep]
        assert torch.allclose(ours, exact, rtol=0, atol=1e-10), (v, float((ours - exact).abs().max()))


def test_wrapped_normal_is_normalised_over_one_period():
    theta = grid(20000)  # spacing 3e-4 rad, well below the narrowest sd (1e-2)
    for v in VARIANCES_BOTH_BRANCHES:
        integral = float(log_wrapped_normal(theta, v).exp().sum() * TWO_PI / theta.numel())
        assert integral == pytest.approx(1.0, abs=1e-12), v


def test_wrapped_normal_score_is_the_gradient_of_the_log_density():
    g = torch.Generator().manual_seed(0)
    delta = 8 * torch.rand(500, generator=g, dtype=F64) - 4
    for v in VARIANCES_BOTH_BRANCHES:
        x = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_wrapped_normal(x, v).sum(), x)
        score = wrapped_normal_score(delta, v)
        assert torch.allclose(score, grad, rtol=1e-9, atol=1e-9 / v), v
    # elementwise variances (a tensor like delta), spanning both branches
    v = torch.exp(torch.linspace(math.log(1e-3), math.log(1e3), 500, dtype=F64))
    x = delta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_wrapped_normal(x, v).sum(), x)
    assert torch.allclose(wrapped_normal_score(delta, v), grad, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(grad).all()


def test_noised_mixture_is_the_convolution_with_a_wrapped_normal():
    """p_s(theta) = integral of p(phi) WN(theta - phi; s^2) over a period, the kernel by brute-force images."""
    mix = mixture(MEANS, VARIANCES, WEIGHTS)
    m, every = 4000, 100
    phi = grid(m)  # quadrature nodes of the convolution integral
    theta = phi[::every]  # 40 points; theta_i - phi_j = 2 pi lag_ij / m, so the kernel needs m values only
    lag = (every * torch.arange(theta.numel())[:, None] - torch.arange(m)[None, :]) % m
    clean = mix.log_prob(phi[:, None].expand(-1, 2)).exp()  # (m, D)
    for s2 in [1e-3, 0.1, 1.0, 4.0, 20.0, 400.0]:
        kernel = brute_log_wn(TWO_PI * torch.arange(m, dtype=F64) / m, s2, n_images=100).exp()[lag]  # (40, m)
        convolved = kernel @ clean * (TWO_PI / m)  # (40, D)
        noised = mix.log_prob(theta[:, None].expand(-1, 2), s2).exp()
        assert torch.allclose(noised, convolved, rtol=1e-10, atol=1e-12), s2
    # a per-sample extra variance (n,) gives each row its own level
    s2 = torch.tensor([0.0, 0.5, 30.0], dtype=F64)
    theta = theta[:3] + 0.1
    rows = mix.log_prob(theta[:, None].expand(-1, 2), s2)
    for i in range(3):
        assert torch.allclose(rows[i], mix.log_prob(theta[i:i + 1, None].expand(-1, 2), float(s2[i]))[0])


def _matched(fitted, truth_means):
    """Index of the fitted component nearest (on the circle) to each true mean: (D, K_true)."""
    dist = wrap(fitted.means[:, None, :] - truth_means[:, :, None]).abs()  # (D, K_true, K_fit)
    return dist.argmin(-1)


@pytest.mark.parametrize("means, variances, weights", [
    ([-2.0, 1.0], [0.08, 0.25], [0.3, 0.7]),
    ([2.5, -0.5, 0.9], [0.1, 0.05, 0.3], [0.2, 0.5, 0.3]),
])
def test_mixture_fit_recovers_a_known_mixture(means, variances, weights):
    """EM on 8 independent samples of n angles (8 columns of one fit); each parameter's mean covers the truth.

    The 8 fits are independent replicates, so the spread of their estimates sets the tolerance
    (Student-t, 0.999): it shrinks as 1/sqrt(n) with the sample size, nothing is added by hand.
    """
    n, replicates = 4000, 8
    k = len(means)
    truth = mixture([means] * replicates, [variances] * replicates, [weights] * replicates)
    theta = sample_mixture(truth, n, torch.Generator().manual_seed(k))
    fitted = WrappedMixture(replicates, k).double().fit(theta)
    idx = _matched(fitted, truth.means)
    assert all(len(set(row.tolist())) == k for row in idx), "every true component gets its own fitted one"
    got_means = torch.gather(fitted.means, 1, idx)
    got_var = torch.gather(fitted.variances, 1, idx)
    got_w = torch.gather(fitted.log_weights.exp(), 1, idx)
    for j in range(k):
        assert_covers(wrap(got_means[:, j] - means[j]).tolist(), 0.0)
        assert_covers(got_var[:, j].tolist(), variances[j])
        assert_covers(got_w[:, j].tolist(), weights[j])


# ---- 2. noising ---------------------------------------------------------------------------------
def clean_data(n, n_linear, generator):
    """(n, L + 2) samples of the data distribution N(0, I_L) x the two dihedral mixtures."""
    lin = torch.randn(n, n_linear, generator=generator, dtype=F64)
    return torch.cat([lin, sample_mixture(mixture(MEANS, VARIANCES, WEIGHTS), n, generator)], dim=1)


def test_noise_is_alpha_z0_plus_sigma_eps_on_the_line_and_wrapped_ve_noise_on_the_circle():
    for schedule in (LogSNRSchedule(), VESchedule()):
        model = exact_model(2, schedule)
        g = torch.Generator().manual_seed(1)
        z0 = clean_data(50, 2, g)
        eps = torch.randn(z0.shape, generator=g, dtype=F64)
        t = torch.rand(50, generator=g, dtype=F64)
        alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        zt = model.noise(z0, t, eps)
        assert torch.allclose(zt[:, :2], alpha * z0[:, :2] + sigma * eps[:, :2], rtol=1e-14, atol=1e-14)
        assert torch.allclose(zt[:, 2:], wrap(z0[:, 2:] + sigma / alpha * eps[:, 2:]), rtol=1e-12, atol=1e-12)
        assert (zt[:, 2:] >= -math.pi).all() and (zt[:, 2:] < math.pi).all()
        # a scalar level is every sample at that level
        assert torch.equal(model.noise(z0, 0.3, eps), model.noise(z0, torch.full((50,), 0.3, dtype=F64), eps))


def level_at_periodic_scale(schedule, s):
    """The level t at which the dihedral noise s_t = sigma_t / alpha_t equals s."""
    if isinstance(schedule, VESchedule):  # alpha = 1, sigma geometric
        return math.log(s / schedule.sigma_min) / math.log(schedule.sigma_max / schedule.sigma_min)
    return schedule.t_min + (-2.0 * math.log(s) - schedule.log_snr_max) / schedule._slope  # log SNR = -2 ln s


@pytest.mark.parametrize("schedule", [LogSNRSchedule(), VESchedule()], ids=["logsnr", "ve"])
def test_noised_samples_follow_the_models_own_marginals(schedule):
    """z_t = noise(z0, t, eps) for z0 from the data has the law exp(-E(t, .)) of the untrained model.

    Line: a KS test of z_t / sqrt(v_t) against N(0, 1). Circle: a chi-square test of a 40-bin
    histogram against the bin masses of the model's dihedral marginal (exp(-E) on a grid,
    normalised by quadrature). Each test at significance 1e-3 (a correct model fails one of
    these 20 checks with probability about 2 %; fixed seeds make it reproducible). The VE schedule
    has v_t = 1 + sigma_t^2 (not 1), the log-SNR one alpha_t far from 1 (s_t = sigma_t / alpha_t).
    """
    model = exact_model(2, schedule)
    n, n_bins = 20000, 40
    edges = grid(n_bins)
    fine = grid(n_bins * 50) + math.pi / (n_bins * 50)  # midpoints of 50 sub-intervals per bin
    for i, s in enumerate([0.02, 0.3, 1.0, 3.0, 6.0]):  # small noise ... the Fourier branch (s^2 > 16)
        t = level_at_periodic_scale(schedule, s)
        g = torch.Generator().manual_seed(10 + i)
        z0 = clean_data(n, 2, g)
        zt = model.noise(z0, t, torch.randn(z0.shape, generator=g, dtype=F64))
        v_t = float(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2)
        for j in range(2):
            assert scipy_stats.kstest((zt[:, j] / math.sqrt(v_t)).numpy(), "norm").pvalue > 1e-3, (s, j)
        for j in range(2):
            z = torch.zeros(fine.numel(), 4, dtype=F64)
            z[:, 2 + j] = fine
            with torch.no_grad():
                e = model.energy(t, z)
            density = torch.exp(-(e - e.min()))
            mass = density.reshape(n_bins, 50).sum(1)
            expected = n * mass / mass.sum()
            counts = torch.bincount(((zt[:, 2 + j] - edges[0]) / (TWO_PI / n_bins)).long().clamp(0, n_bins - 1),
                                    minlength=n_bins)
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            assert scipy_stats.chi2.sf(chi2, n_bins - 1) > 1e-3, (s, j, chi2)


# ---- 3. the DSM target --------------------------------------------------------------------------
class FixedLevel:
    """A schedule whose training times are all ``t`` (everything else from the wrapped schedule)."""

    def __init__(self, schedule, t):
        self._schedule, self._t = schedule, t

    def __getattr__(self, name):
        return getattr(self._schedule, name)

    def sample_times(self, n, generator=None, dtype=torch.float32):
        return torch.full((n,), self._t, dtype=dtype)


class AtLevel:
    """The model's energy plus c w(t) g(z) (w = 1, or t when ``tilt``), with its own noising, DSM residual,
    TSM target and log-normaliser; trained at the one level t when ``t`` is given."""

    def __init__(self, model, t=None, g=None, c=0.0, tilt=False):
        self.model, self.g, self.c, self.tilt = model, g, c, tilt
        self.schedule = model.schedule if t is None else FixedLevel(model.schedule, t)
        self.noise, self.dsm_residual, self.tsm_target = model.noise, model.dsm_residual, model.tsm_target
        self.log_normaliser = model.log_normaliser

    def energy(self, t, z):
        e = self.model.energy(t, z)
        if self.g is None:
            return e
        return e + self.c * (torch.as_tensor(t, dtype=z.dtype) if self.tilt else 1.0) * self.g(z)

    def score(self, t, z, create_graph=False):
        return energy_score(self.energy, t, z, create_graph)


def g_dihedral(z):  # smooth and periodic in the two dihedrals (the last two coordinates)
    per = z[:, 2:]
    return (torch.cos(per - 0.7) + 0.5 * torch.sin(2 * per)).sum(1)


def g_linear(z):  # smooth in the two linear coordinates
    lin = z[:, :2]
    return (torch.sin(1.3 * lin) + 0.2 * lin**2).sum(1)


def along(g):
    """The family c -> E + c g (the DSM residual is linear in c: each batch's loss is a quadratic)."""
    return lambda model, t, c: AtLevel(model, t, g, c)


def tilted(g):
    """The family c -> E + c t g, a tilt that grows with the level (one constant in t cancels in DiffCLF)."""
    return lambda model, t, c: AtLevel(model, t, g, c, tilt=True)


def mode_shifted(model, t, c):
    """The family c -> the model with its first dihedral's first mixture mean moved by c."""
    moved = copy.deepcopy(model)
    moved.dihedral_base.means[0, 0] += c
    return AtLevel(moved, t)


def dsm_minimisers(model, family, t, data, delta, n_batches=8, n=2000, loss=dsm_loss):
    """Per batch, the minimiser c* of the quadratic through the losses at c = -delta, 0, delta (DSM by default).

    Common random numbers in c (the same data, levels and noise), so the differences carry no
    noise of their own: c* = delta (L(-delta) - L(delta)) / (2 (L(delta) + L(-delta) - 2 L(0))).
    """
    out = []
    for k in range(n_batches):
        z0 = data(n, torch.Generator().manual_seed(1000 + k))
        values = {}
        for c in (-delta, 0.0, delta):
            with torch.no_grad():  # the score needs no graph beyond its own gradient
                values[c] = float(loss(family(model, t, c), z0, torch.Generator().manual_seed(2000 + k)))
        out.append(delta * (values[-delta] - values[delta]) / (2 * (values[delta] + values[-delta] - 2 * values[0.0])))
    return out


def from_data(n, generator):
    return clean_data(n, 2, generator)


SCALES = [0.05, 1.0, 4.2]  # dihedral noise s_t: small, images branch, Fourier branch (all v + s^2 > 16)


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("family, delta", [(along(g_dihedral), 0.5), (along(g_linear), 0.5), (mode_shifted, 1e-3)],
                         ids=["circle", "line", "mode"])
def test_dsm_gradient_vanishes_at_the_exact_model(family, delta, s):
    """At the exact model no perturbation lowers the expected DSM loss: the fitted minimiser covers c = 0.

    circle: E + c g(dihedrals); line: E + c g(bonds and angles); mode: one mixture mean moved by c
    (not linear in c: the three-point quadratic is then a Newton step, with an O(delta^2) bias).
    """
    model = exact_model(2)
    t = level_at_periodic_scale(model.schedule, s)
    assert_covers(dsm_minimisers(model, family, t, from_data, delta), 0.0)


def test_dsm_detects_a_wrong_model_on_the_circle_and_on_the_line():
    """The same check has power: a dihedral mode 0.3 rad off, or linear data of variance 1.5, move c* off 0."""
    model = exact_model(2)
    model.dihedral_base.means[0, 0] += 0.3  # the model's mode at -2.0 sits at -1.7
    t = level_at_periodic_scale(model.schedule, 0.3)
    mean, half = t_bound(dsm_minimisers(model, mode_shifted, t, from_data, 1e-3))
    assert mean < -half, (mean, half)  # pointing back toward the data's mode
    wide = lambda n, gen: clean_data(n, 2, gen) * torch.tensor([math.sqrt(1.5)] * 2 + [1.0] * 2, dtype=F64)
    mean, half = t_bound(dsm_minimisers(exact_model(2), along(g_linear), t, wide, 0.5))
    assert abs(mean) > half, (mean, half)


# ---- 4. SMC through the model's own levels ------------------------------------------------------
def exact_log_z(model, t):
    """log Z of exp(-E(t, .)) for an untrained model: (L / 2) log(2 pi v_t); the noised mixtures are normalised."""
    tt = torch.tensor([t], dtype=F64)
    v_t = float(model.schedule.alpha(tt) ** 2 + model.schedule.sigma(tt) ** 2)
    return 0.5 * model.n_linear * math.log(2 * math.pi * v_t)


@pytest.mark.parametrize("n_linear, n_periodic", [(2, 2), (0, 2), (1, 1), (3, 0)])
def test_log_normaliser_of_an_untrained_model_is_its_exact_log_z(n_linear, n_periodic):
    """f(t) = log Z_t with log p = -E - f: the Gaussian's (L / 2) log(2 pi v_t), nothing for the dihedrals."""
    model = InternalEnergy(n_linear, n_periodic, VESchedule(), hidden=8, n_blocks=1).double()  # v_t != 1
    for t in (1.0, 0.5, model.schedule.t_min):
        assert float(model.log_normaliser(t).detach()) == pytest.approx(exact_log_z(model, t), abs=1e-12), t
    # and by quadrature in the two-dimensional cases: log of the integral of exp(-E(0.5, .)), +-12 sd on the line
    if n_linear + n_periodic == 2:
        v = float(model.schedule.alpha(0.5) ** 2 + model.schedule.sigma(0.5) ** 2)
        line = torch.linspace(-12 * math.sqrt(v), 12 * math.sqrt(v), 401, dtype=F64)
        axes = [line] * n_linear + [grid(200)] * n_periodic
        widths = [float(a[1] - a[0]) for a in axes]
        base = model.dihedral_base  # its default weights 1/K were rounded to float32 before .double(): renormalise
        base.log_weights.copy_(torch.log_softmax(base.log_weights, 1))
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            log_z = torch.logsumexp(-model.energy(0.5, mesh), 0) + sum(map(math.log, widths))
        assert float(log_z) == pytest.approx(float(model.log_normaliser(0.5).detach()), abs=1e-8)


def test_smc_weights_are_exactly_one_for_a_purely_linear_model():
    """No dihedrals, n_moves=0, x0_variance: the reverse step is the exact reverse kernel of N(0, 1) data.

    Every step's incremental weight is then the same constant for every particle (CESS = N to
    rounding) and log Z is exact without Monte Carlo error.
    """
    for schedule in (LogSNRSchedule(), VESchedule()):
        model = InternalEnergy(3, 0, schedule, hidden=8, n_blocks=1).double()
        result = run(empty_state(200), levels_stages(model, n_levels=20, n_moves=0, x0_variance=True),
                     torch.Generator().manual_seed(0))
        assert len(result.diagnostics) == 21
        for step in result.diagnostics:
            assert step.conditional_ess_fraction == pytest.approx(1.0, abs=1e-12), step
            assert not step.resampled
        assert result.ess_fraction == pytest.approx(1.0, abs=1e-12)
        assert result.log_z == pytest.approx(exact_log_z(model, schedule.t_min), abs=1e-9)
        assert float(result.log_weights.max() - result.log_weights.min()) < 1e-9
        # the particles are N(0, v_tmin) (a loose check of the moves themselves: 600 numbers, significance 1e-3)
        v_tmin = math.exp(2 * exact_log_z(model, schedule.t_min) / 3) / (2 * math.pi)
        assert scipy_stats.kstest((result.particles / math.sqrt(v_tmin)).flatten().numpy(), "norm").pvalue > 1e-3


def exact_mode_population(model, t):
    """The probability, at level t, that the first dihedral lies in the basin of its mode at -2.0 (by quadrature).

    The basin is the arc between the midpoints of the two modes, [-pi, -0.5) u [2.64, pi).
    """
    theta = grid(20000)
    tt = torch.tensor([t], dtype=F64)
    s2 = float((model.schedule.sigma(tt) / model.schedule.alpha(tt)) ** 2)
    p = model.dihedral_base.log_prob(theta[:, None].expand(-1, 2), s2)[:, 0].exp()
    return float((p * in_first_basin(theta)).sum() / p.sum())


def in_first_basin(theta):
    theta = wrap(theta)
    return ((theta < -0.5) | (theta >= 2.64)).to(F64)


@pytest.mark.parametrize("n_levels, n_moves, n_particles", [(100, 0, 1000), (40, 1, 500)])
def test_smc_through_the_levels_is_exact(n_levels, n_moves, n_particles):
    """log Z at t_min and the weighted population of a bimodal dihedral's basin cover the exact values (6 seeds)."""
    model = exact_model(2)
    t_min = model.schedule.t_min
    log_z, population = [], []
    for seed in range(6):
        result = run(empty_state(n_particles), levels_stages(model, n_levels=n_levels, n_moves=n_moves),
                     torch.Generator().manual_seed(seed))
        assert result.diagnostics[-1].value == pytest.approx(t_min)
        log_z.append(result.log_z)
        population.append(float(result.expectation(in_first_basin(result.particles[:, 2]))))
    exact_z = exact_log_z(model, t_min)  # = log(2 pi): v_t = 1 under the log-SNR schedule
    assert float(model.log_normaliser(t_min).detach()) == pytest.approx(exact_z, abs=1e-12)  # log p = -E - f
    assert_covers(log_z, exact_z)
    exact = exact_mode_population(model, t_min)
    assert abs(exact - 0.3) < 2e-3  # the basin holds the first component's weight, up to its tails
    assert_covers(population, exact)


# ---- 5. periodicity -----------------------------------------------------------------------------
def randomise_correction(model, seed):
    """Give the correction's (zero-initialised) last layer random weights, so the network really contributes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model.correction.out
        out.weight.copy_(torch.randn(out.weight.shape, generator=g, dtype=out.weight.dtype))
        out.bias.copy_(torch.randn(out.bias.shape, generator=g, dtype=out.bias.dtype))
    return model


def test_energy_and_score_are_periodic_in_every_dihedral():
    model = randomise_correction(exact_model(2), seed=3)
    g = torch.Generator().manual_seed(4)
    z = torch.cat([torch.randn(64, 2, generator=g, dtype=F64),
                   TWO_PI * torch.rand(64, 2, generator=g, dtype=F64) - math.pi], 1)
    for t in (model.schedule.t_min, level_at_periodic_scale(model.schedule, 0.5), 0.7, 1.0):
        e, score = model.energy(t, z).detach(), model.score(t, z)
        assert t == 1.0 or float((e - model.base_energy(t, z)).abs().max()) > 1e-3  # the network is not zero...
        for d in (2, 3):
            for k in (-3, 1, 5):
                shifted = z.clone()
                shifted[:, d] += TWO_PI * k
                assert torch.allclose(model.energy(t, shifted).detach(), e, rtol=0, atol=1e-11), (t, d, k)
                assert torch.allclose(model.score(t, shifted), score, rtol=0, atol=1e-9), (t, d, k)
        # ... except at t = 1, where the factor (1 - t) switches it off: E(1, .) is the known base
        if t == 1.0:
            assert torch.allclose(e, model.base_energy(t, z).detach(), rtol=0, atol=1e-12)
    # a linear coordinate is not periodic
    shifted = z.clone()
    shifted[:, 0] += TWO_PI
    assert not torch.allclose(model.energy(0.5, shifted), model.energy(0.5, z))


# ---- 6. model files -----------------------------------------------------------------------------
def test_model_file_round_trip_with_an_internal_space(tmp_path):
    from boltzgen import systems
    from boltzgen.coordinates.internal import InternalSpace, zmatrix
    from boltzgen.models import load_model_file, model_metadata, save_model_file

    target = systems.load("alanine-dipeptide")
    x0 = torch.tensor(np.asarray(target.positions), dtype=F64)
    g = torch.Generator().manual_seed(5)
    positions = torch.cat([x0[None], x0 + 0.01 * torch.randn(5, *x0.shape, generator=g, dtype=F64)])
    space = InternalSpace.fit(zmatrix(target.topology), positions)
    n_periodic = int(space.periodic.sum())
    model = InternalEnergy(space.dim - n_periodic, n_periodic, LogSNRSchedule(), hidden=16, n_blocks=1, n_components=2)
    assert torch.equal(model.periodic, space.periodic)
    z = space.to_flat(positions.float())
    model.fit(z)  # the dihedral base and spreads from the data
    randomise_correction(model, seed=6)
    with torch.no_grad():
        model.log_normaliser_net.net[-1].bias.fill_(0.25)
    path = save_model_file(tmp_path / "model.pt", model, space, model_metadata(target, "kept"))
    loaded = load_model_file(path)
    assert isinstance(loaded.model, InternalEnergy) and isinstance(loaded.space, InternalSpace)
    assert loaded.space.config() == space.config() and loaded.metadata["chirality"] == "kept"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    zs = torch.cat([z, space.wrap(z + 0.3 * torch.randn(z.shape, generator=g).float())])
    for t in (model.schedule.t_min, 0.3, 1.0):
        with torch.no_grad():
            assert torch.equal(loaded.model.energy(t, zs), model.energy(t, zs)), t
            assert torch.equal(loaded.model.log_normaliser(t), model.log_normaliser(t)), t
        assert torch.equal(loaded.model.score(t, zs), model.score(t, zs)), t
    assert torch.allclose(loaded.space.to_flat(positions), space.to_flat(positions), rtol=0, atol=0)


def data_score(z0):
    """grad log p_0 of the data: -z on the line, the mixtures' score on the circle."""
    with torch.enable_grad():
        per = z0[:, 2:].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture(MEANS, VARIANCES, WEIGHTS).log_prob(per).sum(), per)
    return torch.cat([-z0[:, :2], grad], 1)


def tsm(max_sigma):
    return lambda model, z0, generator: target_score_loss(model, z0, data_score(z0), generator, max_sigma=max_sigma)


@pytest.mark.parametrize("g", [g_dihedral, g_linear], ids=["circle", "line"])
def test_target_score_matching_is_also_minimised_by_the_exact_model(g):
    """TSM (score0 / alpha_t on the line, score0 on the circle) below sigma = 0.2: its minimiser covers c = 0."""
    model = exact_model(2)
    assert_covers(dsm_minimisers(model, along(g), None, from_data, 0.5, loss=tsm(0.2)), 0.0)


def test_diffclf_is_minimised_by_the_exact_model_with_its_log_normaliser():
    """DiffCLF with the exact f(t) (the untrained model's): a level-dependent tilt c t g(z) has its minimiser at 0.

    The loss is not quadratic in c: the three-point quadratic is a Newton step (O(delta^2) bias).
    A tilt constant in t would cancel between levels, hence the factor t.
    """
    model = exact_model(2)
    for g in (g_dihedral, g_linear):
        assert_covers(dsm_minimisers(model, tilted(g), None, from_data, 1e-3, loss=diffclf_loss), 0.0)
