"""The molecular Boltzmann generator: sample_molecule, sample-run folders, sample_model, run_named, the CLI.

Small configurations of the shipped alanine-dipeptide model (tens of particles, tens of levels):
these check the plumbing, shapes, units and bookkeeping; the accuracy figures are measured by the
commands in the README.
"""
import json
import math
from dataclasses import replace

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.analysis import load_run, run_figures
from boltzgen.cli import format_sample_summary, main
from boltzgen.coordinates import is_l_amino_acid
from boltzgen.models import load_model_file
from boltzgen.pipeline import run_seeds, sample_model
from boltzgen.io.sample_runs import is_sample_run, load_sample_run, read_diagnostics, write_sample_run
from boltzgen.sampling import (BridgeSettings, MixingSettings, SampleSettings, model_samples, run_stages,
                               sample_molecule)
from boltzgen.smc import evaluate
from boltzgen.smc import weights as W
from boltzgen.smc.energy import CountedEnergy
from boltzgen.smc.engine import as_generator, empty_state
from boltzgen.smc.engine import run as run_engine
from boltzgen.targets import torch_target

TINY = SampleSettings(n_levels=12, level_moves=1, bridge=BridgeSettings(moves=2), mixing=MixingSettings(moves=20))


@pytest.fixture(scope="module")
def vacuum():
    target = systems.load("alanine-dipeptide")
    yield target, torch_target(target, compile=False)
    target.close()


@pytest.fixture(scope="module")
def model_file():
    return load_model_file(systems.shipped_model("alanine-dipeptide"))


@pytest.fixture(scope="module")
def run(vacuum, model_file):
    target, fast = vacuum
    return sample_molecule(model_file, target, 40, TINY, seed=3, target_energy=fast.reduced_energy)


def test_a_run_gives_weighted_l_samples_with_their_energies(run, vacuum):
    target, _ = vacuum
    assert run.positions.shape == (40, 22, 3) and run.log_weights.shape == (40,)
    assert is_l_amino_acid(torch.from_numpy(run.positions), target.topology).all()
    # the stored energies are the force field's at the stored (folded) positions: OpenMM agrees
    assert np.allclose(run.energies, target.reduced_energy(run.positions).numpy(), atol=1e-4)
    assert run.log_z == pytest.approx(W.log_mean_exp(torch.from_numpy(run.log_weights)))


def test_the_one_step_bridge_ess_is_importance_sampling_u_from_the_last_level(run, vacuum, model_file):
    """Recomputed by hand: the same seed's levels alone, then ESS(log w + E(t_min) - u)."""
    target, fast = vacuum
    space, model = model_file.space, model_file.model
    u = space.flat_energy(fast.reduced_energy)
    stages = run_stages(model_file, u, model.energy, target.topology, TINY)[:2]  # initial draw and levels
    levels = run_engine(empty_state(40), stages, as_generator(3))
    t_min = float(model.schedule.t_min)
    e_model = evaluate(lambda y: model.energy(t_min, y), levels.particles)
    by_hand = W.ess_fraction(levels.log_weights + e_model - evaluate(u, levels.particles))
    assert run.bridge_ess_fraction == pytest.approx(by_hand, rel=1e-9)
    assert run.result.stage_end("levels").ess_fraction == pytest.approx(levels.ess_fraction, rel=1e-12)


def test_model_samples_are_a_runs_levels_and_give_its_one_step_bridge_ess(run, vacuum, model_file):
    """model_samples: the levels alone (no force field), the same particles and weights a run of the same seed
    starts its bridge from; scored by own_sample_quality they give exactly that run's one-step bridge ESS."""
    from boltzgen.analysis.model_quality import own_sample_quality

    target, fast = vacuum
    drawn = model_samples(model_file, target.topology, 40, TINY, seed=3)  # the `run` fixture: 40 particles, seed 3
    assert drawn.positions.shape == (40, 22, 3) and drawn.log_weights.shape == (40,)
    assert drawn.positions.dtype == np.float64 and np.isfinite(drawn.positions).all()
    # the particles as the levels leave them, in the model's coordinates: the positions are theirs
    assert drawn.particles.shape == (40, model_file.model.dim) and drawn.particles.dtype == np.float64
    np.testing.assert_allclose(model_file.space.to_positions(torch.from_numpy(drawn.particles)).numpy(), drawn.positions)
    u = fast.reduced_energy(torch.from_numpy(drawn.positions)).detach()
    own = own_sample_quality(model_file.model, model_file.space, drawn.positions, u, drawn.log_weights)
    assert own.one_step_ess_fraction == pytest.approx(run.bridge_ess_fraction, rel=1e-6)
    with pytest.raises(ValueError, match="n must be"):
        model_samples(model_file, target.topology, 0, TINY)


