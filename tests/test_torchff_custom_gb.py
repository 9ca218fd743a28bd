"""The torch force field on OpenMM's Amber OBC1 / OBC2 CustomGBForces, against the Reference platform.

OpenMM's prmtop loader builds implicitSolvent=OBC1 (and OBC2 with salt) as a CustomGBForce from
openmm.app.internal.customgbforces; the torch force field recognises exactly those forces and
refuses every other CustomGBForce (HCT, GBn, GBn2, a user's own). Agreement required: energies and
every force component within 1e-6 relative (plus 1e-6 kJ/mol/nm absolute for force components
near zero), in float64. Everything here runs eager (compile=False) and takes seconds.
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

from boltzgen import systems
from boltzgen.targets import fast_target
from boltzgen.targets.torchff import TorchForceField, TorchForceFieldTarget, UnsupportedForceError, unsupported_forces
from boltzgen.targets.torchff.reader import recognise_custom_gb
from boltzgen.targets.torchff.terms import CustomGBOBC
from openmm_reference import openmm_reference

FOLDER = Path(__file__).resolve().parents[1] / "systems" / "alanine-dipeptide"
PRMTOP = FOLDER / "alanine-dipeptide-ff96.prmtop"
REL_TOL, FORCE_ABS_TOL = 1e-6, 1e-6  # relative; kJ/mol/nm for force components near zero
SUPPORTED = "supported CustomGBForces: OpenMM's Amber OBC1 and OBC2 models"


@pytest.fixture(scope="module")
def prmtop():
    return app.AmberPrmtopFile(str(PRMTOP))


@pytest.fixture(scope="module")
def ff96():
    """The named set-up (OBC1 CustomGBForce with ACE, built by boltzgen.systems)."""
    with systems.load("alanine-dipeptide-ff96-implicit", platform="Reference") as target:
        yield target


def _prmtop_system(prmtop, **options) -> openmm.System:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Non-optimal GB parameters" for GBn/GBn2 with mbondi2 radii
        return prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, **options)


def _configurations(x0: np.ndarray, seed: int = 0) -> np.ndarray:
    """The structure, Gaussian displacements of 0.015 nm, a squeezed and a stretched copy, and one
    with a hydrogen pushed into its carbon (inside the carbon's scaled sphere: the buried branch)."""
    rng = np.random.default_rng(seed)
    centre = x0.mean(0)
    xs = [x0, *(x0 + 0.015 * rng.standard_normal(x0.shape) for _ in range(4)),
          centre + 0.8 * (x0 - centre), centre + 1.4 * (x0 - centre)]
    x = x0.copy()
    x[0] = x[1] + 0.003 * np.array([0.6, 0.0, 0.8])
    xs.append(x)
    return np.array(xs)


def _assert_energies(actual, expected, what: str):
    actual, expected = np.asarray(actual), np.asarray(expected)
    worst = np.max(np.abs(actual - expected) / np.abs(expected))
    assert worst <= REL_TOL, f"{what}: largest relative difference {worst:.3g}"


def _assert_forces(actual, expected, what: str):
    actual, expected = np.asarray(actual), np.asarray(expected)
    excess = np.abs(actual - expected) - (REL_TOL * np.abs(expected) + FORCE_ABS_TOL)
    assert excess.max() <= 0, f"{what}: largest |difference| {np.abs(actual - expected).max():.3g} kJ/mol/nm"


def _gb_only(system) -> openmm.System:
    """A System holding only the CustomGBForce of ``system`` (so Lennard-Jones does not drown it)."""
    gb = next(f for f in system.getForces() if isinstance(f, openmm.CustomGBForce))
    only = openmm.System()
    for index in range(system.getNumParticles()):
        only.addParticle(system.getParticleMass(index))
    only.addForce(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(gb)))
    return only


def _check_against_openmm(system, xs, what: str, device=None):
    energies, forces, groups = openmm_reference(system, xs)
    ff = TorchForceField(system, device=device)
    x = torch.from_numpy(xs).to(ff.device)
    energy, grad = ff.energy_and_gradient(x)
    _assert_energies(energy.cpu().numpy(), energies, f"{what} energies")
    _assert_forces(-grad.cpu().numpy(), forces, f"{what} forces")
    # The autograd reference path: same energies, and the hand-written gradient equals autograd's.
    xr = x.clone().requires_grad_(True)
    auto = ff(xr)
    (auto_grad,) = torch.autograd.grad(auto.sum(), xr)
    _assert_energies(auto.detach().cpu().numpy(), energies, f"{what} autograd energies")
    assert torch.allclose(grad, auto_grad, rtol=1e-9, atol=1e-8), what
    for key, value in ff.energy_terms(x).items():
        index = int(key.split("[")[1].rstrip("]"))
        _assert_energies(value.detach().cpu().numpy(), groups[:, index], f"{what} {key}")
    return ff


