"""Sample-run folders: the weighted samples of one SMC run, readable by mdtraj and by ``boltzgen analyze``.

One folder per independent run::

    topology.pdb       the molecule (first frame's positions), mdtraj/OpenMM readable
    samples.trr        the N particles as frames, positions in nm (float32 on disk, as TRR stores them)
    log_weights.npy    (N,) float64 log-weights toward exp(-u) (self-normalise; -inf = zero weight)
    energies.npy       (N,) float64 reduced energies u = U/kT of the particles (full precision)
    origins.npy        (N,) int64 each particle's lineage: the index of its ancestor at t = 1
                       (absent in runs written before lineages were saved)
    diagnostics.json   {"kind": "boltzgen-sample-run", per-step diagnostics, totals, settings}

    traj = mdtraj.load("run-000/samples.trr", top="run-000/topology.pdb")

Files are written to a temporary folder that is renamed into place at the end, so a folder with
``diagnostics.json`` is always complete: nothing is ever half-written.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import mdtraj
import numpy as np

SAMPLE_RUN_KIND = "boltzgen-sample-run"
_FILES = ("topology.pdb", "samples.trr", "log_weights.npy", "energies.npy", "diagnostics.json")


@dataclass(frozen=True, eq=False)
class SampleRun:
    """A sample-run folder read back.

    Attributes:
        path: the folder.
        trajectory: mdtraj.Trajectory of the N particles (nm).
        log_weights: (N,) float64 log-weights toward the Boltzmann distribution.
        energies: (N,) float64 reduced energies u (kT).
        diagnostics: the parsed diagnostics.json.
        origins: (N,) int64 lineage of each particle (its ancestor at t = 1), or None (not saved).
    """

    path: Path
    trajectory: mdtraj.Trajectory
    log_weights: np.ndarray
    energies: np.ndarray
    diagnostics: dict
    origins: np.ndarray | None = None


def is_sample_run(path) -> bool:
    """Whether ``path`` is a folder written by :func:`write_sample_run` (with a readable diagnostics.json)."""
    p = Path(path) / "diagnostics.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("kind") == SAMPLE_RUN_KIND
    except (OSError, ValueError, AttributeError):
        return False


def looks_like_sample_run(path) -> bool:
    """Whether ``path`` holds any file that only :func:`write_sample_run` writes (samples.trr,
    log_weights.npy, diagnostics.json): a sample run, possibly damaged, never an MD run."""
    return Path(path).is_dir() and any((Path(path) / name).is_file()
                                       for name in ("samples.trr", "log_weights.npy", "diagnostics.json"))


def run_folders(path) -> list[Path]:
    """The run folders ``run-000``, ``run-001``, ... inside a folder that ``boltzgen sample``, ``run`` or
    ``free-energy`` wrote (beside its summary.json), sorted; [] when ``path`` holds none."""
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(d for d in p.glob("run-[0-9]*") if d.is_dir() and d.name[4:].isdigit())


def read_diagnostics(run_dir) -> dict:
    """diagnostics.json of a sample run (its per-step records and ``totals``) without reading its samples,
    with a ValueError naming the file and the run when it is missing, damaged or of another kind."""
    out = Path(run_dir)
    path = out / "diagnostics.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: the sample run in {out} is incomplete")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"{path} is damaged (not readable JSON: {detail}); the sample run in {out} cannot be "
                         "read") from exc
    if not isinstance(record, dict) or record.get("kind") != SAMPLE_RUN_KIND:
        kind = record.get("kind") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path} is damaged (kind {kind!r}, expected {SAMPLE_RUN_KIND!r}); the sample run in "
                         f"{out} cannot be read")
    return record


def _json_ready(value):
    """NaN and infinities become None (JSON has neither); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_ready(value.item())
    return value


