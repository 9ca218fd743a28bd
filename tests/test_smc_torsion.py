"""Torsion moves (rotatable bonds from a topology, exact rigid turns) and the mixing stage."""
import math

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.smc import MALA, ParticleState, SMCResult, SMCState, particle_state
from boltzgen.smc.engine import resampled
from boltzgen.smc.kernels import Sequence
from boltzgen.smc.mixing import mix
from boltzgen.smc.torsion import (TorsionKernel, Torsions, dihedral, rotatable_torsions, rotate, torsion_step,
                                  with_torsion_moves)


def _topology(bonds, elements):
    top = mdtraj.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    atoms = [top.add_atom(f"{e}{i}", mdtraj.element.get_by_symbol(e), residue) for i, e in enumerate(elements)]
    for i, j in bonds:
        top.add_bond(atoms[i], atoms[j])
    return top


# a zig-zag chain C0-C1-C2-C3-C4 with a hydrogen on C0: two rotatable bonds sharing C2
CHAIN = _topology([(0, 1), (1, 2), (2, 3), (3, 4), (0, 5)], ["C", "C", "C", "C", "C", "H"])
CHAIN_XYZ = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.0, 1.4, 0.0], [3.5, 1.5, 0.3],
                          [4.0, 2.9, 0.1], [-0.5, -0.9, 0.2]], dtype=torch.float64)


def _dihedral(r, i, j, k, l):
    """Dihedral angle (radians) of atoms i-j-k-l in (n, n_atoms, 3) positions."""
    b0, b1, b2 = r[:, i] - r[:, j], r[:, k] - r[:, j], r[:, l] - r[:, k]
    b1 = b1 / torch.linalg.norm(b1, dim=1, keepdim=True)
    v = b0 - (b0 * b1).sum(1, keepdim=True) * b1
    w = b2 - (b2 * b1).sum(1, keepdim=True) * b1
    return torch.atan2((torch.cross(b1, v, dim=1) * w).sum(1), (v * w).sum(1))


def _angles(y):
    r = y.reshape(y.shape[0], 6, 3)
    return _dihedral(r, 0, 1, 2, 3), _dihedral(r, 1, 2, 3, 4)


def _chain_energy(y):
    """Coupled torsional energy (kT) of the chain's two dihedrals; nothing else can change."""
    a, b = _angles(y)
    return torch.cos(a) + 0.8 * torch.cos(2 * b) + 1.5 * torch.cos(a - b + 0.3)


def test_rotatable_bonds_skip_terminal_hydrogen_and_ring_bonds():
    torsions = rotatable_torsions(CHAIN)
    assert [tuple(sorted(a)) for a in torsions.axes.tolist()] == [(1, 2), (2, 3)]
    assert torsions.groups == ((0,), (1,), (0, 1))  # each bond alone, and the pair sharing C2
    for (a, b), moving in zip(torsions.axes, torsions.moving):
        assert not moving[a] and not moving[b]  # the axis atoms stay
    assert torsions.moving.sum(1).tolist() == [2, 1]  # the smaller side turns: {C3, C4}, then {C4}
    # cyclohexane with an ethyl group: the ring's bonds cannot turn, the ring-ethyl bond can
    ring = [(i, (i + 1) % 6) for i in range(6)] + [(0, 6), (6, 7)]
    torsions = rotatable_torsions(_topology(ring, ["C"] * 8))
    assert torsions.axes.tolist() in ([[0, 6]], [[6, 0]]) and torsions.moving.sum() == 1
    with pytest.raises(ValueError, match="no rotatable bond"):
        rotatable_torsions(_topology([(0, 1), (1, 2)], ["C", "C", "H"]))
    with pytest.raises(ValueError, match="no bonds"):
        rotatable_torsions(_topology([], ["C", "C"]))


