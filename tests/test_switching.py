"""Free energies between two states: the SMC bridge (switch), BAR on MD, the free-energy command."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from boltzgen import md, systems
from boltzgen.analysis.free_energy import delta_f_bar, delta_f_exp
from boltzgen.cli import main
from boltzgen.coordinates.cartesian import MolecularSpace
from boltzgen.analysis.free_energy import mean_and_error
from boltzgen.sampling import BridgeSettings
from boltzgen.switching import SwitchSettings, _bias_energy, bar_reference, switch
from stats import assert_covers
from boltzgen.targets import torch_target


def _harmonic(sigma):
    """u(x) = |x - centroid|^2 / (2 sigma^2) on (n, 3, 3) nm: a Gaussian on the 6-d centre-free subspace."""
    def u(x):
        c = x - x.mean(dim=1, keepdim=True)
        return (c ** 2).sum(dim=(1, 2)) / (2 * sigma ** 2)
    return u


def test_switch_between_two_gaussians_gives_the_exact_free_energy_within_its_error():
    """F_B - F_A = -(d/2) ln(sigma_B^2 / sigma_A^2) with d = 6 for 3 atoms."""
    space = MolecularSpace(3, 1.0)
    sa, sb = 0.1, 0.14
    exact = -3.0 * math.log(sb ** 2 / sa ** 2)
    estimates = []
    for seed in range(4):
        g = torch.Generator().manual_seed(1000 + seed)  # not the switch's seed: its noise must be independent of x
        x = sa * torch.randn(400, 3, 3, generator=g, dtype=torch.float64)
        x = x - x.mean(dim=1, keepdim=True)  # exact samples of A
        sw = switch(space, x.numpy(), np.zeros(400), _harmonic(sa), _harmonic(sb),
                    SwitchSettings(BridgeSettings(moves=3, step_size=1e-3, resample_threshold=0.3)), seed=seed)
        assert sw.result.diagnostics[-1].value == 1.0  # the bridge reached B
        estimates.append(sw.delta_f)
    assert mean_and_error(estimates)[1] < 0.2
    assert_covers(estimates, exact)


def test_switch_refuses_bad_weights():
    space = MolecularSpace(3, 1.0)
    x = np.zeros((4, 3, 3))
    with pytest.raises(ValueError, match="log_weights must have shape"):
        switch(space, x, np.zeros(3), _harmonic(0.1), _harmonic(0.2))
    with pytest.raises(ValueError, match="no sample of A"):
        switch(space, x, np.full(4, -np.inf), _harmonic(0.1), _harmonic(0.2))
    with pytest.raises(ValueError, match="cess"):
        BridgeSettings(cess=1.5)


def test_mean_and_error_over_runs():
    assert mean_and_error([1.0]) == (1.0, None)
    mean, err = mean_and_error([1.0, 2.0, 3.0])
    assert mean == 2.0 and err == pytest.approx(1.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="at least one"):
        mean_and_error([])


@pytest.fixture(scope="module")
def md_pairs(tmp_path_factory):
    """Two tiny plain MD runs of vacuum and implicit-solvent alanine dipeptide."""
    root = tmp_path_factory.mktemp("md")
    dirs = {"vacuum": [], "implicit": []}
    for name, label in (("alanine-dipeptide", "vacuum"), ("alanine-dipeptide-implicit", "implicit")):
        with systems.load(name) as target:
            for seed in (1, 2):
                out = root / f"{label}-{seed}"
                md.run_md(target, 0.01, out, seed=seed, save_every_ps=0.25, chunk_frames=20, equilibration_ps=2.0)
                dirs[label].append(out)
    return dirs


def test_bar_reference_of_plain_runs_is_pymbar_bar_with_an_error_over_pairs(md_pairs):
    with systems.load("alanine-dipeptide") as a, systems.load("alanine-dipeptide-implicit") as b:
        ua, ub = torch_target(a, compile=False).reduced_energy, torch_target(b, compile=False).reduced_energy
        both = bar_reference(md_pairs["vacuum"], md_pairs["implicit"], ua, ub)
        single = bar_reference(md_pairs["vacuum"][:1], md_pairs["implicit"][:1], ua, ub)
        # the reference path: pymbar's BAR on the same (unweighted) frames
        xa = torch.from_numpy(md.load_trajectory(md_pairs["vacuum"][0]).xyz.astype(np.float64))
        xb = torch.from_numpy(md.load_trajectory(md_pairs["implicit"][0]).xyz.astype(np.float64))
        direct = delta_f_bar((ub(xa) - ua(xa)).numpy(), (ua(xb) - ub(xb)).numpy())
    assert single.mean == pytest.approx(direct.mean, abs=1e-6)  # MBAR of two plain runs is BAR
    assert both.n == 2 and math.isfinite(both.standard_error)
    assert -25 < both.mean < -12  # the solvation free energy of alanine dipeptide, kT
    with pytest.raises(ValueError, match="same number"):
        bar_reference(md_pairs["vacuum"], md_pairs["implicit"][:1], ua, ub)


@pytest.fixture(scope="module")
def biased_pair(tmp_path_factory):
    """Tiny phi-metadynamics runs of vacuum and implicit-solvent alanine dipeptide."""
    root, bias = tmp_path_factory.mktemp("meta"), md.Metadynamics(("phi",), height_kj_per_mol=3.0, frequency_steps=50,
                                                                   deposition_ps=2.0)
    dirs = []
    for name, label in (("alanine-dipeptide", "vacuum"), ("alanine-dipeptide-implicit", "implicit")):
        with systems.load(name) as target:
            md.run_md(target, 0.04, root / label, seed=3, save_every_ps=0.25, chunk_frames=80, equilibration_ps=2.0,
                      bias=bias)
        dirs.append(root / label)
    return dirs


def test_bar_reference_counts_every_biased_frame_at_its_weight(biased_pair):
    vacuum, implicit = biased_pair
    xa = md.load_trajectory(vacuum).xyz.astype(np.float64)
    # the frozen bias re-evaluated on the saved (float32) frames is the production's own, up to rounding
    assert np.abs(_bias_energy(vacuum, xa) - md.load_log_weights(vacuum)).max() < 1e-3
    assert np.ptp(md.load_log_weights(vacuum)) > 0.5  # the bias does vary: the weights matter
    with systems.load("alanine-dipeptide") as a, systems.load("alanine-dipeptide-implicit") as b:
        ua, ub = torch_target(a, compile=False).reduced_energy, torch_target(b, compile=False).reduced_energy
        mbar = bar_reference([vacuum], [implicit], ua, ub)
        # an independent route from A's weighted frames alone: EXP (Zwanzig) with the metadynamics weights
        ta = torch.from_numpy(xa)
        exp = delta_f_exp(ua(ta), ub(ta), md.load_log_weights(vacuum))
    assert mbar.n == 2 * len(xa)
    assert abs(mbar.mean - exp.mean) < 4 * math.hypot(mbar.standard_error, exp.standard_error)


def test_cli_free_energy_writes_runs_summary_and_the_bar_reference(tmp_path, md_pairs, capsys):
    out = tmp_path / "fe"
    code = main(["free-energy", "--from", "alanine-dipeptide", "--to", "alanine-dipeptide-implicit", "--out", str(out),
                 "--particles", "16", "--runs", "2", "--levels", "8", "--level-moves", "1", "--bridge-moves", "1",
                 "--mixing-moves", "5", "--threads", "1",
                 "--md-from", *map(str, md_pairs["vacuum"]), "--md-to", *map(str, md_pairs["implicit"])])
    text = capsys.readouterr().out
    assert code == 0 and "SMC bridge A -> B" in text and "reference" in text
    summary = json.loads((out / "summary.json").read_text())
    for key in ("delta_f_kT", "delta_f_err_kT", "delta_f_log_z_kT", "ess_fraction", "min_ess_fraction",
                "target_evaluations", "seconds"):
        assert summary[key] is not None, key
    assert summary["reference"]["delta_f_kT"] < 0 and len(summary["per_run"]) == 2
    diagnostics = json.loads((out / "run-000" / "diagnostics.json").read_text())
    assert diagnostics["steps"][-1]["stage"] == "switch" and diagnostics["steps"][-1]["value"] == 1.0
    assert main(["analyze", str(out / "run-000"), str(out / "run-001")]) == 0  # the samples of B


@pytest.mark.parametrize("argv, message", [
    (["--md-from", "x"], "both states"),
    (["--md-from", "nowhere-a", "--md-to", "nowhere-b"], "nowhere-a"),
    (["--model", "no-such-model"], "--model no-such-model: neither a model file"),
])
def test_cli_free_energy_refusals(tmp_path, argv, message, capsys):
    code = main(["free-energy", "--from", "alanine-dipeptide", "--to", "alanine-dipeptide-implicit",
                 "--out", str(tmp_path / "x"), "--particles", "4", "--runs", "1", *argv])
    assert code != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "x" / "summary.json").exists()


def test_cli_free_energy_refuses_an_md_run_of_another_molecule_before_sampling(tmp_path, md_pairs, capsys):
    other = tmp_path / "other"
    shutil.copytree(md_pairs["vacuum"][0], other)
    md.load_trajectory(other).atom_slice(range(10))[0].save_pdb(str(other / "topology.pdb"))
    assert md.load_topology(other).n_atoms == 10
    code = main(["free-energy", "--from", "alanine-dipeptide", "--to", "alanine-dipeptide-implicit", "--out",
                 str(tmp_path / "x"), "--particles", "4", "--runs", "1", "--md-from", str(other), str(md_pairs["vacuum"][1]),
                 "--md-to", *map(str, md_pairs["implicit"])])
    assert code != 0 and f"MD run {other} has 10 atoms, alanine-dipeptide has 22" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resolve_model_takes_a_path_or_a_shipped_name(tmp_path):
    shipped = systems.shipped_model("alanine-dipeptide")
    assert systems.resolve_model("alanine-dipeptide") == shipped
    assert systems.resolve_model(str(shipped)) == shipped
    assert systems.resolve_model(None, ("alanine-dipeptide-ff96", "alanine-dipeptide")) == shipped
    with pytest.raises(ValueError, match="ships a model"):
        systems.resolve_model(None, ("alanine-dipeptide-ff96",))