def write_json(path, data: dict) -> Path:
    """Write ``data`` as indented JSON (NaN and infinities as null) atomically: a temporary file renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_ready(data), indent=1) + "\n")
    tmp.replace(path)
    return path


def write_sample_run(out_dir, positions, log_weights, energies, topology, diagnostics: dict,
                     origins=None) -> Path:
    """Write one run's weighted samples to ``out_dir`` (which must not exist yet), atomically.

    Args:
        out_dir: the folder to create.
        positions: (N, n_atoms, 3) positions in nm.
        log_weights: (N,) log-weights toward exp(-u).
        energies: (N,) reduced energies u in kT.
        topology: the molecule's openmm.app.Topology or mdtraj.Topology.
        diagnostics: JSON-ready dict (NaN becomes null); ``kind`` is added.
        origins: (N,) int lineage of each particle (index of its ancestor at t = 1), or None.
    """
    out = Path(out_dir)
    if out.exists():
        raise ValueError(f"{out} already exists: choose a new --out folder (samples are never overwritten)")
    x = np.asarray(positions, dtype=np.float64)
    lw = np.asarray(log_weights, dtype=np.float64)
    u = np.asarray(energies, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"positions must have shape (N, n_atoms, 3) in nm, got {x.shape}")
    if lw.shape != (x.shape[0],) or u.shape != (x.shape[0],):
        raise ValueError(f"log_weights and energies must have shape ({x.shape[0]},), got {lw.shape} and {u.shape}")
    lineages = None if origins is None else np.asarray(origins)
    if lineages is not None and (lineages.shape != (x.shape[0],) or not np.issubdtype(lineages.dtype, np.integer)):
        raise ValueError(f"origins must be ({x.shape[0]},) integers (each particle's ancestor at t = 1), got "
                         f"{lineages.shape} {lineages.dtype}")
    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)
    if top.n_atoms != x.shape[1]:
        raise ValueError(f"topology has {top.n_atoms} atoms but positions have {x.shape[1]}")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    traj = mdtraj.Trajectory(x.astype(np.float32), top)
    traj[0].save_pdb(str(tmp / "topology.pdb"))
    traj.save_trr(str(tmp / "samples.trr"))
    np.save(tmp / "log_weights.npy", lw)
    np.save(tmp / "energies.npy", u)
    if lineages is not None:
        np.save(tmp / "origins.npy", lineages.astype(np.int64))
    record = _json_ready({"kind": SAMPLE_RUN_KIND, **diagnostics})
    (tmp / "diagnostics.json").write_text(json.dumps(record, indent=1) + "\n")
    tmp.rename(out)
    return out


def job_temperature(run_dir) -> float | None:
    """The temperature in K of the job a sample-run folder belongs to (its parent's job.json), or None."""
    job = Path(run_dir).parent / "job.json"
    try:
        value = json.loads(job.read_text()).get("temperature_K")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def load_sample_run(path) -> SampleRun:
    """Read a folder written by :func:`write_sample_run` (ValueError naming a missing or damaged file)."""
    out = Path(path)
    if not looks_like_sample_run(out):
        raise ValueError(f"{out} is not a boltzgen sample run (no diagnostics.json of kind {SAMPLE_RUN_KIND!r})")
    diagnostics = read_diagnostics(out)
    for name in _FILES:
        if not (out / name).is_file():
            raise ValueError(f"{out / name} is missing: the sample run is incomplete")
    try:
        traj = mdtraj.load(str(out / "samples.trr"), top=str(out / "topology.pdb"))
        lw = np.load(out / "log_weights.npy")
        u = np.load(out / "energies.npy")
        origins = np.load(out / "origins.npy") if (out / "origins.npy").is_file() else None
    except Exception as exc:  # mdtraj and numpy raise many kinds for damaged files
        raise ValueError(f"{out} holds a damaged file ({type(exc).__name__}: {exc})") from exc
    if lw.shape != (traj.n_frames,) or u.shape != (traj.n_frames,):
        raise ValueError(f"{out}: {traj.n_frames} samples but log_weights {lw.shape} and energies {u.shape}")
    if origins is not None and origins.shape != (traj.n_frames,):
        raise ValueError(f"{out}: {traj.n_frames} samples but origins {origins.shape}")
    return SampleRun(out, traj, lw.astype(np.float64), u.astype(np.float64), diagnostics,
                     None if origins is None else origins.astype(np.int64))
