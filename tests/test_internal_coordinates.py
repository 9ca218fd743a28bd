"""Internal coordinates: the Z-matrix from the bond graph, the maps both ways, log|det J|, the
normaliser constant, chirality, rings, bad input and dtypes, and InternalSpace."""
import json
import math
from pathlib import Path

import mdtraj
import numpy as np
import openmm.app
import pytest
import torch

from boltzgen import systems
from boltzgen.coordinates import is_l_amino_acid, mdtraj_topology, pairwise_distances, rmsd
from boltzgen.coordinates.internal import (InternalSpace, ZMatrix, internal_from_positions, log_det_jacobian,
                                           log_rigid_body_factor, positions_from_internal, zmatrix)


# ---- molecules ----------------------------------------------------------------------------------
def make_topology(elements, bonds):
    top = mdtraj.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    atoms = [top.add_atom(f"{e}{i}", mdtraj.element.get_by_symbol(e), residue) for i, e in enumerate(elements)]
    for i, j in bonds:
        top.add_bond(atoms[i], atoms[j])
    return top


def benzene():
    """C6H6: a 6-ring (C0..C5) with one hydrogen on each carbon, planar with a little noise (nm)."""
    top = make_topology(["C"] * 6 + ["H"] * 6, [(i, (i + 1) % 6) for i in range(6)] + [(i, i + 6) for i in range(6)])
    angle = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(angle), np.sin(angle), np.zeros(6)], 1)
    xyz = np.concatenate([0.139 * ring, 0.247 * ring])
    noise = 0.01 * np.random.default_rng(0).standard_normal((4, 12, 3))
    return top, torch.tensor(xyz[None] + noise)


