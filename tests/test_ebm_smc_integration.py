"""End to end: a diffusion EBM (boltzgen.diffusion) corrected by SMC (boltzgen.smc) toward a target.

The call under test is the one a user makes after training:

    path = diffusion_path(model.energy, times, target_energy=mixture.reduced_energy)
    result = smc(path, <Gaussian of the model's top level>, n_particles, seed=seed)

(a) With the exact noised energies of the mixture as the "model" every intermediate target is
    exact, so the only weight variance comes from the spacing of the levels: the ESS stays high and
    log Z and the mode weights come out unbiased.
(b) With a briefly trained EnergyMLP the same call runs on a float32 network. The model is trained
    on data whose mode populations are wrong (as from an unconverged MD run), so its own mode
    weights are wrong by construction, whatever DSM's mode blindness adds; SMC must recover the
    true weights.

Error bars come from independent runs (seeds): resampling correlates the particles of one run, so
a within-run ESS-based error bar would be optimistic. Every statistical assert is "within 4
standard errors" of the exact value, after checking that the standard error is small enough for
the assert to mean something (it could not pass with the model's own, uncorrected weights).
"""
import math

import pytest
import torch

from boltzgen.diffusion.evaluation import ExactEnergyModel, mode_weights_from_energy
from boltzgen.diffusion.networks import EnergyMLP
from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.diffusion.training import TrainingConfig, train
from boltzgen.smc import MALA, GaussianProposal, diffusion_path, smc
from boltzgen.targets import GaussianMixture

DIM = 4
TRUE_WEIGHTS = (0.75, 0.25)
LOG_Z = 1.3  # a non-zero normaliser, so log Z is really estimated
N_SIGMA = 4.0


def two_mode_mixture(weights=TRUE_WEIGHTS, log_z=LOG_Z) -> GaussianMixture:
    """Two modes at +-2 along x_1 (8 standard deviations apart), unequal weights."""
    axis = torch.zeros(DIM, dtype=torch.float64)
    axis[0] = 1.0
    return GaussianMixture(torch.stack([2.0 * axis, -2.0 * axis]), stds=0.5, weights=list(weights), log_Z=log_z)


def time_grid(schedule, n_levels: int) -> torch.Tensor:
    """Levels from 1 down to t_min, denser at low noise (quadratic in t), where p_t changes fastest."""
    return schedule.t_min + (1.0 - schedule.t_min) * torch.linspace(0.0, 1.0, n_levels, dtype=torch.float64) ** 2


def top_level_proposal(model, dtype: torch.dtype) -> GaussianProposal:
    """N(alpha_1 mu, (alpha_1^2 v + sigma_1^2) I): the Gaussian the model's top level is built on.

    ``dtype`` must be the model's: an EnergyMLP (float32) cannot take the proposal's default float64.
    """
    schedule, one = model.schedule, torch.tensor(1.0, dtype=torch.float64)
    mean = schedule.alpha(one).item() * model.data_mean.to(torch.float64)
    variance = schedule.marginal_variance(one, model.data_variance).item()
    return GaussianProposal(DIM, mean=mean, variance=variance, dtype=dtype)


def correct_by_smc(model, mixture, n_levels: int, n_particles: int, n_moves: int, seed: int, dtype=torch.float64):
    """The user's call: SMC through the model's levels, then a bridge to the mixture's reduced energy."""
    path = diffusion_path(model.energy, time_grid(model.schedule, n_levels), target_energy=mixture.reduced_energy)
    return smc(path, top_level_proposal(model, dtype), n_particles, kernel=MALA(step_size=0.05), n_moves=n_moves,
               seed=seed)


def smc_mode_weights(result, mixture) -> torch.Tensor:
    # E_p[responsibility_k] = w_k exactly, so the soft assignment adds no labelling error
    return result.expectation(torch.softmax(mixture.component_log_probs(result.particles), dim=1))


def mean_and_standard_error(values) -> tuple[float, float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std()), float(v.std()) / math.sqrt(v.numel())


def check_log_z(log_zs, exact: float):
    """Mean log Z within N_SIGMA standard errors of ``exact``, once the spread is small enough
    (sd < 0.2) that the known low bias of log Z_hat (~ sd^2 / 2) is well below the standard error."""
    mean, sd, se = mean_and_standard_error(log_zs)
    assert all(math.isfinite(z) for z in log_zs), log_zs
    assert sd < 0.2, f"log Z spread {sd:.3f} over seeds is too large for a log-space test"
    assert abs(mean - exact) < N_SIGMA * se, f"log Z {mean:.4f} +- {se:.4f}, exact {exact}"