def test_a_run_on_the_device_keeps_model_force_field_and_particles_there(vacuum, device):
    """``--device``: the model, the torch force field and every batch of particles on one device."""
    target, _ = vacuum
    model_file = load_model_file(systems.shipped_model("alanine-dipeptide"), device=device)
    fast = torch_target(target, compile=False, device=device)
    seen = set()

    def energy(x):
        seen.add(x.device.type)
        u = fast.reduced_energy(x)
        assert u.device == x.device
        return u

    run = sample_molecule(model_file, target, 24, TINY, seed=3, target_energy=energy)
    assert seen == {device.type}
    assert run.positions.shape == (24, 22, 3) and np.isfinite(run.log_z)
    assert np.allclose(run.energies, target.reduced_energy(run.positions).numpy(), atol=1e-4)  # OpenMM agrees


def test_a_run_counts_its_evaluations_and_steps(run):
    assert run.result.stage_end("levels").n_steps == TINY.n_levels
    bridge = run.result.steps("bridge")
    assert bridge[-1].name == "lambda" and bridge[-1].value == 1.0
    # levels: one draw, then per level one proposal evaluation and one per move; bridge: its endpoints and
    # moves (the last step, at lambda = 1, is u alone)
    per_particle_levels = 1 + TINY.n_levels * (1 + TINY.level_moves * (1 + TINY.level_torsions))
    assert run.model_evaluations == 40 * (per_particle_levels + (len(bridge) - 1) * (1 + TINY.bridge.moves) + 1)
    assert run.target_evaluations >= 40 * (len(bridge) * (1 + TINY.bridge.moves))
    assert 1 <= run.n_lineages <= run.result.stage_end("levels").n_lineages <= 40
    totals = json.loads(json.dumps(run.diagnostics()["totals"]))
    assert totals["n_levels"] == TINY.n_levels and totals["n_lineages"] == run.n_lineages


def test_counted_energy_counts_every_configuration():
    counted = CountedEnergy(lambda t, x: x.sum(1))
    counted(0.5, torch.zeros(7, 2))
    counted(0.1, torch.zeros(3, 2))
    assert counted.count == 10


def test_the_mixing_stage_equalises_weights_turns_torsions_and_keeps_log_z(run):
    mixing = run.result.steps("mixing")
    assert [s.value for s in mixing] == [TINY.mixing.moves] and mixing[0].resampled
    assert np.allclose(run.log_weights, run.log_z)  # resampled, then moves only
    assert run.log_z == pytest.approx(run.result.stage_end("bridge").log_z)
    assert 0 < run.torsion_acceptance < 1
    totals = run.diagnostics()["totals"]
    assert totals["torsion_acceptance"] == run.torsion_acceptance and 1 <= totals["mixing_lineages"] <= run.n_lineages
    assert [s["stage"] for s in run.diagnostics()["steps"]][-1] == "mixing"


def test_without_mixing_the_bridge_weights_are_the_result(vacuum, model_file):
    target, fast = vacuum
    plain = sample_molecule(model_file, target, 24, replace(TINY, mixing=MixingSettings(moves=0)), seed=5,
                            target_energy=fast.reduced_energy)
    assert plain.result.stage_end("mixing") is None and math.isnan(plain.torsion_acceptance)
    assert plain.ess_fraction == pytest.approx(W.ess_fraction(torch.from_numpy(plain.log_weights)))


