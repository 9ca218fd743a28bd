"""MolecularSpace: flattening, the centre-free projection, scaling with its log-Jacobian, and SMC's subspace check."""
import math

import pytest
import torch

from boltzgen.smc import GaussianProposal, diffusion_path, geometric_path, smc
from boltzgen.smc.weights import ess
from boltzgen.coordinates.cartesian import MolecularSpace, random_rotations


def positions(n=16, n_atoms=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(n, n_atoms, 3, generator=g, dtype=torch.float64) + 1.0  # off-centre, nm


def test_round_trip_projection_and_contains():
    x = positions()
    space = MolecularSpace(5, scale=0.2)
    y = space.to_flat(x)
    assert y.shape == (16, 15) and space.dim == 15 and space.subspace_dim == 12
    assert space.contains(y) and not space.contains(y + 0.1)
    torch.testing.assert_close(space.to_positions(y), x - x.mean(1, keepdim=True))
    torch.testing.assert_close(space.project(y), y)  # already in the subspace
    v = torch.randn(4, 3, 15, dtype=torch.float64)  # any leading shape (e.g. (n, k, d) in DiffCLF)
    torch.testing.assert_close(space.project(space.project(v)), space.project(v))
    assert space.project(v).reshape(4, 3, 5, 3).sum(-2).abs().max() < 1e-12


def test_fit_gives_unit_variance_and_config_round_trips():
    x = positions(200)
    space = MolecularSpace.fit(x)
    y = space.to_flat(x)
    assert float((y**2).sum(1).mean()) / space.subspace_dim == pytest.approx(1.0, rel=1e-10)
    assert MolecularSpace.from_config(space.config()) == space


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_atoms"):
        MolecularSpace(1)
    with pytest.raises(ValueError, match="scale"):
        MolecularSpace(3, scale=-1.0)
    with pytest.raises(ValueError, match=r"positions has 5 atoms but the system has 4"):
        MolecularSpace(4).to_flat(positions())
    with pytest.raises(ValueError, match="last dimension 12"):
        MolecularSpace(4).project(torch.zeros(2, 15))


def test_flat_energy_keeps_log_z_in_position_units():
    # u = |x - centroid|^2 / (2 s^2) on the centre-free subspace: Z = (2 pi s^2)^(d'/2), whatever the scale.
    s2, n_atoms = 0.01, 4
    space = MolecularSpace(n_atoms, scale=0.37)
    u = lambda x: ((x - x.mean(1, keepdim=True)) ** 2).sum((1, 2)) / (2 * s2)  # noqa: E731
    exact = 0.5 * space.subspace_dim * math.log(2 * math.pi * s2)
    q = space.proposal(variance=1.5 * s2 / space.scale**2)
    y = q.sample(20000, torch.Generator().manual_seed(1))
    log_w = -space.flat_energy(u)(y) - q.log_prob(y)
    estimate = float(torch.logsumexp(log_w, 0) - math.log(len(y)))
    error = math.sqrt((len(y) / ess(log_w) - 1) / len(y))  # delta-method standard error of log Z
    assert abs(estimate - exact) < 4 * error + 1e-12


def test_random_rotations_are_proper_and_keep_distances():
    r = random_rotations(50, torch.Generator().manual_seed(0))
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(50, dtype=torch.float64))
    space = MolecularSpace(5)
    y = space.to_flat(positions(50))
    z = space.random_rotation(y, torch.Generator().manual_seed(1))
    assert space.contains(z)
    torch.testing.assert_close(torch.cdist(*(2 * [z.reshape(50, 5, 3)])), torch.cdist(*(2 * [y.reshape(50, 5, 3)])))


def test_smc_refuses_a_proposal_outside_the_subspace():
    space = MolecularSpace(4)
    path = geometric_path(lambda y: 0.5 * (y**2).sum(1), lambda y: (y**2).sum(1))
    with pytest.raises(ValueError, match="not in the subspace of project"):
        smc(path, GaussianProposal(space.dim), 50, project=space.project, seed=0)


def test_smc_takes_the_proposal_projection_and_stays_in_the_subspace():
    space = MolecularSpace(4)
    energy = lambda t, y: 0.5 * (y**2).sum(1) / (0.5 + t)  # noqa: E731
    levels = torch.linspace(1.0, 0.0, 11)
    runs = [smc(diffusion_path(energy, levels), space.proposal(1.5), 300, seed=seed, n_moves=2) for seed in range(5)]
    assert all(space.contains(r.particles) for r in runs)
    # a Gaussian of variance 0.5 on the 9-dimensional subspace (the proposal is normalised there);
    # the unprojected normaliser would differ by 1.5 log(2 pi 0.5) = 1.7
    log_z = torch.tensor([r.log_z for r in runs], dtype=torch.float64)
    error = float(log_z.std() / math.sqrt(len(runs)))
    assert abs(float(log_z.mean()) - 4.5 * math.log(2 * math.pi * 0.5)) < 4 * error + 0.02
