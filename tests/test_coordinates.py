"""Coordinates: centre of mass, Kabsch alignment and RMSD (vs mdtraj and scipy), chirality of
alpha carbons, pairwise distances; invariances, gradients and bad input."""
import mdtraj
import numpy as np
import openmm
import pytest
import torch
from scipy.spatial.transform import Rotation

from boltzgen import systems
from boltzgen.analysis import dihedrals
from boltzgen.coordinates import (_kabsch, align, alpha_carbon_centers, center_of_mass, chirality,
                                  is_l_amino_acid, masses_from_system, pairwise_distances,
                                  remove_center_of_mass, rmsd)
from boltzgen.smc.energy import mean_free_projection

# mdtraj works in float32: on ~1 nm coordinates its rounding is ~1e-7 nm per coordinate, so 1e-5 nm
# leaves room while any wrong rotation (errors ~0.01-0.1 nm) is far outside it.
MDTRAJ_TOL = 1e-5
ALA_CENTERS = np.array([[8, 6, 14, 10]])  # CA, N, C, CB of alanine dipeptide's ALA residue


@pytest.fixture(scope="module")
def ala():
    return systems.load("alanine-dipeptide", platform="Reference")


@pytest.fixture(scope="module")
def md_top(ala):
    return mdtraj.Topology.from_openmm(ala.topology)


@pytest.fixture(scope="module")
def ref(ala):
    return torch.tensor(ala.positions, dtype=torch.float64)


