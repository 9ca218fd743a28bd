"""Reference and training data by Langevin molecular dynamics with OpenMM, in resumable chunks.

:func:`run_md` minimises, equilibrates and then samples a target's Boltzmann distribution with
OpenMM's ``LangevinMiddleIntegrator`` at the target's temperature, writing frames in chunks. A run
that is killed and started again with the same arguments continues after the last complete chunk:
no frame is lost or written twice. The output folder holds

    topology.pdb          the reference structure (the topology for mdtraj)
    chunk_00000.trr       the frames of chunk 0 (GROMACS TRR, float32 nm and time in ps; mdtraj,
                          MDAnalysis and VMD read it)
    chunk_00000.npy       their potential energies, kJ/mol, float64, shape (n_frames,)
    checkpoint_00000.chk  OpenMM checkpoint after chunk 0 (positions, velocities, random state)
    progress.json         the settings and the list of complete chunks, written last

Every file is written to a temporary name and renamed into place, and ``progress.json`` is
updated only after a chunk's files and checkpoint exist, so the folder always describes complete
chunks. :func:`load_trajectory` and :func:`load_energies` read what ``progress.json`` lists.

Time step: the system has no constraints, so bonds to hydrogen vibrate freely; the fastest
(C-H/N-H stretches, ~3000-3400 cm^-1) have a period of ~10 fs. The default 1 fs resolves that
period with ~10 steps, the usual limit for unconstrained Amber-type systems (2 fs needs
constrained H bonds); LangevinMiddleIntegrator's configurational error is second order in the
step and small at 1 fs. Use ``timestep_fs=0.5`` to halve it if in doubt.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ._checks import check_count, check_positive
from .targets.openmm import OpenMMTarget, kT_kj_per_mol

_PROGRESS = "progress.json"
_TOPOLOGY = "topology.pdb"
_FORMAT = 1
# Settings that define the trajectory; a resumed run must use the same ones.
_RUN_SETTINGS = ("system", "n_atoms", "temperature_K", "seed", "timestep_fs", "friction_per_ps",
                 "save_every_ps", "chunk_frames", "equilibration_ps", "minimize")


@dataclass(frozen=True)
class MDProgress:
    """Passed to the progress callback: the stage and how far it is, in ps of simulated time."""

    stage: str  # "equilibration" or "production"
    ps_done: float
    ps_total: float


@dataclass(frozen=True)
class MDResult:
    """What a :func:`run_md` call left in ``out_dir``.

    Attributes: out_dir; n_frames (production frames on disk); ps_done (production time on disk,
    ps); complete (whether the requested length is reached); resumed (whether this call continued
    an earlier run); platform (the OpenMM platform used).
    """

    out_dir: Path
    n_frames: int
    ps_done: float
    complete: bool
    resumed: bool
    platform: str


def run_md(target: OpenMMTarget, ns: float, out_dir, seed: int, *, timestep_fs: float = 1.0,
           friction_per_ps: float = 1.0, save_every_ps: float = 1.0, chunk_frames: int = 100,
           equilibration_ps: float = 100.0, minimize: bool = True, platform: str | None = None,
           max_chunks: int | None = None,
           progress: Callable[[MDProgress], None] | None = None) -> MDResult:
    """Run (or resume) Langevin MD of ``target`` and write ``ns`` of production frames to ``out_dir``.

    Args:
        target: the system (its System, topology, reference positions and temperature are used).
        ns: production length in ns (after equilibration). Running again with a larger ``ns``
            extends the run; with the same ``ns`` it finishes an interrupted one.
        out_dir: output folder (created if needed); see the module docstring for its files.
        seed: integer in [0, 2**31 - 2] for initial velocities and the thermostat noise.
        timestep_fs: integration step in fs (default 1 fs, safe without constraints; see above).
        friction_per_ps: Langevin friction coefficient in 1/ps.
        save_every_ps: simulated time between saved frames, ps (a multiple of the step).
        chunk_frames: frames per chunk file; a killed run loses at most one chunk of work.
        equilibration_ps: MD after minimisation and before the first saved frame, ps.
        minimize: minimise the reference structure first (recommended).
        platform: OpenMM platform for MD; default the target's (chosen by measurement). On resume
            the run's own platform is used (checkpoints are platform specific).
        max_chunks: write at most this many chunks in this call, then return (time-boxed jobs).
        progress: called with an :class:`MDProgress` after every equilibration ps and saved frame.

    Resumed runs continue from the checkpoint of the last complete chunk, including the random
    number state, so on the Reference platform a killed-and-resumed run writes exactly the frames
    of an uninterrupted one; on the CPU platform the continuation is statistically equivalent
    but not bitwise identical.
    """
    if not isinstance(target, OpenMMTarget):
        raise TypeError(f"target must be an OpenMMTarget (e.g. boltzgen.systems.load(...)), got {type(target).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 2:
        raise ValueError(f"seed must be an integer in [0, 2**31 - 2], got {seed!r}")
    chunk_frames = check_count(chunk_frames, "chunk_frames")
    max_chunks = check_count(max_chunks, "max_chunks", minimum=0, allow_none=True)
    check_positive(ns, "ns")
    check_positive(timestep_fs, "timestep_fs")
    check_positive(friction_per_ps, "friction_per_ps")
    check_positive(save_every_ps, "save_every_ps")
    if equilibration_ps < 0:
        raise ValueError(f"equilibration_ps must be >= 0, got {equilibration_ps!r}")
    steps_per_frame = _whole_steps(save_every_ps, timestep_fs, "save_every_ps")
    equilibration_steps = _whole_steps(equilibration_ps, timestep_fs, "equilibration_ps") if equilibration_ps else 0
    frames_total = round(ns * 1000.0 / save_every_ps)
    if frames_total < 1:
        raise ValueError(f"ns={ns} is shorter than one frame (save_every_ps={save_every_ps})")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "system": target.name, "n_atoms": target.n_atoms, "temperature_K": target.temperature, "seed": seed,
        "timestep_fs": float(timestep_fs), "friction_per_ps": float(friction_per_ps),
        "save_every_ps": float(save_every_ps), "chunk_frames": chunk_frames,
        "equilibration_ps": float(equilibration_ps), "minimize": bool(minimize),
    }
    record = _read_progress(out)
    resumed = record is not None
    if resumed:
        _check_resume(record, settings, platform, out)
        platform_name, properties = record["platform"], record["platform_properties"]
    else:
        platform_name = platform or target.platform
        properties = target.platform_properties if platform_name == target.platform else {}
    context, integrator = _make_context(target, settings, platform_name, properties)

    if resumed:
        context.loadCheckpoint((out / record["checkpoint"]).read_bytes())
    else:
        record = _start(out, target, context, integrator, settings, equilibration_steps, progress)
        record.update(platform=platform_name, platform_properties=properties,
                      openmm_version=openmm.__version__, format=_FORMAT)
        record["checkpoint"] = _write_checkpoint(out, context, "equilibrated")
        _atomic_write(out / _PROGRESS, json.dumps(record, indent=1).encode())

    frames_done = sum(c["n_frames"] for c in record["chunks"])
    chunks_written = 0
    while frames_done < frames_total and (max_chunks is None or chunks_written < max_chunks):
        n = min(chunk_frames, frames_total - frames_done)
        xyz, energies = np.empty((n, target.n_atoms, 3)), np.empty(n)
        for i in range(n):
            integrator.step(steps_per_frame)
            state = context.getState(getPositions=True, getEnergy=True)
            xyz[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if progress is not None:
                progress(MDProgress("production", (frames_done + i + 1) * save_every_ps, frames_total * save_every_ps))
        record = _append_chunk(out, record, context, target, xyz, energies)
        frames_done += n
        chunks_written += 1
    return MDResult(out_dir=out, n_frames=frames_done, ps_done=frames_done * save_every_ps,
                    complete=frames_done >= frames_total, resumed=resumed, platform=platform_name)


def load_trajectory(out_dir) -> mdtraj.Trajectory:
    """The production frames of a :func:`run_md` folder as an mdtraj Trajectory (time in ps)."""
    out = Path(out_dir)
    record = _read_progress(out)
    if record is None or not record["chunks"]:
        raise ValueError(f"{out} holds no complete MD chunk yet (no {_PROGRESS} listing frames)")
    return mdtraj.load([str(out / c["trr"]) for c in record["chunks"]], top=str(out / _TOPOLOGY))


def load_energies(out_dir) -> np.ndarray:
    """Reduced potential energies u = U/kT (float64, shape (n_frames,)) of the production frames.

    Computed by OpenMM on the full-precision positions during the run (the TRR stores float32).
    """
    out = Path(out_dir)
    record = _read_progress(out)
    if record is None or not record["chunks"]:
        raise ValueError(f"{out} holds no complete MD chunk yet (no {_PROGRESS} listing frames)")
    kj = np.concatenate([np.load(out / c["energies"]) for c in record["chunks"]])
    return kj / kT_kj_per_mol(record["temperature_K"])


# ---- pieces ------------------------------------------------------------------------------------
def _whole_steps(ps: float, timestep_fs: float, name: str) -> int:
    steps = ps * 1000.0 / timestep_fs
    if abs(steps - round(steps)) > 1e-6 * max(1.0, steps) or round(steps) < 1:
        raise ValueError(f"{name}={ps} ps must be a positive multiple of the time step ({timestep_fs} fs)")
    return int(round(steps))


def _make_context(target, settings, platform_name, properties):
    integrator = openmm.LangevinMiddleIntegrator(
        settings["temperature_K"] * unit.kelvin, settings["friction_per_ps"] / unit.picosecond,
        settings["timestep_fs"] * unit.femtosecond)
    # OpenMM reads seed 0 as "pick one at random"; shift by one so every seed is reproducible.
    integrator.setRandomNumberSeed(settings["seed"] + 1)
    context = openmm.Context(target.system, integrator, openmm.Platform.getPlatformByName(platform_name),
                             dict(properties))
    return context, integrator


def _start(out, target, context, integrator, settings, equilibration_steps, progress) -> dict:
    """Write the topology, minimise, draw velocities and equilibrate; return a fresh record."""
    with open(out / (_TOPOLOGY + ".tmp"), "w") as fh:
        app.PDBFile.writeFile(target.topology, target.positions * unit.nanometer, fh)
    os.replace(out / (_TOPOLOGY + ".tmp"), out / _TOPOLOGY)
    context.setPositions(target.positions)
    if settings["minimize"]:
        openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(settings["temperature_K"] * unit.kelvin, settings["seed"] + 1)
    steps_per_ps = round(1000.0 / settings["timestep_fs"])
    done = 0
    while done < equilibration_steps:
        n = min(steps_per_ps, equilibration_steps - done)
        integrator.step(n)
        done += n
        if progress is not None:
            total_ps = equilibration_steps * settings["timestep_fs"] / 1000.0
            progress(MDProgress("equilibration", done * settings["timestep_fs"] / 1000.0, total_ps))
    return {**settings, "chunks": []}


def _append_chunk(out, record, context, target, xyz, energies) -> dict:
    """Write one chunk's frames, energies and checkpoint, then record it; return the new record."""
    k = len(record["chunks"])
    trr, npy = f"chunk_{k:05d}.trr", f"chunk_{k:05d}.npy"
    first_frame = sum(c["n_frames"] for c in record["chunks"])
    time_ps = (first_frame + np.arange(1, len(xyz) + 1)) * record["save_every_ps"]
    traj = mdtraj.Trajectory(xyz, mdtraj.Topology.from_openmm(target.topology), time=time_ps)
    traj.save_trr(str(out / (trr + ".tmp")), force_overwrite=True)
    _fsync_replace(out / (trr + ".tmp"), out / trr)
    with open(out / (npy + ".tmp"), "wb") as fh:
        np.save(fh, energies)
    _fsync_replace(out / (npy + ".tmp"), out / npy)
    old_checkpoint = record["checkpoint"]
    new = {**record, "chunks": record["chunks"] + [{"trr": trr, "energies": npy, "n_frames": len(energies)}],
           "checkpoint": _write_checkpoint(out, context, f"{k:05d}")}
    _atomic_write(out / _PROGRESS, json.dumps(new, indent=1).encode())
    # Only now is the previous checkpoint no longer needed.
    (out / old_checkpoint).unlink(missing_ok=True)
    return new


def _write_checkpoint(out: Path, context, label: str) -> str:
    name = f"checkpoint_{label}.chk"
    _atomic_write(out / name, context.createCheckpoint())
    return name


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    _fsync_replace(tmp, path)


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_progress(out: Path) -> dict | None:
    path = out / _PROGRESS
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("format") != _FORMAT:
        raise ValueError(f"{path}: unknown format {record.get('format')!r} (expected {_FORMAT})")
    return record


def _check_resume(record: dict, settings: dict, platform: str | None, out: Path) -> None:
    changed = [f"{k}: {record.get(k)!r} on disk, {settings[k]!r} now" for k in _RUN_SETTINGS
               if record.get(k) != settings[k]]
    if changed:
        raise ValueError(f"{out} holds a run with other settings ({'; '.join(changed)}); resume with the same "
                         "settings or choose another out_dir")
    if platform is not None and platform != record["platform"]:
        raise ValueError(f"{out} was run on the {record['platform']} platform and its checkpoints only load "
                         f"there; resume with platform={record['platform']!r} (or None)")
    if record.get("openmm_version") != openmm.__version__:
        raise ValueError(f"{out} was written by OpenMM {record.get('openmm_version')}; its checkpoints need the "
                         f"same version (this is {openmm.__version__})")
