"""Reference and training data by Langevin molecular dynamics with OpenMM, in resumable chunks,
optionally biased by well-tempered metadynamics on backbone dihedrals.

:func:`run_md` minimises, equilibrates and then samples a target's Boltzmann distribution with
OpenMM's ``LangevinMiddleIntegrator`` at the target's temperature, writing frames in chunks. A run
that is killed and started again with the same arguments continues after the last complete chunk:
no frame is lost or written twice. The output folder holds

    topology.pdb          the reference structure (the topology for mdtraj)
    chunk_00000.trr       the frames of chunk 0 (GROMACS TRR, float32 nm and time in ps; mdtraj,
                          MDAnalysis and VMD read it)
    chunk_00000.npy       their physical (unbiased) potential energies U, kJ/mol, float64,
                          shape (n_frames,)
    chunk_00000_bias.npy  biased runs only: the frozen bias V at each frame, kJ/mol, float64,
                          shape (n_frames,)
    bias.npy              biased runs only: the frozen bias on its grid, kJ/mol (see FrozenBias)
    checkpoint_00000.chk  OpenMM checkpoint after chunk 0 (positions, velocities, random state)
    md.log                energy/temperature log, CSV, one row per saved frame (header:
                          step,time_ps,potential_kJ_per_mol,kinetic_kJ_per_mol,temperature_K,
                          speed_ns_per_day; see :func:`load_log`), appended chunk by chunk
    progress.json         the settings and the list of complete chunks, written last

Every file is written to a temporary name and renamed into place (``md.log`` is appended to),
and ``progress.json`` is updated only after a chunk's files, log rows and checkpoint exist, so the
folder always describes complete chunks; a resumed run first cuts ``md.log`` back to the rows of
those chunks. :func:`load_trajectory`, :func:`load_energies` and :func:`load_log_weights` read what
``progress.json`` lists (and check that the files are there and complete).

A run is identified by its Hamiltonian: ``progress.json`` records the SHA-256 of the serialized
OpenMM System (``system_sha256``), and resuming with another System (an edited YAML, other
force field files or ``system_kwargs``) is refused, as is resuming with other run settings.

Metadynamics (``bias=Metadynamics(("phi",))``): after minimisation, well-tempered metadynamics
(OpenMM's ``openmm.app.Metadynamics`` for one joint grid; a sum of 1-D biases, one per dihedral,
for ``Metadynamics("phi1+phi2+phi3")``) deposits Gaussians on the chosen backbone dihedrals for
``deposition_ps``; those frames are not saved. The bias is then frozen (saved to ``bias.npy``),
the system is equilibrated under the frozen bias and production samples exp(-(U + V)/kT). Every
production frame therefore carries the exact importance log-weight +V(x)/kT toward the
Boltzmann distribution exp(-U/kT) (:func:`load_log_weights`; zeros for unbiased runs). The
stored energies are always the physical U (the bias force lives in its own force group). A
resumed run rebuilds the same bias from ``bias.npy``; a run killed during deposition or
equilibration starts over (nothing was recorded yet).

Time step (default :data:`DEFAULT_TIMESTEP_FS`, 0.5 fs): the system has no constraints, so bonds to
hydrogen vibrate freely; the fastest (C-H/N-H stretches, ~3000-3400 cm^-1) have a period of ~10 fs.
LangevinMiddleIntegrator's configurational error is second order in the step and measurable at
1 fs: on alanine dipeptide in vacuum, 1 fs gave dF(phi > 0) 3.586 +- 0.015 kT and 0.5 fs
3.651 +- 0.022 (6 x 30 ns each), nearer the exact MCMC kernel's 3.677 +- 0.023 (docs/benchmarks.md,
reference_md and kernel_reference). So the default is 0.5 fs, good for references to 0.1 kT;
``timestep_fs=1`` is twice as fast and biases such free energies by ~0.07 kT (2 fs needs
constrained H bonds and blows up here). A run whose energy or
positions become non-finite stops with :class:`MDInstabilityError` (the chunks before stay).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ._checks import check_count, check_positive
from .io.md_runs import (FORMAT, LOG, LOG_COLUMNS, PROGRESS, TOPOLOGY, atomic_write, chunk_file,  # noqa: F401
                         complete_record, existing_dir, fsync_replace, is_biased, is_md_folder, load_array,
                         load_energies, load_log, load_log_weights, load_topology, load_trajectory, read_progress,
                         recorded_system, started_record)
from .targets.openmm import OpenMMTarget, kT_kj_per_mol, system_fingerprint

_BIAS = "bias.npy"
#: The default integration step, fs (see the module docstring for why 0.5 and not 1).
DEFAULT_TIMESTEP_FS = 0.5
# Settings that define the trajectory; a resumed run must use the same ones. Records written
# before the bias settings existed are read with the values of an unbiased run.
_RUN_SETTINGS = ("system", "n_atoms", "temperature_K", "seed", "timestep_fs", "friction_per_ps",
                 "save_every_ps", "chunk_frames", "equilibration_ps", "minimize", "bias", "bias_combine", "bias_atoms",
                 "bias_factor", "bias_height_kj_per_mol", "bias_width_rad", "bias_frequency_steps",
                 "bias_grid_points", "deposition_ps")
_UNBIASED = {"bias": [], "bias_combine": None, "bias_atoms": None, "bias_factor": None, "bias_height_kj_per_mol": None,
             "bias_width_rad": None, "bias_frequency_steps": None, "bias_grid_points": None,
             "deposition_ps": None}


def _residue_dihedral(name: str) -> tuple[str, int]:
    """("phi" | "psi", 0-based residue row of :func:`boltzgen.cvs.backbone_atoms`) of a bias variable name."""
    angle, number = name[:3], name[3:]
    return angle, int(number) - 1 if number else 0


#: OpenMM platforms on an accelerator: asked for and missing, MD falls back to the fastest available
#: platform with a notice (any other unknown name is an error). They run MD in mixed precision.
GPU_PLATFORMS = ("CUDA", "HIP", "OpenCL")


def available_platforms() -> list[str]:
    """The OpenMM platforms this installation can use, e.g. ['Reference', 'CPU', 'CUDA']."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def md_platform(requested: str | None) -> tuple[str | None, str | None]:
    """(the platform to run MD on, a one-line notice or None) for a requested OpenMM platform name.

    None stays None (the target's platform, chosen by measurement). A GPU platform (CUDA, HIP,
    OpenCL) that this OpenMM cannot use gives None and a notice saying why (OpenMM's plugin load
    failure, e.g. no CUDA driver) and that the fastest available platform runs instead.

    Raises:
        ValueError: any other name that is not an available platform.
    """
    if requested is None:
        return None, None
    available = available_platforms()
    if requested in available:
        return requested, None
    if requested in GPU_PLATFORMS:
        failures = [f for f in openmm.Platform.getPluginLoadFailures() if requested.lower() in f.lower()]
        why = f" ({' '.join(failures[0].split())[:200]})" if failures else ""
        return None, (f"OpenMM's {requested} platform is not available here{why}; running MD on the fastest "
                      f"available platform instead (available: {', '.join(available)})")
    raise ValueError(f"platform {requested!r} is not an OpenMM platform here; available: {', '.join(available)} "
                     f"(GPU platforms: {', '.join(GPU_PLATFORMS)})")


