"""The molecular energy network, its identifiable log-normaliser, chirality folding and model files."""
import math

import pytest
import torch

from boltzgen import systems
from boltzgen.coordinates import fold_to_l, is_l_amino_acid
from boltzgen.diffusion.losses import diffclf_loss, dsm_loss
from boltzgen.diffusion.networks import EnergyMLP, MolecularEnergy, model_from_config
from boltzgen.diffusion.sampling import prior_sample, sample_sde
from boltzgen.diffusion.schedule import LogSNRSchedule, VPSchedule
from boltzgen.diffusion.training import TrainingConfig, train
from boltzgen.models import check_compatible, load_model_file, model_metadata, save_model_file
from boltzgen.coordinates.cartesian import MolecularSpace, random_rotations
from boltzgen.smc import diffusion_path, smc
from boltzgen.targets import GaussianMixture


@pytest.fixture(scope="module")
def aldp():
    target = systems.load("alanine-dipeptide")
    yield target
    target.close()


def frames(target, n=64, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(target.positions, dtype=torch.float64)
    return x0 + noise * torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)


def random_model(n_atoms, y, seed=0):
    torch.manual_seed(seed)
    model = MolecularEnergy(n_atoms, LogSNRSchedule(), 1.0, hidden=32, n_blocks=1).fit(y)
    torch.nn.init.normal_(model.correction.out.weight, std=0.3)  # a non-trivial network
    return model


def test_energy_is_invariant_to_rotations_translations_and_reflections(aldp):
    x = frames(aldp)
    space = MolecularSpace.fit(x)
    model = random_model(space.n_atoms, space.to_flat(x).float())
    t = torch.rand(len(x), generator=torch.Generator().manual_seed(3)) * 0.9 + 0.05
    e = model.energy(t, space.to_flat(x))
    moved = torch.einsum("nij,naj->nai", random_rotations(len(x), torch.Generator().manual_seed(1)), x) + 2.5
    torch.testing.assert_close(model.energy(t, space.to_flat(moved)), e, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.energy(t, space.to_flat(-x)), e, rtol=1e-5, atol=1e-4)  # mirror image
    assert e.std() > 0.1  # the network part is not trivially constant


def test_score_is_minus_the_energy_gradient(aldp):
    x = frames(aldp, 8)
    space = MolecularSpace.fit(x)
    model = random_model(space.n_atoms, space.to_flat(x).float())
    y = space.to_flat(x).float().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.energy(0.3, y).sum(), y)
    torch.testing.assert_close(model.score(0.3, y), -grad)


def test_untrained_model_is_the_centred_gaussian_and_the_correction_vanishes_at_t1(aldp):
    x = frames(aldp, 16)
    space = MolecularSpace.fit(x)
    y = space.to_flat(x).float()
    model = MolecularEnergy(space.n_atoms, LogSNRSchedule(), 1.3, hidden=16, n_blocks=1).fit(y)
    v1 = model.schedule.marginal_variance(torch.tensor(1.0), 1.3)
    torch.testing.assert_close(model.energy(0.4, y), model.base_energy(0.4, y))
    # a constant added to the network's output (the loss-blind direction) is cancelled at t = 1 exactly,
    # so the Gaussian anchor f(1) of the log-normaliser holds whatever the weights
    with torch.no_grad():
        model.correction.out.bias.fill_(5.0)
    torch.testing.assert_close(model.energy(1.0, y), 0.5 * (y**2).sum(1) / v1.float())
    torch.testing.assert_close(model.energy(0.25, y) - model.base_energy(0.25, y), torch.full((16,), 0.75 * 5.0))
    assert model.log_normaliser(1.0).item() == pytest.approx(0.5 * space.subspace_dim * math.log(2 * math.pi * v1.item()), rel=1e-5)


def test_constant_shift_is_visible_to_diffclf():
    # Before the (1 - t) factor, a constant added to E at every level left diffclf_loss bit-identical.
    data = torch.randn(256, 2)
    model = EnergyMLP(2, VPSchedule(), data.mean(0), float(data.var(0).mean()), hidden=8, n_blocks=1)
    losses = []
    for shift in (0.0, 5.0):
        with torch.no_grad():
            model.correction.out.bias.fill_(shift)
        losses.append(diffclf_loss(model, data, torch.Generator().manual_seed(0), n_levels=2).item())
    assert abs(losses[1] - losses[0]) > 1e-3


