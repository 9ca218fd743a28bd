"""Dihedrals: agreement with mdtraj, sign convention, gradients, backbone indices, bad input."""
import math

import mdtraj
import numpy as np
import openmm.app
import pytest
import torch

from boltzgen import systems
from boltzgen.analysis import backbone_atoms, dihedrals, phi_psi

# mdtraj computes in float32; its rounding error on O(1 nm) coordinates is ~1e-7 rad away from
# near-collinear atoms, so 1e-5 rad leaves room while still catching any real mistake.
TOL = 1e-5


def _circular_diff(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, np.float64) - np.asarray(b, np.float64)))))


@pytest.fixture(scope="module")
def ala():
    return systems.load("alanine-dipeptide")


@pytest.fixture(scope="module")
def md_top(ala):
    return mdtraj.Topology.from_openmm(ala.topology)


def test_random_configurations_match_mdtraj(md_top):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, md_top.n_atoms, 3)).astype(np.float32)  # mdtraj's precision, exactly
    atoms = np.array([rng.choice(md_top.n_atoms, 4, replace=False) for _ in range(30)])
    ours = dihedrals(x, atoms)
    ref = mdtraj.compute_dihedrals(mdtraj.Trajectory(x, md_top), atoms)
    assert ours.dtype == torch.float64 and ours.shape == (40, 30)
    assert _circular_diff(ours.numpy(), ref).max() < TOL
    assert (ours > -math.pi).all() and (ours <= math.pi).all()


def test_perturbed_alanine_dipeptide_phi_psi_match_mdtraj(ala, md_top):
    rng = np.random.default_rng(2)
    x = (ala.positions[None] + 0.02 * rng.normal(size=(20, 22, 3))).astype(np.float32)
    angles = phi_psi(torch.from_numpy(x), ala.topology)
    assert angles.shape == (20, 1, 2) and angles.dtype == torch.float64
    traj = mdtraj.Trajectory(x, md_top)
    phi_ref, psi_ref = mdtraj.compute_phi(traj)[1][:, 0], mdtraj.compute_psi(traj)[1][:, 0]
    assert _circular_diff(angles[:, 0, 0].numpy(), phi_ref).max() < TOL
    assert _circular_diff(angles[:, 0, 1].numpy(), psi_ref).max() < TOL


def test_sign_convention_and_interval():
    # central bond along +z; atom 3 turned by +theta (counter-clockwise seen from +z) is +theta
    def quad(theta, y_sign=1.0):
        return torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                              [math.cos(theta), y_sign * math.sin(theta), 1.0]]], dtype=torch.float64)

    atoms = [[0, 1, 2, 3]]
    for theta in (0.3, 1.2, -0.7, -2.9, 2.5):
        assert dihedrals(quad(theta), atoms).item() == pytest.approx(theta, abs=1e-12)
    assert dihedrals(quad(0.0), atoms).item() == pytest.approx(0.0, abs=1e-12)  # cis
    # trans with a -0.0 component: atan2 would say -pi; the convention's interval is (-pi, pi]
    trans = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -0.0, 1.0]]],
                         dtype=torch.float64)
    assert dihedrals(trans, atoms).item() == math.pi


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    atoms = torch.tensor([[0, 1, 2, 3], [5, 2, 4, 1]])
    assert torch.autograd.gradcheck(lambda y: dihedrals(y, atoms), (x,))


def test_float32_input_is_differentiable_and_returns_float64():
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    out = dihedrals(x, [[0, 1, 2, 3]])
    out.sum().backward()
    assert out.dtype == torch.float64 and x.grad is not None and torch.isfinite(x.grad).all()


def test_backbone_atoms_of_alanine_dipeptide(ala, md_top):
    from_openmm = backbone_atoms(ala.topology)
    from_mdtraj = backbone_atoms(md_top)
    expected_phi, expected_psi = [[4, 6, 8, 14]], [[6, 8, 14, 16]]  # C(ACE) N CA C, N CA C N(NME)
    for idx in (from_openmm, from_mdtraj):
        assert idx["phi"].tolist() == expected_phi and idx["psi"].tolist() == expected_psi
        assert idx["phi"].dtype == np.int64
    names = [a.name for a in md_top.atoms]
    assert [names[i] for i in expected_phi[0]] == ["C", "N", "CA", "C"]


def test_backbone_atoms_pairs_phi_and_psi_by_residue():
    # uncapped tripeptide: phi exists for residues 2, 3 and psi for 1, 2; only residue 2 has both
    top = mdtraj.Topology()
    chain = top.add_chain()
    for _ in range(3):
        res = top.add_residue("ALA", chain)
        for name, el in (("N", mdtraj.element.nitrogen), ("CA", mdtraj.element.carbon), ("C", mdtraj.element.carbon)):
            top.add_atom(name, el, res)
    idx = backbone_atoms(top)
    assert idx["phi"].tolist() == [[2, 3, 4, 5]] and idx["psi"].tolist() == [[3, 4, 5, 6]]


def test_backbone_atoms_errors():
    water = openmm.app.Topology()
    res = water.addResidue("HOH", water.addChain())
    for name, el in (("O", "oxygen"), ("H1", "hydrogen"), ("H2", "hydrogen")):
        water.addAtom(name, openmm.app.Element.getByAtomicNumber({"oxygen": 8, "hydrogen": 1}[el]), res)
    with pytest.raises(ValueError, match="phi and psi"):
        backbone_atoms(water)
    with pytest.raises(TypeError, match="topology"):
        backbone_atoms("not a topology")


def test_bad_input_names_the_argument(ala):
    x = torch.zeros(2, 22, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        dihedrals(torch.zeros(22, 3), [[0, 1, 2, 3]])
    with pytest.raises(ValueError, match=r"atoms must have shape \(m, 4\)"):
        dihedrals(x, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="atoms must be indices in"):
        dihedrals(x, [[0, 1, 2, 22]])
    with pytest.raises(ValueError, match="atoms must be indices in"):
        dihedrals(x, [[-1, 1, 2, 3]])
    with pytest.raises(TypeError, match="atoms must hold integer"):
        dihedrals(x, [[0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="repeats an atom"):
        dihedrals(x, [[0, 1, 2, 3], [0, 1, 2, 1]])
    with pytest.raises(ValueError, match="x has 21 atoms"):
        phi_psi(torch.zeros(2, 21, 3), ala.topology)


def test_nested_lists_keep_float64_precision():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    assert torch.equal(dihedrals(x.tolist(), [[0, 1, 2, 3]]), dihedrals(x, [[0, 1, 2, 3]]))