class MDInstabilityError(ValueError):
    """The simulation produced a non-finite energy or position (it "blew up").

    The message names where (stage, frame, ps), the likely cause and what to try. Chunks
    written before are kept and the run is not marked complete.
    """


@dataclass(frozen=True)
class Metadynamics:
    """Well-tempered metadynamics on backbone dihedrals, for :func:`run_md`'s ``bias``.

    The defaults suit alanine dipeptide at 300 K: the phi barrier is ~10 kT, so a bias factor of
    6 (phi sampled as at 1800 K) flattens it to ~2 kT within a few hundred ps of deposition.

    Attributes:
        variables: the backbone dihedrals to bias: "phi" and "psi" are those of the first residue that
            has both (as :func:`boltzgen.analysis.phi_psi` and ``boltzgen analyze`` use), "phiN" /
            "psiN" those of the N-th such residue (phi1 = phi). A string is read too: "phi,psi" is
            one joint bias, "phi1+phi2+phi3" a sum of 1-D biases.
        bias_factor: gamma > 1; the variables are sampled as if at gamma times the temperature.
        height_kj_per_mol: initial height of each Gaussian, kJ/mol.
        width_rad: standard deviation of each Gaussian, radians.
        frequency_steps: MD steps between Gaussians.
        deposition_ps: how long Gaussians are deposited before the bias is frozen, ps.
        grid_points: points of the periodic bias grid per variable (default ceil(5 * 2 pi / width),
            OpenMM's choice).
        combine: "joint" (the default for a tuple; a string says it with "," or "+"): one bias on a
            grid over all variables (1 or 2 of them; OpenMM's ``openmm.app.Metadynamics``), or "sum": V = sum_i V_i(s_i), one well-tempered 1-D bias
            per variable, each Gaussian's height tempered by its own V_i (any number of variables;
            the choice for several slow dihedrals, e.g. the three phi of alanine tetrapeptide, whose
            joint grid would be 90^3 points and slow to fill). A single variable is always "joint".
    """

    variables: tuple[str, ...] = ("phi",)
    bias_factor: float = 6.0
    height_kj_per_mol: float = 1.0
    width_rad: float = 0.35
    frequency_steps: int = 500
    deposition_ps: float = 1000.0
    grid_points: int | None = None
    combine: str | None = None  # last, so that positional arguments keep their meaning

    def __post_init__(self):
        variables, combine = self.variables, self.combine
        if isinstance(variables, str):
            spelled = "sum" if "+" in variables else "joint"
            if combine is not None and combine != spelled:
                raise ValueError(f"variables {variables!r} spell a {spelled} bias ('+': sum, ',': joint) but combine="
                                 f"{combine!r}; give one of them")
            variables, combine = [v.strip() for v in variables.split("+" if spelled == "sum" else ",")], spelled
        try:
            variables = tuple(str(v) for v in variables)
        except TypeError as exc:
            raise ValueError(f"variables must be 'phi', 'phi,psi', 'phi1+phi2' or a tuple of names, "
                             f"got {self.variables!r}") from exc
        combine = "joint" if combine is None else combine
        if combine not in ("joint", "sum"):
            raise ValueError(f"combine must be 'joint' or 'sum', got {self.combine!r}")
        named = all(re.fullmatch(r"(phi|psi)([1-9][0-9]*)?", v) for v in variables)
        distinct = len({_residue_dihedral(v) for v in variables}) == len(variables) if named else False
        if not variables or not named or not distinct:
            raise ValueError(f"variables must be distinct backbone dihedrals named phi, psi, phiN or psiN "
                             f"(N-th residue), e.g. 'phi', 'phi,psi' or 'phi1+phi2+phi3'; got {self.variables!r}")
        if len(variables) == 1:
            combine = "joint"
        if combine == "joint" and len(variables) > 2:
            raise ValueError(f"a joint bias takes one or two variables (a grid over {len(variables)} is too large "
                             f"to fill); bias them as a sum, e.g. {'+'.join(variables)!r}")
        object.__setattr__(self, "combine", combine)
        object.__setattr__(self, "variables", variables)
        gamma = self.bias_factor
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma <= 1:
            raise ValueError(f"bias_factor must be a finite number > 1, got {self.bias_factor!r}")
        check_positive(self.height_kj_per_mol, "height_kj_per_mol")
        check_positive(self.width_rad, "width_rad")
        if self.width_rad >= math.pi:
            raise ValueError(f"width_rad must be below pi radians (a Gaussian on the circle), got {self.width_rad!r}")
        check_count(self.frequency_steps, "frequency_steps")
        check_positive(self.deposition_ps, "deposition_ps")
        grid = check_count(self.grid_points, "grid_points", minimum=4, allow_none=True)
        if grid is None:
            grid = int(np.ceil(5 * 2 * math.pi / self.width_rad))
        for name in ("bias_factor", "height_kj_per_mol", "width_rad", "deposition_ps"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "frequency_steps", int(self.frequency_steps))
        object.__setattr__(self, "grid_points", grid)


