"""The Boltzmann generator for a molecule: the model's levels, a bridge to the force field, mixing.

One run is one run of the SMC engine (:mod:`boltzgen.smc.engine`) through four stages, in the
model's coordinates (its coordinate space: Cartesian centre-free or internal):

1. ``initial`` and ``levels`` (:mod:`boltzgen.smc.denoising`): N particles from the model's
   Gaussian at t = 1 down to t_min by reverse-diffusion proposals with exact weights, resampling on
   the ESS, a few MALA moves per level;
2. ``bridge``: the geometric bridge exp(-(1 - lam) E_theta(t_min) - lam u), lam: 0 -> 1, adaptive
   on the conditional ESS, with MALA moves at every step. Its first step also records the
   *one-step bridge ESS*: the ESS of importance sampling u straight from the model's last level
   (the figure comparable with the importance-sampling ESS published Boltzmann generators report);
3. ``mixing`` (:class:`~boltzgen.smc.stages.Mixing`): the particles are resampled and equilibrated
   at u by MALA moves, each followed by torsion moves (turns of rotatable bonds, which cross between
   backbone basins where MALA cannot). Without them, independent runs disagree on a basin's mass by
   more than their weights say when the levels bring it through a few lineages;
4. the coordinate space *finishes* the samples (a Cartesian model cannot tell mirror images apart,
   so its samples are folded onto L; this is checked to be exact before the run starts).

The weighted particles are exact for exp(-u) whatever the model's errors (the errors cost ESS,
never bias, and the mixing moves leave exp(-u) invariant); log Z is that of exp(-u) over
centre-free positions in nm. A run can write checkpoints between steps and resume from them with
exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ._checks import check_count, check_probability
from .models import ModelFile
from .smc import MALA, SMCResult, StepOptions, evaluate, geometric_path
from .smc.denoising import levels_stages
from .smc.energy import CountedEnergy
from .smc.engine import Checkpoint, as_generator, empty_state, run
from .smc.kernels import Sequence
from .smc.stages import Mixing, PathStage
from .smc.weights import ess_fraction, log_mean_exp
from .tilt import run_tilt, tilt_digest, tilt_fraction, tilted_energy, untilt


def _fraction(value, name: str, low_open: bool = True) -> float:
    if not (0.0 < value < 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in {'(0, 1)' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TorsionSettings:
    """Torsion moves after each gradient move.

    Attributes:
        moves: torsion moves after each MALA move (0: MALA only).
        reflect: probability that a torsion move reflects the dihedrals (theta -> -theta) instead
            of turning them by uniform angles (:mod:`boltzgen.smc.torsion`).
    """

    moves: int = 4
    reflect: float = 0.5

    def __post_init__(self):
        check_count(self.moves, "torsion moves", minimum=0)
        check_probability(self.reflect, "torsion reflect")


@dataclass(frozen=True)
class BridgeSettings:
    """An adaptive geometric bridge between two targets (the model's last level and u, or u_A and u_B).

    Attributes:
        cess: conditional ESS fraction each adaptive step aims at.
        moves: MALA moves per step.
        step_size: initial MALA step size (model units squared; adapted after every move).
        resample_threshold: resample when ESS / N falls below this.
        torsions: torsion moves after each MALA move (on the step's energy; each costs one evaluation of
            the model and one of the force field in the generator's bridge); 0: MALA only.
    """

    cess: float = 0.9
    moves: int = 10
    step_size: float = 1e-4
    resample_threshold: float = 0.1
    torsions: int = 0

    def __post_init__(self):
        _fraction(self.cess, "bridge cess")
        check_count(self.moves, "bridge moves", minimum=0)
        check_count(self.torsions, "bridge torsions", minimum=0)
        _fraction(self.resample_threshold, "bridge resample_threshold", low_open=False)
        if not self.step_size > 0:
            raise ValueError(f"bridge step_size must be positive, got {self.step_size!r}")


@dataclass(frozen=True)
class MixingSettings:
    """The mixing stage at u after the bridge.

    The kernel alone relaxes alanine dipeptide's phi populations slowly: an e-folding time of ~650
    rounds in the internal-coordinate model's space; in Cartesian coordinates, runs from both sides of
    the barrier agree after 1,000 rounds in vacuum and 500 in OBC implicit solvent (500-round block
    means, benchmarks/kernel_reference.py). So the default 100 rounds cannot correct a wrong basin mass:
    the model's levels and the SMC weights set it. What they do is decorrelate the particles the
    bridge's resampling duplicated: the relative per-run spread of P(phi > 0) fell from 0.45 after the
    bridge to 0.19 after mixing (8 x 1,000 particles, benchmarks/sampler_stages.py).

    Attributes:
        moves: MALA moves per particle (0: no mixing stage).
        torsions: torsion moves after each MALA move.
        block: moves per recorded step.
    """

    moves: int = 100
    torsions: TorsionSettings = TorsionSettings()
    block: int = 50

    def __post_init__(self):
        check_count(self.moves, "mixing moves", minimum=0)
        check_count(self.block, "mixing block")


@dataclass(frozen=True)
class SampleSettings:
    """Choices of one SMC run (defaults: measured on alanine dipeptide with its internal-coordinate model by
    benchmarks/sampler_stages.py, see docs/benchmarks.md; the Cartesian model was measured with about 1,000
    levels without level torsions, resampling below 0.1 and 1,500 mixing rounds).

    Attributes:
        n_levels: reverse-diffusion levels from t = 1 to t_min (uniform in log SNR) when ``level_cess``
            is None.
        level_cess: choose each next level so the conditional ESS fraction stays at this
            (:class:`~boltzgen.smc.denoising.AdaptiveLevels`); None: the fixed grid of ``n_levels``.
        level_moves: MALA moves per level.
        level_torsions: torsion moves after each level MALA move, on the level's energy E(t, .) (changes of
            dihedral coordinates in internal coordinates): they re-spread the particles over the backbone
            basins at every level, so a basin's mass is no longer carried by the few lineages that
            survive the resampling where the basins form. The turns (uniform or reflected) follow
            ``mixing.torsions.reflect``; 0: MALA only.
        resample_threshold: resample the levels when ESS / N falls below this.
        bridge: :class:`BridgeSettings` of the bridge to u.
        mixing: :class:`MixingSettings` of the mixing stage.
        chunk_size: particles per energy evaluation (bounds memory).
        memory_budget: bytes one evaluation chunk may use, or None. When given, each run measures
            the peak memory per particle of its heaviest evaluation on its device
            (:func:`boltzgen.memory.bytes_per_particle`, a probe of 32 and 64 particles) and uses
            ``budget // bytes_per_particle`` particles per chunk instead of ``chunk_size`` (recorded
            in the run's diagnostics). See docs/scaling.md for the figures per 1,000 particles.
        tilt: fraction of the model file's sampling tilt b to apply (:mod:`boltzgen.tilt`): the run
            samples exp(-(u - tilt b)) and corrects every weight by exp(-tilt b) at the end, so that rare
            basins keep lineages. None (default): all of it when the file carries one, else none; 0: none.
    """

    n_levels: int = 100
    level_cess: float | None = None
    level_moves: int = 1
    level_torsions: int = 4
    resample_threshold: float = 0.5
    bridge: BridgeSettings = BridgeSettings()
    mixing: MixingSettings = MixingSettings()
    chunk_size: int = 1000
    memory_budget: int | None = None
    tilt: float | None = None

    def __post_init__(self):
        check_count(self.n_levels, "n_levels")
        if self.tilt is not None:
            check_probability(self.tilt, "tilt")
        if self.level_cess is not None:
            _fraction(self.level_cess, "level_cess")
        check_count(self.level_moves, "level_moves", minimum=0)
        check_count(self.level_torsions, "level_torsions", minimum=0)
        check_count(self.chunk_size, "chunk_size")
        check_count(self.memory_budget, "memory_budget (bytes)", allow_none=True)
        _fraction(self.resample_threshold, "resample_threshold", low_open=False)


SETTINGS_KEY = "sample_settings"
"""The model-file metadata key of the sampler settings a model recommends (:func:`model_settings`)."""


def model_settings(model_file: ModelFile, where: str = "the model file") -> SampleSettings:
    """The settings a run of this model uses unless told otherwise: SampleSettings() with the fields that
    ``model_file.metadata["sample_settings"]`` sets (a mapping like a config file's ``sampling:`` section,
    e.g. ``{"n_levels": 400, "level_moves": 4}``). A model whose rare states need more levels than the
    defaults give records them there, with the must-show measured at them; a file without the key gets
    the defaults. Flags and ``--config`` override these in the CLI.

    Raises:
        ValueError: the recorded settings are not valid SampleSettings fields, naming ``where``.
    """
    from .config import update_dataclass

    return update_dataclass(SampleSettings(), model_file.metadata.get(SETTINGS_KEY, {}), where, SETTINGS_KEY)


def recommend_settings(model_path, settings: dict, out=None) -> Path:
    """Record ``settings`` in a model file as the sampler settings its runs use by default (:func:`model_settings`).

    Args:
        model_path: a model file.
        settings: a mapping of SampleSettings fields, nested like a config file's ``sampling:`` section
            (e.g. ``{"n_levels": 400, "level_moves": 4}``); {} removes the recommendation.
        out: where to write the model file (default: over ``model_path``, atomically).
    Returns:
        the file written.
    Raises:
        ValueError: ``settings`` are not valid SampleSettings fields (nothing is written).
    """
    from .config import update_dataclass
    from .models import load_model_file, save_model_file

    update_dataclass(SampleSettings(), settings, "settings", SETTINGS_KEY)  # refuse before writing
    model_file = load_model_file(model_path)
    metadata = {k: v for k, v in model_file.metadata.items() if k != SETTINGS_KEY}
    if settings:
        metadata[SETTINGS_KEY] = dict(settings)
    return save_model_file(model_path if out is None else out, model_file.model, model_file.space, metadata)


def settings_changes(record: dict, defaults: dict | None = None, prefix: str = "") -> dict:
    """{dotted field: value} of a run's settings record (:func:`settings_record`, as a summary holds it) that
    differ from SampleSettings()'s, e.g. ``{"n_levels": 400, "mixing.moves": 0, "tilt": 1.0}``."""
    if defaults is None:  # the record of an untilted default run: asdict without the tilt key
        defaults = {k: v for k, v in asdict(SampleSettings()).items() if k != "tilt"}
    changes = {}
    for key, value in record.items():
        if key == "tilt_sha256":  # identifies the tilt; its fraction is what a reader needs
            continue
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            changes.update(settings_changes(value, defaults[key], f"{prefix}{key}."))
        elif defaults.get(key, object()) != value:
            changes[prefix + key] = value
    return changes


@dataclass(frozen=True)
class MolecularRun:
    """One run's weighted samples and diagnostics.

    Attributes:
        positions: (N, n_atoms, 3) float64 nm (finished by the coordinate space, e.g. L-folded).
        log_weights: (N,) float64 log-weights toward exp(-u) (log_mean_exp = log_z).
        energies: (N,) float64 reduced energies u (kT) of ``positions``.
        result: the whole SMC run: its final state, every step's record and where each stage
            (``levels``, ``bridge``, ``mixing``) left the particles. In a tilted run all of it (weights,
            per-step ESS and log Z) is toward the tilted target exp(-(u - b)); ``log_weights`` and
            ``log_z`` are the corrected ones.
        mirror_fraction: fraction of particles that were mirror images (D) and were folded (nan
            where nothing is folded).
        target_evaluations, model_evaluations: configurations on which u and E_theta were
            evaluated (an energy+gradient counts once).
        seconds: wall time (summed over interrupted and resumed parts).
        chunk_size: particles per evaluation chunk (``settings.chunk_size``, or derived from
            ``settings.memory_budget``).
        bytes_per_particle: the measured peak per particle behind a budget's chunk (None without one).
        tilt: the fraction of the model file's sampling tilt the run applied (0: none).
    """

    positions: np.ndarray
    log_weights: np.ndarray
    energies: np.ndarray
    result: SMCResult
    mirror_fraction: float
    target_evaluations: int
    model_evaluations: int
    seconds: float
    chunk_size: int = 1000
    bytes_per_particle: float | None = None
    tilt: float = 0.0

    @property
    def tilt_ess_fraction(self) -> float:
        """Kish ESS / N of the final (corrected) weights (1 for an untilted run with a mixing stage, which
        leaves equal weights)."""
        return ess_fraction(torch.as_tensor(self.log_weights))

    @property
    def log_z(self) -> float:
        """log of the integral of exp(-u) over centre-free positions (nm^(3 n_atoms - 3))."""
        return log_mean_exp(torch.as_tensor(self.log_weights))

    @property
    def bridge_ess_fraction(self) -> float:
        """One-step bridge ESS / N (see the module docstring)."""
        return float(self.result.steps("bridge")[0].extra["one_step_ess_fraction"])

    @property
    def ess_fraction(self) -> float:
        """Kish ESS / N at the end of the bridge, before mixing (mixing resamples to equal weights)."""
        return self.result.stage_end("bridge").ess_fraction

    @property
    def origins(self) -> np.ndarray:
        """(N,) int64 each final particle's lineage: the index of its ancestor at t = 1."""
        return self.result.origin.cpu().numpy().astype(np.int64)

    @property
    def n_lineages(self) -> int:
        """Particles of t = 1 with descendants of positive weight at the end of the bridge."""
        return self.result.stage_end("bridge").n_lineages

    @property
    def step_size(self) -> float:
        """The gradient kernel's final adapted step size (model units squared)."""
        return float(self.result.kernel.step_size)

    @property
    def torsion_acceptance(self) -> float:
        """Mean acceptance of the mixing stage's torsion moves (nan without them)."""
        rates = [s.moves.get("torsion.acceptance", float("nan")) for s in self.result.steps("mixing")]
        return float(np.nanmean(rates)) if rates and not np.isnan(rates).all() else float("nan")

    def diagnostics(self) -> dict:
        """Per-step diagnostics of every stage and the run's totals, JSON-ready."""
        levels, mixing = self.result.stage_end("levels"), self.result.stage_end("mixing")
        return {"steps": [asdict(s) for s in self.result.diagnostics],
                "totals": {"n_particles": int(len(self.log_weights)), "ess_fraction": self.ess_fraction,
                           "bridge_ess_fraction": self.bridge_ess_fraction, "log_z": self.log_z,
                           "levels_ess_fraction": levels.ess_fraction, "n_lineages": self.n_lineages,
                           "levels_lineages": levels.n_lineages, "n_levels": levels.n_steps,
                           "n_bridge_steps": self.result.stage_end("bridge").n_steps,
                           "mirror_fraction": self.mirror_fraction,
                           "mixing_lineages": None if mixing is None else mixing.n_lineages,
                           "torsion_acceptance": self.torsion_acceptance,
                           "target_evaluations": self.target_evaluations,
                           "model_evaluations": self.model_evaluations, "seconds": self.seconds,
                           "chunk_size": self.chunk_size, "bytes_per_particle": self.bytes_per_particle,
                           "tilt": self.tilt, "tilt_ess_fraction": self.tilt_ess_fraction}}


def settings_record(settings: SampleSettings, model_file: ModelFile) -> dict:
    """What identifies a run's settings in job manifests and checkpoints: ``asdict(settings)`` with the tilt
    resolved (:func:`boltzgen.tilt.tilt_fraction`). An untilted run's record has no tilt key, as before tilts
    existed, so older job folders and checkpoints still resume; a tilted one records the fraction applied and
    a digest of the file's tilt, so a run never resumes under another tilt."""
    record = asdict(settings)
    fraction = tilt_fraction(model_file, record.pop("tilt"))
    if fraction:
        record["tilt"] = fraction
        record["tilt_sha256"] = tilt_digest(model_file.metadata)
    return record


def run_stages(model_file: ModelFile, u, model_energy, topology, settings: SampleSettings) -> list:
    """The stages of one run (see the module docstring) in the model's coordinates.

    Args:
        model_file: the model and its coordinate space.
        u: the target in model units, flat (n, d) -> (n,) kT.
        model_energy: the model's family E(t, y) (e.g. counted).
        topology: the molecule's topology (for torsion moves).
        settings: :class:`SampleSettings`.
    """
    model, space = model_file.model, model_file.space
    project = space.projection
    t_min = float(model.schedule.t_min)
    m = settings.mixing
    b = settings.bridge
    with_turns = _turns(model_file, topology, settings)
    levels = _level_stages(model_file, model_energy, settings, with_turns)
    bridge_path = geometric_path(lambda y: model_energy(t_min, y), u, cess_target=b.cess)
    bridge = PathStage(bridge_path.segments[0], StepOptions(b.resample_threshold, "systematic", True, project,
                                                            settings.chunk_size),
                       n_moves=b.moves, kernel=with_turns(MALA(step_size=b.step_size), b.torsions), name="bridge")
    stages = levels + [bridge]
    if m.moves:
        turns = m.torsions.moves  # with_turns adds none where the molecule has no rotatable bond
        add_turns = (lambda kernel: with_turns(kernel, turns)) if turns else None
        stages.append(Mixing(u, m.moves, m.block, StepOptions(0.0, "systematic", True, project, settings.chunk_size),
                             kernel=add_turns))
    return stages


def _turns(model_file: ModelFile, topology, settings: SampleSettings) -> Callable:
    """with_turns(kernel, n): a gradient move, then n torsion moves (the kernel alone when there are none)."""
    m, b = settings.mixing, settings.bridge
    wanted = settings.level_torsions or b.torsions or m.torsions.moves
    turn = model_file.space.torsion_kernel(topology, m.torsions.reflect) if wanted else None

    def with_turns(kernel, n: int):
        if isinstance(kernel, Sequence):  # the previous stage's MALA + turns: keep only its adapted MALA
            kernel = kernel.kernels[0]
        return kernel if turn is None or n == 0 else Sequence((kernel,) + (turn,) * n)

    return with_turns


def _level_stages(model_file: ModelFile, model_energy, settings: SampleSettings, with_turns) -> list:
    """The draw at t = 1 and the model's levels down to t_min (stage 1 of the module docstring)."""
    return levels_stages(model_file.model, n_levels=settings.n_levels, n_moves=settings.level_moves,
                         kernel=with_turns(MALA(), settings.level_torsions),
                         options=StepOptions(settings.resample_threshold, "systematic", True,
                                             model_file.space.projection, settings.chunk_size),
                         energy=model_energy, cess=settings.level_cess)


@dataclass(frozen=True)
class ModelSamples:
    """The model's own weighted samples at t_min.

    Attributes:
        positions: (n, n_atoms, 3) float64 nm.
        log_weights: (n,) float64 log-weights toward the model's t_min density (the levels' weights).
        particles: (n, d) float64, the same samples in the model's coordinates as the levels leave
            them (converting positions back can fold a particle outside the space's domain into it).
    """

    positions: np.ndarray
    log_weights: np.ndarray
    particles: np.ndarray


def model_samples(model_file: ModelFile, topology, n: int, settings: SampleSettings = SampleSettings(), *,
                  seed: int = 0) -> ModelSamples:
    """The model's own distribution at t_min: the weighted particles of a run's levels alone.

    Stage 1 of the module docstring with ``settings``' levels; no force field is evaluated. These are
    the particles the bridge starts from, so the force field's view of them
    (:func:`boltzgen.analysis.model_quality.own_sample_quality`) gives the one-step bridge ESS of a
    run, which held-out MD frames cannot: they only show where the data are, not where the model
    puts mass that the data never visit.

    Args:
        model_file: a loaded model file; its model's device is where the particles live.
        topology: the molecule's topology (for the level torsion moves).
        n: particles.
        settings: :class:`SampleSettings` (only the levels' fields are used).
        seed: seeds the levels.
    Returns:
        :class:`ModelSamples`, on the CPU.
    """
    n = check_count(n, "n")
    device = model_file.model.data_mean.device
    stages = _level_stages(model_file, model_file.model.energy, settings, _turns(model_file, topology, settings))
    result = run(empty_state(n, device), stages, as_generator(seed, device))
    particles = result.particles.detach().to(torch.float64)
    positions = model_file.space.to_positions(particles)
    return ModelSamples(positions.cpu().numpy(), result.log_weights.detach().to(torch.float64).cpu().numpy(),
                        particles.cpu().numpy())


@dataclass(frozen=True)
class _Saved:
    """What a run's checkpoint file holds: the engine's checkpoint and the run's own counters."""

    checkpoint: Checkpoint
    target_evaluations: int
    model_evaluations: int
    seconds: float
    settings: dict = field(default_factory=dict)


def _saver(path: Path | None, every: float, counters: tuple, started: float, done_before: float, settings: dict):
    """on_step callback writing the checkpoint atomically at most every ``every`` seconds."""
    if path is None:
        return None
    last = [time.perf_counter()]

    def save(checkpoint: Checkpoint) -> None:
        now = time.perf_counter()
        if now - last[0] < every:
            return
        last[0] = now
        saved = _Saved(checkpoint, counters[0].count, counters[1].count, done_before + now - started, settings)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(saved, tmp)
        os.replace(tmp, path)

    return save


def sample_molecule(model_file: ModelFile, target, n_particles: int, settings: SampleSettings | None = None,
                    *, seed: int = 0, target_energy=None, progress: Callable | None = None,
                    checkpoint: str | os.PathLike | None = None, checkpoint_every: float = 30.0) -> MolecularRun:
    """One SMC run of the Boltzmann generator (see the module docstring).

    Args:
        model_file: a loaded model file (:func:`boltzgen.models.load_model_file`); its model's
            device is where the particles and the force field live.
        target: the target (topology, positions, reduced_energy on (n, n_atoms, 3) nm).
        n_particles: N.
        settings: :class:`SampleSettings` (None: :func:`model_settings` of ``model_file``).
        seed: seeds the run (two runs with different seeds are independent).
        target_energy: the reduced energy to sample, callable on (n, n_atoms, 3) nm -> (n,) kT
            (default ``target.reduced_energy``; pass the torch force field's for speed).
        progress: called after every step with (stage, position, record) (see
            :func:`boltzgen.smc.engine.run`).
        checkpoint: a file to write the run's state to between steps (at most every
            ``checkpoint_every`` seconds); if it exists, the run resumes from it and ends exactly as an
            uninterrupted run would. It is deleted when the run completes.
    """
    n_particles = check_count(n_particles, "n_particles")
    settings = model_settings(model_file) if settings is None else settings
    start = time.perf_counter()
    model, space = model_file.model, model_file.space
    device = model.data_mean.device
    requested, per_particle = settings, None
    if settings.memory_budget is not None:
        from .memory import bytes_per_particle, chunk_for_budget

        per_particle = bytes_per_particle(model_file, target, device)
        settings = replace(settings, chunk_size=chunk_for_budget(settings.memory_budget, per_particle, n_particles))
    reduced = target.reduced_energy if target_energy is None else target_energy
    space.check_target(reduced, torch.as_tensor(np.asarray(target.positions), dtype=torch.float64, device=device))
    path = None if checkpoint is None else Path(checkpoint)
    saved = torch.load(path, weights_only=False) if path is not None and path.is_file() else None
    record = settings_record(requested, model_file)
    if saved is not None and saved.settings != record:
        raise ValueError(f"checkpoint {path} was written with other settings: delete it or use the same settings")
    u = CountedEnergy(space.flat_energy(reduced), saved.target_evaluations if saved else 0)
    model, tilt = run_tilt(model_file, settings.tilt)
    model_energy = CountedEnergy(model.energy, saved.model_evaluations if saved else 0)
    generator = as_generator(seed, device)
    done_before = saved.seconds if saved else 0.0
    stages = run_stages(replace(model_file, model=model), u if tilt is None else tilted_energy(u, tilt), model_energy,
                        target.topology, settings)
    result = run(empty_state(n_particles, device), stages,
                 generator, resume=saved.checkpoint if saved else None, progress=progress,
                 on_step=_saver(path, checkpoint_every, (u, model_energy), start, done_before, record))
    log_weights = result.log_weights.detach() if tilt is None else untilt(result.log_weights.detach(), result.particles,
                                                                           tilt, settings.chunk_size)
    positions, mirror_fraction = space.finish(space.to_positions(result.particles).detach().to(torch.float64),
                                              target.topology)
    final = CountedEnergy(reduced)  # the finished positions' energies, for the run folder
    energies = evaluate(final, positions, settings.chunk_size).cpu().numpy()
    run_result = MolecularRun(positions=positions.cpu().numpy(), log_weights=log_weights.cpu().numpy(),
                              energies=energies, result=result, mirror_fraction=mirror_fraction,
                              target_evaluations=u.count + final.count, model_evaluations=model_energy.count,
                              seconds=done_before + time.perf_counter() - start, chunk_size=settings.chunk_size,
                              bytes_per_particle=per_particle, tilt=tilt_fraction(model_file, settings.tilt))
    if path is not None and path.exists():
        path.unlink()
    return run_result