def test_ff96_obc1_named_system_matches_openmm(ff96, device):
    gb = [f for f in ff96.system.getForces() if isinstance(f, openmm.CustomGBForce)]
    assert len(gb) == 1 and recognise_custom_gb(gb[0]) == dict(
        model="OBC1", solvent_dielectric=78.5, solute_dielectric=1.0, kappa=0.0, surface_area=True)
    xs = _configurations(ff96.positions)
    ff = _check_against_openmm(ff96.system, xs, "ff96 OBC1", device)
    assert any(isinstance(term, CustomGBOBC) and term.model == "OBC1" for term in ff.terms)
    _check_against_openmm(_gb_only(ff96.system), xs, "ff96 OBC1, CustomGBForce alone", device)


def test_buried_atoms_follow_the_custom_expression(ff96, device):
    # The CustomGBForce has no Tinker correction (GBSAOBCForce has): a hydrogen inside its carbon's
    # scaled sphere runs the branch where the Born integral's derivative through L survives.
    system = _gb_only(ff96.system)
    xs = _configurations(ff96.positions)[-1:]
    term = TorchForceField(system).terms[0]
    r = torch.from_numpy(np.linalg.norm(xs[:, term.i] - xs[:, term.j], axis=-1))
    assert (term.rho_pair[:, None, :, 0] < term.scaled_pair[:, None, :, 0] - r).any()  # the branch runs
    _check_against_openmm(system, xs, "buried hydrogen", device)


@pytest.mark.parametrize("options", [
    dict(implicitSolvent=app.OBC1, implicitSolventSaltConc=0.15 * unit.molar),
    dict(implicitSolvent=app.OBC2, implicitSolventSaltConc=0.15 * unit.molar),
    dict(implicitSolvent=app.OBC2, implicitSolventSaltConc=1.0 * unit.molar, soluteDielectric=2.0,
         solventDielectric=80.0),
    dict(implicitSolvent=app.OBC1, sasaMethod=None, soluteDielectric=4.0),
], ids=["obc1-salt", "obc2-salt", "obc2-salt-dielectrics", "obc1-no-ace"])
def test_prmtop_custom_gb_variants_match_openmm(prmtop, ff96, options, device):
    system = _prmtop_system(prmtop, **options)
    (gb,) = [f for f in system.getForces() if isinstance(f, openmm.CustomGBForce)]
    found = recognise_custom_gb(gb)
    assert found is not None and found["model"] == str(options["implicitSolvent"])
    assert found["surface_area"] == ("sasaMethod" not in options)
    assert found["solute_dielectric"] == options.get("soluteDielectric", 1.0)
    salt = "implicitSolventSaltConc" in options
    assert (found["kappa"] > 0) == salt
    if salt:  # the loader's Debye kappa, 1/nm
        conc = options["implicitSolventSaltConc"].value_in_unit(unit.molar)
        kappa = 7.3 * 50.33355 * np.sqrt(conc / options.get("solventDielectric", 78.5) / 298.15)
        assert found["kappa"] == pytest.approx(kappa, rel=1e-14)
    xs = _configurations(ff96.positions, seed=1)
    _check_against_openmm(system, xs, str(options), device)
    _check_against_openmm(_gb_only(system), xs, f"{options}, CustomGBForce alone", device)


def test_obc2_prmtop_without_salt_is_a_gbsaobcforce_and_matches(prmtop, ff96, device):
    system = _prmtop_system(prmtop, implicitSolvent=app.OBC2)
    kinds = {type(f).__name__ for f in system.getForces()}
    assert "GBSAOBCForce" in kinds and "CustomGBForce" not in kinds  # OpenMM's built-in force here
    _check_against_openmm(system, _configurations(ff96.positions, seed=2), "ff96 OBC2 (GBSAOBCForce)", device)


def test_obc2_custom_gb_force_without_salt_matches(ff96):
    # GBSAOBC2Force with kappa = 0 (not what the loader builds, but the same OpenMM class).
    from openmm.app.internal.customgbforces import GBSAOBC2Force

    obc1 = next(f for f in ff96.system.getForces() if isinstance(f, openmm.CustomGBForce))
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(ff96.system))
    index = next(i for i, f in enumerate(system.getForces()) if isinstance(f, openmm.CustomGBForce))
    system.removeForce(index)
    gb = GBSAOBC2Force(solventDielectric=78.5, soluteDielectric=1.0, SA="ACE")
    for k in range(obc1.getNumParticles()):  # (charge, or, sr): already offset and scaled, added as they are
        openmm.CustomGBForce.addParticle(gb, obc1.getParticleParameters(k))
    system.addForce(gb)
    assert recognise_custom_gb(gb)["model"] == "OBC2"
    _check_against_openmm(system, _configurations(ff96.positions, seed=3), "OBC2 CustomGBForce, no salt")