@dataclass(frozen=True, eq=False)
class FrozenBias:
    """The metadynamics bias of a run after deposition, exactly as its production used it.

    V is OpenMM's periodic cubic-spline interpolation of ``grid`` (a ``Continuous1DFunction`` or
    ``Continuous2DFunction``, as ``openmm.app.Metadynamics`` builds it), in kJ/mol; for a "sum"
    bias, the sum of one such 1-D spline per variable.

    Attributes:
        variables: the biased dihedrals' names, e.g. ("phi",), ("phi", "psi"), ("phi1", "phi2", "phi3").
        atoms: int64 (k, 4) atom indices of each variable's dihedral, in the order of ``variables``.
        grid: float64 kJ/mol on the periodic grid linspace(-pi, pi, g) of each variable (its last
            point repeats the first): "joint" bias: shape (g,) for one variable, (g, g) for two,
            indexed [second variable, first variable] (OpenMM's layout); "sum" bias: shape (k, g),
            row i the 1-D bias of variable i.
        temperature_K: the run's temperature in K (for kT).
        combine: "joint" or "sum" (see :class:`Metadynamics`).
    """

    variables: tuple[str, ...]
    atoms: np.ndarray
    grid: np.ndarray
    temperature_K: float
    combine: str = "joint"

    def force(self) -> openmm.CustomCVForce:
        """A new OpenMM force whose energy is V(x) (kJ/mol); it keeps force group 0."""
        return _bias_force(self.atoms, self.grid, self.combine)

    def reduced_energy(self, x) -> np.ndarray:
        """V(x)/kT (float64, shape (n,)) of positions ``x`` (n, n_atoms, 3) in nm, evaluated by OpenMM."""
        xyz = np.asarray(x, dtype=np.float64)
        if xyz.ndim != 3 or xyz.shape[2] != 3 or xyz.shape[1] <= int(self.atoms.max()):
            raise ValueError(f"x must have shape (n, n_atoms, 3) in nm with n_atoms > {int(self.atoms.max())}, "
                             f"got {xyz.shape}")
        system = openmm.System()
        for _ in range(xyz.shape[1]):
            system.addParticle(1.0)
        system.addForce(self.force())
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        out = np.empty(len(xyz))
        for i, frame in enumerate(xyz):
            context.setPositions(frame)
            out[i] = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return out / kT_kj_per_mol(self.temperature_K)


@dataclass(frozen=True)
class MDProgress:
    """Passed to the progress callback: the stage and how far it is, in ps of simulated time."""

    stage: str  # "deposition" (biased runs), "equilibration" or "production"
    ps_done: float
    ps_total: float


@dataclass(frozen=True)
class MDResult:
    """What a :func:`run_md` call left in ``out_dir``.

    Attributes: out_dir; n_frames (production frames on disk); ps_done (production time on disk,
    ps); complete (whether the requested length is reached); resumed (whether this call continued
    an earlier run); platform (the OpenMM platform used); frames_requested (the frames ``ns``
    asks for; fewer than n_frames when the run on disk is already longer); frames_written (by
    this call); biased (whether frames carry metadynamics log-weights).
    """

    out_dir: Path
    n_frames: int
    ps_done: float
    complete: bool
    resumed: bool
    platform: str
    frames_requested: int = 0
    frames_written: int = 0
    biased: bool = False