def propanol_like(n=3, seed=0):
    """A small branched molecule (C-C(-O)-C with hydrogens; 8 atoms) at random-ish positions."""
    top = make_topology(["C", "C", "O", "C", "H", "H", "H", "H"],
                        [(0, 1), (1, 2), (1, 3), (0, 4), (0, 5), (2, 6), (3, 7)])
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.13, 0.0], [0.2, -0.07, 0.12],
                         [-0.04, 0.1, 0.03], [-0.04, -0.05, -0.09], [0.3, 0.14, 0.02], [0.3, -0.07, 0.14]],
                        dtype=torch.float64)
    return top, base + 0.015 * torch.randn(n, 8, 3, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def aldp():
    target = systems.load("alanine-dipeptide")
    x0 = torch.tensor(np.asarray(target.positions), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = x0 + 0.01 * torch.randn(5, *x0.shape, generator=g, dtype=torch.float64)
    return target, torch.cat([x0[None], x])


def wrapped(a):
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


# ---- the Z-matrix -------------------------------------------------------------------------------
def test_zmatrix_of_alanine_dipeptide_is_deterministic_and_backbone_first(aldp):
    target, _ = aldp
    top = mdtraj_topology(target)
    zm = zmatrix(target)
    assert zm == zmatrix(top) and zm.n_atoms == 22
    heavy = [a.element.symbol != "H" for a in top.atoms]
    n_heavy = sum(heavy)
    assert all(heavy[a] for a in zm.order[:n_heavy])  # heavy atoms first, then hydrogens
    assert zm.order[:7] == (1, 4, 6, 8, 14, 16, 18)  # CH3(ACE) C N CA C N C(NME): the backbone
    # phi = C(ACE)-N-CA-C and psi = N-CA-C-N(NME) are coordinates, either direction.
    phi, psi = zm.dihedral_index(4, 6, 8, 14), zm.dihedral_index(6, 8, 14, 16)
    assert zm.dihedral_index(14, 8, 6, 4) == phi and zm.dihedral_index(16, 14, 8, 6) == psi
    # Siblings after the first use it as their l: HA and CB are placed relative to C about CA-N.
    rows = {tuple(r[:3]): tuple(r[1:]) for r in zm.dihedral_atoms.tolist()}
    assert rows[(9, 8, 6)] == (8, 6, 14) and rows[(10, 8, 6)] == (8, 6, 14)
    assert zm.depth < zm.n_atoms  # placed in generations, not one atom at a time
    with pytest.raises(ValueError, match="not a coordinate"):
        zm.dihedral_index(5, 4, 6, 8)  # omega-like O-C-N-CA: not one


def test_protein_main_chain_ends_make_every_phi_and_psi_a_coordinate():
    # First chain of OpenMM's test.pdb (35 residues, no caps): its longest path runs from a
    # Leu1 side chain to a Phe35 side chain, so two terminal backbone dihedrals are not
    # coordinates by default; ends = (N of residue 1, C of residue 35) makes them all coordinates.
    pdb = openmm.app.PDBFile(str(Path(openmm.app.__file__).parent / "data" / "test.pdb"))
    top = mdtraj.Topology.from_openmm(pdb.topology).subset(np.arange(582))
    assert top.n_residues == 35
    traj = mdtraj.Trajectory(np.asarray(pdb.getPositions(asNumpy=True)._value)[None, :582], top)
    rows = np.concatenate([mdtraj.compute_phi(traj)[0], mdtraj.compute_psi(traj)[0]])

    def missing(zm):
        return sum(not (zm.dihedral_atoms == r).all(1).any() and not (zm.dihedral_atoms == r[::-1]).all(1).any()
                   for r in rows)

    assert missing(zmatrix(top)) == 2
    zm = zmatrix(top, ends=(int(top.select("resid 0 and name N")[0]), int(top.select("resid 34 and name C")[0])))
    assert missing(zm) == 0 and zm.depth < 120
    x = torch.tensor(traj.xyz, dtype=torch.float64)
    y = positions_from_internal(*internal_from_positions(x, zm), zm)
    assert float(rmsd(y, x[0])) < 1e-10


def test_bonds_angles_dihedrals_match_mdtraj(aldp):
    target, x = aldp
    zm = zmatrix(target)
    bonds, angles, dihedrals = internal_from_positions(x, zm)
    assert bonds.shape == (6, 21) and angles.shape == (6, 20) and dihedrals.shape == (6, 19)
    traj = mdtraj.Trajectory(x.numpy(), mdtraj_topology(target))  # mdtraj computes in float32
    np.testing.assert_allclose(bonds.numpy(), mdtraj.compute_distances(traj, zm.bond_atoms), atol=1e-6)
    np.testing.assert_allclose(angles.numpy(), mdtraj.compute_angles(traj, zm.angle_atoms), atol=2e-6)
    reference = torch.tensor(mdtraj.compute_dihedrals(traj, zm.dihedral_atoms), dtype=torch.float64)
    assert wrapped(dihedrals - reference).abs().max() < 2e-6
    assert (dihedrals > -math.pi).all() and (dihedrals <= math.pi).all()
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    assert wrapped(dihedrals[:, zm.dihedral_index(4, 6, 8, 14)] - torch.tensor(phi[:, 0])).abs().max() < 2e-6
    assert wrapped(dihedrals[:, zm.dihedral_index(6, 8, 14, 16)] - torch.tensor(psi[:, 0])).abs().max() < 2e-6


# ---- round trips and chirality ------------------------------------------------------------------
def test_round_trips_and_canonical_frame(aldp):
    target, x = aldp
    space = InternalSpace.fit(target, x)
    z = space.to_flat(x)
    assert z.shape == (6, space.dim) and space.dim == 60
    y = space.to_positions(z)
    assert y.abs().sum(1).max() < 1e6 and y.mean(1).abs().max() < 1e-12  # centroid-free
    torch.testing.assert_close(pairwise_distances(y), pairwise_distances(x), atol=1e-10, rtol=0)
    for a, b in zip(y, x):  # a proper rotation and a translation take each back (no mirror)
        assert float(rmsd(a[None], b)) < 1e-10
    assert is_l_amino_acid(y, target).all()
    # z -> x -> z exactly, including dihedrals beyond (-pi, pi] (they come back wrapped).
    g = torch.Generator().manual_seed(3)
    z = z + 0.5 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    z[:, space.periodic] = 4 * math.pi * (torch.rand(6, 19, generator=g, dtype=torch.float64) - 0.5)
    back = space.to_flat(space.to_positions(z))
    assert (back - space.wrap(z))[:, ~space.periodic].abs().max() < 1e-10
    assert wrapped(back - z)[:, space.periodic].abs().max() < 1e-10
    # The low-level map: canonical frame.
    bonds, angles, dihedrals = internal_from_positions(x, space.zmatrix)
    c = positions_from_internal(bonds, angles, dihedrals, space.zmatrix)
    first, second, third = space.zmatrix.order[:3]
    assert c[:, first].abs().max() == 0 and c[:, second, 1:].abs().max() == 0 and (c[:, second, 0] > 0).all()
    assert c[:, third, 2].abs().max() == 0 and (c[:, third, 1] > 0).all()


def test_mirror_image_negates_every_dihedral_and_is_not_folded(aldp):
    target, x = aldp
    zm = zmatrix(target)
    mirror = x * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    b, a, d = internal_from_positions(x, zm)
    bm, am, dm = internal_from_positions(mirror, zm)
    torch.testing.assert_close(bm, b)
    torch.testing.assert_close(am, a)
    assert wrapped(dm + d).abs().max() < 1e-12
    space = InternalSpace.fit(zm, x)
    back = space.to_positions(space.to_flat(mirror))
    assert float(rmsd(back[:1], mirror[0])) < 1e-10  # the D molecule comes back as D
    assert not is_l_amino_acid(back, target).any()
    assert float(rmsd(back[:1], x[0])) > 0.05


def test_ring_molecule_round_trips_with_closure_bond_implied():
    top, x = benzene()
    zm = zmatrix(top)
    bonds = {tuple(sorted(b)) for b in zm.bond_atoms.tolist()}
    ring = {tuple(sorted((i, (i + 1) % 6))) for i in range(6)}
    assert len(ring - bonds) == 1  # a spanning tree: one ring bond is not a coordinate
    y = positions_from_internal(*internal_from_positions(x, zm), zm)
    torch.testing.assert_close(pairwise_distances(y), pairwise_distances(x), atol=1e-12, rtol=0)
    assert float(rmsd(y[:1], x[0])) < 1e-10  # a proper rigid motion away: same chirality
    # A fused bicyclic graph (naphthalene skeleton) at random positions round-trips as well.
    top2 = make_topology(["C"] * 10, [(i, i + 1) for i in range(9)] + [(9, 0), (0, 5), (4, 9)])
    x2 = 0.2 * torch.randn(3, 10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zm2 = zmatrix(top2)
    y2 = positions_from_internal(*internal_from_positions(x2, zm2), zm2)
    torch.testing.assert_close(pairwise_distances(y2), pairwise_distances(x2), atol=1e-10, rtol=0)


# ---- the Jacobian and the normaliser ------------------------------------------------------------
def _full_log_det(zm, x):
    """ln|det| of (c, omega, q) -> R(omega) X(q) + c at omega = 0, by autograd (3N x 3N)."""
    b, a, d = internal_from_positions(x[None], zm)
    nb, na = b.shape[1], a.shape[1]

    def f(v):
        c, w, q = v[:3], v[3:6], v[6:]
        skew = torch.zeros(3, 3, dtype=v.dtype)
        skew[0, 1], skew[0, 2], skew[1, 2] = -w[2], w[1], -w[0]
        rot = torch.linalg.matrix_exp(skew - skew.T)
        X = positions_from_internal(q[None, :nb], q[None, nb:nb + na], q[None, nb + na:], zm)[0]
        return (X @ rot.T + c).reshape(-1)

    v = torch.cat([torch.zeros(6, dtype=x.dtype), b[0], a[0], d[0]])
    jac = torch.autograd.functional.jacobian(f, v)
    assert jac.shape == (3 * zm.n_atoms, 3 * zm.n_atoms)
    return float(torch.linalg.slogdet(jac)[1]), float(log_det_jacobian(b, a)[0])


def test_log_det_jacobian_matches_autograd(aldp):
    top, x = propanol_like()
    zm = zmatrix(top)
    for config in x:
        full, formula = _full_log_det(zm, config)
        assert full == pytest.approx(formula, abs=1e-9)
    target, xa = aldp
    full, formula = _full_log_det(zmatrix(target), xa[1])
    assert full == pytest.approx(formula, abs=1e-8)


def _harmonic_triatomic():
    r0, sr, t0, st = 0.15, 0.03, 1.9, 0.3  # nm, nm, rad, rad

    def u(x):
        v1, v2 = x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]
        r1, r2 = v1.norm(dim=-1), v2.norm(dim=-1)
        theta = torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(-1))
        return ((r1 - r0) ** 2 + (r2 - r0) ** 2) / (2 * sr**2) + (theta - t0) ** 2 / (2 * st**2)

    # integral exp(-u) r1^2 r2^2 sin(theta) dq by quadrature (it factorises).
    r = np.linspace(0.0, 0.5, 200001)
    theta = np.linspace(0.0, np.pi, 200001)
    log_q = (2 * math.log(np.trapezoid(r**2 * np.exp(-(r - r0) ** 2 / (2 * sr**2)), r))
             + math.log(np.trapezoid(np.sin(theta) * np.exp(-(theta - t0) ** 2 / (2 * st**2)), theta)))
    top = make_topology(["C", "O", "C"], [(0, 1), (1, 2)])
    return top, u, (r0, sr, t0, st), log_q


def test_normaliser_constant_against_cartesian_importance_sampling():
    top, u, _, log_q = _harmonic_triatomic()
    predicted = log_rigid_body_factor(3) + log_q  # ln Z_cart = ln(8 pi^2 N^-3/2) + ln integral
    # Cartesian estimate: an isotropic Gaussian on the centroid-free subspace (dimension 6).
    sigma, m = 0.08, 300000
    y = sigma * torch.randn(m, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = y - y.mean(1, keepdim=True)  # an orthogonal projection: still N(0, sigma^2) on the subspace
    log_proposal = -(y**2).sum((1, 2)) / (2 * sigma**2) - 3 * math.log(2 * math.pi * sigma**2)
    log_w = -u(y) - log_proposal
    estimate = float(torch.logsumexp(log_w, 0) - math.log(m))
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    error = math.sqrt((m / ess - 1) / m)
    assert error < 0.02
    assert abs(estimate - predicted) < 4 * error
    assert abs(estimate - (predicted + math.log(2))) > 10 * error  # a factor 2 would show


def test_flat_energy_integrates_to_the_cartesian_normaliser():
    top, u, (r0, sr, t0, st), log_q = _harmonic_triatomic()
    zm = zmatrix(top)
    space = InternalSpace(zm, (0.14, 0.16), (0.02, 0.035), (1.8,), (0.4,))
    # A grid in z wide enough to cross the domain edge (bond <= 0): exp(-energy) is 0 there.
    grid = torch.linspace(-9.0, 9.0, 121, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid, grid)
    energy = space.flat_energy(u)(z)
    assert torch.isinf(energy).any() and not torch.isnan(energy).any()
    log_z = float(torch.logsumexp(-energy, 0)) + 3 * math.log(float(grid[1] - grid[0]))
    assert log_z == pytest.approx(log_rigid_body_factor(3) + log_q, abs=1e-5)


def test_space_log_det_includes_scales_and_constant(aldp):
    target, x = aldp
    space = InternalSpace.fit(target, x)
    z = space.to_flat(x)
    b, a, _ = internal_from_positions(x, space.zmatrix)
    expected = (log_det_jacobian(b, a) + sum(map(math.log, space.bond_scale))
                + sum(map(math.log, space.angle_scale)) + math.log(8 * math.pi**2) - 1.5 * math.log(22))
    torch.testing.assert_close(space.log_det_jacobian(z), expected)
    outside = z.clone()
    outside[0, 0] = -1.0 - space.bond_mean[0] / space.bond_scale[0]  # a negative bond
    outside[1, 21] = (math.pi + 0.1 - space.angle_mean[0]) / space.angle_scale[0]  # an angle > pi
    ld = space.log_det_jacobian(outside)
    assert ld[0] == -math.inf and ld[1] == -math.inf and torch.isfinite(ld[2:]).all()
    energy = space.flat_energy(lambda pos: torch.zeros(pos.shape[0], dtype=pos.dtype))
    assert torch.isinf(energy(outside)[:2]).all()


# ---- InternalSpace ------------------------------------------------------------------------------
def test_space_protocol_fit_wrap_and_config(aldp):
    target, x = aldp
    space = InternalSpace.fit(target, x)
    assert space.n_atoms == 22 and space.dim == space.subspace_dim == 60 and space.projection is None
    assert space.periodic.dtype == torch.bool and space.periodic.shape == (60,) and int(space.periodic.sum()) == 19
    assert space.dihedral_index(4, 6, 8, 14) == 41 + space.zmatrix.dihedral_index(4, 6, 8, 14)
    z = space.to_flat(x)
    torch.testing.assert_close(z[:, :41].mean(0), torch.zeros(41, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z[:, :41].std(0, unbiased=False), torch.ones(41, dtype=torch.float64))
    assert (z[:, 41:] >= -math.pi).all() and (z[:, 41:] < math.pi).all()
    shifted = z.clone()
    shifted[:, 41:] += 2 * math.pi
    shifted[:, :41] += 7.0
    wrapped_z = space.wrap(shifted)
    torch.testing.assert_close(wrapped_z[:, 41:], z[:, 41:])
    torch.testing.assert_close(wrapped_z[:, :41], z[:, :41] + 7.0)
    assert space.wrap(torch.full((1, 60), math.pi, dtype=torch.float64))[0, 41:].eq(-math.pi).all()
    # Weighted statistics: weight 0 drops a configuration.
    w = torch.tensor([0.0, 1.0, 2.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    weighted = InternalSpace.fit(space.zmatrix, x, weights=w)
    b, _, _ = internal_from_positions(x, space.zmatrix)
    mean = (w[:, None] * b).sum(0) / w.sum()
    torch.testing.assert_close(torch.tensor(weighted.bond_mean, dtype=torch.float64), mean)
    scale = ((w[:, None] * (b - mean) ** 2).sum(0) / w.sum()).sqrt()
    torch.testing.assert_close(torch.tensor(weighted.bond_scale, dtype=torch.float64), scale)
    # Model files: JSON round trip.
    config = json.loads(json.dumps(space.config()))
    assert config["kind"] == "internal" and InternalSpace.from_config(config) == space


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors(aldp):
    with pytest.raises(ValueError, match="at least 3 atoms"):
        zmatrix(make_topology(["C", "O"], [(0, 1)]))
    with pytest.raises(ValueError, match="not connected: atoms 2, 3"):
        zmatrix(make_topology(["C", "O", "C", "O"], [(0, 1), (2, 3)]))
    with pytest.raises(ValueError, match="not connected"):
        zmatrix(make_topology(["C", "C", "C"], []))
    with pytest.raises(TypeError, match="topology"):
        zmatrix("not a topology")
    with pytest.raises(ValueError, match="ends must be two different heavy"):
        zmatrix(make_topology(["C", "C", "H"], [(0, 1), (1, 2)]), ends=(0, 2))
    with pytest.raises(ValueError, match="permutation"):
        ZMatrix((0, 1, 1), ((-1, -1, -1), (0, -1, -1), (1, 0, -1)))
    with pytest.raises(ValueError, match="placed before"):
        ZMatrix((0, 1, 2, 3), ((-1, -1, -1), (0, -1, -1), (1, 0, -1), (2, 1, 3)))
    target, x = aldp
    zm = zmatrix(target)
    with pytest.raises(ValueError, match=r"x has 21 atoms but the system has 22"):
        internal_from_positions(x[:, :21], zm)
    with pytest.raises(ValueError, match=r"x must have shape"):
        internal_from_positions(x[0], zm)
    with pytest.raises(TypeError, match="zmat"):
        internal_from_positions(x, "zm")
    b, a, d = internal_from_positions(x, zm)
    with pytest.raises(ValueError, match=r"bonds must have shape \(n, 21\)"):
        positions_from_internal(b[:, :20], a, d, zm)
    with pytest.raises(ValueError, match="same number of rows"):
        positions_from_internal(b, a[:2], d, zm)
    with pytest.raises(ValueError, match="angles"):
        log_det_jacobian(b, a[:, :5])
    space = InternalSpace.fit(zm, x)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 60\)"):
        space.to_positions(torch.zeros(2, 66))
    with pytest.raises(ValueError, match="positions has 21 atoms"):
        space.to_flat(x[:, :21])
    with pytest.raises(ValueError, match="do not vary"):
        InternalSpace.fit(zm, x[:1].repeat(3, 1, 1))
    with pytest.raises(ValueError, match="weights must have shape"):
        InternalSpace.fit(zm, x, weights=torch.ones(2))
    with pytest.raises(ValueError, match="bond_scale must have 21 entries"):
        InternalSpace(zm, space.bond_mean, space.bond_scale[:20], space.angle_mean, space.angle_scale)
    with pytest.raises(ValueError, match="kind 'internal'"):
        InternalSpace.from_config({"kind": "molecular", "n_atoms": 22, "scale": 1.0})


# ---- dtype, device and gradients ----------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_input(aldp, dtype, device):
    target, x = aldp
    space = InternalSpace.fit(target, x)
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    z = space.to_flat(x)
    bonds, angles, dihedrals = internal_from_positions(x, space.zmatrix)
    y = space.to_positions(z)
    ld = space.log_det_jacobian(z)
    for t in (z, bonds, angles, dihedrals, y, ld, positions_from_internal(bonds, angles, dihedrals, space.zmatrix)):
        assert t.dtype == dtype and t.device == x.device
    (y.square().sum() + ld.sum()).backward()  # differentiable end to end
    assert x.grad is not None and torch.isfinite(x.grad).all()
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(pairwise_distances(y), pairwise_distances(x), atol=tolerance, rtol=0)


def test_gradients_are_correct_in_float64():
    top, x = propanol_like(2)
    zm = zmatrix(top)
    b, a, d = internal_from_positions(x, zm)
    q = tuple(t.detach().requires_grad_(True) for t in (b, a, d))
    assert torch.autograd.gradcheck(lambda *q: positions_from_internal(*q, zm), q)
    assert torch.autograd.gradcheck(lambda x: internal_from_positions(x, zm), (x.detach().requires_grad_(True),))


def _reference_positions(bonds, angles, dihedrals, zm):
    """Textbook NeRF, one atom at a time, by plain autograd: the check for the hand-written backward."""
    n = bonds.shape[0]
    zero = torch.zeros(n, dtype=bonds.dtype)
    first, second, third = zm.order[:3]
    x = {first: torch.stack([zero, zero, zero], 1), second: torch.stack([bonds[:, 0], zero, zero], 1)}
    j = zm.references[2][0]
    sign = 1.0 if j == first else -1.0
    x[third] = x[j] + torch.stack([sign * bonds[:, 1] * torch.cos(angles[:, 0]),
                                   bonds[:, 1] * torch.sin(angles[:, 0]), zero], 1)
    for p in range(3, zm.n_atoms):
        j, k, l = zm.references[p]
        r, theta, phi = bonds[:, p - 1, None], angles[:, p - 2, None], dihedrals[:, p - 3, None]
        bc = torch.nn.functional.normalize(x[j] - x[k], dim=1)
        normal = torch.nn.functional.normalize(torch.linalg.cross(x[k] - x[l], bc), dim=1)
        m = torch.linalg.cross(normal, bc)
        x[zm.order[p]] = x[j] + r * (-torch.cos(theta) * bc + torch.sin(theta) * (torch.cos(phi) * m
                                                                                  + torch.sin(phi) * normal))
    return torch.stack([x[a] for a in range(zm.n_atoms)], 1)


@pytest.mark.parametrize("molecule", ["propanol", "third_on_first", "alanine_dipeptide"])
def test_hand_written_backward_matches_autograd(aldp, molecule):
    # positions_from_internal is a torch.autograd.Function with a hand-written backward pass
    # (the third atom bonded to the second in zmatrix's Z-matrices, to the first in the other).
    if molecule == "alanine_dipeptide":
        target, x = aldp
        zm = zmatrix(target)
    else:
        top, x = propanol_like(4)
        zm = zmatrix(top)
        if molecule == "third_on_first":
            zm = ZMatrix((0, 1, 4, 2, 3, 5, 6, 7), ((-1, -1, -1), (0, -1, -1), (0, 1, -1), (1, 0, 4), (1, 0, 2),
                                                    (0, 1, 2), (2, 1, 0), (3, 1, 0)))
    q = tuple(t.detach() for t in internal_from_positions(x, zm))
    cotangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def value_and_gradient(f, dtype=torch.float64):
        v = tuple(t.to(dtype).requires_grad_(True) for t in q)
        y = f(*v)
        return y, torch.autograd.grad((y * cotangent.to(dtype)).sum(), v)

    y, grads = value_and_gradient(lambda *v: positions_from_internal(*v, zm))
    y_ref, grads_ref = value_and_gradient(lambda *v: _reference_positions(*v, zm))
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-10)
    y32, grads32 = value_and_gradient(lambda *v: positions_from_internal(*v, zm), torch.float32)
    torch.testing.assert_close(y32.double(), y, atol=1e-5, rtol=0)
    for g32, g in zip(grads32, grads):
        assert g32.dtype == torch.float32
        torch.testing.assert_close(g32.double(), g, atol=1e-4 * float(g.abs().max()), rtol=0)
    rows = tuple(t[:2].clone().requires_grad_(True) for t in q)
    assert torch.autograd.gradcheck(lambda *v: positions_from_internal(*v, zm), rows)
    space = InternalSpace.fit(zm, x)  # to_positions: the centred variant of the same Function
    assert torch.autograd.gradcheck(space.to_positions, (space.to_flat(x[:2]).requires_grad_(True),))
    empty = tuple(t[:0].clone().requires_grad_(True) for t in q)  # an empty batch
    assert [g.shape for g in torch.autograd.grad(positions_from_internal(*empty, zm).sum(), empty)] == [
        t.shape for t in empty]
    # One configuration, an expanded upstream gradient (from .sum()): left as it was given.
    v = tuple(t[:1].clone().requires_grad_(True) for t in q)
    upstream = torch.ones(1, zm.n_atoms, 3, dtype=torch.float64)
    (g_bonds,) = torch.autograd.grad(positions_from_internal(*v, zm), v[0], upstream)
    assert upstream.eq(1).all()
    torch.testing.assert_close(g_bonds, torch.autograd.grad(_reference_positions(*v, zm).sum(), v[0])[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_space_log_det_backward_matches_autograd_and_is_zero_off_the_domain(aldp, dtype):
    # InternalSpace.log_det_jacobian is a torch.autograd.Function with a hand-written backward.
    target, x = aldp
    space = InternalSpace.fit(target, x)
    z = space.to_flat(x).to(dtype)
    z[0, 0] = -1.0 - space.bond_mean[0] / space.bond_scale[0]  # a negative bond
    z[1, 21] = (math.pi + 0.1 - space.angle_mean[0]) / space.angle_scale[0]  # an angle > pi
    z[2, 0] = -space.bond_mean[0] / space.bond_scale[0]  # a bond of (about) 0: 2 / r would not be finite
    v = z.clone().requires_grad_(True)
    value = space.log_det_jacobian(v)
    (grad,) = torch.autograd.grad((value[3:] * torch.arange(1.0, 4.0, dtype=dtype)).sum() + value[:3].sum(), v)
    b, a, _ = space.to_internal(v)
    reference = log_det_jacobian(b[3:], a[3:]) + space._log_det_constant
    (grad_ref,) = torch.autograd.grad((reference * torch.arange(1.0, 4.0, dtype=dtype)).sum(), v)
    assert value.dtype == grad.dtype == dtype and grad.is_contiguous()
    assert torch.isinf(value[:3]).all() and (value[:3] < 0).all()
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(value[3:], reference.detach(), **tolerance)
    assert grad[:3].eq(0).all() and grad[:, 41:].eq(0).all()
    torch.testing.assert_close(grad[3:], grad_ref[3:], **tolerance)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(space.log_det_jacobian, (z[3:].clone().requires_grad_(True),))
        assert torch.autograd.gradcheck(space.flat_energy(lambda pos: pos.square().sum((1, 2))),
                                        (z[3:5].clone().requires_grad_(True),))


def test_triatomic_space_gradients():
    # Three atoms: the canonical frame only, no NeRF generation.
    top, u, _, _ = _harmonic_triatomic()
    space = InternalSpace(zmatrix(top), (0.14, 0.16), (0.02, 0.035), (1.8,), (0.4,))
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(space.to_positions, (z,))
    assert torch.autograd.gradcheck(space.flat_energy(u), (z,))
