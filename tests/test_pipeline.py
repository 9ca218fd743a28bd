"""boltzgen.pipeline.train_model and `boltzgen train`: files written, the quality report, bad data."""
import json
import shutil
from dataclasses import replace

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import md, systems
from boltzgen.cli import main
from boltzgen.models import load_model_file
from boltzgen.pipeline import TrainSettings, load_frames, train_model

TINY = TrainSettings(dsm_steps=12, clf_steps=6, batch_size=16, clf_batch_size=4, clf_levels=3, hidden=16, n_blocks=1,
                     own_samples=24)


@pytest.fixture(scope="module")
def md_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("md") / "run"
    with systems.load("alanine-dipeptide") as target:
        md.run_md(target, 0.03, out, seed=3, equilibration_ps=1.0, chunk_frames=10)
    return out


def test_train_model_writes_model_files_and_a_report(tmp_path, md_run):
    with systems.load("alanine-dipeptide") as target:
        report = train_model(target, [md_run], tmp_path / "m.pt", TINY)
    assert report.n_train == 27 and report.n_holdout == 3
    for path in (report.model_path, report.dsm_model_path, report.checkpoint_path, report.report_path):
        assert path.is_file(), path
    saved = json.loads(report.report_path.read_text())
    assert saved["quality"]["std_kT"] == pytest.approx(report.quality.std_kT)
    assert np.isfinite(report.quality.std_kT) and report.quality.n_frames == 3
    q = report.quality  # one residue: its per-residue figures are the headline ones
    assert len(q.residue_delta_f_model_kT) == len(q.residue_delta_f_data_kT) == 1
    assert q.residue_delta_f_data_kT[0] == q.delta_f_phi_positive_data_kT
    loaded = load_model_file(report.model_path)
    assert loaded.metadata["phase"] == "dsm+diffclf" and loaded.metadata["steps"] == 18
    assert load_model_file(report.dsm_model_path).metadata["steps"] == 12
    assert loaded.metadata["settings"]["tsm_weight"] == TINY.tsm_weight
    own = report.own_sample_quality  # the reverse direction: the final model's own samples, scored
    assert own.n_samples == 24 and 0 < own.one_step_ess_fraction <= 1 and 0 <= own.far_fraction <= 1
    assert saved["own_sample_quality"]["one_step_ess_fraction"] == pytest.approx(own.one_step_ess_fraction)
    assert report.own_populations is None and saved["own_populations"] is None  # no declaration given


def test_train_model_reports_where_its_own_samples_put_their_mass(tmp_path, md_run):
    from boltzgen.analysis.runs import state_populations
    from boltzgen.sampling import model_samples

    cvs = systems.collective_variables("alanine-dipeptide")
    with systems.load("alanine-dipeptide") as target:
        report = train_model(target, [md_run], tmp_path / "m.pt", TINY, cvs=cvs)
        # the same own samples (same seed), reduced by hand
        drawn = model_samples(load_model_file(report.model_path), target.topology, TINY.own_samples, seed=TINY.seed)
        expected = state_populations(drawn.positions, target.topology, cvs, drawn.log_weights)
    assert set(report.own_populations) == {fe.key for fe in cvs.free_energies}
    assert report.own_populations == pytest.approx(expected)
    assert json.loads(report.report_path.read_text())["own_populations"] == pytest.approx(expected)


def test_cli_train_prints_the_quality_table(tmp_path, md_run, capsys):
    code = main(["train", "alanine-dipeptide", "--data", str(md_run), "--out", str(tmp_path / "m"),
                 "--dsm-steps", "4", "--clf-steps", "2", "--hidden", "8", "--network-blocks", "1", "--threads", "1",
                 "--own-samples", "16"])
    out = capsys.readouterr().out
    assert code == 0
    assert "std(u-E) kT" in out and "DSM + DiffCLF" in out and "ms per 1,000 particles" in out
    assert "own 16 samples at t_min" in out and "one-step bridge ESS" in out
    assert "where those samples put their mass: P(phi_positive)" in out
    # --out is a folder: the model files go inside it
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model-dsm.pt", "model.ckpt", "model.json",
                                                                   "model.pt"]