def run_md(target: OpenMMTarget, ns: float, out_dir, seed: int, *, timestep_fs: float = DEFAULT_TIMESTEP_FS,
           friction_per_ps: float = 1.0, save_every_ps: float = 1.0, chunk_frames: int = 100,
           equilibration_ps: float = 100.0, minimize: bool = True, platform: str | None = None,
           bias: Metadynamics | None = None, max_chunks: int | None = None,
           progress: Callable[[MDProgress], None] | None = None) -> MDResult:
    """Run (or resume) Langevin MD of ``target`` and write ``ns`` of production frames to ``out_dir``.

    Args:
        target: the system (its System, topology, reference positions and temperature are used).
        ns: production length in ns (after equilibration). Running again with a larger ``ns``
            extends the run; with the same ``ns`` it finishes an interrupted one; with a smaller
            one it does nothing (``MDResult.frames_requested < n_frames`` says so).
        out_dir: output folder (created if needed); see the module docstring for its files.
        seed: integer in [0, 2**31 - 2] for initial velocities and the thermostat noise.
        timestep_fs: integration step in fs (default 0.5 fs; 1 fs is twice as fast but biases free
            energies by ~0.07 kT, see above).
        friction_per_ps: Langevin friction coefficient in 1/ps.
        save_every_ps: simulated time between saved frames, ps (a multiple of the step).
        chunk_frames: frames per chunk file; a killed run loses at most one chunk of work.
        equilibration_ps: MD after minimisation (and deposition) and before the first saved
            frame, ps; under the frozen bias for biased runs.
        minimize: minimise the reference structure first (recommended).
        platform: OpenMM platform for MD; default the target's (chosen by measurement). "CUDA"
            (or HIP, OpenCL) runs in mixed precision, and when that platform is not available here
            the run warns (a UserWarning saying why) and uses the default. On resume the run's own
            platform is used (checkpoints are platform specific).
        bias: :class:`Metadynamics` settings for a biased run (frames then carry log-weights
            +V/kT, see :func:`load_log_weights`), or None for plain MD.
        max_chunks: write at most this many chunks in this call, then return (time-boxed jobs).
        progress: called with an :class:`MDProgress` after every deposition and equilibration ps
            and every saved frame.

    Resumed runs continue from the checkpoint of the last complete chunk, including the random
    number state, so on the Reference platform a killed-and-resumed run writes exactly the frames
    of an uninterrupted one; on the CPU platform the continuation is statistically equivalent
    but not bitwise identical.

    Raises:
        ValueError: bad arguments; ``out_dir`` not a writable folder; a run on disk with another
            System (Hamiltonian) or other settings; unreadable run files (each names the file).
        MDInstabilityError: (a ValueError) non-finite energies or positions; names the frame.
    """
    if not isinstance(target, OpenMMTarget):
        raise TypeError(f"target must be an OpenMMTarget (e.g. boltzgen.systems.load(...)), got {type(target).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 2:
        raise ValueError(f"seed must be an integer in [0, 2**31 - 2], got {seed!r}")
    if bias is not None and not isinstance(bias, Metadynamics):
        raise TypeError(f"bias must be a boltzgen.md.Metadynamics or None, got {type(bias).__name__}")
    chunk_frames = check_count(chunk_frames, "chunk_frames")
    max_chunks = check_count(max_chunks, "max_chunks", minimum=0, allow_none=True)
    check_positive(ns, "ns")
    check_positive(timestep_fs, "timestep_fs")
    check_positive(friction_per_ps, "friction_per_ps")
    check_positive(save_every_ps, "save_every_ps")
    if not isinstance(equilibration_ps, (int, float)) or not math.isfinite(equilibration_ps) or equilibration_ps < 0:
        raise ValueError(f"equilibration_ps must be a finite number >= 0, got {equilibration_ps!r}")
    steps_per_frame = _whole_steps(save_every_ps, timestep_fs, "save_every_ps")
    equilibration_steps = _whole_steps(equilibration_ps, timestep_fs, "equilibration_ps") if equilibration_ps else 0
    deposition_steps = _whole_steps(bias.deposition_ps, timestep_fs, "deposition_ps") if bias else 0
    frames_total = round(ns * 1000.0 / save_every_ps)
    if frames_total < 1:
        raise ValueError(f"ns={ns} is shorter than one frame (save_every_ps={save_every_ps})")

    platform, notice = md_platform(platform)
    if notice is not None:
        warnings.warn(notice, UserWarning, stacklevel=2)
    out = _prepare_out(out_dir)
    physical_xml = openmm.XmlSerializer.serialize(target.system)
    settings = {
        "system": target.name, "system_sha256": system_fingerprint(target.system),
        "n_atoms": target.n_atoms, "temperature_K": target.temperature, "seed": seed,
        "timestep_fs": float(timestep_fs), "friction_per_ps": float(friction_per_ps),
        "save_every_ps": float(save_every_ps), "chunk_frames": chunk_frames,
        "equilibration_ps": float(equilibration_ps), "minimize": bool(minimize),
        **(_bias_settings(target, bias) if bias else _UNBIASED),
    }
    record = read_progress(out)
    resumed = record is not None
    frozen = None
    if resumed:
        _check_resume(record, settings, platform, out)
        platform_name, properties = record["platform"], record["platform_properties"]
        if bias:
            frozen = _load_frozen_bias(out, record)
        context, integrator = _make_context(_production_system(physical_xml, frozen), settings,
                                            platform_name, properties)
        _load_checkpoint(context, out, record)
    else:
        platform_name = platform or target.platform
        properties = target.platform_properties if platform_name == target.platform else {}
        if platform_name in GPU_PLATFORMS:
            properties = {**properties, "Precision": "mixed"}  # single-precision Langevin MD drifts
        record, context, integrator, frozen = _start(
            out, target, physical_xml, settings, bias, platform_name, properties, equilibration_steps,
            deposition_steps, progress)
        record.update(platform=platform_name, platform_properties=properties,
                      openmm_version=openmm.__version__, format=FORMAT)
        record["checkpoint"] = _write_checkpoint(out, context, "equilibrated")
        atomic_write(out / PROGRESS, json.dumps(record, indent=1).encode())

    physical_groups = _force_groups(openmm.XmlSerializer.deserialize(physical_xml))
    bias_group = _bias_group(physical_groups)
    frames_done = frames_before = sum(c["n_frames"] for c in record["chunks"])
    _prepare_log(out, frames_before * steps_per_frame, resumed)
    n_dof, wall_start = _degrees_of_freedom(target.system), time.perf_counter()
    chunks_written = 0
    while frames_done < frames_total and (max_chunks is None or chunks_written < max_chunks):
        n = min(chunk_frames, frames_total - frames_done)
        xyz, energies, biases = np.empty((n, target.n_atoms, 3)), np.empty(n), np.zeros(n)
        log_rows = []
        for i in range(n):
            frame = frames_done + i + 1
            where = (f"production frame {frame} ({frame * save_every_ps:g} ps into production, step "
                     f"{frame * steps_per_frame} of production)")
            _step(integrator, steps_per_frame, out, where, timestep_fs, len(record["chunks"]))
            state = context.getState(getPositions=True, getEnergy=True, groups=physical_groups)
            xyz[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if frozen is not None:
                biases[i] = context.getState(getEnergy=True, groups={bias_group}).getPotentialEnergy().value_in_unit(
                    unit.kilojoule_per_mole)
            if not (math.isfinite(energies[i]) and math.isfinite(biases[i]) and np.isfinite(xyz[i]).all()):
                raise _unstable(out, where, timestep_fs, len(record["chunks"]))
            ns_per_day = ((frame - frames_before) * save_every_ps / 1000.0
                          / (max(time.perf_counter() - wall_start, 1e-9) / 86400.0))
            log_rows.append(_log_row(frame * steps_per_frame, frame * save_every_ps, energies[i],
                                     state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole), n_dof,
                                     ns_per_day))
            if progress is not None:
                progress(MDProgress("production", frame * save_every_ps, frames_total * save_every_ps))
        record = _append_chunk(out, record, context, target, xyz, energies, biases if frozen is not None else None,
                               log_rows)
        frames_done += n
        chunks_written += 1
    return MDResult(out_dir=out, n_frames=frames_done, ps_done=frames_done * save_every_ps,
                    complete=frames_done >= frames_total, resumed=resumed, platform=platform_name,
                    frames_requested=frames_total, frames_written=frames_done - frames_before,
                    biased=frozen is not None)


def load_bias(out_dir) -> FrozenBias:
    """The frozen metadynamics bias of a biased :func:`run_md` folder (raises ValueError for plain MD)."""
    out, record = started_record(out_dir)
    if not record.get("bias"):
        raise ValueError(f"{out} holds a plain MD run (no metadynamics bias)")
    return _load_frozen_bias(out, record)


# ---- pieces ------------------------------------------------------------------------------------
def _whole_steps(ps: float, timestep_fs: float, name: str) -> int:
    steps = ps * 1000.0 / timestep_fs
    if abs(steps - round(steps)) > 1e-6 * max(1.0, steps) or round(steps) < 1:
        raise ValueError(f"{name}={ps} ps must be a positive multiple of the time step ({timestep_fs} fs)")
    return int(round(steps))


def _prepare_out(out_dir) -> Path:
    """``out_dir`` as a Path to an existing folder this process can write to (created if needed)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder; give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"out_dir {out} cannot be created or written ({exc.strerror or exc}); "
                         "give a writable folder") from exc
    return out


def _bias_settings(target: OpenMMTarget, bias: Metadynamics) -> dict:
    from .cvs import backbone_atoms

    quads = backbone_atoms(target.topology)
    atoms = []
    for name in bias.variables:
        angle, row = _residue_dihedral(name)
        if row >= len(quads[angle]):
            raise ValueError(f"bias variable {name!r}: {target.name} has {len(quads[angle])} residue(s) with both "
                             f"phi and psi ({angle}1..{angle}{len(quads[angle])})")
        atoms.append([int(i) for i in quads[angle][row]])
    if len({tuple(a) for a in atoms}) != len(atoms):
        raise ValueError(f"bias variables {list(bias.variables)} name the same dihedral twice (phi is phi1)")
    return {"bias": list(bias.variables), "bias_combine": bias.combine, "bias_atoms": atoms,
            "bias_factor": bias.bias_factor, "bias_height_kj_per_mol": bias.height_kj_per_mol,
            "bias_width_rad": bias.width_rad, "bias_frequency_steps": bias.frequency_steps,
            "bias_grid_points": bias.grid_points, "deposition_ps": bias.deposition_ps}


def _torsion(quad) -> openmm.CustomTorsionForce:
    force = openmm.CustomTorsionForce("theta")
    force.addTorsion(*(int(i) for i in quad))
    return force


def _bias_force(atoms: np.ndarray, grid: np.ndarray, combine: str = "joint") -> openmm.CustomCVForce:
    """The bias table(s) on the dihedrals ``atoms``: one joint table built exactly as
    openmm.app.Metadynamics builds it, or (``combine="sum"``) the sum of one periodic 1-D table per row."""
    names = [f"cv{i}" for i in range(len(atoms))]
    if combine == "sum":
        force = openmm.CustomCVForce(" + ".join(f"table{i}(cv{i})" for i in range(len(atoms))))
    else:
        force = openmm.CustomCVForce(f"table({', '.join(names)})")
    for name, quad in zip(names, atoms):
        force.addCollectiveVariable(name, _torsion(quad))
    grid = np.asarray(grid, dtype=np.float64)
    if combine == "sum":
        for i, row in enumerate(grid):
            force.addTabulatedFunction(f"table{i}", openmm.Continuous1DFunction(row, -math.pi, math.pi, True))
    elif len(atoms) == 1:
        force.addTabulatedFunction("table", openmm.Continuous1DFunction(grid.flatten(), -math.pi, math.pi, True))
    else:
        force.addTabulatedFunction("table", openmm.Continuous2DFunction(
            grid.shape[1], grid.shape[0], grid.flatten(), -math.pi, math.pi, -math.pi, math.pi, True))
    return force


def _force_groups(system) -> set[int]:
    return {f.getForceGroup() for f in system.getForces()} or {0}


def _bias_group(physical_groups: set[int]) -> int:
    free = set(range(32)) - physical_groups
    if not free:
        raise ValueError("the system uses all 32 OpenMM force groups; one must stay free for the bias")
    return max(free)  # openmm.app.Metadynamics' choice


def _production_system(physical_xml: str, frozen: FrozenBias | None):
    """The System production integrates: the physical one, plus the frozen bias in its own group."""
    system = openmm.XmlSerializer.deserialize(physical_xml)
    if frozen is not None:
        force = frozen.force()
        force.setForceGroup(_bias_group(_force_groups(system)))
        system.addForce(force)
    return system


def _make_integrator(settings):
    integrator = openmm.LangevinMiddleIntegrator(
        settings["temperature_K"] * unit.kelvin, settings["friction_per_ps"] / unit.picosecond,
        settings["timestep_fs"] * unit.femtosecond)
    # OpenMM reads seed 0 as "pick one at random"; shift by one so every seed is reproducible.
    integrator.setRandomNumberSeed(settings["seed"] + 1)
    return integrator


def _make_context(system, settings, platform_name, properties):
    integrator = _make_integrator(settings)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform_name), dict(properties))
    return context, integrator


def _unstable(out: Path, where: str, timestep_fs: float, n_chunks: int) -> MDInstabilityError:
    if timestep_fs > 1.0:
        cause = (f"the time step of {timestep_fs:g} fs is likely too large for a system without constraints "
                 "(bonds to hydrogen vibrate with a ~10 fs period); try timestep_fs=1 or 0.5 (--timestep 1)")
    else:
        smaller = "" if timestep_fs <= 0.5 else ", or try timestep_fs=0.5 (--timestep 0.5)"
        cause = (f"with a {timestep_fs:g} fs time step the likely cause is the structure or force field "
                 f"(overlapping atoms, missing parameters); check them{smaller}")
    kept = f"the {n_chunks} complete chunk(s) before it are kept" if n_chunks else "no frame was saved"
    return MDInstabilityError(f"MD in {out} blew up: non-finite energy or positions at {where}; {cause}; "
                              f"{kept} and the run is not complete")


def _step(integrator, n: int, out: Path, where: str, timestep_fs: float, n_chunks: int) -> None:
    try:
        integrator.step(n)
    except openmm.OpenMMException as exc:  # e.g. "Particle coordinate is NaN" on some platforms
        raise _unstable(out, where, timestep_fs, n_chunks) from exc


def _check_finite(context, out, where, timestep_fs) -> None:
    state = context.getState(getPositions=True, getEnergy=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    if not (math.isfinite(energy) and np.isfinite(positions).all()):
        raise _unstable(out, where, timestep_fs, 0)


def _start(out, target, physical_xml, settings, bias, platform_name, properties, equilibration_steps,
           deposition_steps, progress):
    """Write the topology, minimise, draw velocities, deposit the bias (biased runs) and equilibrate.

    Returns (a fresh record, the production context, its integrator, the frozen bias or None).
    """
    with open(out / (TOPOLOGY + ".tmp"), "w") as fh:
        app.PDBFile.writeFile(target.topology, target.positions * unit.nanometer, fh)
    os.replace(out / (TOPOLOGY + ".tmp"), out / TOPOLOGY)
    platform = openmm.Platform.getPlatformByName(platform_name)
    timestep_fs = settings["timestep_fs"]
    steps_per_ps = round(1000.0 / timestep_fs)
    if bias:
        atoms = np.array(settings["bias_atoms"], dtype=np.int64)
        deposit = (_SumDeposition if bias.combine == "sum" else _JointDeposition)(
            physical_xml, settings, bias, atoms, platform, properties, target.topology)
        context = deposit.context
    else:
        context, integrator = _make_context(openmm.XmlSerializer.deserialize(physical_xml), settings,
                                            platform_name, properties)
    context.setPositions(target.positions)
    if settings["minimize"]:
        openmm.LocalEnergyMinimizer.minimize(context)
    _check_finite(context, out, "the start (after minimisation)", timestep_fs)
    context.setVelocitiesToTemperature(settings["temperature_K"] * unit.kelvin, settings["seed"] + 1)

    frozen = None
    if bias:
        done = 0
        while done < deposition_steps:
            n = min(steps_per_ps, deposition_steps - done)
            where = f"deposition step {done + n} ({(done + n) * timestep_fs / 1000.0:g} ps)"
            try:
                deposit.step(n)
            except openmm.OpenMMException as exc:
                raise _unstable(out, where, timestep_fs, 0) from exc
            done += n
            _check_finite(context, out, where, timestep_fs)
            if progress is not None:
                progress(MDProgress("deposition", done * timestep_fs / 1000.0, deposition_steps * timestep_fs / 1000.0))
        frozen = FrozenBias(tuple(settings["bias"]), atoms, np.ascontiguousarray(deposit.bias_grid(), dtype=np.float64),
                            settings["temperature_K"], bias.combine)
        with open(out / (_BIAS + ".tmp"), "wb") as fh:
            np.save(fh, frozen.grid)
        fsync_replace(out / (_BIAS + ".tmp"), out / _BIAS)
        # Production integrates the frozen bias in a fresh context started from this state; a
        # resumed run does the same from its checkpoint, so both follow the same path.
        checkpoint = context.createCheckpoint()
        del context, deposit
        context, integrator = _make_context(_production_system(physical_xml, frozen), settings, platform_name,
                                            properties)
        context.loadCheckpoint(checkpoint)

    done = 0
    while done < equilibration_steps:
        n = min(steps_per_ps, equilibration_steps - done)
        where = f"equilibration step {done + n} ({(done + n) * timestep_fs / 1000.0:g} ps)"
        _step(integrator, n, out, where, timestep_fs, 0)
        done += n
        _check_finite(context, out, where, timestep_fs)
        if progress is not None:
            progress(MDProgress("equilibration", done * timestep_fs / 1000.0,
                                equilibration_steps * timestep_fs / 1000.0))
    record = {**settings, "chunks": []}
    if frozen is not None:
        record["bias_file"] = _BIAS
        record["bias_sha256"] = hashlib.sha256((out / _BIAS).read_bytes()).hexdigest()
    return record, context, integrator, frozen


class _JointDeposition:
    """Well-tempered deposition of one bias on the joint grid of all variables, by openmm.app.Metadynamics."""

    def __init__(self, physical_xml, settings, bias, atoms, platform, properties, topology):
        system = openmm.XmlSerializer.deserialize(physical_xml)
        variables = [app.BiasVariable(_torsion(q), -math.pi, math.pi, bias.width_rad, True, bias.grid_points)
                     for q in atoms]
        numpy_state = np.random.get_state()  # Metadynamics draws a file id from numpy's global RNG
        self._meta = app.Metadynamics(system, variables, settings["temperature_K"] * unit.kelvin, bias.bias_factor,
                                      bias.height_kj_per_mol * unit.kilojoule_per_mole, bias.frequency_steps)
        np.random.set_state(numpy_state)
        self._simulation = app.Simulation(topology, system, _make_integrator(settings), platform, dict(properties))
        self.context = self._simulation.context
        self._temperature, self._delta_t = settings["temperature_K"], settings["temperature_K"] * (bias.bias_factor - 1)

    def step(self, n: int) -> None:
        self._meta.step(self._simulation, n)

    def bias_grid(self) -> np.ndarray:
        """The bias V on the grid, kJ/mol, from OpenMM's public free energy F = -(T + dT)/dT * V."""
        free_energy = self._meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)
        return -free_energy * self._delta_t / (self._temperature + self._delta_t)