def test_alanine_dipeptide_turns_its_backbone_and_amide_bonds():
    with systems.load("alanine-dipeptide") as target:
        torsions = rotatable_torsions(target.topology)
    assert len(torsions) == 4 and "ALA2-CA:ALA2-N" in torsions.names and "ALA2-CA:ALA2-C" in torsions.names
    assert len(torsions.groups) == 4 + 3  # phi-psi, and each with its neighbouring amide bond


def test_rotate_turns_the_dihedral_by_the_angle_and_keeps_the_sides_rigid():
    torsions = rotatable_torsions(CHAIN)
    x = (CHAIN_XYZ - CHAIN_XYZ.mean(0)).reshape(1, -1).repeat(5, 1)
    angle = torch.tensor([0.3, -1.0, 2.5, math.pi, 0.0], dtype=torch.float64)
    which = torch.zeros(5, dtype=torch.int64)
    y = rotate(x, torsions, which, angle)
    before, after = _angles(x)[0], _angles(y)[0]
    turned = torch.remainder(after - before + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(turned.abs(), torch.remainder(angle + math.pi, 2 * math.pi).sub(math.pi).abs(), atol=1e-9)
    assert torch.allclose(y.reshape(5, 6, 3).mean(1), torch.zeros(5, 3, dtype=torch.float64), atol=1e-12)
    r, s = x.reshape(5, 6, 3), y.reshape(5, 6, 3)
    for i, j in [(0, 1), (1, 2), (0, 5), (2, 3), (2, 4), (3, 4)]:  # within-side and bonded distances
        assert torch.allclose(torch.linalg.norm(r[:, i] - r[:, j], dim=1), torch.linalg.norm(s[:, i] - s[:, j], dim=1))
    assert torch.allclose(rotate(y, torsions, which, -angle), x, atol=1e-12)  # the reverse move undoes it


def _reflect(x, torsions, bonds):
    for b in bonds:
        which = torch.full((x.shape[0],), b, dtype=torch.int64)
        x = rotate(x, torsions, which, -2 * dihedral(x, torsions, which))
    return x


def test_reflection_negates_the_main_chain_dihedral_is_an_involution_and_keeps_volume():
    with systems.load("alanine-dipeptide") as target:
        torsions = rotatable_torsions(target.topology)
        top = mdtraj.Topology.from_openmm(target.topology)
        x = torch.as_tensor(np.asarray(target.positions), dtype=torch.float64).reshape(1, -1)
    names = [tuple(str(top.atom(int(i))) for i in (c, a, b, d))
             for (a, b), (c, d) in zip(torsions.axes, torsions.references)]
    assert ("ALA2-C", "ALA2-CA", "ALA2-N", "ACE1-C") in names  # phi, measured along the backbone
    assert ("ALA2-N", "ALA2-CA", "ALA2-C", "NME3-N") in names  # psi
    for bond, angle in [(1, 1.7), (2, -2.2), (0, 0.3)]:  # leave the extended start structure
        x = rotate(x, torsions, torch.tensor([bond]), torch.tensor([angle], dtype=torch.float64))
    md_phi = mdtraj.compute_phi(mdtraj.Trajectory(x.reshape(1, -1, 3).numpy(), top))[1][0, 0]
    phi = int(np.flatnonzero([n[0] == "ALA2-C" and n[3] == "ACE1-C" for n in names])[0])
    assert float(dihedral(x, torsions, torch.tensor([phi]))) == pytest.approx(md_phi, abs=1e-6)
    before = torch.stack([dihedral(x, torsions, torch.tensor([i])) for i in range(len(torsions))])
    n = x.shape[1] // 3
    translations = torch.zeros(3 * n, 3, dtype=torch.float64)
    for k in range(3):
        translations[k::3, k] = 1 / math.sqrt(n)
    q, _ = torch.linalg.qr(torch.cat([translations, torch.randn(3 * n, 3 * n - 3, generator=torch.Generator().manual_seed(0),
                                                                 dtype=torch.float64)], 1))
    basis = q[:, 3:]  # the centre-free subspace
    for bonds in [(1,), (1, 2), (2, 1), (0, 1)]:
        y = _reflect(x, torsions, bonds)
        after = torch.stack([dihedral(y, torsions, torch.tensor([i])) for i in range(len(torsions))])
        flipped = [i in bonds for i in range(len(torsions))]
        expected = torch.where(torch.tensor(flipped)[:, None], -before, before)
        assert torch.allclose(torch.remainder(after - expected + math.pi, 2 * math.pi) - math.pi,
                              torch.zeros_like(after), atol=1e-9)
        assert torch.allclose(_reflect(y, torsions, bonds), x, atol=1e-12)  # an involution, in either order
        assert torch.allclose(_reflect(y, torsions, bonds[::-1]), x, atol=1e-12)
        jacobian = torch.autograd.functional.jacobian(lambda v: _reflect(v.reshape(1, -1), torsions, bonds).reshape(-1),
                                                      x.reshape(-1))
        assert abs(torch.linalg.det(basis.T @ jacobian @ basis)).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("reflect", [0.0, 0.5])
def test_torsion_moves_sample_the_exact_joint_distribution_of_two_coupled_dihedrals(reflect):
    """Singles and pairs in random order: the stationary law of (phi1, phi2) is exp(-V) on the torus."""
    torsions = rotatable_torsions(CHAIN)
    n = 4000
    x = (CHAIN_XYZ - CHAIN_XYZ.mean(0)).reshape(1, -1).repeat(n, 1)
    state = particle_state(_chain_energy, x)
    generator = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(60):
        move = torsion_step(_chain_energy, state, torsions, generator, reflect=reflect)
        state = move.state
        rates.append(move.info["acceptance"])
    a, b = _angles(state.x)
    edges = torch.linspace(-math.pi, math.pi, 5, dtype=torch.float64)
    counts = torch.zeros(4, 4, dtype=torch.float64)
    ia, ib = torch.bucketize(a, edges[1:-1]), torch.bucketize(b, edges[1:-1])
    counts.index_put_((ia, ib), torch.ones(n, dtype=torch.float64), accumulate=True)
    # exact cell probabilities by quadrature on a fine grid
    g = torch.linspace(-math.pi, math.pi, 401, dtype=torch.float64)[:-1] + math.pi / 400
    A, B = torch.meshgrid(g, g, indexing="ij")
    density = torch.exp(-(torch.cos(A) + 0.8 * torch.cos(2 * B) + 1.5 * torch.cos(A - B + 0.3)))
    exact = density.reshape(4, 100, 4, 100).sum(dim=(1, 3))
    exact = exact / exact.sum()
    # independent particles: each cell count is binomial; 4.5 sigma per cell over 16 cells
    sigma = torch.sqrt(exact * (1 - exact) / n)
    assert ((counts / n - exact).abs() <= 4.5 * sigma).all(), (counts / n, exact)
    assert 0.2 < float(np.mean(rates)) < 0.9


def test_torsion_move_follows_each_gradient_move_and_reports_both_rates():
    torsions = rotatable_torsions(CHAIN)
    x = (CHAIN_XYZ - CHAIN_XYZ.mean(0)).reshape(1, -1).repeat(64, 1)

    def energy(y):  # stiff bonds plus the torsions, so that MALA has something to do
        r = y.reshape(y.shape[0], 6, 3)
        bonds = sum((torch.linalg.norm(r[:, i] - r[:, j], dim=1) - 1.5) ** 2 for i, j in [(0, 1), (1, 2), (2, 3), (3, 4)])
        return 50 * bonds + _chain_energy(y)

    kernel = with_torsion_moves(MALA(step_size=1e-3), torsions, n_moves=2)
    assert isinstance(kernel, Sequence) and kernel.evaluations == 3 and kernel.step_size == 1e-3
    move = kernel.move(energy, particle_state(energy, x), torch.Generator().manual_seed(1))
    assert set(move.info) == {"mala.acceptance", "torsion.acceptance"}
    assert 0 < move.info["torsion.acceptance"] <= 1 and 0 < move.info["mala.acceptance"] <= 1
    tuned = kernel.adapted({"mala.acceptance": 1.0, "torsion.acceptance": 0.0})
    assert tuned.step_size > kernel.step_size and tuned.kernels[1:] == kernel.kernels[1:]
    with pytest.raises(TypeError, match="MCMC kernel"):
        with_torsion_moves("mala", torsions)
    with pytest.raises(ValueError, match="particles must have shape"):
        bad = x[:, :9]
        torsion_step(energy, ParticleState(bad, torch.zeros(64, dtype=torch.float64), torch.zeros_like(bad)), torsions)
    with pytest.raises(ValueError, match="groups"):
        Torsions(6, torsions.axes, torsions.moving, torsions.names, groups=((0, 0),))
    with pytest.raises(ValueError, match="reflect must be a probability"):
        TorsionKernel(torsions, reflect=1.5)
    bare = Torsions(6, torsions.axes, torsions.moving, torsions.names)
    with pytest.raises(ValueError, match="needs Torsions.references"):
        with_torsion_moves(MALA(step_size=1e-3), bare)
    assert TorsionKernel(bare, reflect=0).reflect == 0.0
    with pytest.raises(ValueError, match="references must be"):
        Torsions(6, torsions.axes, torsions.moving, torsions.names, references=torsions.references[:, ::-1])


def _weighted(x, log_w):
    zeros = torch.zeros(len(log_w), dtype=torch.float64)
    state = SMCState(ParticleState(x, zeros, torch.zeros_like(x)), log_w, torch.arange(len(log_w)), MALA(step_size=0.1))
    return SMCResult(state, ())


def test_mixing_restores_a_mode_the_weights_missed_and_keeps_log_z():
    """Two overlapping modes at +-1: every particle starts in the right one; mixing shares them out."""
    def energy(x):
        return -torch.logaddexp(-0.5 * ((x[:, 0] - 1) / 0.6) ** 2, -0.5 * ((x[:, 0] + 1) / 0.6) ** 2)

    n = 2000
    x = 1 + 0.6 * torch.randn(n, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    log_w = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.3
    start = _weighted(x, log_w)
    mixed = mix(start, energy, MALA(step_size=0.3), 400, block=100, seed=4)
    assert mixed.log_z == pytest.approx(start.log_z) and mixed.ess_fraction == pytest.approx(1.0)
    assert [s.value for s in mixed.diagnostics] == [100.0, 200.0, 300.0, 400.0]
    assert all(s.stage == "mixing" and s.name == "moves" for s in mixed.diagnostics)
    assert [s.resampled for s in mixed.diagnostics] == [True, False, False, False]  # once, before the moves
    # by symmetry half the mass sits at x < 0; particles nearly independent after 400 moves
    left = float((mixed.particles[:, 0] < 0).double().mean())
    assert abs(left - 0.5) < 5 * math.sqrt(0.25 / n) * 2  # x2: the chains are not fully independent


def test_resampled_keeps_log_z_and_lineages_and_equalises_weights():
    x = torch.arange(6, dtype=torch.float64)[:, None]
    log_w = torch.tensor([0.0, -math.inf, 1.0, 2.0, -math.inf, 0.5], dtype=torch.float64)
    start = _weighted(x, log_w)
    out = resampled(start.state, "systematic", torch.Generator().manual_seed(0))
    assert out.log_z == start.log_z and torch.allclose(out.log_weights, torch.full((6,), start.log_z, dtype=torch.float64))
    assert set(out.origin.tolist()) <= {0, 2, 3, 5} and torch.equal(out.particles.x[:, 0].long(), out.origin)
    with pytest.raises(ValueError, match="resampler"):
        mix(start, lambda y: y[:, 0] ** 2, MALA(), 10, resampler="bogus")
    with pytest.raises(ValueError, match="n_moves"):
        mix(start, lambda y: y[:, 0] ** 2, MALA(), 0)
