"""MCMC kernels, chunked energy evaluation, the Gaussian proposal and subspace projections."""
import math

import pytest
import torch

from boltzgen.smc import (
    HMC,
    MALA,
    GaussianProposal,
    evaluate,
    evaluate_with_grad,
    flat_energy,
    mean_free_projection,
    particle_state,
    subspace_dimension,
)
from boltzgen.smc.kernels import Mixture, Sequence, _select, acceptance_rate

VARIANCES = torch.tensor([0.25, 1.0, 2.0, 4.0], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)


def gaussian_energy(x):
    """Reduced energy of N(MEAN, diag(VARIANCES))."""
    return 0.5 * ((x - MEAN) ** 2 / VARIANCES).sum(1)


def exact_samples(n, seed):
    g = torch.Generator().manual_seed(seed)
    return MEAN + VARIANCES.sqrt() * torch.randn(n, 4, generator=g, dtype=torch.float64)


def assert_gaussian_moments(x, mean, variance, k=4.0):
    """Independent samples: mean within k SE (sqrt(v/n)), variance within k SE (v sqrt(2/(n-1)))."""
    n = x.shape[0]
    se_mean = (variance / n).sqrt()
    se_var = variance * math.sqrt(2.0 / (n - 1))
    assert ((x.mean(0) - mean).abs() < k * se_mean).all(), f"means {x.mean(0)} vs {mean}"
    assert ((x.var(0) - variance).abs() < k * se_var).all(), f"variances {x.var(0)} vs {variance}"


def run_moves(kernel, x, n_moves, seed, energy=gaussian_energy, project=None, adapt=False):
    g = torch.Generator().manual_seed(seed)
    state = particle_state(energy, x)
    rates, start = [], x.clone()
    for _ in range(n_moves):
        move = kernel.move(energy, state, g, project)
        state = move.state
        rates.append(move.info["acceptance"])
        if adapt:
            kernel = kernel.adapted(move.info)
    return state, sum(rates) / len(rates), kernel, start


@pytest.mark.parametrize("kernel", [MALA(step_size=0.2), HMC(step_size=0.35, n_leapfrog=5)], ids=["mala", "hmc"])
def test_kernel_leaves_gaussian_invariant(kernel):
    # Start from exact samples: after any number of exact MH moves the particles are still exact
    # and independent of each other, so the standard errors are the i.i.d. ones.
    x = exact_samples(4000, seed=1)
    state, acceptance, _, start = run_moves(kernel, x, n_moves=15, seed=2)
    assert 0.3 < acceptance < 0.99  # the moves are real, not all rejected
    assert ((state.x - start) ** 2).sum(1).mean() > 0.5  # and the particles travelled
    assert_gaussian_moments(state.x, MEAN, VARIANCES)
    assert torch.allclose(state.energy, gaussian_energy(state.x))


def test_moment_check_detects_an_unadjusted_langevin_kernel():
    """ULA (MALA without the MH test) at the same step size has the wrong variance."""
    x = exact_samples(4000, seed=1)
    g = torch.Generator().manual_seed(2)
    h = 0.2
    for _ in range(15):
        _, grad = evaluate_with_grad(gaussian_energy, x)
        x = x - h * grad + math.sqrt(2 * h) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    with pytest.raises(AssertionError, match="variances"):
        assert_gaussian_moments(x, MEAN, VARIANCES)


@pytest.mark.parametrize("kernel", [MALA(step_size=0.05), HMC(step_size=0.05, n_leapfrog=8)], ids=["mala", "hmc"])
def test_kernel_converges_from_a_point_with_autocorrelation_accounted_for(kernel):
    """Time averages over 24 independent chains started far away (adapting during burn-in).

    Each chain's time average is autocorrelated within the chain but independent across chains,
    so the spread of the 24 chain averages gives an honest standard error.
    """
    chains, burn, keep = 24, 150, 400
    x = torch.full((chains, 4), 5.0, dtype=torch.float64)
    state, _, kernel, _ = run_moves(kernel, x, burn, seed=3, adapt=True)
    g = torch.Generator().manual_seed(4)
    sums, squares, rates = torch.zeros(chains, 4, dtype=torch.float64), torch.zeros(chains, 4, dtype=torch.float64), []
    for _ in range(keep):
        move = kernel.move(gaussian_energy, state, g)
        state = move.state
        rates.append(move.info["acceptance"])
        sums += state.x
        squares += (state.x - MEAN) ** 2
    assert 0.2 < sum(rates) / keep < 0.99  # the chains really move
    chain_means, chain_vars = sums / keep, squares / keep
    se_mean = chain_means.std(0) / math.sqrt(chains)
    se_var = chain_vars.std(0) / math.sqrt(chains)
    assert ((chain_means.mean(0) - MEAN).abs() < 4 * se_mean).all()
    assert ((chain_vars.mean(0) - VARIANCES).abs() < 4 * se_var).all()