class _SumDeposition:
    """Well-tempered deposition of one 1-D bias per variable, V = sum_i V_i(s_i) (``combine="sum"``).

    As openmm.app.Metadynamics does for one variable, every ``frequency_steps`` a Gaussian of width
    ``width_rad`` is added to each V_i at the current s_i, of height h exp(-V_i(s_i) / (k_B dT)) with
    dT = (gamma - 1) T; V_i(s_i) is read off its grid by linear interpolation (the rule only shapes
    the bias: production weights use the frozen bias exactly).
    """

    def __init__(self, physical_xml, settings, bias, atoms, platform, properties, topology):
        system = openmm.XmlSerializer.deserialize(physical_xml)
        self._axis = np.linspace(-math.pi, math.pi, bias.grid_points)
        self._grid = np.zeros((len(atoms), bias.grid_points))
        self._force = _bias_force(atoms, self._grid, "sum")
        self._force.setForceGroup(_bias_group(_force_groups(system)))
        system.addForce(self._force)
        self._integrator = _make_integrator(settings)
        self.context = openmm.Context(system, self._integrator, platform, dict(properties))
        self._bias, self._since = bias, 0
        self._kt_delta = kT_kj_per_mol(settings["temperature_K"]) * (bias.bias_factor - 1.0)  # k_B dT, kJ/mol

    def step(self, n: int) -> None:
        while n > 0:
            k = min(n, self._bias.frequency_steps - self._since)
            self._integrator.step(k)
            n, self._since = n - k, self._since + k
            if self._since == self._bias.frequency_steps:
                self._since = 0
                self._add_gaussians(np.asarray(self._force.getCollectiveVariableValues(self.context)))

    def _add_gaussians(self, s: np.ndarray) -> None:
        distance = np.abs(self._axis[None, :] - s[:, None]) % (2 * math.pi)
        distance = np.minimum(distance, 2 * math.pi - distance)  # on the circle
        distance[:, -1] = distance[:, 0]  # the last point is the first (OpenMM's periodic spline checks it exactly)
        here = np.array([np.interp(si, self._axis, row) for si, row in zip(s, self._grid)])
        heights = self._bias.height_kj_per_mol * np.exp(-here / self._kt_delta)
        self._grid += heights[:, None] * np.exp(-0.5 * (distance / self._bias.width_rad) ** 2)
        for i, row in enumerate(self._grid):
            self._force.getTabulatedFunction(i).setFunctionParameters(row, -math.pi, math.pi)
        self._force.updateParametersInContext(self.context)

    def bias_grid(self) -> np.ndarray:
        """(k, g) the 1-D biases V_i on their grids, kJ/mol."""
        return self._grid.copy()


