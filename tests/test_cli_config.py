"""`--config FILE.yaml` (boltzgen.config): sections mirror the settings dataclasses, the command line wins over
the file, the file over the defaults; and the shell completion generated from the parser.

Errors of bad files (unknown keys, wrong types, ranges) are rows of test_cli_errors.py.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from boltzgen import cli
from boltzgen.config import read_config, update_dataclass, with_field
from boltzgen.pipeline import TrainSettings
from boltzgen.sampling import BridgeSettings, SampleSettings
from boltzgen.switching import SwitchSettings

CONFIG = """\
particles: 8
runs: 3
no_compile: true
temperature: 310
sampling:
  n_levels: 40
  level_moves: 1
  bridge: {moves: 3, step_size: 1e-5}
  mixing:
    moves: 20
    torsions: {reflect: 0.25}
"""


def parsed(tmp_path, *argv):
    """The parsed `sample` command with CONFIG as --config, options resolved and settings built."""
    config = tmp_path / "sample.yaml"
    config.write_text(CONFIG)
    args = cli.build_parser().parse_args(["sample", "alanine-dipeptide", "--model", "m", "--out", "o",
                                          "--config", str(config), *argv])
    sections = cli._resolve_options(args, {"sampling": SampleSettings()})
    return args, cli._sample_settings(args, sections["sampling"])


def test_the_file_overrides_the_defaults(tmp_path):
    args, settings = parsed(tmp_path)
    assert (args.particles, args.runs, args.no_compile, args.temperature) == (8, 3, True, 310.0)
    assert (args.seed, args.device, args.checkpoint_every) == (0, "cpu", 30.0)  # not in the file: defaults
    d = SampleSettings()
    assert settings.n_levels == 40 and settings.level_moves == 1
    assert settings.bridge == BridgeSettings(cess=d.bridge.cess, moves=3, step_size=1e-5,
                                             resample_threshold=d.bridge.resample_threshold)
    assert settings.mixing.moves == 20 and settings.mixing.block == d.mixing.block
    assert settings.mixing.torsions.reflect == 0.25 and settings.mixing.torsions.moves == d.mixing.torsions.moves
    assert args.labels["particles"].endswith("sample.yaml: particles") and args.labels["seed"] == "--seed"


def test_the_command_line_overrides_the_file(tmp_path):
    args, settings = parsed(tmp_path, "--particles", "5", "--levels", "7", "--torsion-reflect", "0.75",
                            "--temperature", "290")
    assert (args.particles, args.runs, args.temperature) == (5, 3, 290.0)
    assert args.labels["particles"] == "--particles"
    assert settings.n_levels == 7 and settings.level_moves == 1  # flag wins; the file's other fields stay
    assert settings.mixing.torsions.reflect == 0.75 and settings.mixing.moves == 20


def test_without_a_file_the_defaults_are_those_of_the_dataclasses(tmp_path):
    args = cli.build_parser().parse_args(["run", "alanine-dipeptide", "--mixing-moves", "9"])
    settings = cli._sample_settings(args, cli._resolve_options(args, {"sampling": SampleSettings()})["sampling"])
    assert settings == with_field(SampleSettings(), ("mixing", "moves"), 9)
    assert (args.particles, args.runs, args.temperature, args.no_compile) == (1000, 4, None, False)


def test_a_nested_section_keeps_the_defaults_of_the_dataclass_that_holds_it(tmp_path):
    """SwitchSettings' bridge defaults to resample_threshold 0.3 (BridgeSettings' own default is 0.1)."""
    config = tmp_path / "fe.yaml"
    config.write_text("switching:\n  bridge: {moves: 2}\nreference_ns: 0.5\n")
    found = read_config(config, "boltzgen free-energy", {"sampling": SampleSettings(), "switching": SwitchSettings()},
                        {"reference_ns": float})
    assert found.sections["switching"].bridge.moves == 2
    assert found.sections["switching"].bridge.resample_threshold == 0.3
    assert found.sections["sampling"] == SampleSettings() and found.options == {"reference_ns": 0.5}


def test_train_settings_and_flags(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("threads: 1\ntraining: {dsm_steps: 4, clf_steps: 2, hidden: 8, n_blocks: 1, "
                      "coordinates: internal, learning_rate: 0.002}\n")
    args = cli.build_parser().parse_args(["train", "alanine-dipeptide", "--data", "d", "--out", "m",
                                          "--config", str(config), "--hidden", "12", "--network-blocks", "2",
                                          "--regression-frames", "drawn"])
    sections = cli._resolve_options(args, {"training": TrainSettings()})
    settings = cli._apply_flags(sections["training"], args, cli.TRAINING_FLAGS)
    assert (settings.dsm_steps, settings.hidden, settings.n_blocks) == (4, 12, 2)
    assert settings.training_config().regression_frames == "drawn"
    assert settings.coordinates == "internal" and settings.learning_rate == 0.002 and args.threads == 1


def test_yaml_numbers_without_a_dot_are_read_as_floats():
    """PyYAML reads 1e-4 as a string; a float field takes it, an int field does not."""
    assert update_dataclass(BridgeSettings(), {"step_size": "1e-4"}, "f.yaml", "bridge").step_size == 1e-4
    with pytest.raises(ValueError, match=r"^f\.yaml: bridge\.moves: expected an integer, got '1e1' \(str\)$"):
        update_dataclass(BridgeSettings(), {"moves": "1e1"}, "f.yaml", "bridge")
    with pytest.raises(ValueError, match=r"^f\.yaml: bridge\.cess: expected a number, got nan \(float\)$"):
        update_dataclass(BridgeSettings(), {"cess": float("nan")}, "f.yaml", "bridge")


def test_every_settings_flag_names_a_field_of_its_section():
    for flags, default in ((cli.SAMPLING_FLAGS, SampleSettings()), (cli.TRAINING_FLAGS, TrainSettings())):
        for path in flags.values():
            value = default
            for name in path:
                value = getattr(value, name)  # AttributeError: a flag that maps onto no field


@pytest.mark.parametrize("command", ["sample", "run", "train", "free-energy"])
def test_config_and_temperature_are_offered_by_every_command_that_loads_a_system(command):
    flags = cli._visible_flags(cli._commands(cli.build_parser())[command])
    assert "--config" in flags and "--temperature" in flags and "--out" in flags


def test_no_flag_means_two_things():
    """Flags that mean different things in different commands have different names (docs/cli.md)."""
    commands = cli._commands(cli.build_parser())
    train, analyze, md = (cli._visible_flags(commands[c]) for c in ("train", "analyze", "md"))
    assert "--blocks" not in train and "--network-blocks" in train and "--blocks" in analyze
    assert "--bias-width" not in md and "--bias-width-deg" in md


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("words, expected", [
    (["boltzgen", "tr"], ["train"]),
    (["boltzgen", "train", "--net"], ["--network-blocks"]),
    (["boltzgen", "train", "--bl"], []),  # the renamed flag is hidden
    (["boltzgen", "train", "--coordinates", ""], ["internal", "cartesian"]),
    (["boltzgen", "md", "--bias-w"], ["--bias-width-deg"]),
    (["boltzgen", "sample", "--conf"], ["--config"]),
    (["boltzgen", "completion", ""], ["bash", "zsh"]),
])
def test_bash_completion_script(tmp_path, words, expected):
    script = tmp_path / "boltzgen.bash"
    script.write_text(cli.completion_script(cli.build_parser(), "bash"))
    quoted = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
                                         '_boltzgen; printf "%s\\n" "${COMPREPLY[@]}"'],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    assert [w for w in done.stdout.splitlines() if w] == expected


def test_completion_command_prints_the_script(capsys):
    assert cli.main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#compdef boltzgen\nautoload -U +X bashcompinit") and "complete -o filenames" in out


DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_docs_cli_lists_every_flag():
    text = DOCS.read_text(encoding="utf-8")
    for name, sub in cli._commands(cli.build_parser()).items():
        for flag in cli._visible_flags(sub):
            if flag not in ("-h", "--help"):
                assert f"`{flag}`" in text or f"`{flag} " in text, f"docs/cli.md does not list {name} {flag}"


@pytest.mark.parametrize("command, sections", [
    ("sample", {"sampling": SampleSettings()}), ("train", {"training": TrainSettings()})])
def test_the_config_examples_of_docs_cli_are_valid(tmp_path, command, sections):
    import re

    blocks = re.findall(r"^```yaml\n(# (\w+)\.yaml.*?)^```$", DOCS.read_text(encoding="utf-8"), re.S | re.M)
    (text,) = [source for source, name in blocks if name == command]
    path = tmp_path / f"{command}.yaml"
    path.write_text(text)
    args = cli.build_parser().parse_args([command, "alanine-dipeptide", "--out", "o", "--config", str(path),
                                          *(["--model", "m"] if command == "sample" else ["--data", "d"])])
    found = cli._resolve_options(args, sections)
    assert found != sections  # the example changes something
