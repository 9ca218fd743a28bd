"""Reading the folders that :func:`boltzgen.md.run_md` writes: frames, energies, log-weights, the run record.

An MD run folder holds ``progress.json`` (the run record: settings, chunk list with file sizes),
``topology.pdb`` and, per chunk, ``chunk_XXXXX.trr`` (frames, nm), ``chunk_XXXXX.npy`` (potential
energies U in kJ/mol) and for metadynamics ``chunk_XXXXX_bias.npy`` (the frozen bias V in kJ/mol).
The readers convert at this boundary: energies and log-weights come back in kT. Every damaged or
missing file is named in the error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mdtraj
import numpy as np

from ..targets.openmm import kT_kj_per_mol

PROGRESS = "progress.json"
TOPOLOGY = "topology.pdb"
FORMAT = 1
#: The energy/temperature log of a run: CSV, one row per saved production frame, units in the header.
LOG = "md.log"
LOG_COLUMNS = ("step", "time_ps", "potential_kJ_per_mol", "kinetic_kJ_per_mol", "temperature_K", "speed_ns_per_day")


def load_topology(out_dir) -> mdtraj.Topology:
    """The molecule of a complete :func:`run_md` folder (read without its frames)."""
    out, _ = complete_record(out_dir)
    topology_path = out / TOPOLOGY
    if not topology_path.is_file():
        raise ValueError(f"{topology_path} is missing (the topology of the run in {out})")
    try:
        return mdtraj.load_topology(str(topology_path))
    except Exception as exc:  # mdtraj raises many kinds for a damaged file
        raise ValueError(f"{topology_path} cannot be read ({type(exc).__name__}: {exc})") from exc


def load_trajectory(out_dir) -> mdtraj.Trajectory:
    """The production frames of a :func:`run_md` folder as an mdtraj Trajectory (nm, time in ps)."""
    out, record = complete_record(out_dir)
    top = load_topology(out)
    parts = []
    for chunk in record["chunks"]:
        path = chunk_file(out, chunk, "trr")
        try:
            traj = mdtraj.load(str(path), top=top)
        except Exception as exc:
            raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is damaged") from exc
        if traj.n_frames != chunk["n_frames"]:
            raise ValueError(f"{path} holds {traj.n_frames} frames, {chunk['n_frames']} when written; the file is "
                             f"truncated or damaged")
        parts.append(traj)
    return parts[0] if len(parts) == 1 else mdtraj.join(parts, check_topology=False)


def load_energies(out_dir) -> np.ndarray:
    """Reduced physical potential energies u = U/kT (float64, shape (n_frames,)) of the production frames.

    Computed by OpenMM on the full-precision positions during the run (the TRR stores float32);
    for biased runs they exclude the bias (U, not U + V).
    """
    out, record = complete_record(out_dir)
    kj = np.concatenate([load_array(out, c, "energies") for c in record["chunks"]])
    return kj / kT_kj_per_mol(record["temperature_K"])


def load_log_weights(out_dir) -> np.ndarray:
    """Importance log-weights of the production frames toward exp(-U/kT), float64 (n_frames,).

    For a metadynamics run, +V(x)/kT with V the frozen bias at each frame (production sampled
    exp(-(U + V)/kT)); any constant offset is irrelevant (self-normalise them). Zeros for a plain
    MD run.
    """
    out, record = complete_record(out_dir)
    if not record.get("bias"):
        return np.zeros(sum(c["n_frames"] for c in record["chunks"]))
    kj = np.concatenate([load_array(out, c, "bias") for c in record["chunks"]])
    return kj / kT_kj_per_mol(record["temperature_K"])


def load_log(out_dir) -> dict[str, np.ndarray]:
    """The rows of a run's ``md.log`` as {column: (n_rows,) float64} (see :data:`LOG_COLUMNS`).

    One row per saved production frame, in time order: the production step, the time in ps (as in
    the TRR), the physical potential U and the kinetic energy (kJ/mol, OpenMM's), the instantaneous
    temperature 2 K / (n_dof k_B) in K and the simulation speed in ns/day since the call that wrote
    the row started its production. Runs written before the log existed have no rows for their
    earlier frames (the step column says which frames a row belongs to).
    """
    out = existing_dir(out_dir)
    path = out / LOG
    if not path.is_file():
        raise ValueError(f"{path} is missing (the energy/temperature log of the run in {out})")
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split(",")) != LOG_COLUMNS:
        raise ValueError(f"{path}: the header must be {','.join(LOG_COLUMNS)}; the file is damaged")
    try:
        rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:] if line], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path} holds a row that is not {len(LOG_COLUMNS)} numbers ({exc}); "
                         "the file is damaged") from exc
    rows = rows.reshape(-1, len(LOG_COLUMNS))
    return {name: rows[:, k] for k, name in enumerate(LOG_COLUMNS)}


def recorded_system(out_dir) -> str | None:
    """The name of the system a :func:`run_md` folder was run with (the target's name), or None."""
    name = started_record(out_dir)[1].get("system")
    return str(name) if name else None


def recorded_temperature(out_dir) -> float | None:
    """The temperature in K a :func:`run_md` folder was run at, or None if it did not record one."""
    value = started_record(out_dir)[1].get("temperature_K")
    return float(value) if value is not None else None


def is_md_folder(path) -> bool:
    """Whether ``path`` is a folder in which :func:`run_md` has started a run (it holds progress.json)."""
    return (Path(path) / PROGRESS).is_file()


def is_biased(out_dir) -> bool:
    """Whether a :func:`run_md` folder holds a metadynamics run (True) or plain MD (False)."""
    return bool(started_record(out_dir)[1].get("bias"))



def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsynced, then renamed: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    fsync_replace(tmp, path)


def fsync_replace(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it onto ``path``."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_progress(out: Path) -> dict | None:
    """The run record in ``out``, None when there is none; ValueError naming the file when it is corrupt."""
    path = out / PROGRESS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is corrupt ({exc}); the run in {out} can be neither read nor resumed") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path} is corrupt (not a JSON object); the run in {out} can be neither read nor resumed")
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {record.get('format')!r} (expected {FORMAT})")
    missing = [k for k in ("chunks", "checkpoint", "temperature_K", "platform", "save_every_ps") if k not in record]
    chunks = record.get("chunks")
    if not missing and not (isinstance(chunks, list) and all(
            isinstance(c, dict) and {"trr", "energies", "n_frames"} <= set(c) for c in chunks)):
        missing = ["a valid chunk list"]
    if missing:
        raise ValueError(f"{path} is corrupt (missing {', '.join(missing)}); the run in {out} can be neither read "
                         "nor resumed")
    return record


def existing_dir(out_dir) -> Path:
    """``out_dir`` as a Path, checked to be an existing folder."""
    out = Path(out_dir)
    if not out.exists():
        raise FileNotFoundError(f"{out} does not exist")
    if not out.is_dir():
        raise ValueError(f"{out} is not a folder (expected a folder written by boltzgen md / run_md)")
    return out


def started_record(out_dir) -> tuple[Path, dict]:
    """The folder and its run record; ValueError when no run has started there."""
    out = existing_dir(out_dir)
    record = read_progress(out)
    if record is None:
        raise ValueError(f"{out} holds no MD run yet (no {PROGRESS})")
    return out, record


def complete_record(out_dir) -> tuple[Path, dict]:
    """The folder and its run record; ValueError when no chunk is complete yet."""
    out = existing_dir(out_dir)
    record = read_progress(out)
    if record is None or not record["chunks"]:
        raise ValueError(f"{out} holds no complete MD chunk yet (no {PROGRESS} listing frames)")
    return out, record


def chunk_file(out: Path, chunk: dict, key: str) -> Path:
    """The path of one of a chunk's files, checked to exist with the size it was written with."""
    if key not in chunk:
        raise ValueError(f"{out / PROGRESS} is corrupt (a chunk lists no {key!r} file)")
    path = out / chunk[key]
    if not path.is_file():
        raise ValueError(f"{path} is missing ({out / PROGRESS} lists it)")
    expected, size = chunk.get(f"{key}_bytes"), path.stat().st_size
    if expected is not None and size != expected:
        raise ValueError(f"{path} is truncated or damaged ({size} bytes, {expected} when written)")
    return path


def load_array(out: Path, chunk: dict, key: str) -> np.ndarray:
    """One chunk's array file (energies or bias, kJ/mol), float64 (n_frames,), checked."""
    path = chunk_file(out, chunk, key)
    try:
        values = np.load(path)
    except Exception as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is damaged") from exc
    if values.shape != (chunk["n_frames"],):
        raise ValueError(f"{path} holds shape {values.shape}, expected ({chunk['n_frames']},); the file is damaged")
    return values.astype(np.float64)