def _degrees_of_freedom(system: openmm.System) -> int:
    """Degrees of freedom of the dynamics, as openmm.app.StateDataReporter counts them: 3 per massive
    particle, minus one per constraint, minus 3 with a CMMotionRemover."""
    dof = 3 * sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i) > 0 * unit.dalton)
    dof -= system.getNumConstraints()
    if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()):
        dof -= 3
    return dof


def _log_row(step: int, time_ps: float, potential_kj: float, kinetic_kj: float, n_dof: int, ns_per_day: float) -> str:
    """One md.log row (:data:`LOG_COLUMNS`): the temperature is 2 K / (n_dof k_B), in K."""
    k_b = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    temperature = 2.0 * kinetic_kj / (n_dof * k_b) if n_dof > 0 else float("nan")
    return f"{step},{time_ps:.6g},{potential_kj:.10g},{kinetic_kj:.10g},{temperature:.6g},{ns_per_day:.4g}\n"


def _prepare_log(out: Path, last_step: int, resumed: bool) -> None:
    """md.log with its header and exactly the rows of the complete chunks (steps <= ``last_step``).

    A run killed after appending a chunk's rows and before recording the chunk left rows that the
    resumed run writes again: they are cut here. A fresh run starts a new log.
    """
    path = out / LOG
    header = ",".join(LOG_COLUMNS) + "\n"
    kept = []
    if resumed and path.is_file():
        for line in path.read_text().splitlines()[1:]:
            try:
                step = int(line.split(",", 1)[0])
            except ValueError:  # a row cut short by a kill
                continue
            if step <= last_step and line.count(",") == len(LOG_COLUMNS) - 1:
                kept.append(line + "\n")
    atomic_write(path, (header + "".join(kept)).encode())