@pytest.mark.parametrize("kernel", [MALA(step_size=1e-3), HMC(step_size=1e-3, n_leapfrog=5)], ids=["mala", "hmc"])
def test_adaptation_reaches_the_target_acceptance(kernel):
    """In d = 50 acceptance falls smoothly with the step size, so the adaptation should settle
    near the target (in d = 4 HMC acceptance drops off a cliff at the leapfrog stability limit)."""
    energy = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    x = torch.randn(200, 50, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    _, _, kernel, _ = run_moves(kernel, x, 60, seed=13, energy=energy, adapt=True)
    _, acceptance, _, _ = run_moves(kernel, x, 20, seed=14, energy=energy)
    # 200 x 20 proposals: binomial SE < 0.01; the remaining spread comes from the step size
    assert abs(acceptance - kernel.target_acceptance) < 0.1


def test_step_size_adaptation():
    k = MALA(step_size=0.1, target_acceptance=0.5)
    assert k.adapted({"acceptance": 0.9}).step_size > 0.1 > k.adapted({"acceptance": 0.1}).step_size
    assert k.adapted({"acceptance": float("nan")}) == k and k.adapted({}) == k
    assert MALA(step_size=9.0).adapted({"acceptance": 1.0}).step_size == 10.0  # clamped to max_step_size
    with pytest.raises(ValueError, match="target_acceptance"):
        MALA(target_acceptance=1.5)
    with pytest.raises(ValueError, match="step_size"):
        HMC(step_size=-1.0)
    with pytest.raises(ValueError, match="n_leapfrog"):
        HMC(n_leapfrog=0)


@pytest.mark.parametrize("kernel", [MALA(step_size=0.3), HMC(step_size=0.3, n_leapfrog=5)], ids=["mala", "hmc"])
def test_projected_kernel_stays_in_subspace_and_samples_it(kernel):
    """Target exp(-|x|^2/2) restricted to {sum_i x_i = 0}: covariance I - 11^T/d."""
    d = 5
    project = lambda v: v - v.mean(1, keepdim=True)  # noqa: E731
    energy = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    proposal = GaussianProposal(d, project=project)
    x = proposal.sample(4000, torch.Generator().manual_seed(5))
    state, acceptance, _, _ = run_moves(kernel, x, n_moves=10, seed=6, energy=energy, project=project)
    assert acceptance > 0.3
    assert state.x.sum(1).abs().max() < 1e-10
    target_var = torch.full((d,), 1.0 - 1.0 / d, dtype=torch.float64)
    assert_gaussian_moments(state.x, torch.zeros(d, dtype=torch.float64), target_var)


def test_nonfinite_energies_are_rejected_and_never_moved():
    def energy(x):  # NaN to the right of x0 = 1 (a "broken" region)
        e = 0.5 * (x**2).sum(1)
        return torch.where(x[:, 0] > 1.0, torch.full_like(e, float("nan")), e)

    x = exact_samples(500, seed=7) - MEAN
    x[0, 0] = 3.0  # starts in the broken region: must not move, must not turn into NaN
    for kernel in (MALA(step_size=0.5), HMC(step_size=0.3, n_leapfrog=5)):
        g = torch.Generator().manual_seed(8)
        state = particle_state(energy, x)
        assert state.energy[0] == math.inf and not state.movable[0]
        for _ in range(5):
            move = kernel.move(energy, state, g)
            state = move.state
        assert torch.isfinite(state.x).all()
        assert torch.equal(state.x[0], x[0])
        good = torch.isfinite(state.energy)
        assert (state.x[good, 0] <= 1.0).all()


def test_select_keeps_rejected_particles():
    old = particle_state(gaussian_energy, exact_samples(3, 0))
    new = particle_state(gaussian_energy, exact_samples(3, 1))
    chosen = _select(torch.tensor([True, False, True]), new, old)
    assert torch.equal(chosen.x[1], old.x[1]) and torch.equal(chosen.x[2], new.x[2])
    assert acceptance_rate(torch.tensor([True, False, True]), torch.tensor([True, True, False])) == 0.5
    assert math.isnan(acceptance_rate(torch.tensor([True]), torch.tensor([False])))


def test_sequence_applies_parts_in_order_and_keeps_their_figures_apart():
    """A Sequence's info holds each part's figures under its name; adapted() tunes each part by its own."""
    x = exact_samples(400, seed=21) - MEAN
    fast, slow = MALA(step_size=0.5), HMC(step_size=0.05, n_leapfrog=3)
    seq = Sequence((fast, slow, slow))
    assert seq.evaluations == 1 + 3 + 3 and seq.step_size == 0.5
    move = seq.move(gaussian_energy, particle_state(gaussian_energy, x), torch.Generator().manual_seed(3))
    assert set(move.info) == {"mala.acceptance", "hmc.acceptance"}
    assert all(0 <= v <= 1 for v in move.info.values())
    tuned = seq.adapted({"mala.acceptance": 1.0, "hmc.acceptance": 0.0})
    assert tuned.kernels[0].step_size > 0.5  # MALA by its own acceptance
    assert tuned.kernels[1].step_size < 0.05 and tuned.kernels[2].step_size == tuned.kernels[1].step_size  # both HMC parts
    # invariance: many sequence moves keep the Gaussian's moments
    start = exact_samples(4000, seed=22)
    state, g = particle_state(gaussian_energy, start), torch.Generator().manual_seed(23)
    for _ in range(10):
        move = seq.move(gaussian_energy, state, g)
        state = move.state
        assert min(move.info.values()) > 0.2  # real moves, not all rejected
    assert (state.x != start).any(1).float().mean() > 0.9
    assert_gaussian_moments(state.x, MEAN, VARIANCES)


def test_mixture_moves_with_one_part_per_move_and_is_invariant():
    mixture = Mixture((MALA(step_size=0.5), HMC(step_size=0.3, n_leapfrog=4)), probabilities=(3, 1))
    assert mixture.probabilities == pytest.approx((0.75, 0.25)) and mixture.evaluations == pytest.approx(1.75)
    state = particle_state(gaussian_energy, exact_samples(4000, seed=24))
    g, seen = torch.Generator().manual_seed(25), set()
    for _ in range(12):
        move = mixture.move(gaussian_energy, state, g)
        state = move.state
        assert len(move.info) == 1 and min(move.info.values()) > 0.2
        seen |= set(move.info)
    assert seen == {"mala.acceptance", "hmc.acceptance"}
    assert_gaussian_moments(state.x, MEAN, VARIANCES)
    with pytest.raises(ValueError, match="probabilities"):
        Mixture((MALA(),), probabilities=(0.0,))
    with pytest.raises(TypeError, match="kernels"):
        Sequence(("mala",))


def test_chunked_evaluation_matches_unchunked():
    x = exact_samples(103, 9)
    e1, g1 = evaluate_with_grad(gaussian_energy, x, chunk_size=None)
    e2, g2 = evaluate_with_grad(gaussian_energy, x, chunk_size=10)
    assert torch.equal(e1, e2) and torch.allclose(g1, g2)
    assert torch.allclose(g1, (x - MEAN) / VARIANCES)
    assert torch.equal(evaluate(gaussian_energy, x, chunk_size=7), e1)
    assert e1.dtype == torch.float64


def test_energy_output_is_validated():
    x = exact_samples(6, 0)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        evaluate(lambda x: x, x)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        evaluate_with_grad(lambda x: x.sum(1)[:-1], x, chunk_size=4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        evaluate(lambda x: 1.0, x)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate(gaussian_energy, x, chunk_size=0)
    e = evaluate(lambda x: torch.tensor([1.0, float("nan"), -float("inf"), 2.0, 3.0, 4.0]), x)
    assert e[1] == math.inf and e[2] == math.inf  # non-finite energies become +inf


def test_flat_energy_and_mean_free_projection():
    n_atoms = 4
    molecular = lambda pos: (pos**2).sum((1, 2))  # noqa: E731  (n, n_atoms, 3) -> (n,)
    flat = flat_energy(molecular, n_atoms)
    x = torch.randn(5, 3 * n_atoms, dtype=torch.float64)
    assert torch.allclose(flat(x), (x**2).sum(1))
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        flat(torch.zeros(5, 11))
    project = mean_free_projection(n_atoms)
    px = project(x).reshape(5, n_atoms, 3)
    assert px.mean(1).abs().max() < 1e-12
    assert torch.allclose(project(project(x)), project(x))  # idempotent
    assert subspace_dimension(project, 3 * n_atoms) == 3 * (n_atoms - 1)
    assert subspace_dimension(None, 7) == 7
    with pytest.raises(ValueError, match="n_atoms"):
        mean_free_projection(1)


def test_gaussian_proposal_densities():
    d = 4
    q = GaussianProposal(d, mean=MEAN, variance=VARIANCES)
    x = q.sample(2000, torch.Generator().manual_seed(10))
    reference = torch.distributions.Normal(MEAN, VARIANCES.sqrt()).log_prob(x).sum(1)
    assert torch.allclose(q.log_prob(x), reference)
    assert_gaussian_moments(x, MEAN, VARIANCES)
    # on the subspace sum x = 0 the density is a (d-1)-dimensional Gaussian
    project = lambda v: v - v.mean(1, keepdim=True)  # noqa: E731
    qp = GaussianProposal(d, variance=2.0, project=project)
    assert qp.subspace_dim == d - 1
    y = qp.sample(10, torch.Generator().manual_seed(11))
    assert y.sum(1).abs().max() < 1e-12
    expected = -0.25 * (y**2).sum(1) - 0.5 * (d - 1) * math.log(2 * math.pi * 2.0)
    assert torch.allclose(qp.log_prob(y), expected)
    assert GaussianProposal(d, project=project, subspace_dim=3).subspace_dim == 3
    with pytest.raises(ValueError, match="isotropic"):
        GaussianProposal(d, variance=VARIANCES, project=project)
    with pytest.raises(ValueError, match=r"variance must be a scalar or have shape \(4,\)"):
        GaussianProposal(d, variance=torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        GaussianProposal(d, variance=0.0)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        q.log_prob(torch.zeros(3, 5))