@pytest.mark.parametrize("xml", ["implicit/obc1.xml", "implicit/obc2.xml"])
def test_implicit_obc_xmls_build_the_same_supported_forces(xml):
    pdb = app.PDBFile(str(FOLDER / "alanine-dipeptide.pdb"))
    system = app.ForceField("amber99sbildn.xml", xml).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                                  constraints=None, rigidWater=False)
    assert unsupported_forces(system) == []
    x0 = np.array(pdb.positions.value_in_unit(unit.nanometer))
    _check_against_openmm(system, _configurations(x0, seed=4)[:5], xml)


@pytest.mark.parametrize("model, kind", [(app.HCT, "HCT"), (app.GBn, "GBn"), (app.GBn2, "GBn2")])
def test_other_amber_gb_models_are_refused_by_name(prmtop, model, kind):
    system = _prmtop_system(prmtop, implicitSolvent=model)
    index = next(i for i, f in enumerate(system.getForces()) if isinstance(f, openmm.CustomGBForce))
    with pytest.raises(UnsupportedForceError, match=rf"^CustomGBForce \(force {index}\), the Amber {kind} model, "
                                                    rf"is not supported by the torch force field; {SUPPORTED}"):
        TorchForceField(system)
    (problem,) = unsupported_forces(system)
    assert problem.startswith(f"CustomGBForce (force {index}), the Amber {kind} model")


def test_modified_obc_forces_and_cutoffs_are_refused(ff96):
    def with_gb(edit):
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(ff96.system))
        edit(next(f for f in system.getForces() if isinstance(f, openmm.CustomGBForce)))
        return system

    def change_born_radius(gb):
        name, expression, kind = gb.getComputedValueParameters(1)
        gb.setComputedValueParameters(1, name, expression.replace("2.909125", "2.9"), kind)

    edits = {
        "a changed Born-radius expression": change_born_radius,
        "an extra global parameter": lambda gb: gb.addGlobalParameter("lambda_gb", 1.0),
        "an extra energy term": lambda gb: gb.addEnergyTerm("0.1*charge^2", openmm.CustomGBForce.SingleParticle),
        "a changed energy-term type": lambda gb: gb.setEnergyTermParameters(
            2, gb.getEnergyTermParameters(2)[0], openmm.CustomGBForce.ParticlePair),
    }
    for what, edit in edits.items():
        with pytest.raises(UnsupportedForceError, match=rf"not one of OpenMM's Amber OBC models.*{SUPPORTED}"):
            TorchForceField(with_gb(edit))
        assert len(unsupported_forces(with_gb(edit))) == 1, what

    def cutoff(gb):
        gb.setNonbondedMethod(openmm.CustomGBForce.CutoffNonPeriodic)

    with pytest.raises(UnsupportedForceError, match=r"CustomGBForce \(force 4\) with nonbonded method "
                                                    r"CutoffNonPeriodic is not supported"):
        TorchForceField(with_gb(cutoff))


def test_gbn2_xml_still_falls_back():
    pdb = app.PDBFile(str(FOLDER / "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml", "implicit/gbn2.xml").createSystem(pdb.topology,
                                                                                 nonbondedMethod=app.NoCutoff)
    assert unsupported_forces(system)[0].startswith("CustomGBForce (force 5), the Amber GBn2 model")


def test_fast_target_on_ff96_implicit_is_the_torch_path(ff96):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        fast = fast_target(ff96, compile=False)
    assert isinstance(fast, TorchForceFieldTarget) and not fast.forcefield.compiled
    assert (fast.name, fast.n_atoms, fast.temperature, fast.kT) == (ff96.name, 22, ff96.temperature, ff96.kT)
    assert "CustomGBForce[4]" in fast.forcefield.names
    rng = np.random.default_rng(6)
    x = torch.from_numpy(ff96.positions + 0.015 * rng.standard_normal((6, 22, 3)))
    u_ref, f_ref = ff96.energy_and_forces(x)  # the OpenMM target, Reference platform
    u, f = fast.energy_and_forces(x)
    kT = ff96.kT
    _assert_energies(u.numpy() * kT, u_ref.numpy() * kT, "fast_target energies")
    _assert_forces(f.numpy() * kT, f_ref.numpy() * kT, "fast_target forces")