def test_losses_and_samplers_take_the_space(aldp):
    x = frames(aldp, 32)
    space = MolecularSpace.fit(x)
    y = space.to_flat(x).float()
    model = MolecularEnergy(space.n_atoms, LogSNRSchedule(), 1.0, hidden=16, n_blocks=1).fit(y)
    g = torch.Generator().manual_seed(0)
    assert torch.isfinite(diffclf_loss(model, y, g, n_levels=3, project=space.project))  # crashed before: (n, k, d) noise
    assert torch.isfinite(dsm_loss(model, y, g, project=space.project))
    assert space.contains(prior_sample(model, 10, g, project=space.project))
    assert space.contains(sample_sde(model, 10, n_steps=5, generator=g, project=space.project))


def test_fold_to_l_reflects_mirror_images(aldp):
    x = frames(aldp, 10, noise=0.002)
    mixed = torch.cat([x[:6], -x[6:]])
    assert is_l_amino_acid(x, aldp.topology).all() and not is_l_amino_acid(mixed, aldp.topology)[6:].any()
    folded = fold_to_l(mixed, aldp.topology)
    assert folded.mirror_fraction == pytest.approx(0.4)
    assert is_l_amino_acid(folded.positions, aldp.topology).all() and not folded.mixed.any()
    torch.testing.assert_close(folded.positions, x)


def test_model_file_round_trip_with_weights_only(tmp_path, aldp):
    x = frames(aldp, 16)
    space = MolecularSpace.fit(x)
    y = space.to_flat(x).float()
    model = random_model(space.n_atoms, y)
    path = save_model_file(tmp_path / "m.pt", model, space, model_metadata(aldp, note="test"))
    assert isinstance(torch.load(path, weights_only=True), dict)  # no pickled objects inside
    loaded = load_model_file(path)
    torch.testing.assert_close(loaded.model.energy(0.2, y), model.energy(0.2, y))
    assert loaded.space == space and loaded.metadata["note"] == "test" and loaded.metadata["n_atoms"] == 22
    assert loaded.model.config == model.config and model_from_config(model.config).kind == "molecular"
    assert check_compatible(loaded, aldp)  # the same Hamiltonian


def test_model_for_another_force_field_is_recalibration_and_another_molecule_is_refused(tmp_path, aldp):
    x = frames(aldp, 8)
    space = MolecularSpace.fit(x)
    model = random_model(space.n_atoms, space.to_flat(x).float())
    meta = model_metadata(aldp)
    save_model_file(tmp_path / "m.pt", model, space, meta)
    loaded = load_model_file(tmp_path / "m.pt")
    implicit = systems.load("alanine-dipeptide-implicit")
    try:
        assert check_compatible(loaded, implicit) is False
    finally:
        implicit.close()
    other = load_model_file(save_model_file(tmp_path / "o.pt", model, space, {**meta, "n_atoms": 10}))
    with pytest.raises(ValueError, match="only applies to the molecule it was trained on"):
        check_compatible(other, aldp)


def test_checkpoint_is_not_a_model_file(tmp_path):
    torch.save({"model": {}, "step": 3}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a boltzgen model file"):
        load_model_file(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model_file(tmp_path / "missing.pt")


def test_training_with_space_and_weights_resumes_exactly(tmp_path, aldp):
    x = frames(aldp, 40)
    space = MolecularSpace.fit(x)
    y = space.to_flat(x).float()
    log_w = torch.linspace(-2, 0, 40, dtype=torch.float64)
    config = TrainingConfig(dsm_steps=6, clf_steps=4, batch_size=8, clf_batch_size=4, clf_levels=3,
                            checkpoint_every=3, clf_learning_rate=1e-4)

    def fresh():
        torch.manual_seed(0)
        return MolecularEnergy(space.n_atoms, LogSNRSchedule(), 1.0, hidden=16, n_blocks=1).fit(y)

    snapshots = []
    full = train(fresh(), y, config, log_weights=log_w, space=space, on_dsm_end=lambda m: snapshots.append(m.state_dict()))
    assert len(snapshots) == 1

    def stop_at_5(step, parts):
        if step == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), y, config, ckpt, log_weights=log_w, space=space, callback=stop_at_5)
    resumed = train(fresh(), y, config, ckpt, log_weights=log_w, space=space)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="centre-free subspace"):
        train(fresh(), y + 1.0, config, space=space)
    with pytest.raises(ValueError, match=r"log_weights must have shape \(40,\)"):
        train(fresh(), y, config, log_weights=log_w[:5], space=space)


