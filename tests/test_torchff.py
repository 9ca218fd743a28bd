"""The batched torch force field against OpenMM's Reference platform (the reference).

Agreement required by issue 3: per configuration, energies and every force component within
1e-3 kJ/mol (kJ/mol/nm for forces) or 1e-6 relative, in float64. Configurations: the structure
with Gaussian displacements of 0.015 nm, and frames of a short OpenMM Langevin run.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from boltzgen.targets import OpenMMTarget
from boltzgen.targets.torchff import (
    TorchForceField,
    TorchForceFieldTarget,
    UnsupportedForceError,
    fast_target,
    torch_target,
    unsupported_forces,
)
from openmm_reference import openmm_reference

DATA = Path("/work/shared/data/alanine-dipeptide")
REPO_DATA = Path(__file__).resolve().parents[1] / "systems" / "alanine-dipeptide"
ABS_TOL, REL_TOL = 1e-3, 1e-6  # kJ/mol (or kJ/mol/nm) absolute, or relative, per value

FORCE_FIELDS = {
    "amber99sbildn": ["amber99sbildn.xml"],
    "amber99sbildn-obc": ["amber99sbildn.xml", "amber99_obc.xml"],
    "amber14": ["amber14-all.xml"],
    "amber03": ["amber03.xml"],
}


def _structure_file(name: str) -> Path:
    local = REPO_DATA / name
    return local if local.exists() else DATA / name


@pytest.fixture(scope="module")
def pdb():
    return app.PDBFile(str(_structure_file("alanine-dipeptide.pdb")))


def _system(pdb, files) -> openmm.System:
    ff = app.ForceField(*files)
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    for index, force in enumerate(system.getForces()):
        force.setForceGroup(index)  # one group per force, for the per-force checks
    return system


def _positions(pdb) -> np.ndarray:
    return np.array(pdb.positions.value_in_unit(unit.nanometer))


def _langevin_frames(system, x0, n_frames=4, steps=200, seed=1):
    """Frames of a short Langevin run at 300 K (1 fs steps, unconstrained), after minimisation."""
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.001 * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x0)
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    frames = []
    for _ in range(n_frames):
        integrator.step(steps)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)


def _assert_close(actual, expected, what: str):
    actual, expected = np.asarray(actual), np.asarray(expected)
    tol = np.maximum(ABS_TOL, REL_TOL * np.abs(expected))
    worst = np.max(np.abs(actual - expected) - tol)
    assert worst <= 0, f"{what}: max |difference| {np.max(np.abs(actual - expected)):.3g} exceeds tolerance"


@pytest.fixture(scope="module", params=list(FORCE_FIELDS))
def case(request, pdb):
    """(name, system, configurations (perturbed and MD), OpenMM energies, forces, group energies)."""
    system = _system(pdb, FORCE_FIELDS[request.param])
    x0 = _positions(pdb)
    rng = np.random.default_rng(0)
    xs = np.concatenate([x0 + 0.015 * rng.standard_normal((6, *x0.shape)), _langevin_frames(system, x0)])
    return (request.param, system, xs, *openmm_reference(system, xs))


def test_fast_path_matches_openmm(case, device):
    name, system, xs, energies, forces, _ = case
    ff = TorchForceField(system, device=device)
    x = torch.from_numpy(xs).to(device)
    energy, grad = ff.energy_and_gradient(x)
    assert energy.dtype == torch.float64 and energy.shape == (len(xs),)
    assert energy.device == grad.device == x.device  # evaluated where the positions live
    _assert_close(energy.cpu().numpy(), energies, f"{name} energies")
    _assert_close(-grad.cpu().numpy(), forces, f"{name} forces")
    _assert_close(ff.energy(x).cpu().numpy(), energies, f"{name} energy()")
    # positions elsewhere: moved to the force field's device, results moved back
    energy_host, _ = ff.energy_and_gradient(torch.from_numpy(xs))
    assert energy_host.device.type == "cpu" and torch.equal(energy_host, energy.cpu())


def test_autograd_reference_path_matches_openmm_and_fast_path(case, device):
    name, system, xs, energies, forces, _ = case
    ff = TorchForceField(system, device=device)
    x = torch.from_numpy(xs).to(device).requires_grad_(True)
    energy = ff(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    _assert_close(energy.detach().cpu().numpy(), energies, f"{name} autograd energies")
    _assert_close(-grad.cpu().numpy(), forces, f"{name} autograd forces")
    # Hand-written gradients against autograd of the same energy: equal to rounding.
    _, fast_grad = ff.energy_and_gradient(x.detach())
    assert torch.allclose(fast_grad, grad, rtol=1e-9, atol=1e-8)


def test_each_force_matches_its_openmm_group(case, device):
    name, system, xs, _, _, groups = case
    terms = TorchForceField(system, device=device).energy_terms(torch.from_numpy(xs).to(device))
    for key, value in terms.items():
        index = int(key.split("[")[1].rstrip("]"))
        _assert_close(value.detach().cpu().numpy(), groups[:, index], f"{name} {key}")


def test_torsion_phases_and_multiplicities_follow_openmm_sign_convention(pdb):
    # Amber phases are 0 or pi, which cannot tell phi from -phi; arbitrary phases can.
    system = _system(pdb, ["amber99sbildn.xml"])
    extra = openmm.PeriodicTorsionForce()
    rng = np.random.default_rng(3)
    for quad in [(4, 6, 8, 14), (6, 8, 14, 16), (1, 4, 6, 8), (8, 14, 16, 18), (4, 8, 6, 7)]:  # incl. an improper
        for n in range(1, 7):
            extra.addTorsion(*quad, n, float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.5, 5.0)))
    extra.setForceGroup(system.getNumForces())
    system.addForce(extra)
    x0 = _positions(pdb)
    xs = x0 + 0.02 * rng.standard_normal((5, *x0.shape))
    energies, forces, _ = openmm_reference(system, xs)
    energy, grad = TorchForceField(system).energy_and_gradient(torch.from_numpy(xs))
    _assert_close(energy.numpy(), energies, "energies with arbitrary phases")
    _assert_close(-grad.numpy(), forces, "forces with arbitrary phases")


def test_gbsa_obc_on_compressed_stretched_and_overlapping_atoms(pdb):
    # The GBSAOBCForce alone, so that the Born-radius branches are not drowned by Lennard-Jones:
    # squeezing the molecule and pushing hydrogens into their carbons puts atoms inside other
    # atoms' scaled spheres (the Tinker branch of the Born integral); stretching it makes pairs
    # drop out of the integral. Non-default dielectrics and surface energy check the prefactors.
    full = _system(pdb, ["amber99sbildn.xml", "amber99_obc.xml"])
    gb = next(f for f in full.getForces() if isinstance(f, openmm.GBSAOBCForce))
    gb = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(gb))
    gb.setSolventDielectric(80.0)
    gb.setSoluteDielectric(2.0)
    gb.setSurfaceAreaEnergy(3.0)
    gb.setForceGroup(0)
    system = openmm.System()
    for index in range(full.getNumParticles()):
        system.addParticle(full.getParticleMass(index))
    system.addForce(gb)
    x0 = _positions(pdb)
    centre = x0.mean(0)
    rng = np.random.default_rng(5)
    xs = [centre + s * (x0 - centre) + 0.005 * rng.standard_normal(x0.shape) for s in (0.75, 0.85, 1.3, 2.0)]
    for hydrogen, carbon, distance in ((0, 1, 0.003), (2, 1, 0.01), (9, 8, 0.02)):
        x = x0.copy()
        x[hydrogen] = x[carbon] + distance * np.array([0.6, 0.0, 0.8])
        xs.append(x)
    xs = np.array(xs)
    energies, forces, _ = openmm_reference(system, xs)
    ff = TorchForceField(system)
    term = ff.terms[0]
    r = torch.from_numpy(np.linalg.norm(xs[:, term.i] - xs[:, term.j], axis=-1))  # (n, n_pairs)
    assert (term.rho_pair[:, None, :, 0] < term.scaled_pair[:, None, :, 0] - r).any()  # the Tinker branch runs
    energy, grad = ff.energy_and_gradient(torch.from_numpy(xs))
    _assert_close(energy.numpy(), energies, "GBSAOBC energies")
    _assert_close(-grad.numpy(), forces, "GBSAOBC forces")


def test_named_systems_match_their_openmm_targets():
    systems = pytest.importorskip("boltzgen.systems")
    for name in ("alanine-dipeptide", "alanine-dipeptide-implicit"):
        with systems.load(name) as reference:
            fast = torch_target(reference, compile=False)
            assert (fast.name, fast.n_atoms, fast.temperature, fast.kT) == (
                reference.name, reference.n_atoms, reference.temperature, reference.kT)
            rng = np.random.default_rng(2)
            x = torch.from_numpy(reference.positions + 0.015 * rng.standard_normal((5, reference.n_atoms, 3)))
            u_ref, f_ref = reference.energy_and_forces(x)
            u, f = fast.energy_and_forces(x)
            kT = reference.kT
            _assert_close(u.numpy() * kT, u_ref.numpy() * kT, f"{name} energies")
            _assert_close(f.numpy() * kT, f_ref.numpy() * kT, f"{name} forces")


def test_reduced_energy_is_differentiable_in_kT(pdb, device):
    system = _system(pdb, ["amber99sbildn.xml"])
    target = TorchForceFieldTarget(system, 300.0, compile=False, device=device)
    x0 = torch.from_numpy(_positions(pdb))
    x = (x0 + 0.01 * torch.randn(4, *x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x = x.to(device)
    x32 = x.float().requires_grad_(True)
    u = target.reduced_energy(x32)
    assert u.dtype == torch.float64 and u.shape == (4,)
    (g,) = torch.autograd.grad((u * torch.arange(1.0, 5.0, dtype=torch.float64)).sum(), x32)
    assert g.dtype == torch.float32
    u_ref, f_ref = target.energy_and_forces(x32.detach())
    assert torch.allclose(u, u_ref)
    expected = -f_ref * torch.arange(1.0, 5.0, dtype=torch.float64)[:, None, None]
    assert torch.allclose(g.double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(target.log_prob(x), -target.reduced_energy(x))
    kT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    assert target.kT == pytest.approx(kT)
    assert torch.allclose(target.reduced_energy(x) * kT, target.forcefield(x))
    assert u.device == g.device == x.device


def test_chunking_and_padding_do_not_change_results(pdb, device):
    system = _system(pdb, ["amber99sbildn.xml", "amber99_obc.xml"])
    x0 = torch.from_numpy(_positions(pdb))
    x = x0 + 0.01 * torch.randn(23, *x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x.to(device)
    whole = TorchForceField(system, chunk_size=64, device=device).energy_and_gradient(x)
    chunked = TorchForceField(system, chunk_size=5, device=device).energy_and_gradient(x)  # 5 chunks, the last padded
    assert torch.allclose(whole[0], chunked[0], rtol=1e-12, atol=1e-10)
    assert torch.allclose(whole[1], chunked[1], rtol=1e-12, atol=1e-10)


def test_float32_option_is_close(pdb):
    system = _system(pdb, ["amber99sbildn.xml", "amber99_obc.xml"])
    x0 = torch.from_numpy(_positions(pdb))
    x = x0 + 0.015 * torch.randn(8, *x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ff64, ff32 = TorchForceField(system), TorchForceField(system, dtype=torch.float32)
    e64, e32 = ff64.energy(x), ff32.energy(x)
    # Rounding bound: float32 epsilon times the summed magnitude of the terms, with a safety factor of 100.
    scale = sum(v.abs() for v in ff64.energy_terms(x).values())
    assert e32.dtype == torch.float32
    assert ((e32.double() - e64).abs() <= 100 * torch.finfo(torch.float32).eps * scale).all()


def test_overlapping_atoms_give_inf_not_nan(pdb, device):
    for files in (["amber99sbildn.xml"], ["amber99sbildn.xml", "amber99_obc.xml"]):
        system = _system(pdb, files)
        x = torch.from_numpy(np.repeat(_positions(pdb)[None], 3, axis=0))
        x[1, 5] = x[1, 4]  # two atoms on top of each other
        x[2] = 0.0  # everything at one point
        x = x.to(device)
        target = TorchForceFieldTarget(system, 300.0, compile=False, device=device)
        u, f = target.energy_and_forces(x)
        assert torch.isfinite(u[0]) and torch.isinf(u[1:]).all() and (u[1:] > 0).all()
        assert torch.isfinite(f).all() and (f[1:] == 0).all()
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(target.reduced_energy(xr).sum(), xr)
        assert torch.isfinite(g).all()
        assert torch.isinf(target.forcefield(x)[1:]).all()  # the reference path as well


def test_bad_input_raises_clear_errors(pdb):
    system = _system(pdb, ["amber99sbildn.xml"])
    target = TorchForceFieldTarget(system, 300.0, compile=False)
    x = torch.from_numpy(_positions(pdb))
    with pytest.raises(ValueError, match=r"\(n, 22, 3\)"):
        target.reduced_energy(x)  # missing batch axis
    with pytest.raises(ValueError, match="21 atoms"):
        target.reduced_energy(x[None, :21])
    bad = x[None].clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        target.reduced_energy(bad)
    with pytest.raises(TypeError, match="openmm.System"):
        TorchForceField("not a system")
    with pytest.raises(ValueError, match="temperature"):
        TorchForceFieldTarget(system, -1.0, compile=False)
    with pytest.raises(ValueError, match="chunk_size"):
        TorchForceField(system, chunk_size=0)
    with pytest.raises(TypeError, match="dtype"):
        TorchForceField(system, dtype=torch.int64)
    with pytest.raises(TypeError, match="system"):
        torch_target(object())
    # constraints would silently change the sampled distribution: refused like OpenMMTarget does
    constrained = app.ForceField("amber14-all.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                                constraints=app.HBonds)
    with pytest.raises(ValueError, match="12 constraints"):
        TorchForceFieldTarget(constrained, 300.0, compile=False)


def test_unsupported_forces_raise_named_errors(pdb):
    gbn2 = _system(pdb, ["amber14-all.xml", "implicit/gbn2.xml"])
    with pytest.raises(UnsupportedForceError, match="CustomGBForce"):
        TorchForceField(gbn2)
    assert issubclass(UnsupportedForceError, ValueError)

    prmtop = app.AmberPrmtopFile(str(_structure_file("alanine-dipeptide.prmtop")))
    hct = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, implicitSolvent=app.HCT)
    with pytest.raises(UnsupportedForceError, match="CustomGBForce"):
        TorchForceField(hct)  # a CustomGBForce that is not one of the OBC models
    obc1 = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, implicitSolvent=app.OBC1)
    assert unsupported_forces(obc1) == []  # OpenMM's prmtop OBC1 CustomGBForce is recognised
    obc2 = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, implicitSolvent=app.OBC2)
    assert unsupported_forces(obc2) == []  # ... and OBC2, a GBSAOBCForce

    cutoff = _system(pdb, ["amber99sbildn.xml"])
    next(f for f in cutoff.getForces() if isinstance(f, openmm.NonbondedForce)).setNonbondedMethod(
        openmm.NonbondedForce.CutoffNonPeriodic)
    with pytest.raises(UnsupportedForceError, match="NonbondedForce with nonbonded method CutoffNonPeriodic"):
        TorchForceField(cutoff)

    pme = _system(pdb, ["amber99sbildn.xml"])
    pme.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) * 3.0 for row in np.eye(3)))
    next(f for f in pme.getForces() if isinstance(f, openmm.NonbondedForce)).setNonbondedMethod(
        openmm.NonbondedForce.PME)
    with pytest.raises(UnsupportedForceError, match="PME"):
        TorchForceField(pme)

    for extra in (openmm.CMAPTorsionForce(), openmm.CustomBondForce("r^2")):
        system = _system(pdb, ["amber99sbildn.xml"])
        system.addForce(extra)
        with pytest.raises(UnsupportedForceError, match=type(extra).__name__):
            TorchForceField(system)


def test_fast_target_falls_back_to_openmm_with_a_warning(pdb):
    supported = OpenMMTarget(_system(pdb, ["amber99sbildn.xml"]), pdb.topology, pdb.positions, 300.0,
                             name="vacuum", platform="Reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = fast_target(supported, compile=False)
    assert isinstance(fast, TorchForceFieldTarget) and fast.name == "vacuum"
    assert np.allclose(fast.positions, supported.positions)
    assert fast.topology is supported.topology

    gbn2 = OpenMMTarget(_system(pdb, ["amber14-all.xml", "implicit/gbn2.xml"]), pdb.topology, pdb.positions,
                        300.0, name="gbn2", platform="Reference")
    with pytest.warns(UserWarning, match="gbn2: using the OpenMM target because CustomGBForce"):
        assert fast_target(gbn2) is gbn2


def test_compile_failure_falls_back_to_eager_with_a_warning(pdb):
    ff = TorchForceField(_system(pdb, ["amber99sbildn.xml"]))
    x = torch.from_numpy(_positions(pdb))[None]
    expected = ff.energy(x)

    def broken(X, gradient):
        raise RuntimeError("no C++ compiler")

    ff._kernel, ff.compiled = broken, True
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert torch.allclose(ff.energy(x), expected, rtol=1e-12, atol=0)
    assert not ff.compiled


def test_threaded_chunks_match_the_reference(pdb):
    # The threaded chunk path with an eager stand-in for the compiled kernel (the same code path
    # as compiled: padded last chunk, first chunk in this thread, the rest shared by 2 threads).
    ff = TorchForceField(_system(pdb, ["amber99sbildn.xml"]), chunk_size=16, threads=2)
    ff._kernel, ff.compiled = ff._evaluate, True
    x0 = torch.from_numpy(_positions(pdb))
    x = x0 + 0.015 * torch.randn(53, *x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    e, g = ff.energy_and_gradient(x)
    e_again, g_again = ff.energy_and_gradient(x)  # now every chunk runs on the threads
    assert torch.equal(e, e_again) and torch.equal(g, g_again)
    xr = x.clone().requires_grad_(True)
    e_ref = ff(xr)
    (g_ref,) = torch.autograd.grad(e_ref.sum(), xr)
    assert torch.allclose(e, e_ref.detach(), rtol=1e-12, atol=1e-9)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-8)
    assert torch.equal(ff.energy(x), e)
    with torch.inference_mode():  # the workers take the caller's inference mode
        assert torch.equal(ff.energy_and_gradient(x)[1], g)
    with pytest.raises(ValueError, match="threads"):
        TorchForceField(_system(pdb, ["amber99sbildn.xml"]), threads=0)


_FORK_SCRIPT = """
import copy, multiprocessing, sys
import numpy as np, openmm.app as app, openmm.unit as unit, torch
from boltzgen.targets.torchff import TorchForceField