def test_cli_train_reads_a_config_file_under_the_flags(tmp_path, md_run, capsys):
    """training: mirrors TrainSettings; the flags given win over the file; --temperature reaches the target."""
    config = tmp_path / "train.yaml"
    config.write_text("threads: 1\ntemperature: 320\ntraining:\n  dsm_steps: 4\n  clf_steps: 2\n  hidden: 8\n"
                      "  n_blocks: 1\n  batch_size: 8\n  tsm_weight: 0.0\n  own_samples: 0\n")
    assert main(["train", "alanine-dipeptide", "--data", str(md_run), "--out", str(tmp_path / "m"),
                 "--config", str(config), "--hidden", "12"]) == 0
    report = json.loads((tmp_path / "m" / "model.json").read_text())
    assert report["settings"]["hidden"] == 12  # the flag
    assert (report["settings"]["dsm_steps"], report["settings"]["batch_size"], report["settings"]["tsm_weight"]) == (
        4, 8, 0.0)  # the file
    assert report["settings"]["clf_learning_rate"] == TrainSettings().clf_learning_rate  # neither: the default
    model = load_model_file(tmp_path / "m" / "model.pt")
    assert model.metadata["temperature_K"] == 320.0
    assert report["own_sample_quality"] is None  # own_samples: 0 skips the reverse check


def test_nan_frames_are_refused_with_the_folder_named(tmp_path, md_run, capsys):
    bad = tmp_path / "nan-run"
    shutil.copytree(md_run, bad)
    chunk = bad / "chunk_00000.trr"
    traj = mdtraj.load(str(chunk), top=str(bad / "topology.pdb"))
    traj.xyz[3] = np.nan
    traj.save_trr(str(chunk), force_overwrite=True)  # same size: the loader's size check passes
    code = main(["train", "alanine-dipeptide", "--data", str(bad), "--out", str(tmp_path / "m"),
                 "--dsm-steps", "2", "--clf-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "non-finite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m" / "model.pt").exists()


def test_frames_of_another_molecule_are_refused(md_run):
    with pytest.raises(ValueError, match="has 22 atoms but the system has 10"):
        load_frames([md_run], 10)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="weighting"):
        TrainSettings(weighting="uniform")
    with pytest.raises(ValueError, match="holdout_fraction"):
        TrainSettings(holdout_fraction=1.0)


def test_calibration_after_training_is_saved_reported_and_refuses_cartesian(tmp_path, md_run, capsys):
    """--calibration-harmonics: the saved model carries the fit; the table shows it beside the model before it."""
    with systems.load("alanine-dipeptide") as target:
        report = train_model(target, [md_run], tmp_path / "m.pt", replace(TINY, calibration_harmonics=2))
    loaded = load_model_file(report.model_path)
    assert loaded.model.calibration is not None and loaded.model.config["calibration_harmonics"] == 2
    assert loaded.model.calibration.cos_coefficients.abs().sum() > 0  # fitted, not the zero initialisation
    assert report.uncalibrated_quality is not None and report.uncalibrated_quality.std_kT != report.quality.std_kT
    saved = json.loads(report.report_path.read_text())
    assert saved["uncalibrated_quality"]["std_kT"] == pytest.approx(report.uncalibrated_quality.std_kT)
    assert load_model_file(report.dsm_model_path).model.calibration is None
    # an existing model calibrated with no training steps (the flag path)
    assert main(["train", "alanine-dipeptide", "--data", str(md_run), "--out", str(tmp_path / "c"), "--init",
                 str(report.model_path), "--hidden", "16", "--network-blocks", "1", "--dsm-steps", "0",
                 "--clf-steps", "0", "--calibration-harmonics", "3", "--threads", "1", "--own-samples", "0"]) == 0
    assert "before calibration" in capsys.readouterr().out
    assert load_model_file(tmp_path / "c" / "model.pt").model.calibration.n_harmonics == 3
    with pytest.raises(ValueError, match="calibration_harmonics"):
        TrainSettings(coordinates="cartesian", calibration_harmonics=2)
    with pytest.raises(ValueError, match="calibration_harmonics"):
        TrainSettings(calibration_harmonics=-1)


def test_calibration_on_the_models_own_samples_uses_its_draws(tmp_path, md_run, monkeypatch):
    """--calibration-samples N: the normaliser comes from N own samples per round, each round a fresh seed."""
    import boltzgen.pipeline.training as training

    seeds, real = [], training.model_samples

    def counted(model_file, topology, n, *args, seed=0, **kwargs):
        seeds.append((n, seed))
        return real(model_file, topology, n, *args, seed=seed, **kwargs)

    monkeypatch.setattr(training, "model_samples", counted)
    settings = replace(TINY, calibration_harmonics=2, calibration_samples=20, own_samples=0)
    with systems.load("alanine-dipeptide") as target:
        report = train_model(target, [md_run], tmp_path / "m.pt", settings)
    assert [n for n, _ in seeds] == [20, 20] and len({s for _, s in seeds}) == 2  # two rounds, two seeds
    loaded = load_model_file(report.model_path)
    assert loaded.model.calibration is not None and loaded.model.calibration.cos_coefficients.abs().sum() > 0
    with pytest.raises(ValueError, match="calibration_samples > 0 needs calibration_harmonics"):
        TrainSettings(calibration_samples=100)
    with pytest.raises(ValueError, match="calibration_samples"):
        TrainSettings(calibration_harmonics=2, calibration_samples=-1)


def test_init_fine_tunes_the_given_model_on_another_force_field(tmp_path, md_run):
    """--init starts from the model's weights (step 0 of the fine-tune is that model) and keeps its space."""
    with systems.load("alanine-dipeptide") as target:
        first = train_model(target, [md_run], tmp_path / "a.pt", TINY)
    start = load_model_file(first.model_path)
    with systems.load("alanine-dipeptide-implicit") as implicit:  # same molecule, another Hamiltonian
        untouched = train_model(implicit, [md_run], tmp_path / "b.pt", replace(TINY, dsm_steps=0, clf_steps=0),
                                init=first.model_path)
        tuned = train_model(implicit, [md_run], tmp_path / "c.pt", TINY, init=first.model_path)
    same = load_model_file(untouched.model_path)
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, same.model.state_dict()[k]), k
    assert same.space.config() == start.space.config()
    moved = load_model_file(tuned.model_path)
    assert any(not torch.equal(v, moved.model.state_dict()[k]) for k, v in start.model.state_dict().items())
    assert moved.metadata["init"] == str(first.model_path) and moved.metadata["system"] == "alanine-dipeptide-implicit"


