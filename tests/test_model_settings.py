"""Sampler settings a model file recommends (boltzgen.sampling.model_settings / recommend_settings): they are
the defaults of its runs, under --config and the flags."""
import json

import pytest

from boltzgen import systems
from boltzgen.cli import main
from boltzgen.models import load_model_file
from boltzgen.pipeline import sample_model
from boltzgen.sampling import (SETTINGS_KEY, SampleSettings, model_settings, recommend_settings, settings_changes,
                               settings_record)

SMALL = {"n_levels": 12, "bridge": {"moves": 2}, "mixing": {"moves": 20}}


@pytest.fixture
def small_model(tmp_path):
    """The shipped dipeptide model, recommending few levels and moves."""
    return recommend_settings(systems.shipped_model("alanine-dipeptide"), SMALL, out=tmp_path / "m.pt")


def test_a_file_without_a_recommendation_gets_the_defaults_and_one_with_it_its_fields(small_model):
    assert model_settings(load_model_file(systems.shipped_model("alanine-dipeptide"))) == SampleSettings()
    s = model_settings(load_model_file(small_model))
    d = SampleSettings()
    assert (s.n_levels, s.bridge.moves, s.mixing.moves) == (12, 2, 20)
    assert (s.level_moves, s.bridge.cess, s.mixing.torsions) == (d.level_moves, d.bridge.cess, d.mixing.torsions)


def test_a_bad_recommendation_is_refused_and_nothing_is_written(tmp_path, small_model):
    before = small_model.read_bytes()
    with pytest.raises(ValueError, match="n_lvels.*did you mean n_levels"):
        recommend_settings(small_model, {"n_lvels": 400})
    with pytest.raises(ValueError, match="level_moves"):
        recommend_settings(small_model, {"level_moves": -1})
    assert small_model.read_bytes() == before
    # {} removes the recommendation; the rest of the metadata is kept
    recommend_settings(small_model, {})
    meta = load_model_file(small_model).metadata
    assert SETTINGS_KEY not in meta and meta["system"] == "alanine-dipeptide"


def test_settings_changes_name_the_fields_that_are_not_the_defaults(small_model):
    record = settings_record(model_settings(load_model_file(small_model)), load_model_file(small_model))
    assert settings_changes(record) == {"n_levels": 12, "bridge.moves": 2, "mixing.moves": 20}
    assert settings_changes(settings_record(SampleSettings(), load_model_file(small_model))) == {}


def test_a_library_run_without_settings_uses_the_recommended_ones(tmp_path, small_model):
    with systems.load("alanine-dipeptide") as target:
        report = sample_model(target, small_model, tmp_path / "s", particles=8, runs=1, compile=False)
    assert report.summary["settings"]["n_levels"] == 12 and report.summary["settings"]["mixing"]["moves"] == 20


def test_the_flags_override_the_recommendation_and_the_table_names_what_is_not_default(tmp_path, small_model, capsys):
    out = tmp_path / "job"
    assert main(["sample", "alanine-dipeptide", "--model", str(small_model), "--out", str(out), "--particles", "8",
                 "--runs", "1", "--no-compile", "--threads", "1", "--levels", "10"]) == 0
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["n_levels"] == 10 and settings["bridge"]["moves"] == 2  # the flag, then the model's
    assert "settings (not default)  n_levels 10, bridge.moves 2, mixing.moves 20" in capsys.readouterr().out
