"""The package as installed from a wheel: every subpackage is listed, and named systems ship with it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    in_tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "boltzgen").rglob("__init__.py")}
    assert listed == in_tree | {"boltzgen.named_systems"}


def test_wheel_carries_the_named_systems(tmp_path):
    # A regular install has no repository around it: the named systems must come with the package.
    # Built from a copy of the sources, so that no build/ left in the checkout can leak into it.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("boltzgen", "systems"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr[-2000:]}")
    (wheel,) = (tmp_path / "wheel").glob("boltzgen-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    for molecule in ("alanine-dipeptide", "butane"):
        shipped = sorted(p.name for p in (site / "boltzgen" / "named_systems" / molecule).iterdir())
        assert shipped == sorted(p.name for p in (ROOT / "systems" / molecule).iterdir())
    script = ("import boltzgen.systems as s; print(s.DEFAULT_SYSTEMS_DIR); print(' '.join(s.names())); "
              "t = s.load('alanine-dipeptide'); print(t.n_atoms)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    directory, names, n_atoms = run.stdout.split("\n")[:3]
    assert Path(directory) == site / "boltzgen" / "named_systems"
    assert names.split() == sorted(p.stem for p in (ROOT / "systems").glob("*/*.yaml")
                                   if not p.name.endswith(".molecule.yaml"))  # molecule files are no systems
    assert n_atoms == "22"
