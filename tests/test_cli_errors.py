"""`boltzgen` with bad input: exit code 2, one line on stderr that names the argument or path, no traceback.

Each row runs ``boltzgen.cli.main(argv)`` in this process (argparse usage errors leave through
SystemExit, with the same exit code 2). A few rows also run ``python -m boltzgen`` in a fresh process.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import boltzgen
from boltzgen.cli import main

ALA = Path(__file__).resolve().parent.parent / "systems" / "alanine-dipeptide" / "alanine-dipeptide.pdb"
SHIPPED = ALA.with_name("alanine-dipeptide.model.pt")


def write(folder: Path, name: str, text: str | bytes) -> str:
    path = folder / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return str(path)


def yaml_for(folder: Path, structure: str, name: str = "sys.yaml", extra: str = "") -> str:
    return write(folder, name, f"structure: {structure}\nforcefield: [amber99sbildn.xml]\n{extra}")


def renamed_residue(folder: Path) -> str:
    """alanine dipeptide with its ALA renamed XYZ (no template, and so no bonds from the PDB reader)."""
    write(folder, "xyz.pdb", ALA.read_text().replace(" ALA ", " XYZ "))
    return yaml_for(folder, "xyz.pdb", "xyz.yaml")


def md(system: str, tmp: Path, *more: str) -> list[str]:
    return ["md", system, "--ns", "0.001", "--out", str(tmp / "out"), *more]


def corrupt_progress(folder: Path) -> str:
    (folder / "run").mkdir()
    write(folder / "run", "progress.json", "{not json")
    return str(folder / "run")


def truncated_run(folder: Path) -> str:
    """A 4-frame run (1 ps equilibration) whose last trajectory chunk lost half its bytes."""
    out = folder / "run"
    assert main(["md", "alanine-dipeptide", "--ns", "0.004", "--equilibration", "1", "--chunk-frames", "2",
                 "--platform", "Reference", "--out", str(out)]) == 0
    last = sorted(out.glob("chunk_*.trr"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    return str(out)


def sample_with(folder: Path, *more: str) -> list[str]:
    return ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out", str(folder / "s"), *more]


def damaged_sample_job(folder: Path) -> str:
    """A `boltzgen sample` output folder (run-000, run-001, summary.json) whose run-001/diagnostics.json is cut short."""
    import mdtraj
    import numpy as np

    from boltzgen.io.sample_runs import write_json, write_sample_run

    pdb = mdtraj.load(str(ALA))
    job = folder / "job"
    for k in range(2):
        x = pdb.xyz.astype(np.float64) + 0.001 * np.random.default_rng(k).standard_normal((3, pdb.n_atoms, 3))
        write_sample_run(job / f"run-{k:03d}", x, np.zeros(3), np.zeros(3), pdb.topology, {"system": "alanine-dipeptide"})
    write_json(job / "summary.json", {"n_runs": 2})
    damaged = job / "run-001" / "diagnostics.json"
    damaged.write_text(damaged.read_text()[:40])
    return str(job)


# (id, argv from a tmp folder, pattern the single error line must match)
ROWS = [
    ("no command", lambda t: [], r"^boltzgen: error: the following arguments are required: COMMAND"),
    ("unknown command", lambda t: ["simulate"], r"^boltzgen: error: argument COMMAND: invalid choice: 'simulate'"),
    ("systems extra argument", lambda t: ["systems", "extra"], r"^boltzgen: error: unrecognized arguments: extra"),
    ("md without a system", lambda t: ["md"], r"^boltzgen md: error: the following arguments are required: system"),
    ("md --ns not a number", lambda t: ["md", "alanine-dipeptide", "--ns", "one", "--out", str(t)],
     r"^boltzgen md: error: argument --ns: invalid float value: 'one'"),
    ("md unknown system with a suggestion", lambda t: md("alanine-dipeptid", t),
     r"^boltzgen md: error: unknown system 'alanine-dipeptid'; named systems: .*Did you mean alanine-dipeptide"),
    ("md negative --ns", lambda t: md("alanine-dipeptide", t, "--ns", "-1"), r"^boltzgen md: error: .*ns.*-1"),
    ("md a PDB instead of a system", lambda t: md(write(t, "garbage.pdb", "hello\nworld\n"), t),
     r"^boltzgen md: error: .*garbage\.pdb is a structure file, not a system: .*system YAML"),
    ("md missing YAML", lambda t: md(str(t / "nothere.yaml"), t),
     r"^boltzgen md: error: system file not found: .*nothere\.yaml$"),
    ("md YAML with unknown keys", lambda t: md(write(t, "bad.yaml", "structure: a.pdb\nforce_field: [x.xml]\n"), t),
     r"^boltzgen md: error: .*bad\.yaml: unknown keys \['force_field'\]; allowed: "),
    ("md YAML that is not YAML", lambda t: md(write(t, "broken.yaml", "structure: [unclosed\n"), t),
     r"^boltzgen md: error: .*broken\.yaml: not a readable system YAML \(ParserError: "),
    ("md YAML naming a missing PDB", lambda t: md(yaml_for(t, "gone.pdb"), t),
     r"^boltzgen md: error: structure file not found: .*gone\.pdb$"),
    ("md YAML naming a garbage PDB", lambda t: md(yaml_for(t, write(t, "garbage.pdb", "hello\nworld\n")), t),
     r"^boltzgen md: error: structure .*garbage\.pdb: not a PDB file \(no ATOM or HETATM records\)$"),
    ("md YAML naming an empty PDB", lambda t: md(yaml_for(t, write(t, "empty.pdb", "")), t),
     r"^boltzgen md: error: structure .*empty\.pdb: the file is empty \(expected a PDB file\)$"),
    ("md YAML naming a binary PDB", lambda t: md(yaml_for(t, write(t, "binary.pdb", bytes(range(256)) * 4)), t),
     r"^boltzgen md: error: structure .*binary\.pdb: not a PDB file"),
    ("md YAML naming a PDB with a bad coordinate",
     lambda t: md(yaml_for(t, write(t, "bad.pdb", ALA.read_text().replace("   2.000   1.000", "   x.xxx   1.000"))), t),
     r"^boltzgen md: error: structure .*bad\.pdb: cannot be read as a PDB file \(ValueError: "),
    ("md residue without a template", lambda t: md(renamed_residue(t), t),
     r"^boltzgen md: error: the force field \(amber99sbildn\.xml\) has no template for residue XYZ \(index 1\)\. "),
    ("md YAML naming a missing force field", lambda t: md(write(t, "ff.yaml", f"structure: {ALA}\nforcefield: [mine.xml]\n"), t),
     r"^boltzgen md: error: force field file not found: mine\.xml"),
    ("md --out is a file", lambda t: md("alanine-dipeptide", t, "--out", write(t, "afile", "")),
     r"^boltzgen md: error: .*afile.*not a folder"),
    ("md corrupt progress.json", lambda t: md("alanine-dipeptide", t, "--out", corrupt_progress(t)),
     r"^boltzgen md: error: .*run/progress\.json is corrupt"),
    ("md blows up at --timestep 5", lambda t: md("alanine-dipeptide", t, "--timestep", "5", "--equilibration", "1",
                                               "--platform", "Reference"),
     r"^boltzgen md: error: MD in .*out blew up: non-finite .*--timestep"),
    ("analyze a missing folder", lambda t: ["analyze", str(t / "no-such-run")], r"^boltzgen analyze: error: .*no-such-run"),
    ("analyze a truncated chunk", lambda t: ["analyze", truncated_run(t)],
     r"^boltzgen analyze: error: .*chunk_\d+\.trr is truncated"),
    ("analyze a sample run with a damaged diagnostics.json", lambda t: ["analyze", damaged_sample_job(t) + "/run-001"],
     r"^boltzgen analyze: error: .*job/run-001/diagnostics\.json is damaged \(not readable JSON: .*\); the sample run "
     r"in .*job/run-001 cannot be read$"),
    ("analyze --blocks 1", lambda t: ["analyze", str(t), "--blocks", "1"],
     r"^boltzgen analyze: error: --blocks must be at least 2"),
    ("train without --data", lambda t: ["train", "alanine-dipeptide", "--out", str(t / "m")],
     r"^boltzgen train: error: the following arguments are required: --data"),
    ("train on a missing folder", lambda t: ["train", "alanine-dipeptide", "--data", str(t / "nowhere"),
                                             "--out", str(t / "m")], r"^boltzgen train: error: .*nowhere does not exist"),
    ("train negative --dsm-steps", lambda t: ["train", "alanine-dipeptide", "--data", str(t), "--out", str(t / "m"),
                                              "--dsm-steps", "-5"], r"^boltzgen train: error: dsm_steps must be"),
    ("train --out a .pt file", lambda t: ["train", "alanine-dipeptide", "--data", str(t), "--out", str(t / "m.pt")],
     r"^boltzgen train: error: --out .*m\.pt: train writes a folder \(model\.pt, model-dsm\.pt, model\.ckpt and "
     r"model\.json go inside it\), not a \.pt file; give a folder, e\.g\. --out .*/m$"),
    ("train --out an existing file", lambda t: ["train", "alanine-dipeptide", "--data", str(t), "--out",
                                                write(t, "afile", "")],
     r"^boltzgen train: error: --out .*afile exists and is not a folder"),
    ("train --blocks (renamed)", lambda t: ["train", "alanine-dipeptide", "--data", str(t), "--out", str(t / "m"),
                                            "--blocks", "2"],
     r"^boltzgen train: error: --blocks was renamed --network-blocks \(`analyze --blocks` counts error blocks\)"),
    ("md --bias-width (renamed)", lambda t: md("alanine-dipeptide", t, "--bias", "phi", "--bias-width", "0.35"),
     r"^boltzgen md: error: --bias-width was renamed --bias-width-deg \(degrees, .*0\.35 rad is 20\.05\)"),
    ("md --bias-width-deg 200", lambda t: md("alanine-dipeptide", t, "--bias", "phi", "--bias-width-deg", "200"),
     r"^boltzgen md: error: --bias-width-deg must be a width in degrees in \(0, 180\), got 200$"),
    ("md --temperature -5", lambda t: md("alanine-dipeptide", t, "--temperature", "-5"),
     r"^boltzgen md: error: --temperature must be a positive temperature in K, got -5$"),
    ("sample --model a folder without model.pt", lambda t: ["sample", "alanine-dipeptide", "--model", str(t),
                                                          "--out", str(t / "s")],
     r"^boltzgen sample: error: --model .*: the folder holds no model\.pt \(`boltzgen train --out DIR` writes "
     r"DIR/model\.pt\)$"),
    ("sample --config missing", lambda t: sample_with(t, "--config", str(t / "none.yaml")),
     r"^boltzgen sample: error: --config .*none\.yaml: no such file$"),
    ("sample --config not YAML", lambda t: sample_with(t, "--config", write(t, "c.yaml", "particles: [1\n")),
     r"^boltzgen sample: error: --config .*c\.yaml: not readable YAML \(ParserError: "),
    ("sample --config unknown key", lambda t: sample_with(t, "--config", write(t, "c.yaml", "particle: 10\n")),
     r"^boltzgen sample: error: .*c\.yaml: unknown key 'particle' \(boltzgen sample holds: particles, .*\); "
     r"did you mean particles\?$"),
    ("sample --config unknown nested key", lambda t: sample_with(t, "--config", write(
        t, "c.yaml", "sampling:\n  mixing:\n    torsion: {moves: 2}\n")),
     r"^boltzgen sample: error: .*c\.yaml: unknown key 'torsion' \(sampling\.mixing holds: moves, torsions, block\); "
     r"did you mean torsions\?$"),
    ("sample --config wrong type", lambda t: sample_with(t, "--config", write(t, "c.yaml", "sampling:\n  n_levels: many\n")),
     r"^boltzgen sample: error: .*c\.yaml: sampling\.n_levels: expected an integer, got 'many' \(str\)$"),
    ("sample --config bool for an int", lambda t: sample_with(t, "--config", write(t, "c.yaml", "runs: true\n")),
     r"^boltzgen sample: error: .*c\.yaml: runs: expected an integer, got True \(bool\)$"),
    ("sample --config out of range", lambda t: sample_with(t, "--config", write(
        t, "c.yaml", "sampling: {bridge: {cess: 1.5}}\n")),
     r"^boltzgen sample: error: .*c\.yaml: sampling\.bridge: bridge cess must lie in \(0, 1\), got 1\.5$"),
    ("sample --config run option out of range", lambda t: sample_with(t, "--config", write(t, "c.yaml", "particles: 0\n")),
     r"^boltzgen sample: error: .*c\.yaml: particles must be at least 1, got 0$"),
    ("sample --config a section of train", lambda t: sample_with(t, "--config", write(t, "c.yaml", "training: {hidden: 8}\n")),
     r"^boltzgen sample: error: .*c\.yaml: 'training' is read by train, not by boltzgen sample$"),
    ("sample --config a path option", lambda t: sample_with(t, "--config", write(t, "c.yaml", "out: somewhere\n")),
     r"^boltzgen sample: error: .*c\.yaml: unknown key 'out' \(boltzgen sample holds: "),
    ("sample --config not a mapping", lambda t: sample_with(t, "--config", write(t, "c.yaml", "- 1\n- 2\n")),
     r"^boltzgen sample: error: --config .*c\.yaml: expected a mapping of settings, got list$"),
    ("train --config wrong type", lambda t: ["train", "alanine-dipeptide", "--data", str(t), "--out", str(t / "m"),
                                             "--config", write(t, "c.yaml", "training: {tsm_weight: heavy}\n")],
     r"^boltzgen train: error: .*c\.yaml: training\.tsm_weight: expected a number, got 'heavy' \(str\)$"),
    ("free-energy --config switching unknown key", lambda t: [
        "free-energy", "--from", "alanine-dipeptide", "--to", "alanine-dipeptide-implicit", "--out", str(t / "f"),
        "--config", write(t, "c.yaml", "switching: {bridges: {moves: 2}}\n")],
     r"^boltzgen free-energy: error: .*c\.yaml: unknown key 'bridges' \(switching holds: bridge, torsions, "
     r"chunk_size\); did you mean bridge\?$"),
    ("sample without --model", lambda t: ["sample", "alanine-dipeptide", "--out", str(t / "s")],
     r"^boltzgen sample: error: the following arguments are required: --model"),
    ("sample a missing model", lambda t: ["sample", "alanine-dipeptide", "--model", str(t / "none.pt"), "--out",
                                          str(t / "s")], r"^boltzgen sample: error: model file not found: .*none\.pt"),
    ("sample a file that is not a model", lambda t: ["sample", "alanine-dipeptide", "--model", write(t, "x.pt", b"junk"),
                                                     "--out", str(t / "s")],
     r"^boltzgen sample: error: .*x\.pt is not a readable boltzgen model file"),
    ("sample --particles 0", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out", str(t / "s"),
                                        "--particles", "0"], r"^boltzgen sample: error: --particles must be at least 1"),
    ("sample --levels 0", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out", str(t / "s"),
                                     "--levels", "0"], r"^boltzgen sample: error: --levels must be"),
    ("sample --torsion-reflect 2", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out",
                                              str(t / "s"), "--torsion-reflect", "2"],
     r"^boltzgen sample: error: --torsion-reflect must be a probability in \[0, 1\], got 2\.0"),
    ("sample --tilt 2", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out", str(t / "s"),
                                   "--tilt", "2"], r"^boltzgen sample: error: --tilt must be a probability in \[0, 1\], got 2\.0"),
    ("sample --tilt with an uncalibrated model", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED),
                                                            "--out", str(t / "s"), "--tilt", "1"],
     r"^boltzgen sample: error: tilt=1\.0 needs a model file that carries a sampling tilt"),
    ("sample into a non-empty folder", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out",
                                                  str(Path(write(t, "keep.txt", "mine")).parent)],
     r"^boltzgen sample: error: --out .* is not empty"),
    ("run a system without a shipped model", lambda t: ["run", "alanine-dipeptide-ff96-implicit", "--out", str(t / "r")],
     r"^boltzgen run: error: system 'alanine-dipeptide-ff96-implicit' ships no trained model"),
    ("run an unknown system", lambda t: ["run", "alanine", "--out", str(t / "r")],
     r"^boltzgen run: error: unknown system 'alanine'"),
    ("run --runs 0", lambda t: ["run", "alanine-dipeptide", "--out", str(t / "r"), "--runs", "0"],
     r"^boltzgen run: error: --runs must be at least 1"),
]
# --device: a string torch does not know, on every sub-command that takes it; the line lists what is here
for command, more in (("train", lambda t: ["alanine-dipeptide", "--data", str(t), "--out", str(t / "m")]),
                      ("sample", lambda t: ["alanine-dipeptide", "--model", str(SHIPPED), "--out", str(t / "s")]),
                      ("run", lambda t: ["alanine-dipeptide", "--out", str(t / "r")]),
                      ("free-energy", lambda t: ["--from", "alanine-dipeptide", "--to", "alanine-dipeptide-implicit",
                                                 "--out", str(t / "f")])):
    ROWS.append((f"{command} --device tpu", lambda t, c=command, m=more: [c, *m(t), "--device", "tpu"],
                 rf"^boltzgen {command}: error: --device tpu: not a torch device here; available: cpu(, |$)"))
ROWS.append(("sample --device cuda:99", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED), "--out",
                                                   str(t / "s"), "--device", "cuda:99"],
             r"^boltzgen sample: error: --device cuda:99: no (such cuda|CUDA) device here; available: cpu(, |$)"))
ROWS.append(("run --device meta", lambda t: ["run", "alanine-dipeptide", "--out", str(t / "r"), "--device", "meta"],
             r"^boltzgen run: error: --device meta: not a device this machine can compute on; available: cpu"))
if not torch.cuda.is_available():  # the message only exists where there is no GPU
    ROWS.append(("train --device cuda without a GPU", lambda t: ["train", "alanine-dipeptide", "--data", str(t), "--out",
                                                                 str(t / "m"), "--device", "cuda"],
                 r"^boltzgen train: error: --device cuda: no CUDA device"))
    ROWS.append(("sample --device cuda without a GPU", lambda t: ["sample", "alanine-dipeptide", "--model", str(SHIPPED),
                                                                  "--out", str(t / "s"), "--device", "cuda"],
                 r"^boltzgen sample: error: --device cuda: no CUDA device"))


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return exc.code


@pytest.mark.parametrize("make_argv, pattern", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_gives_exit_code_2_and_one_line(make_argv, pattern, tmp_path, capsys):
    argv = make_argv(tmp_path)
    capsys.readouterr()  # drop what setting the row up printed
    code = run_main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"boltzgen {boltzgen.__version__}"


@pytest.mark.parametrize("argv, code, pattern", [
    (["--version"], 0, None),
    (["md", "alanine-dipeptid", "--ns", "1", "--out", "x"], 2, r"Did you mean alanine-dipeptide"),
    (["md", "GARBAGE", "--ns", "1", "--out", "x"], 2, r"garbage\.pdb is a structure file, not a system"),
])
def test_python_dash_m_boltzgen(argv, code, pattern, tmp_path):
    if "GARBAGE" in argv:
        argv = [write(tmp_path, "garbage.pdb", "not a pdb\n") if a == "GARBAGE" else a for a in argv]
    done = subprocess.run([sys.executable, "-m", "boltzgen", *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if pattern is None:
        assert done.stdout.strip() == f"boltzgen {boltzgen.__version__}"
    else:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and re.search(pattern, lines[0]), done.stderr