pdb = app.PDBFile(sys.argv[1])
system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                          constraints=None, rigidWater=False)
ff = TorchForceField(system, chunk_size=8, threads=2)
ff._kernel, ff.compiled = ff._evaluate, True  # eager stand-in for the compiled kernel
x = torch.from_numpy(np.repeat(np.array(pdb.positions.value_in_unit(unit.nanometer))[None], 40, axis=0))
expected = ff.energy(x)
ff.energy(x)  # the pool now exists; a forked child inherits it without its threads
context = multiprocessing.get_context("fork")
results = context.Queue()
child = context.Process(target=lambda: results.put(ff.energy(x).tolist()))  # forked: ff is not pickled
child.start()
energies = results.get(timeout=60)
child.join(timeout=60)
assert energies == expected.tolist(), "forked child"
duplicate = copy.deepcopy(ff)  # gets its own compiled kernel (bound to the copy) and its own pool
assert duplicate._pool is None and duplicate._kernel.__wrapped__.__self__ is duplicate
duplicate._kernel = duplicate._evaluate  # eager again: compiling here would cost 10-20 s
assert torch.equal(duplicate.energy(x), expected), "copy"
print("ok")
"""


def test_threaded_force_field_works_in_a_forked_child_and_in_a_copy():
    # In a fresh interpreter: after a cold torch.compile earlier in the same process (the README test
    # compiles the force field), torch's OpenMP pool asserts "Invalid thread pool" in any forked child
    # that runs torch ops. That is torch's state, not the force field's, so it is kept out of this test.
    import subprocess
    import sys

    structure = Path(__file__).resolve().parent.parent / "systems" / "alanine-dipeptide" / "alanine-dipeptide.pdb"
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, str(structure)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_infinite_positions_are_not_mistaken_for_nan(pdb):
    # +inf and -inf sum to NaN: the quick NaN check must not reject them (they give +inf energy).
    target = TorchForceFieldTarget(_system(pdb, ["amber99sbildn.xml"]), 300.0, compile=False)
    x = torch.from_numpy(np.repeat(_positions(pdb)[None], 2, axis=0))
    x[1, 0, 0], x[1, 1, 0] = float("inf"), -float("inf")
    u = target.reduced_energy(x)
    assert torch.isfinite(u[0]) and u[1] == float("inf")


@pytest.mark.slow
def test_compiled_fast_path_matches_eager(pdb):
    # torch.compile takes 10-60 s per system on this machine, hence slow.
    x0 = torch.from_numpy(_positions(pdb))
    x = x0 + 0.015 * torch.randn(300, *x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for files in (["amber99sbildn.xml"], ["amber99sbildn.xml", "amber99_obc.xml"]):
        system = _system(pdb, files)
        eager, compiled = TorchForceField(system), TorchForceField(system, compile=True)
        e, g = compiled.energy_and_gradient(x)
        assert compiled.compiled
        e_ref, g_ref = eager.energy_and_gradient(x)
        assert torch.allclose(e, e_ref, rtol=1e-10, atol=1e-9)
        assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-8)
        assert torch.allclose(compiled.energy(x), e_ref, rtol=1e-10, atol=1e-9)
        threaded = TorchForceField(system, compile=True, chunk_size=64, threads=2)  # 5 chunks, 2 threads
        for _ in range(2):  # the first call compiles on this thread; the second runs all chunks threaded
            e_t, g_t = threaded.energy_and_gradient(x)
            assert torch.allclose(e_t, e_ref, rtol=1e-10, atol=1e-9)
            assert torch.allclose(g_t, g_ref, rtol=1e-10, atol=1e-8)


def test_target_pickles_and_accepts_quantity_positions(pdb):
    import pickle

    target = TorchForceFieldTarget(_system(pdb, ["amber99sbildn.xml"]), 300.0, topology=pdb.topology,
                                   positions=pdb.positions, name="vacuum", compile=False)
    assert target.positions.shape == (22, 3) and np.allclose(target.positions, _positions(pdb))
    copy = pickle.loads(pickle.dumps(target))
    x = torch.from_numpy(target.positions)[None]
    assert (copy.name, copy.temperature, copy.forcefield.chunk_size) == ("vacuum", 300.0, target.forcefield.chunk_size)
    assert torch.equal(copy.reduced_energy(x), target.reduced_energy(x))


def test_ff96_implicit_named_system_gets_the_torch_path():
    systems = pytest.importorskip("boltzgen.systems")
    with systems.load("alanine-dipeptide-ff96-implicit") as reference:
        # OpenMM builds the prmtop's OBC1 solvent as a CustomGBForce, which the torch path recognises
        fast = fast_target(reference, compile=False)
        assert fast is not reference
        x = torch.from_numpy(reference.positions)[None]
        assert torch.allclose(fast.reduced_energy(x), reference.reduced_energy(x), rtol=1e-6)  # OpenMM: CPU platform


def test_positions_in_angstrom_warn_once_naming_the_unit(pdb):
    target = TorchForceFieldTarget(_system(pdb, ["amber99sbildn.xml"]), 300.0, name="vacuum", compile=False)
    nm = torch.from_numpy(_positions(pdb))[None].repeat(3, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target.reduced_energy(nm)
        target.reduced_energy(torch.randn((4, 22, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    with pytest.warns(UserWarning, match=r"vacuum: the bonds of x\[0\] are 10\.0 times the force field's bond "
                                         r"lengths: the positions look like angstrom \(Å\), but boltzgen takes nm"):
        target.reduced_energy((10.0 * nm).requires_grad_())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per target
        target.reduced_energy(10.0 * nm)


def test_first_compiled_call_announces_the_compilation(pdb):
    from boltzgen.targets import CompileNotice

    ff = TorchForceField(_system(pdb, ["amber99sbildn.xml"]), chunk_size=16)
    ff._kernel, ff.compiled = (lambda X, gradient: ff._evaluate(X, gradient)), True  # stands in for torch.compile
    x = torch.from_numpy(_positions(pdb))[None].repeat(20, 1, 1)
    with pytest.warns(CompileNotice, match=r"torch force field \(22 atoms\): compiling its kernel for energies with "
                                           r"torch.compile on this first call; this takes about 20-80 s"):
        ff.energy(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ff.energy(x)  # once per kind of call
    with pytest.warns(CompileNotice, match="for energies and gradients"):
        ff.energy_and_gradient(x)
    assert issubclass(CompileNotice, UserWarning)
    eager = TorchForceField(_system(pdb, ["amber99sbildn.xml"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to compile, nothing to announce
        eager.energy_and_gradient(x)