def test_log_normaliser_matches_an_independent_smc_log_z():
    """f(t_min), trained by DiffCLF, against log Z of the same model's exp(-E(t_min)) by SMC through its levels.

    The SMC starts from the exact normalised Gaussian exp(-E(1, .)) (the correction vanishes at t = 1),
    so its estimate is the model's own log-normaliser; a constant of 3 kT is put in the network's output
    first, which DSM cannot see and f must absorb (without the (1 - t) factor f(t_min) was off by it).
    Tolerance: 4 standard errors over 4 SMC runs plus 0.15 for the network's fit of f (DiffCLF trains
    f only up to its loss; 0.04-0.07 was seen with 1500-3000 CLF steps).
    """
    torch.manual_seed(0)
    mixture = GaussianMixture(torch.tensor([[1.5, 0.0], [-1.5, 0.0]], dtype=torch.float64), stds=0.5, weights=[0.6, 0.4])
    data = mixture.sample(4000, torch.Generator().manual_seed(1)).float()
    model = EnergyMLP(2, VPSchedule(), data.mean(0), float(data.var(0).mean()), hidden=32, n_blocks=1)
    with torch.no_grad():
        model.correction.out.bias.fill_(3.0)
    config = TrainingConfig(dsm_steps=300, clf_steps=1500, batch_size=128, clf_levels=4, clf_window=0.1, ema_decay=0.99)
    trained = train(model, data, config).model
    f = trained.log_normaliser(trained.schedule.t_min).item()
    levels = trained.schedule.levels(20)
    energy = lambda t, x: trained.energy(t, x).double()  # noqa: E731
    v1 = trained.schedule.marginal_variance(torch.tensor(1.0), trained.data_variance).item()
    from boltzgen.smc import GaussianProposal

    alpha1 = trained.schedule.alpha(torch.tensor(1.0)).item()
    q = GaussianProposal(2, alpha1 * trained.data_mean.double(), v1)
    runs = torch.tensor([smc(diffusion_path(energy, levels), q, 500, seed=s, n_moves=1).log_z for s in range(4)])
    error = float(runs.std() / 2)
    assert abs(f - float(runs.mean())) < 4 * error + 0.15, (f, runs)


def test_model_quality_of_the_exact_energy_and_of_a_shifted_one(aldp):
    """A 'model' equal to the force field (as a density over positions) has zero spread, correlation 1
    and an importance ESS of the whole sample; one that adds 1 kT on phi > 0 moves the implied dF by 1 kT."""
    from boltzgen.analysis import phi_psi
    from boltzgen.analysis.model_quality import model_quality

    x = frames(aldp, 40, noise=0.004)
    space = MolecularSpace.fit(x)
    u = aldp.reduced_energy(x)
    phi = phi_psi(x, aldp.topology)[:, 0, 0]
    shift = torch.where(phi > 0, 1.0, 0.0).double()

    class Exact:
        schedule = LogSNRSchedule()
        data_mean = torch.zeros(1)

        def __init__(self, extra):
            self.extra = extra

        def energy(self, t, y):  # u as a density over flat coordinates (the log-Jacobian taken out)
            return aldp.reduced_energy(space.to_positions(y)) - space.log_jacobian + self.extra[: len(y)]

    q = model_quality(Exact(torch.zeros(40, dtype=torch.float64)), space, u, x, aldp.topology)
    assert q.std_kT < 1e-6 and abs(q.mean_kT) < 1e-6 and q.correlation > 0.999999
    assert q.importance_ess_fraction == pytest.approx(1.0)
    assert 0 < int((phi > 0).sum()) < 40  # both sides populated (the structure sits at phi ~ 180 deg)
    shifted = model_quality(Exact(shift), space, u, x, aldp.topology)  # 1 kT less likely on phi > 0
    assert shifted.delta_f_phi_positive_model_kT - shifted.delta_f_phi_positive_data_kT == pytest.approx(1.0)


