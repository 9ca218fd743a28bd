"""End to end on a molecule whose answer is exact: united-atom n-butane.

``train`` (internal coordinates) on short MD, ``sample`` and ``analyze`` with the declared C-C-C-C
dihedral; the trans/gauche free energy must cover the exact one (quadrature) within the Student-t
interval of the independent runs. And the free-energy bridge between two butanes that differ only in
their torsion: F_B - F_A = -ln(integral exp(-u_B(phi)) / integral exp(-u_A(phi))) exactly, because
everything else cancels.
"""
import copy
import json
import math

import numpy as np
import openmm
import pytest
from scipy.integrate import quad

from boltzgen import md, systems
from boltzgen.cli import main
from boltzgen.models import load_model_file
from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings, sample_molecule
from boltzgen.switching import SwitchSettings, switch
from boltzgen.targets import torch_target
from boltzgen.targets.exact_dihedral import trappe_torsion_kelvin
from stats import assert_covers

EXACT = json.loads((systems.DEFAULT_SYSTEMS_DIR / "butane" / "butane.reference.json").read_text())
SETTINGS = ["--particles", "400", "--runs", "4", "--levels", "100", "--level-moves", "1", "--bridge-moves", "5",
            "--mixing-moves", "200", "--threads", "1", "--no-compile"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small internal-coordinate model of butane, trained on two short plain MD runs."""
    work = tmp_path_factory.mktemp("butane")
    with systems.load("butane", platform="Reference") as target:
        for seed in (1, 2):
            md.run_md(target, 0.4, work / f"md-{seed}", seed=seed)
    assert main(["train", "butane", "--data", str(work / "md-1"), "--data", str(work / "md-2"), "--out",
                 str(work / "model"), "--coordinates", "internal", "--dsm-steps", "1500", "--clf-steps", "300",
                 "--hidden", "32", "--network-blocks", "1"]) == 0
    return work


@pytest.mark.slow
def test_train_sample_analyze_butane_matches_the_exact_trans_gauche_free_energy(trained, capsys):
    out = trained / "samples"
    assert main(["sample", "butane", "--model", str(trained / "model"), "--out", str(out), *SETTINGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    per_run = [r for r in _per_run_delta_f(out)]
    assert_covers(per_run, EXACT["delta_f_gauche_kT"])
    assert summary["delta_f_gauche_kT"] == pytest.approx(float(np.mean(per_run)))
    assert main(["analyze", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dF(gauche vs trans)" in text and "torsion" in text


def _per_run_delta_f(out):
    from boltzgen.analysis import run_figures

    for run in sorted(out.glob("run-[0-9][0-9][0-9]")):
        yield run_figures([str(run)]).free_energies["gauche"].mean


def _butane_with_torsion_scaled(tmp_path, factor: float):
    """The butane target with every torsion coefficient times ``factor`` (a second state of the molecule)."""
    folder = systems.DEFAULT_SYSTEMS_DIR / "butane"
    system = openmm.XmlSerializer.deserialize((folder / "butane.xml").read_text())
    scaled = copy.deepcopy(system)
    for force in scaled.getForces():
        if isinstance(force, openmm.PeriodicTorsionForce):
            for k in range(force.getNumTorsions()):
                *atoms, n, phase, kk = force.getTorsionParameters(k)
                force.setTorsionParameters(k, *atoms, n, phase, kk * factor)
    path = tmp_path / "butane-scaled.xml"
    path.write_text(openmm.XmlSerializer.serialize(scaled))
    return systems.from_files(folder / "butane.pdb", system=path, name="butane-scaled", platform="Reference")


@pytest.mark.slow
def test_the_free_energy_bridge_between_two_butanes_is_exact(trained, tmp_path):
    factor = 0.5
    kelvin = 300.0

    def log_z(scale):
        value, _ = quad(lambda p: math.exp(-scale * float(trappe_torsion_kelvin(p)) / kelvin), -math.pi, math.pi,
                        epsrel=1e-12, limit=500)
        return math.log(value)

    exact = -(log_z(factor) - log_z(1.0))  # U/kT = (U/k_B) / T: the torsion is given in K
    model_file = load_model_file(trained / "model" / "model.pt")
    settings = SampleSettings(n_levels=100, level_moves=1, bridge=BridgeSettings(moves=5), mixing=MixingSettings(moves=200))
    estimates = []
    with systems.load("butane", platform="Reference") as a, _butane_with_torsion_scaled(tmp_path, factor) as b:
        fast_a, fast_b = torch_target(a, compile=False), torch_target(b, compile=False)
        for seed in range(4):
            run_a = sample_molecule(model_file, a, 300, settings, seed=seed, target_energy=fast_a.reduced_energy)
            sw = switch(model_file.space, run_a.positions, run_a.log_weights, fast_a.reduced_energy,
                        fast_b.reduced_energy, SwitchSettings(), topology=a.topology, seed=100 + seed)
            estimates.append(sw.delta_f)
    assert_covers(estimates, exact)