def _append_log(out: Path, rows: list[str]) -> None:
    with open(out / LOG, "a") as fh:
        fh.write("".join(rows))
        fh.flush()
        os.fsync(fh.fileno())


def _append_chunk(out, record, context, target, xyz, energies, biases, log_rows) -> dict:
    """Write one chunk's frames, energies (and biases), log rows and checkpoint, then record it; return the
    new record."""
    k = len(record["chunks"])
    chunk = {"trr": f"chunk_{k:05d}.trr", "energies": f"chunk_{k:05d}.npy", "n_frames": len(energies)}
    first_frame = sum(c["n_frames"] for c in record["chunks"])
    time_ps = (first_frame + np.arange(1, len(xyz) + 1)) * record["save_every_ps"]
    traj = mdtraj.Trajectory(xyz, mdtraj.Topology.from_openmm(target.topology), time=time_ps)
    traj.save_trr(str(out / (chunk["trr"] + ".tmp")), force_overwrite=True)
    fsync_replace(out / (chunk["trr"] + ".tmp"), out / chunk["trr"])
    arrays = [("energies", energies)]
    if biases is not None:
        chunk["bias"] = f"chunk_{k:05d}_bias.npy"
        arrays.append(("bias", biases))
    for key, values in arrays:
        with open(out / (chunk[key] + ".tmp"), "wb") as fh:
            np.save(fh, values)
        fsync_replace(out / (chunk[key] + ".tmp"), out / chunk[key])
    for key in ("trr", "energies", "bias"):
        if key in chunk:
            chunk[f"{key}_bytes"] = (out / chunk[key]).stat().st_size
    _append_log(out, log_rows)
    old_checkpoint = record["checkpoint"]
    new = {**record, "chunks": record["chunks"] + [chunk], "checkpoint": _write_checkpoint(out, context, f"{k:05d}")}
    atomic_write(out / PROGRESS, json.dumps(new, indent=1).encode())
    # Only now is the previous checkpoint no longer needed.
    (out / old_checkpoint).unlink(missing_ok=True)
    return new