def test_own_sample_quality_of_the_exact_energy_and_of_one_that_wastes_mass(aldp):
    """Scored on 'own samples': a model equal to the force field gives one-step ESS 1 and no spread; one that
    rates the phi > 0 samples 30 kT too likely loses exactly them (weight e^-30), and so does a sample whose
    force-field energy is not finite."""
    from boltzgen.analysis import phi_psi
    from boltzgen.analysis.model_quality import own_sample_quality

    x = frames(aldp, 40, noise=0.004)
    space = MolecularSpace.fit(x)
    u = aldp.reduced_energy(x)
    phi = phi_psi(x, aldp.topology)[:, 0, 0]
    wasted = phi > 0
    n_wasted = int(wasted.sum())
    assert 0 < n_wasted < 20  # a minority, so the median stays with the others

    class Model:
        schedule = LogSNRSchedule()
        data_mean = torch.zeros(1)

        def __init__(self, extra):
            self.extra = extra

        def energy(self, t, y):  # u as a density over flat coordinates, plus extra
            return aldp.reduced_energy(space.to_positions(y)) - space.log_jacobian + self.extra[: len(y)]

    exact = own_sample_quality(Model(torch.zeros(40, dtype=torch.float64)), space, x, u)
    assert exact.n_samples == 40 and exact.one_step_ess_fraction == pytest.approx(1.0)
    assert exact.far_fraction == 0.0 and max(abs(v) for v in exact.delta_quantiles_kT.values()) < 1e-6
    wasteful = own_sample_quality(Model(torch.where(wasted, -30.0, 0.0).double()), space, x, u)
    assert wasteful.far_fraction == pytest.approx(n_wasted / 40)
    assert wasteful.one_step_ess_fraction == pytest.approx((40 - n_wasted) / 40, rel=1e-6)
    assert wasteful.delta_quantiles_kT["95%"] == pytest.approx(30.0, abs=1e-6)
    broken = u.clone()
    broken[0] = float("inf")
    one_lost = own_sample_quality(Model(torch.zeros(40, dtype=torch.float64)), space, x, broken)
    assert one_lost.far_fraction == pytest.approx(1 / 40) and one_lost.one_step_ess_fraction == pytest.approx(39 / 40)
    with pytest.raises(ValueError, match="reduced_energies"):
        own_sample_quality(Model(torch.zeros(40, dtype=torch.float64)), space, x, u[:39])
    # weighted samples (a run's levels): zero weight removes a sample from every figure
    lw = torch.where(wasted, -math.inf, 0.0).double()
    weighted = own_sample_quality(Model(torch.where(wasted, -30.0, 0.0).double()), space, x, u, lw)
    assert weighted.far_fraction == 0.0 and weighted.one_step_ess_fraction == pytest.approx((40 - n_wasted) / 40)
    with pytest.raises(ValueError, match="log_weights"):
        own_sample_quality(Model(torch.zeros(40, dtype=torch.float64)), space, x, u, lw[:5])


def test_score_errors_split_by_coordinate_kind_vanish_for_a_model_of_itself():
    """In internal coordinates the score error is reported for bonds, angles and dihedrals; a target equal to
    the model's own last level (as a density over positions) gives zero error."""
    from boltzgen.analysis.model_quality import score_errors
    from boltzgen.coordinates.internal import InternalSpace, zmatrix
    from boltzgen.diffusion.internal import InternalEnergy

    target = systems.load("alanine-dipeptide")
    g = torch.Generator().manual_seed(0)
    x = torch.as_tensor(target.positions, dtype=torch.float64)[None] + 0.01 * torch.randn(40, 22, 3, generator=g,
                                                                                          dtype=torch.float64)
    space = InternalSpace.fit(zmatrix(target.topology), x)
    z = space.to_flat(x)
    n_per = int(space.periodic.sum())
    model = InternalEnergy(space.dim - n_per, n_per, LogSNRSchedule(), hidden=16, n_blocks=1).fit(z.float())
    torch.nn.init.normal_(model.correction.out.weight, std=0.1)  # a non-trivial network
    t_min = float(model.schedule.t_min)

    def own(positions):  # exp(-own) over positions is the model's last level
        y = space.to_flat(positions)
        return model.energy(t_min, y).double() + space.log_det_jacobian(y)

    lw = torch.zeros(len(x), dtype=torch.float64)
    errors = score_errors(model, space, own, x, lw)
    assert set(errors) == {"bonds", "angles", "dihedrals"} and max(errors.values()) < 1e-3
    real = score_errors(model, space, target.reduced_energy, x, lw)
    assert min(real.values()) > 0.1  # an untrained model is far from the force field