def test_init_refuses_settings_the_model_cannot_keep_and_another_molecule(tmp_path, md_run, capsys):
    with systems.load("alanine-dipeptide") as target:
        first = train_model(target, [md_run], tmp_path / "a.pt", TINY)
        with pytest.raises(ValueError, match="hidden 16 but the settings ask for 32"):
            train_model(target, [md_run], tmp_path / "b.pt", replace(TINY, hidden=32), init=first.model_path)
    assert not (tmp_path / "b.pt").exists()
    code = main(["train", "butane", "--data", str(md_run), "--out", str(tmp_path / "m"), "--init",
                 str(first.model_path), "--dsm-steps", "2", "--clf-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "only applies to the molecule it was trained on" in err and "Traceback" not in err


def test_an_unknown_init_model_is_named_by_its_own_flag(tmp_path, md_run, capsys):
    code = main(["train", "alanine-dipeptide", "--data", str(md_run), "--out", str(tmp_path / "m"),
                 "--init", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "--init no-such-model" in err and "--model" not in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_own_weight_trains_on_pools_of_the_models_own_samples(tmp_path, md_run, capsys):
    """--own-weight: the reverse-direction term is trained on (logged each step), its pool is drawn from the
    model by the sampler's levels and checkpointed, and the settings are recorded in the model file."""
    code = main(["train", "alanine-dipeptide", "--data", str(md_run), "--out", str(tmp_path / "m"),
                 "--dsm-steps", "4", "--clf-steps", "2", "--hidden", "8", "--network-blocks", "1", "--threads", "1",
                 "--own-samples", "0", "--own-weight", "1", "--own-every", "3", "--own-pool", "12"])
    assert code == 0, capsys.readouterr().err
    payload = torch.load(tmp_path / "m" / "model.ckpt", weights_only=False)
    assert all(np.isfinite(h["own"]) for h in payload["history"]) and len(payload["history"]) == 6
    pool = payload["own_pool"]
    assert pool["y"].shape[0] == pool["energies"].shape[0] == pool["log_weights"].shape[0] == 12
    saved = load_model_file(tmp_path / "m" / "model.pt")
    assert saved.metadata["settings"]["own_weight"] == 1.0 and saved.metadata["settings"]["own_pool"] == 12


def test_own_sampler_draws_weighted_samples_in_the_models_coordinates_with_their_energies(tmp_path, md_run):
    from boltzgen.pipeline.training import own_sampler

    with systems.load("alanine-dipeptide") as target:
        report = train_model(target, [md_run], tmp_path / "m.pt", replace(TINY, own_samples=0))
        saved = load_model_file(report.model_path)
        draw = own_sampler(target, saved.space)
        y, energies, log_weights = draw(saved.model, 10, 4)
        again, _, _ = draw(saved.model, 10, 4)
        other, _, _ = draw(saved.model, 10, 5)
        u = torch.as_tensor(target.reduced_energy(saved.space.to_positions(y)))
    assert y.shape == (10, saved.model.dim) and energies.shape == log_weights.shape == (10,)
    assert torch.equal(y, again) and not torch.equal(y, other)  # seeded
    # the energies are u in the model's coordinates: u of the positions minus the log-Jacobian of z -> x
    torch.testing.assert_close(energies, u.to(torch.float64) - saved.space.log_det_jacobian(y))
    assert torch.isfinite(log_weights).any()
    with pytest.raises(ValueError, match="own_pool"):
        TrainSettings(own_pool=0).training_config()