def test_same_seed_same_run_other_seed_other_run(vacuum, model_file, run):
    target, fast = vacuum
    again = sample_molecule(model_file, target, 40, TINY, seed=3, target_energy=fast.reduced_energy)
    other = sample_molecule(model_file, target, 40, TINY, seed=4, target_energy=fast.reduced_energy)
    assert np.array_equal(again.log_weights, run.log_weights)
    assert not np.allclose(other.positions, run.positions)


def test_run_seeds_are_distinct_and_reproducible():
    assert run_seeds(0, 4) == run_seeds(0, 4)
    assert len(set(run_seeds(0, 4) + run_seeds(1, 4))) == 8


def test_sample_run_folder_round_trip_and_refusals(tmp_path, run, vacuum):
    target, _ = vacuum
    out = write_sample_run(tmp_path / "r", run.positions, run.log_weights, run.energies, target.topology,
                           {"totals": {"nan": float("nan")}})
    assert is_sample_run(out) and not is_sample_run(tmp_path)
    traj = mdtraj.load(str(out / "samples.trr"), top=str(out / "topology.pdb"))  # what a user does
    assert traj.n_frames == 40 and np.allclose(traj.xyz, run.positions, atol=1e-5)
    back = load_sample_run(out)
    assert np.array_equal(back.log_weights, run.log_weights) and back.diagnostics["totals"]["nan"] is None
    assert back.origins is None  # a run written without its lineages (as before they were saved) still reads
    assert read_diagnostics(out) == back.diagnostics  # the totals alone, without reading the samples
    with_origins = write_sample_run(tmp_path / "o", run.positions, run.log_weights, run.energies, target.topology,
                                    {}, origins=run.origins)
    assert np.array_equal(load_sample_run(with_origins).origins, run.origins)
    assert run.origins.shape == (40,) and run.origins.min() >= 0 and run.origins.max() < 40
    with pytest.raises(ValueError, match="origins must be"):
        write_sample_run(tmp_path / "bad", run.positions, run.log_weights, run.energies, target.topology, {},
                         origins=run.origins[:3])
    with pytest.raises(ValueError, match="already exists"):
        write_sample_run(out, run.positions, run.log_weights, run.energies, target.topology, {})
    with pytest.raises(ValueError, match="log_weights and energies"):
        write_sample_run(tmp_path / "bad", run.positions, run.log_weights[:3], run.energies, target.topology, {})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
    (out / "energies.npy").unlink()
    with pytest.raises(ValueError, match="energies.npy is missing"):
        load_sample_run(out)