def _rotations(n, seed):
    """n random proper rotations (n, 3, 3) float64 (QR of Gaussian matrices, det fixed to +1)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]
    return q * torch.sign(torch.linalg.det(q))[:, None, None]


def _moved(x, seed):
    """x rotated and translated at random, one rigid motion per configuration."""
    rot = _rotations(x.shape[0], seed)
    shift = torch.randn(x.shape[0], 1, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    return torch.einsum("nij,naj->nai", rot, x) + shift


def _noisy(ref, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return ref + scale * torch.randn(n, *ref.shape, generator=g, dtype=torch.float64)


# ---- centre of mass ------------------------------------------------------------------------------
def test_masses_from_system(ala):
    m = masses_from_system(ala.system)
    expected = [a.element.mass.value_in_unit(openmm.unit.dalton) for a in ala.topology.atoms()]
    assert m.dtype == torch.float64 and m.shape == (22,)
    assert np.allclose(m.numpy(), expected, rtol=1e-6)
    assert torch.equal(masses_from_system(ala), m)  # a target holding .system works too
    with pytest.raises(TypeError, match="system"):
        masses_from_system("not a system")


def test_center_of_mass_weighted_and_centroid(ala, ref):
    x = _noisy(ref, 5, 0.05, 0)
    m = masses_from_system(ala.system)
    com = center_of_mass(x, m)
    assert com.shape == (5, 3) and com.dtype == torch.float64
    assert torch.allclose(com, (m[:, None] * x).sum(1) / m.sum(), atol=1e-14)
    assert torch.allclose(center_of_mass(x), x.mean(1), atol=1e-14)
    # uniform masses of any scale are the centroid
    assert torch.allclose(center_of_mass(x, torch.full((22,), 7.0)), x.mean(1), atol=1e-14)


def test_remove_center_of_mass(ala, ref):
    x = _noisy(ref, 4, 0.05, 1)
    m = masses_from_system(ala.system)
    assert center_of_mass(remove_center_of_mass(x, m), m).abs().max() < 1e-14
    centred = remove_center_of_mass(x)
    assert centred.shape == x.shape and centred.abs().max() > 0.1  # the molecule itself is kept
    # the unweighted removal is the sampler's centre-of-mass-free projection, exactly
    project = mean_free_projection(22)
    assert torch.allclose(centred.reshape(4, -1), project(x.reshape(4, -1)), atol=1e-14)
    # float32 in, float32 out; pairwise distances untouched
    assert remove_center_of_mass(x.float()).dtype == torch.float32
    assert torch.allclose(pairwise_distances(centred), pairwise_distances(x), atol=1e-12)


def test_remove_center_of_mass_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    masses = torch.tensor([1.0, 12.0, 14.0, 16.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda y: remove_center_of_mass(y, masses), (x,))
    assert torch.autograd.gradcheck(remove_center_of_mass, (x,))


# ---- alignment and RMSD --------------------------------------------------------------------------
def test_align_and_rmsd_match_mdtraj(md_top, ref):
    x = _moved(_noisy(ref, 8, 0.03, 3), seed=4)
    xs = x.numpy().astype(np.float32)
    def traj(xyz):  # a fresh copy each time: mdtraj.rmsd centres both trajectories in place
        return mdtraj.Trajectory(np.array(xyz, dtype=np.float32), md_top)

    expected_rmsd = mdtraj.rmsd(traj(xs), traj(ref.numpy()[None]), 0)
    expected_xyz = traj(xs).superpose(traj(ref.numpy()[None]), 0).xyz
    ours = rmsd(x, ref)
    assert ours.dtype == torch.float64 and ours.shape == (8,)
    assert np.abs(ours.numpy() - expected_rmsd).max() < MDTRAJ_TOL
    assert np.abs(align(x, ref).numpy() - expected_xyz).max() < MDTRAJ_TOL
    assert ours.min() > 0.01  # the noise is real, so the test could fail


def test_weighted_align_matches_scipy(ala, ref):
    x = _moved(_noisy(ref, 5, 0.04, 5), seed=6)
    m = masses_from_system(ala.system)
    w = (m / m.sum()).numpy()
    aligned = align(x, ref, m)
    ours = rmsd(x, ref, m)
    for k in range(5):
        xc = x[k].numpy() - w @ x[k].numpy()
        rc = ref.numpy() - w @ ref.numpy()
        rot, _ = Rotation.align_vectors(rc, xc, weights=w)  # rotation taking xc onto rc
        expected = rot.apply(xc) + w @ ref.numpy()
        assert np.abs(aligned[k].numpy() - expected).max() < 1e-10
        assert abs(ours[k].item() - np.sqrt(w @ ((expected - ref.numpy()) ** 2).sum(1))) < 1e-12
    # the mass-weighted and the plain RMSD are different quantities
    assert (ours - rmsd(x, ref)).abs().max() > 1e-4


def test_align_is_proper_and_never_reflects(ref):
    x = torch.cat([_noisy(ref, 3, 0.03, 7), -ref[None], ref[None] * torch.tensor([1.0, 1.0, -1.0])])
    w = torch.full((22,), 1 / 22, dtype=torch.float64)
    rot, _, _ = _kabsch(x, ref, w)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rot @ rot.mT, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    # a mirror image is one reflection away, but a rotation cannot superpose it on the L molecule
    assert rmsd(x[3:], ref).min() > 0.05
    assert torch.equal(chirality(align(x, ref), ALA_CENTERS), chirality(x, ALA_CENTERS))  # -1 stays -1


def test_align_rmsd_invariant_to_rigid_motions(ref):
    x = _noisy(ref, 6, 0.03, 8)
    moved = _moved(x, seed=9)
    assert torch.allclose(rmsd(moved, ref), rmsd(x, ref), atol=1e-12)
    assert torch.allclose(align(moved, ref), align(x, ref), atol=1e-12)
    # a rigidly moved reference is recovered exactly
    back = _moved(ref.expand(3, 22, 3), seed=10)
    assert rmsd(back, ref).max() < 1e-12
    assert torch.allclose(align(back, ref), ref.expand(3, 22, 3), atol=1e-12)
    # aligning to a moved reference moves the result with it
    r2 = _moved(ref[None], seed=11)[0]
    assert torch.allclose(rmsd(x, r2), rmsd(x, ref), atol=1e-12)


def test_align_keeps_dtype_and_rmsd_gradients_finite(ref):
    x = _noisy(ref, 3, 0.03, 12)
    assert align(x.float(), ref).dtype == torch.float32
    xg = x.clone().requires_grad_(True)
    rmsd(xg, ref).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().max() > 0


# ---- chirality -----------------------------------------------------------------------------------
def test_alpha_carbon_centers(ala, md_top):
    expected = ALA_CENTERS
    assert np.array_equal(alpha_carbon_centers(ala.topology), expected)
    assert np.array_equal(alpha_carbon_centers(md_top), expected)
    assert alpha_carbon_centers(ala).dtype == np.int64
    # glycine has no CB: no centre
    gly = md_top.copy()
    gly.residue(1).name = "GLY"
    for atom in list(gly.residue(1).atoms):
        if atom.name in ("CB", "HB1", "HB2", "HB3"):
            gly.delete_atom_by_index(atom.index)
    assert alpha_carbon_centers(gly).shape == (0, 4)
    with pytest.raises(ValueError, match="CB"):
        is_l_amino_acid(np.zeros((1, gly.n_atoms, 3)), gly)


def test_shipped_l_alanine_is_positive_and_mirror_flips(ala, ref):
    centers = alpha_carbon_centers(ala.topology)
    assert chirality(ref[None], centers).tolist() == [[1.0]]
    # an independent check that +1 is L: the zeta virtual torsion CA-N-C-CB is about +34 degrees
    # for L residues (PROCHECK; Morris et al. 1992), negative for D
    zeta = np.degrees(dihedrals(ref[None], centers).item())
    assert 20 < zeta < 50
    # both shipped set-ups (PDB and Amber inpcrd) are L
    ff96 = systems.load("alanine-dipeptide-ff96-implicit", platform="Reference")
    assert chirality(ff96.positions[None], alpha_carbon_centers(ff96.topology)).tolist() == [[1.0]]
    mirrors = torch.stack([-ref, ref * torch.tensor([1.0, -1.0, 1.0]), ref * torch.tensor([-1.0, 1.0, 1.0])])
    assert chirality(mirrors, centers).flatten().tolist() == [-1.0, -1.0, -1.0]
    x = torch.cat([ref[None], mirrors])
    assert is_l_amino_acid(x, ala.topology).tolist() == [True, False, False, False]
    # swapping two substituents flips the sign
    assert chirality(ref[None], centers[:, [0, 1, 3, 2]]).item() == -1.0


def test_chirality_invariant_under_rotations_and_flipped_by_reflections(ref):
    centers = np.array([[8, 6, 14, 10], [1, 0, 2, 3], [18, 16, 19, 20]])
    x = _noisy(ref, 10, 0.02, 13)
    signs = chirality(x, centers)
    assert signs.shape == (10, 3) and signs.dtype == torch.float64 and (signs.abs() == 1).all()
    assert torch.equal(chirality(_moved(x, seed=14), centers), signs)
    reflected = _moved(x, seed=15) * torch.tensor([1.0, 1.0, -1.0])
    assert torch.equal(chirality(reflected, centers), -signs)


# ---- pairwise distances --------------------------------------------------------------------------
def test_pairwise_distances_match_cdist_and_mdtraj(md_top, ref):
    x = _noisy(ref, 4, 0.05, 16)
    d = pairwise_distances(x)
    assert d.shape == (4, 22 * 21 // 2) and d.dtype == torch.float64
    i, j = torch.triu_indices(22, 22, 1)
    assert torch.allclose(d, torch.cdist(x, x)[:, i, j], atol=1e-12)
    pairs = np.stack([i.numpy(), j.numpy()], axis=1)
    expected = mdtraj.compute_distances(mdtraj.Trajectory(x.numpy().astype(np.float32), md_top), pairs)
    assert np.abs(d.numpy() - expected).max() < MDTRAJ_TOL
    assert d[:, 0].tolist() == torch.linalg.vector_norm(x[:, 0] - x[:, 1], dim=-1).tolist()  # (0, 1) first


def test_pairwise_distances_invariance_and_gradcheck(ref):
    x = _noisy(ref, 3, 0.05, 17)
    d = pairwise_distances(x)
    assert torch.allclose(pairwise_distances(_moved(x, seed=18)), d, atol=1e-12)
    assert torch.allclose(pairwise_distances(-x), d, atol=1e-12)  # reflections too
    small = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(19), dtype=torch.float64,
                        requires_grad=True)
    assert torch.autograd.gradcheck(pairwise_distances, (small,))
    assert pairwise_distances(x.float()).dtype == torch.float32


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [center_of_mass, remove_center_of_mass, pairwise_distances,
                                lambda x: align(x, np.zeros((22, 3))), lambda x: rmsd(x, np.zeros((22, 3))),
                                lambda x: chirality(x, [[0, 1, 2, 3]])])
def test_bad_positions_name_x(fn):
    with pytest.raises(ValueError, match=r"x must have shape \(n, n_atoms, 3\)"):
        fn(np.zeros((22, 3)))
    with pytest.raises(ValueError, match="x contains NaN"):
        fn(np.full((1, 22, 3), np.nan))
    with pytest.raises(TypeError, match="x"):
        fn("positions")


def test_bad_reference_and_masses(ala, ref):
    x = ref[None]
    with pytest.raises(ValueError, match=r"reference must have shape \(22, 3\)"):
        align(x, ref[:21])
    with pytest.raises(ValueError, match="reference must have shape"):
        rmsd(x, ref[None])
    with pytest.raises(ValueError, match="reference contains non-finite"):
        align(x, torch.full((22, 3), float("nan"), dtype=torch.float64))
    for fn in (center_of_mass, remove_center_of_mass, lambda y, m: align(y, ref, m), lambda y, m: rmsd(y, ref, m)):
        with pytest.raises(ValueError, match=r"masses must have shape \(22,\)"):
            fn(x, torch.ones(21))
        with pytest.raises(ValueError, match=r"masses must have shape \(22,\)"):
            fn(x, torch.ones(22, 1))
        with pytest.raises(ValueError, match="masses must be finite and non-negative"):
            fn(x, -masses_from_system(ala.system))
        with pytest.raises(ValueError, match="masses must not all be zero"):
            fn(x, torch.zeros(22))


def test_bad_centers_and_topology(ala, ref):
    x = ref[None]
    with pytest.raises(ValueError, match=r"centers must have shape \(m, 4\)"):
        chirality(x, [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"centers must be indices in \[0, 22\)"):
        chirality(x, [[0, 1, 2, 22]])
    with pytest.raises(TypeError, match="centers must hold integer"):
        chirality(x, [[0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="x has 21 atoms"):
        is_l_amino_acid(ref[None, :21], ala.topology)
    with pytest.raises(TypeError, match="topology"):
        alpha_carbon_centers("ALA")