# --- (a) exact intermediate targets -----------------------------------------------------------
def test_smc_through_exact_noised_energies_recovers_log_z_mode_weights_and_keeps_the_ess():
    """ExactEnergyModel: 60 levels (each step loses < 5% of the ESS by discretisation alone), 12 seeds.

    Measured at N = 300: lowest conditional ESS/N 0.985, final ESS/N 0.65-0.71, per-run sd of log Z
    0.036 and of the mode weight 0.026, so 4 standard errors are ~0.04 in log Z and ~0.03 in the
    weight. A model with swapped weights (below) drops to ESS/N 0.42 in its bridge, which is what
    the ESS asserts rule out."""
    schedule, mixture = VPSchedule(), two_mode_mixture()
    model = ExactEnergyModel(mixture, schedule)
    log_zs, weights = [], []
    for seed in range(12):
        r = correct_by_smc(model, mixture, n_levels=60, n_particles=300, n_moves=2, seed=seed)
        log_zs.append(r.log_z)
        weights.append(float(smc_mode_weights(r, mixture)[0]))
        assert min(s.conditional_ess_fraction for s in r.diagnostics) > 0.95
        assert not any(s.resampled for s in r.diagnostics), "ESS/N fell below 0.5 along exact targets"
        assert r.diagnostics[-1].name == "lambda"  # the bridge to the target was run
    check_log_z(log_zs, LOG_Z)
    mean, sd, se = mean_and_standard_error(weights)
    assert N_SIGMA * se < 0.05, f"mode weight standard error {se:.4f} too large to test anything"
    assert abs(mean - TRUE_WEIGHTS[0]) < N_SIGMA * se, f"mode weight {mean:.4f} +- {se:.4f}, exact {TRUE_WEIGHTS[0]}"

    # contrast: the same path for a model with swapped weights must show it in the ESS; its bridge
    # moves mass 3:1 -> 1:3, which alone leaves ESS/N ~ 0.43, so it must resample
    wrong = ExactEnergyModel(two_mode_mixture(weights=TRUE_WEIGHTS[::-1]), schedule)
    r = correct_by_smc(wrong, mixture, n_levels=60, n_particles=300, n_moves=2, seed=0)
    assert min(s.ess_fraction for s in r.diagnostics) < 0.5


# --- (b) a briefly trained float32 network ----------------------------------------------------
@pytest.fixture(scope="module")
def trained_model():
    """A tiny EnergyMLP, 300 DSM steps (~1-3 s), on data with the populations wrong: 0.4 / 0.6
    instead of 0.75 / 0.25 (the majority mode flipped)."""
    torch.manual_seed(0)  # the network's initial weights
    schedule = VPSchedule()
    data = two_mode_mixture(weights=(0.4, 0.6)).sample(4000, torch.Generator().manual_seed(0)).float()
    model = EnergyMLP(DIM, schedule, data.mean(0), float(data.var(0).mean()), hidden=32, n_blocks=1)
    config = TrainingConfig(dsm_steps=300, clf_steps=0, batch_size=128, ema_decay=0.95, seed=0)
    return train(model, data, config).model


def test_smc_corrects_a_briefly_trained_energy_mlp(trained_model):
    """The model's own weight for mode 0 (measured ~0.30) is far from 0.75; SMC from the same model
    must land within 4 standard errors of 0.75, and 4 standard errors must be less than half the
    model's error, so the assert cannot pass with an uncorrected (or half-corrected) answer.
    Measured: model's weight 0.298; SMC 0.746 +- 0.014 (per-run sd 0.045, so 4 SE ~ 0.06) and
    log Z 1.293 +- 0.028 (exact 1.3). 6 MALA moves per step: with 2, the particles do not fill the
    target's wells within the few bridge steps, and log Z (1.190 +- 0.033) and the weight
    (0.720 +- 0.012) come out 3.4 and 2.4 standard errors low."""
    schedule, mixture = VPSchedule(), two_mode_mixture()
    model_weight = float(mode_weights_from_energy(lambda x: trained_model.energy(schedule.t_min, x),
                                                  mixture.noised(schedule, schedule.t_min), n_samples=5000,
                                                  generator=torch.Generator().manual_seed(1))[0])
    model_error = abs(model_weight - TRUE_WEIGHTS[0])
    assert model_error > 0.1, f"the model was meant to have wrong mode weights, got {model_weight:.3f}"

    log_zs, weights, ess = [], [], []
    for seed in range(10):
        r = correct_by_smc(trained_model, mixture, n_levels=30, n_particles=400, n_moves=6, seed=seed,
                           dtype=torch.float32)
        w = smc_mode_weights(r, mixture)
        assert torch.isfinite(w).all() and abs(float(w.sum()) - 1.0) < 1e-9
        assert r.log_weights.dtype == torch.float64 and r.particles.dtype == torch.float32
        log_zs.append(r.log_z)
        weights.append(float(w[0]))
        ess.append(r.ess_fraction)
    assert all(0.0 < e <= 1.0 + 1e-9 for e in ess), ess
    check_log_z(log_zs, LOG_Z)
    mean, sd, se = mean_and_standard_error(weights)
    assert N_SIGMA * se < 0.5 * model_error, f"standard error {se:.4f} too large to beat the model's error {model_error:.3f}"
    assert abs(mean - TRUE_WEIGHTS[0]) < N_SIGMA * se, (
        f"SMC mode weight {mean:.4f} +- {se:.4f}, exact {TRUE_WEIGHTS[0]}, model's own {model_weight:.3f}")


def test_default_float64_proposal_with_a_float32_energy_mlp(trained_model):
    """EnergyMLP casts float64 particles to its own dtype, so the default proposal just works."""
    path = diffusion_path(trained_model.energy, time_grid(trained_model.schedule, 3))
    result = smc(path, GaussianProposal(DIM), 16, n_moves=1, seed=0)
    assert result.particles.dtype == torch.float64 and math.isfinite(result.log_z)