def test_sample_model_writes_runs_and_a_summary_that_analyze_reads(tmp_path, capsys):
    with systems.load("alanine-dipeptide") as target:
        report = sample_model(target, systems.shipped_model("alanine-dipeptide"), tmp_path / "s", particles=24,
                              runs=2, settings=TINY, seed=1, compile=False)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    for key in ("ess_fraction", "bridge_ess_fraction", "log_z", "log_z_err", "delta_f_phi_positive_kT",
                "delta_f_phi_positive_err_kT", "target_evaluations", "model_evaluations", "seconds", "lineages"):
        assert key in summary, key
    assert summary["recalibration"] is False and summary["n_runs"] == 2 and len(report.run_dirs) == 2
    assert summary["log_z_err"] is not None and math.isfinite(summary["log_z"])
    # lineages after the levels, then after the bridge: the bridge can only lose more
    assert all(b <= a for a, b in zip(summary["levels_lineages"], summary["lineages"]))
    assert "after the levels" in format_sample_summary(summary)
    # the lineages that carry each declared state: at most the run's particles, printed in the table
    # (at most the distinct lineages left at the end of the run)
    per_run = summary["state_lineages"]["phi_positive"]
    ends = [t["mixing_lineages"] for t in summary["per_run"]]
    assert len(per_run) == 2 and all(0 <= n <= end for n, end in zip(per_run, ends))
    assert "lineages per state" in format_sample_summary(summary)
    runs = [load_run(d) for d in report.run_dirs]
    assert all(r.kind == "samples" and r.energies.shape == (24,) for r in runs)
    # the pooled outputs: one trajectory of all runs and a COLVAR table whose weights give every run 1/2
    pooled = mdtraj.load(str(tmp_path / "s" / "pooled.trr"), top=str(tmp_path / "s" / "pooled.pdb"))
    table = np.loadtxt(tmp_path / "s" / "pooled.colvar")
    header = (tmp_path / "s" / "pooled.colvar").read_text().splitlines()[0].split()
    assert pooled.n_frames == 48 and table.shape == (48, len(header) - 2)
    assert header[2:] == ["run", "frame", "log_weight", "weight", "u_kT", "U_kJ_per_mol", "phi_deg", "psi_deg"]
    for k, run in enumerate(runs):
        rows = table[table[:, 0] == k]
        assert rows[:, 3].sum() == pytest.approx(0.5) and np.allclose(rows[:, 4], run.energies)
    assert np.allclose(table[:, 5], table[:, 4] * 2.494339, rtol=1e-5)  # U = u kT at 300 K, kJ/mol
    assert np.allclose(np.radians(table[:, 6]), np.concatenate([r.cv_values["phi"] for r in runs]), atol=1e-6)
    figures = run_figures(runs)
    assert figures.n_frames == 48 and "2 independent runs" in figures.error_method
    one = run_figures(runs[:1])  # one SMC run: no error bar from its own particles
    assert math.isnan(one.p_phi_positive.standard_error) and one.error_method.startswith("none")
    assert main(["analyze", *map(str, report.run_dirs), "--reference", str(report.run_dirs[0]),
                 "--plots", str(tmp_path / "plots"), "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "SMC samples" in out and "Ramachandran KL" in out and "reference" in out
    assert (tmp_path / "plots" / "energy_histogram.png").is_file()
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["comparison"]["ramachandran_kl"] >= 0 and saved["kinds"] == ["samples", "samples"]
    # analyze reports the same lineages per state as the summary
    assert saved["state_lineages"] == summary["state_lineages"]
    assert "lineages per state" in out


def test_a_vacuum_model_recalibrates_to_implicit_solvent(tmp_path):
    with systems.load("alanine-dipeptide-implicit") as target:
        report = sample_model(target, systems.shipped_model("alanine-dipeptide"), tmp_path / "s", particles=16,
                              runs=1, settings=TINY, compile=False)
    assert report.summary["recalibration"] is True and report.summary["model_system"] == "alanine-dipeptide"
    assert report.summary["log_z_err"] is None  # one run: no error bar


def test_the_implicit_system_ships_a_model_trained_for_it(tmp_path):
    """alanine-dipeptide-implicit's shipped model was fine-tuned on implicit MD: no recalibration, and its
    provenance file names the command and the must-show run that shipped it."""
    model = systems.shipped_model("alanine-dipeptide-implicit")
    assert model != systems.shipped_model("alanine-dipeptide")
    provenance = json.loads(model.with_suffix(".json").read_text())
    assert "boltzgen train alanine-dipeptide-implicit" in provenance["train_command"]
    assert abs(provenance["must_show"]["z_vs_reference"]) <= 2 and provenance["must_show"]["error_kT"] <= 0.1
    with systems.load("alanine-dipeptide-implicit") as target:
        report = sample_model(target, model, tmp_path / "s", particles=16, runs=1, settings=TINY, compile=False)
    assert report.summary["recalibration"] is False
    assert report.summary["model_system"] == "alanine-dipeptide-implicit"


def test_cli_run_prints_the_summary_and_writes_plots(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "alanine-dipeptide", "--out", str(out), "--particles", "16", "--runs", "2", "--levels", "8",
                 "--level-moves", "1", "--bridge-moves", "1", "--mixing-moves", "10", "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0
    assert "dF(phi>0 vs phi<0)" in text and "one-step bridge ESS" in text and "reference (" in text
    summary = json.loads((out / "summary.json").read_text())
    shipped = json.loads((systems.DEFAULT_SYSTEMS_DIR / "alanine-dipeptide" / "alanine-dipeptide.reference.json")
                         .read_text())
    assert summary["reference"]["delta_f_phi_positive_kT"] == shipped["delta_f_phi_positive_kT"]
    compared = summary["reference_comparison"]
    assert compared["free_energies"]["phi_positive"]["reference"] == shipped["delta_f_phi_positive_kT"]
    assert set(compared["populations"]) == set(shipped["populations"])  # beta/C7eq, alpha_R, alpha_L/C7ax
    assert "dF(phi>0 vs phi<0): samples" in text and "P(alpha_R): samples" in text
    for name in ("ramachandran.png", "phi_profile.png", "energy_histogram.png", "smc_diagnostics.png"):
        assert (out / name).is_file()
    assert "smc diagnostics:" in text and "kJ/mol" in text and "kcal/mol" in text
    assert summary["kT_kJ_per_mol"] == pytest.approx(2.4943, abs=1e-4)


def test_cli_sample_takes_a_train_folder_a_config_file_and_a_temperature(tmp_path, capsys):
    """--model DIR reads DIR/model.pt; particles and sampling settings from --config, --levels from the command
    line over the file's n_levels; --temperature 350 reaches the target (summary.json's temperature_K)."""
    import shutil

    trained = tmp_path / "trained"
    trained.mkdir()
    shutil.copy(systems.shipped_model("alanine-dipeptide"), trained / "model.pt")
    config = tmp_path / "sample.yaml"
    config.write_text("particles: 12\nruns: 1\nthreads: 1\nno_compile: true\nsampling:\n  n_levels: 30\n"
                      "  level_moves: 1\n  bridge: {moves: 1}\n  mixing: {moves: 6, torsions: {moves: 1}}\n")
    out = tmp_path / "s"
    assert main(["sample", "alanine-dipeptide", "--model", str(trained), "--out", str(out), "--config", str(config),
                 "--levels", "8", "--temperature", "350"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(trained / "model.pt") and summary["temperature_K"] == 350.0
    assert (summary["particles"], summary["runs"]) == (12, 1)
    s = summary["settings"]
    assert s["n_levels"] == 8 and s["level_moves"] == 1 and s["bridge"]["moves"] == 1
    assert s["mixing"]["moves"] == 6 and s["mixing"]["torsions"] == {"moves": 1, "reflect": 0.5}
    assert s["bridge"]["cess"] == SampleSettings().bridge.cess  # in neither: the default


def test_cli_run_at_another_temperature_leaves_out_the_shipped_reference(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "alanine-dipeptide", "--out", str(out), "--particles", "12", "--runs", "1", "--levels", "8",
                 "--level-moves", "1", "--bridge-moves", "1", "--mixing-moves", "6", "--threads", "1", "--no-compile",
                 "--temperature", "350"]) == 0
    text = capsys.readouterr().out
    assert "no shipped reference at 350 K (the reference of alanine-dipeptide is at 300 K)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["temperature_K"] == 350.0 and "reference" not in summary


def test_level_torsions_turn_dihedrals_at_every_level(run, vacuum, model_file):
    """``level_torsions``: after each level's MALA move, torsion moves on E(t, .) (each one model evaluation,
    counted by test_a_run_counts_its_evaluations_and_steps); the levels report their acceptance, and
    with level_torsions=0 there are none."""
    target, fast = vacuum
    rates = [s.moves["torsion.acceptance"] for s in run.result.steps("levels")]
    assert TINY.level_torsions > 0 and all(0 <= r <= 1 for r in rates) and max(rates) > 0
    plain = sample_molecule(model_file, target, 40, replace(TINY, level_torsions=0), seed=3,
                            target_energy=fast.reduced_energy)
    assert all("torsion.acceptance" not in s.moves for s in plain.result.steps("levels"))
    bridge = plain.result.steps("bridge")
    per_particle_levels = 1 + TINY.n_levels * (1 + TINY.level_moves)
    assert plain.model_evaluations == 40 * (per_particle_levels + (len(bridge) - 1) * (1 + TINY.bridge.moves) + 1)


def test_bridge_torsions_turn_dihedrals_at_every_bridge_step(vacuum, model_file):
    """``bridge.torsions``: torsion moves after each bridge MALA move, on the bridge's energy; the mixing
    stage then adds its own turns to the bridge's gradient move, not to the bridge's turns."""
    target, fast = vacuum
    turns = replace(TINY, bridge=replace(TINY.bridge, torsions=2))
    run = sample_molecule(model_file, target, 40, turns, seed=3, target_energy=fast.reduced_energy)
    rates = [s.moves["torsion.acceptance"] for s in run.result.steps("bridge") if s.moves]
    assert rates and all(0 <= r <= 1 for r in rates)
    stages = run_stages(model_file, model_file.space.flat_energy(fast.reduced_energy), model_file.model.energy,
                        target.topology, turns)
    mixing_kernel = stages[-1].kernel(stages[2].kernel)  # what the mixing stage makes of the bridge's kernel
    assert [k.name for k in mixing_kernel.kernels] == ["mala"] + ["torsion"] * TINY.mixing.torsions.moves


def test_level_and_bridge_torsions_must_be_counts():
    with pytest.raises(ValueError, match="level_torsions"):
        SampleSettings(level_torsions=-1)
    with pytest.raises(ValueError, match="bridge torsions"):
        BridgeSettings(torsions=-1)


def test_reference_comparison_pairs_every_shared_figure_with_its_z():
    from boltzgen.pipeline.sample import format_reference_comparison, reference_comparison

    declared = [{"key": k, "state": f"{k}+", "reference": f"{k}-"} for k in "abcde"]
    summary = {"free_energies": declared,
               "delta_f_a_kT": 1.3, "delta_f_a_err_kT": 0.3, "delta_f_b_kT": 2.0, "delta_f_b_err_kT": None,
               "delta_f_c_kT": 5.0, "delta_f_c_err_kT": 0.1, "delta_f_d_kT": None, "delta_f_d_err_kT": None,
               "delta_f_e_kT": 0.5, "delta_f_e_err_kT": float("nan"),
               "populations": {"s": {"p": 0.02, "err": 0.003}, "t": {"p": 0.98, "err": 0.003},
                               "r": {"p": 0.0015, "err": 0.00002}}}
    reference = {"delta_f_a_kT": 1.0, "delta_f_a_err_kT": 0.4, "delta_f_b_kT": 2.5, "delta_f_b_err_kT": 0.1,
                 "delta_f_d_kT": 4.0, "delta_f_d_err_kT": 0.1, "delta_f_e_kT": 0.4, "delta_f_e_err_kT": 0.0,
                 "populations": {"s": {"p": 0.026, "err": 0.004}, "r": {"p": 0.0012, "err": None}}}
    c = reference_comparison(summary, reference)
    energies, pops = c["free_energies"], c["populations"]
    assert list(energies) == ["a", "b", "d", "e"] and list(pops) == ["s", "r"]  # c and t have no reference value
    assert energies["a"]["z"] == pytest.approx(0.3 / 0.5)
    assert energies["b"]["z"] is None and energies["d"]["z"] is None  # one run: no error; no weight: no value
    assert energies["e"]["z"] is None  # a NaN error gives no z, not z = nan
    assert pops["s"]["z"] == pytest.approx(-0.006 / 0.005) and pops["r"]["z"] is None
    lines = format_reference_comparison(c, summary, "test MD", 300.0)
    text = "\n".join(lines)
    assert lines[0] == "  reference (test MD), beside these samples:"
    assert "dF(a+ vs a-): samples 1.300 +- 0.300 kT; reference 1.000 +- 0.400 kT" in text and "z = +0.60" in text
    assert "dF(b+ vs b-): samples 2.000 kT (one run: no error bar)" in text
    assert "dF(d+ vs d-): samples n/a (no weight on one side)" in text
    assert "P(s): samples 0.020 +- 0.003; reference 0.026 +- 0.004  z = -1.20" in text
    assert "P(r): samples 0.00150 +- 0.00002; reference 0.0012\n" in text + "\n"
    assert format_reference_comparison(reference_comparison(summary, {}), summary, "none", 300.0) == []


def test_z_score_needs_finite_values_and_a_nonzero_error():
    from boltzgen.analysis.free_energy import z_score

    assert z_score(1.3, 0.3, 1.0, 0.4) == pytest.approx(0.6)
    assert z_score(1.0, 0.0, 2.0, 0.0) is None  # exact against exact: no z
    assert z_score(1.0, 0.5, 2.0, 0.0) == pytest.approx(-2.0)  # against an exact reference (butane's)
    assert z_score(None, 0.1, 1.0, 0.1) is None and z_score(1.0, float("nan"), 1.0, 0.1) is None