def _write_checkpoint(out: Path, context, label: str) -> str:
    name = f"checkpoint_{label}.chk"
    atomic_write(out / name, context.createCheckpoint())
    return name


def _load_checkpoint(context, out: Path, record: dict) -> None:
    path = out / record["checkpoint"]
    if not path.is_file():
        raise ValueError(f"{path} is missing ({out / PROGRESS} resumes from it); the run cannot be resumed")
    try:
        context.loadCheckpoint(path.read_bytes())
    except openmm.OpenMMException as exc:
        raise ValueError(f"{path} cannot be loaded ({exc}); the checkpoint is damaged") from exc


def _load_frozen_bias(out: Path, record: dict) -> FrozenBias:
    path = out / record.get("bias_file", _BIAS)
    if not path.is_file():
        raise ValueError(f"{path} is missing (the frozen bias of the run in {out})")
    data = path.read_bytes()
    if record.get("bias_sha256") and hashlib.sha256(data).hexdigest() != record["bias_sha256"]:
        raise ValueError(f"{path} differs from the bias this run was written with (its SHA-256 changed); "
                         "the file is damaged or was replaced")
    try:
        grid = np.load(path)
    except Exception as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc
    atoms, combine = np.array(record["bias_atoms"], dtype=np.int64), record.get("bias_combine", "joint")
    g = record.get("bias_grid_points") or grid.shape[-1]
    expected = (len(atoms), g) if combine == "sum" else (g,) * len(atoms)
    if grid.shape != expected:
        raise ValueError(f"{path} holds a grid of shape {grid.shape}; this run's {combine} bias on {len(atoms)} "
                         f"variable(s) needs {expected}: the file is damaged or from another run")
    return FrozenBias(tuple(record["bias"]), atoms, grid, float(record["temperature_K"]), combine)


def _check_resume(record: dict, settings: dict, platform: str | None, out: Path) -> None:
    if record.get("system_sha256") != settings["system_sha256"]:
        if record.get("system_sha256") is None:
            raise ValueError(f"{out} holds a run written before boltzgen recorded the system's fingerprint, so "
                             "it cannot check that the system is unchanged; start the run in another out_dir")
        raise ValueError(f"{out} holds a run of another Hamiltonian: its OpenMM System differs from this one "
                         f"(system {record.get('system')!r} on disk, {settings['system']!r} now; an edited YAML, "
                         "force field or system_kwargs?); resume with the same system or choose another out_dir")
    # records written before a setting existed are read with its value then ("joint" biases)
    before = {**_UNBIASED, "bias_combine": "joint" if record.get("bias") else None}
    changed = [f"{k}: {record.get(k, before.get(k))!r} on disk, {settings[k]!r} now" for k in _RUN_SETTINGS
               if record.get(k, before.get(k)) != settings[k]]
    if changed:
        hint = ("; md's default step was 1 fs before 0.5 fs: add timestep_fs=1 (--timestep 1) to resume it"
                if record.get("timestep_fs") == 1.0 and settings["timestep_fs"] == DEFAULT_TIMESTEP_FS else "")
        raise ValueError(f"{out} holds a run with other settings ({'; '.join(changed)}); resume with the same "
                         f"settings or choose another out_dir{hint}")
    if platform is not None and platform != record["platform"]:
        raise ValueError(f"{out} was run on the {record['platform']} platform and its checkpoints only load "
                         f"there; resume with platform={record['platform']!r} (or None)")
    if record.get("openmm_version") != openmm.__version__:
        raise ValueError(f"{out} was written by OpenMM {record.get('openmm_version')}; its checkpoints need the "
                         f"same version (this is {openmm.__version__})")
