"""OpenMMTarget: gradients, the worker pool, platforms, bad input, pickling."""
from __future__ import annotations

import pickle

import numpy as np
import openmm
import pytest
import torch

from boltzgen import systems
from boltzgen.targets import OpenMMTarget


@pytest.fixture(scope="module")
def vacuum():
    with systems.load("alanine-dipeptide", platform="Reference") as target:
        yield target


@pytest.fixture(scope="module")
def implicit():
    with systems.load("alanine-dipeptide-implicit", platform="Reference") as target:
        yield target


def perturbed(target, n, scale=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.from_numpy(target.positions) + scale * torch.randn((n, target.n_atoms, 3), generator=g,
                                                                     dtype=torch.float64)


def test_interface_and_units(vacuum):
    assert vacuum.n_atoms == 22 and vacuum.positions.shape == (22, 3) and vacuum.positions.dtype == np.float64
    assert vacuum.kT == pytest.approx(0.0083144626 * 300.0, rel=1e-8)  # R T in kJ/mol
    assert isinstance(vacuum.system, openmm.System) and vacuum.topology.getNumAtoms() == 22
    x = perturbed(vacuum, 5)
    u, f = vacuum.energy_and_forces(x)
    assert u.shape == (5,) and u.dtype == torch.float64 and f.shape == (5, 22, 3) and f.dtype == torch.float64
    # reduced_energy without gradients takes the energy-only path; it must give the same numbers.
    assert torch.equal(vacuum.reduced_energy(x), u)
    assert torch.equal(vacuum.log_prob(x), -u)
    assert torch.equal(vacuum.reduced_energy(x.numpy()), u)


@pytest.mark.parametrize("fixture", ["vacuum", "implicit"])
def test_backward_gives_minus_forces(fixture, request):
    target = request.getfixturevalue(fixture)
    x = perturbed(target, 4).requires_grad_()
    u = target.reduced_energy(x)
    weights = torch.arange(1.0, 5.0, dtype=torch.float64)
    (weights * u).sum().backward()
    _, f = target.energy_and_forces(x.detach())
    torch.testing.assert_close(x.grad, -weights[:, None, None] * f, rtol=0, atol=0)


@pytest.mark.parametrize("fixture", ["vacuum", "implicit"])
def test_gradient_matches_finite_differences(fixture, request):
    """Autograd (OpenMM forces) vs central differences of reduced_energy.

    The central-difference truncation error is estimated by Richardson's rule,
    |D(h) - D(2h)| / 3; the tolerance is twice that plus a 1e-6 kT/nm floor for float64 round-off
    (energies ~1e2 kT carry ~1e-13 kT rounding, / 2h = 2e-5 nm -> ~1e-8 kT/nm).
    """
    target = request.getfixturevalue(fixture)
    x = perturbed(target, 2, seed=3)
    xg = x.clone().requires_grad_()
    target.reduced_energy(xg).sum().backward()

    def central(h):
        d = torch.zeros_like(x)
        for a in range(target.n_atoms):
            for k in range(3):
                e = torch.zeros_like(x)
                e[:, a, k] = h
                d[:, a, k] = (target.reduced_energy(x + e) - target.reduced_energy(x - e)) / (2 * h)
        return d

    d1, d2 = central(1e-5), central(2e-5)
    tol = 2 * (d1 - d2).abs() / 3 + 1e-6
    assert ((xg.grad - d1).abs() <= tol).all(), (xg.grad - d1).abs().max()
    assert xg.grad.abs().max() > 10.0  # the check is not vacuous: forces are large here


def test_float32_input_gets_float32_gradient(vacuum):
    x = perturbed(vacuum, 3).float().requires_grad_()
    u = vacuum.reduced_energy(x)
    assert u.dtype == torch.float64
    u.sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_pool_matches_in_process(implicit):
    x = perturbed(implicit, 37, seed=5)
    x[7, 5] = x[7, 0]  # an overlapping pair inside a worker's chunk
    u1, f1 = implicit.energy_and_forces(x)
    with systems.load("alanine-dipeptide-implicit", platform="Reference", n_workers=2) as pooled:
        u2, f2 = pooled.energy_and_forces(x)
        assert torch.equal(u1, u2) and torch.equal(f1, f2)  # same platform, same arithmetic
        assert u2[7] == float("inf") and torch.isfinite(u2[torch.arange(37) != 7]).all()
        # The workers survived the bad configuration and the gradient path works through the pool.
        xg = x[:5].clone().requires_grad_()
        pooled.reduced_energy(xg).sum().backward()
        torch.testing.assert_close(xg.grad, -f1[:5], rtol=0, atol=0)
        pooled.close()
        assert torch.equal(pooled.reduced_energy(x[:3]), u1[:3])  # restarts after close


def test_overlapping_and_infinite_positions_give_inf_not_nan(vacuum):
    x = perturbed(vacuum, 4)
    x[1, 5] = x[1, 0]  # two atoms on top of each other: OpenMM returns NaN
    x[2] = 0.0  # everything in one point
    x[3, 2, 0] = float("inf")
    u, f = vacuum.energy_and_forces(x)
    assert torch.isfinite(u[0]) and (u[1:] == float("inf")).all()
    assert torch.isfinite(f).all() and (f[1:] == 0).all()
    xg = x.clone().requires_grad_()
    u = vacuum.reduced_energy(xg)
    u[torch.isfinite(u)].sum().backward()
    assert torch.isfinite(xg.grad).all()
    # The Context is fine afterwards.
    assert torch.equal(vacuum.reduced_energy(x[:1]), u[:1].detach())


def test_bad_input_raises_named_errors(vacuum):
    with pytest.raises(ValueError, match=r"x must have shape \(n, 22, 3\) in nm, got \(22, 3\)"):
        vacuum.reduced_energy(torch.zeros(22, 3))
    with pytest.raises(ValueError, match="x has 21 atoms but the system has 22"):
        vacuum.energy_and_forces(torch.zeros(2, 21, 3))
    x = perturbed(vacuum, 2)
    x[1, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN positions"):
        vacuum.reduced_energy(x)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        vacuum.reduced_energy(torch.zeros(2, 22, 3, dtype=torch.bool))


def test_constructor_checks(vacuum):
    with pytest.raises(ValueError, match="platform must be 'auto' or one of"):
        OpenMMTarget(vacuum.system, vacuum.topology, vacuum.positions, 300.0, platform="Nope")
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        OpenMMTarget(vacuum.system, vacuum.topology, vacuum.positions, -1.0)
    with pytest.raises(ValueError, match=r"positions must be finite with shape \(22, 3\)"):
        OpenMMTarget(vacuum.system, vacuum.topology, vacuum.positions[:5], 300.0)
    with pytest.raises(ValueError, match="n_workers must be an integer >= 0"):
        OpenMMTarget(vacuum.system, vacuum.topology, vacuum.positions, 300.0, n_workers=-1)
    with pytest.raises(TypeError, match="system must be an openmm.System"):
        OpenMMTarget("system.xml", vacuum.topology, vacuum.positions, 300.0)


def test_auto_platform_is_measured_and_agrees_with_reference(vacuum):
    auto = systems.load("alanine-dipeptide")
    assert set(auto.platform_timings) >= {"Reference", "CPU", "CPU-1-thread"}
    best = min(auto.platform_timings, key=auto.platform_timings.get)
    assert auto.platform == best.replace("-1-thread", "")
    x = perturbed(vacuum, 10)
    # The CPU platform computes forces in single precision: compare at float32-level tolerance.
    torch.testing.assert_close(auto.reduced_energy(x), vacuum.reduced_energy(x), rtol=1e-5, atol=1e-3)


def test_pickle_round_trip(vacuum):
    x = perturbed(vacuum, 3)
    vacuum.reduced_energy(x)  # make sure a live Context exists; it must not be pickled
    clone = pickle.loads(pickle.dumps(vacuum))
    assert clone.name == vacuum.name and clone.platform == vacuum.platform
    assert torch.equal(clone.reduced_energy(x), vacuum.reduced_energy(x))


def test_positions_in_angstrom_warn_once_naming_the_unit():
    import warnings

    with systems.load("alanine-dipeptide", platform="Reference") as target:
        nm = perturbed(target, 3, scale=0.002)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nm positions, and random ones, give no warning
            target.reduced_energy(nm)
            target.reduced_energy(torch.randn((4, 22, 3), generator=torch.Generator().manual_seed(5),
                                              dtype=torch.float64))
        with pytest.warns(UserWarning, match=r"alanine-dipeptide: the bonds of x\[0\] are 10\.0 times the force "
                                             r"field's bond lengths: the positions look like angstrom \(Å\), but "
                                             r"boltzgen takes nm; divide them by 10"):
            u = target.reduced_energy(10.0 * nm)
        assert (u > 1e5).all()  # what a user sees without the warning: ~1.6e6 kT
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per target
            target.energy_and_forces(10.0 * nm)
    with systems.load("alanine-dipeptide", platform="Reference") as fresh:  # the forces path checks too
        with pytest.warns(UserWarning, match="look like angstrom"):
            fresh.energy_and_forces((10.0 * nm).requires_grad_())
