"""The package's jobs as plain calls: train a molecular energy model from MD data (more to come).

Data flows one way: system -> target -> MD frames (plain or biased, with log-weights) -> trained
model file -> (SMC) -> weighted samples -> analysis. The CLI (``boltzgen train``) only parses
arguments, shows progress and prints what these functions return.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import md
from .analysis.model_quality import ModelQuality, model_quality
from .diffusion.networks import MolecularEnergy
from .diffusion.schedule import LogSNRSchedule
from .diffusion.training import TrainingConfig, train
from .models import CHIRALITY_FOLD, CHIRALITY_KEPT, load_model_file, model_metadata, save_model_file
from .coordinates.cartesian import MolecularSpace

WEIGHTINGS = ("boltzmann", "biased")
COORDINATES = ("internal", "cartesian")


@dataclass(frozen=True)
class TrainSettings:
    """Choices of ``boltzgen train`` (defaults: 44 min for 90,000 alanine-dipeptide frames on one CPU thread).

    Attributes:
        hidden, n_blocks: width and depth of the distance network.
        dsm_steps, clf_steps: steps of the DSM phase and of the DSM + clf_weight * DiffCLF phase.
        batch_size, clf_batch_size, clf_levels, clf_window, clf_weight: see TrainingConfig.
        learning_rate, clf_learning_rate: peak learning rates of the two phases (the second is
            gentler, so DiffCLF moves mode masses without undoing the low-noise fit).
        ema_decay: EMA of the weights (short: long averages blur energies).
        tsm_weight, tsm_max_sigma: target score matching with the force field's forces at noise
            below tsm_max_sigma (model units); 0 trains with DSM (+ DiffCLF) alone.
        log_snr_max, log_snr_min: the noise schedule (LogSNRSchedule) in model units.
        weighting: "boltzmann" draws frames with probability proportional to their weights
            (biased MD's exp(+V/kT)), so the model learns the Boltzmann distribution; "biased"
            ignores the weights, so the model learns the flattened biased distribution (a broad
            proposal that SMC must correct).
        holdout_fraction: when no held-out runs are given, the last fraction of every run's
            frames is held out for the quality report.
        seed: initialisation, batches and noise.
        coordinates: "internal" (bonds, angles and dihedrals from the bond graph; the model keeps
            chirality) or "cartesian" (centre-free positions, pair-distance network; mirror images
            are folded onto L).
    """

    hidden: int = 256
    n_blocks: int = 3
    dsm_steps: int = 45000
    clf_steps: int = 10000
    batch_size: int = 256
    clf_batch_size: int = 64
    clf_levels: int = 4
    clf_window: float = 0.1
    clf_weight: float = 1.0
    learning_rate: float = 1e-3
    clf_learning_rate: float = 2e-4
    ema_decay: float = 0.995
    tsm_weight: float = 1.0
    tsm_max_sigma: float = 5e-3
    log_snr_max: float = 13.5
    log_snr_min: float = -10.0
    weighting: str = "boltzmann"
    holdout_fraction: float = 0.1
    seed: int = 0
    coordinates: str = "cartesian"

    def __post_init__(self):
        if self.coordinates not in COORDINATES:
            raise ValueError(f"coordinates must be one of {COORDINATES}, got {self.coordinates!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction!r}")

    def training_config(self, checkpoint_every: int = 500) -> TrainingConfig:
        return TrainingConfig(dsm_steps=self.dsm_steps, clf_steps=self.clf_steps, batch_size=self.batch_size,
                              clf_batch_size=self.clf_batch_size, learning_rate=self.learning_rate,
                              clf_learning_rate=self.clf_learning_rate, clf_weight=self.clf_weight,
                              clf_levels=self.clf_levels, clf_window=self.clf_window, ema_decay=self.ema_decay,
                              tsm_weight=self.tsm_weight, tsm_max_sigma=self.tsm_max_sigma,
                              seed=self.seed, checkpoint_every=checkpoint_every)


@dataclass(frozen=True)
class Frames:
    """MD frames of one molecule: positions (n, n_atoms, 3) nm float64 and log-weights (n,) float64."""

    positions: np.ndarray
    log_weights: np.ndarray
    sources: tuple[str, ...]


def load_frames(dirs, n_atoms: int, what: str = "data") -> Frames:
    """Frames and log-weights of ``boltzgen md`` folders, checked against the molecule's atom count."""
    xs, lws = [], []
    for d in dirs:
        traj = md.load_trajectory(d)
        if traj.n_atoms != n_atoms:
            raise ValueError(f"{what} {d} has {traj.n_atoms} atoms but the system has {n_atoms}: MD of another molecule")
        x = traj.xyz.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} {d} holds non-finite positions (NaN frames): rerun that MD with a smaller time step")
        xs.append(x)
        lws.append(np.asarray(md.load_log_weights(d), dtype=np.float64))
    if not xs:
        raise ValueError(f"give at least one {what} folder (written by `boltzgen md`)")
    return Frames(np.concatenate(xs), np.concatenate(lws), tuple(str(d) for d in dirs))


def split_holdout(dirs, n_atoms: int, fraction: float) -> tuple[Frames, Frames]:
    """Training frames and the last ``fraction`` of every run's frames (contiguous, so less correlated)."""
    train_parts, held_parts = [], []
    for d in dirs:
        f = load_frames([d], n_atoms)
        cut = len(f.positions) - int(round(fraction * len(f.positions)))
        train_parts.append(Frames(f.positions[:cut], f.log_weights[:cut], f.sources))
        held_parts.append(Frames(f.positions[cut:], f.log_weights[cut:], f.sources))
    join = lambda parts: Frames(np.concatenate([p.positions for p in parts]),  # noqa: E731
                                np.concatenate([p.log_weights for p in parts]), tuple(str(d) for d in dirs))
    return join(train_parts), join(held_parts)


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_model` wrote and measured.

    Attributes:
        model_path, dsm_model_path, checkpoint_path, report_path: files written.
        quality: DSM + DiffCLF model on the held-out frames.
        dsm_quality: the DSM-phase snapshot on the same frames.
        baseline_quality: a DSM-only model trained for the same number of steps (if asked).
        n_train, n_holdout: frames used; holdout: where the held-out frames came from.
        seconds: wall time of this call; energy_ms_per_1000: model energy+gradient time per
            1,000 particles (one call, after warm-up).
    """

    model_path: Path
    dsm_model_path: Path
    checkpoint_path: Path
    report_path: Path
    quality: ModelQuality
    dsm_quality: ModelQuality
    baseline_quality: ModelQuality | None
    n_train: int
    n_holdout: int
    holdout: str
    seconds: float
    energy_ms_per_1000: float
    settings: TrainSettings = field(repr=False)


def output_paths(out) -> dict:
    """Files of a training run named after the model file ``out`` (e.g. model.pt)."""
    out = Path(out)
    stem, suffix = out.stem, out.suffix or ".pt"
    return {"model": out, "dsm_model": out.with_name(f"{stem}-dsm{suffix}"), "checkpoint": out.with_suffix(".ckpt"),
            "baseline_model": out.with_name(f"{stem}-dsm-baseline{suffix}"),
            "baseline_checkpoint": out.with_name(f"{stem}-dsm-baseline.ckpt"), "report": out.with_suffix(".json")}


def _scores(target, space, positions: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """grad_y log p(y) of frames in the space's coordinates: -grad of the target in model units, float32 (n, d)."""
    from .smc import evaluate_with_grad

    energy = space.flat_energy(target.reduced_energy)
    parts = []
    for start in range(0, len(positions), chunk):
        y = space.to_flat(torch.as_tensor(positions[start:start + chunk], dtype=torch.float64))
        _, grad = evaluate_with_grad(energy, y)
        parts.append(-grad if space.projection is None else space.projection(-grad))
    scores = torch.cat(parts).to(torch.float32)
    if not torch.isfinite(scores).all():
        raise ValueError("the force field gives non-finite forces on some training frames (overlapping atoms?)")
    return scores


def _space_and_model(settings: "TrainSettings", target, frames: "Frames", schedule):
    """The coordinate space fitted to the training frames, the flat data and an untrained model of that kind."""
    from .coordinates.internal import InternalSpace, zmatrix
    from .diffusion.internal import InternalEnergy

    positions = torch.from_numpy(frames.positions)
    weights = None
    if settings.weighting == "boltzmann":
        weights = torch.exp(torch.as_tensor(frames.log_weights) - float(np.max(frames.log_weights)))
    torch.manual_seed(settings.seed)  # the network's initialisation
    if settings.coordinates == "cartesian":
        space = MolecularSpace.fit(positions)
        y = space.to_flat(positions).to(torch.float32)
        data_variance = float((y.double() ** 2).sum(1).mean()) / space.subspace_dim
        model = MolecularEnergy(space.n_atoms, schedule, data_variance, hidden=settings.hidden,
                                n_blocks=settings.n_blocks).fit(y)
        return space, y, model
    space = InternalSpace.fit(zmatrix(target.topology), positions, weights)
    y = space.to_flat(positions).to(torch.float32)
    n_periodic = int(space.periodic.sum())
    model = InternalEnergy(space.dim - n_periodic, n_periodic, schedule, hidden=settings.hidden,
                           n_blocks=settings.n_blocks).fit(y, weights)
    return space, y, model


def _energy_ms_per_1000(model, space, positions) -> float:
    y = space.to_flat(torch.as_tensor(positions[:1000])).to(model.data_mean)
    y = y.repeat((1000 + len(y) - 1) // len(y), 1)[:1000]
    model.score(model.schedule.t_min, y)  # warm-up
    start = time.perf_counter()
    model.score(model.schedule.t_min, y)
    return 1000.0 * (time.perf_counter() - start)


def train_model(target, data_dirs, out, settings: TrainSettings = TrainSettings(), *, holdout_dirs=None,
                baseline: bool = False, device: str | torch.device = "cpu", progress: bool = False) -> TrainReport:
    """Train a molecular diffusion EBM (DSM, then DSM + DiffCLF) on MD frames of ``target``.

    Resumable: the checkpoint next to ``out`` is continued when the same call is made again.
    Writes the model file ``out`` (DSM + DiffCLF, EMA weights), ``<stem>-dsm.pt`` (the DSM-phase
    snapshot), ``<stem>.ckpt`` (the training checkpoint) and ``<stem>.json`` (this report).

    Args:
        target: the OpenMMTarget the frames sample (its reduced energy scores the model).
        data_dirs: ``boltzgen md`` folders (plain or biased MD with log-weights).
        out: path of the model file to write.
        settings: :class:`TrainSettings`.
        holdout_dirs: MD folders kept out of training for the quality report (default: the last
            ``settings.holdout_fraction`` of every data run).
        baseline: also train a DSM-only model for dsm_steps + clf_steps steps (same seed), so the
            report compares DiffCLF with DSM on the same budget.
        device: where to train ("cpu", "cuda", ...).
        progress: tqdm progress bars (stderr).
    """
    start = time.perf_counter()
    data_dirs = [Path(d) for d in data_dirs]
    paths = output_paths(out)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    if holdout_dirs:
        train_frames = load_frames(data_dirs, target.n_atoms)
        held = load_frames([Path(d) for d in holdout_dirs], target.n_atoms, "holdout")
        holdout = "runs " + ", ".join(str(d) for d in holdout_dirs)
    else:
        train_frames, held = split_holdout(data_dirs, target.n_atoms, settings.holdout_fraction)
        holdout = f"last {settings.holdout_fraction:.0%} of each data run"
    if len(held.positions) == 0:
        raise ValueError("no held-out frames: give --holdout runs or a holdout_fraction > 0")
    # the space's statistics and the model's base come from the training frames
    schedule = LogSNRSchedule(settings.log_snr_max, settings.log_snr_min)
    space, y, model = _space_and_model(settings, target, train_frames, schedule)
    model = model.to(device)
    log_weights = train_frames.log_weights if settings.weighting == "boltzmann" else None
    scores = _scores(target, space, train_frames.positions) if settings.tsm_weight > 0 else None
    chirality = CHIRALITY_FOLD if settings.coordinates == "cartesian" else CHIRALITY_KEPT
    meta = model_metadata(target, chirality, training_data=[str(d) for d in data_dirs], settings=asdict(settings))

    held_u = target.reduced_energy(held.positions)  # once: every model is scored on the same frames

    def evaluate(m) -> ModelQuality:
        return model_quality(m, space, held_u, held.positions, target.topology, held.log_weights)

    def save_dsm(ema) -> None:
        save_model_file(paths["dsm_model"], ema, space, {**meta, "phase": "dsm", "steps": settings.dsm_steps})

    config = settings.training_config()
    augment = space if isinstance(space, MolecularSpace) else None  # Cartesian batches are randomly rotated
    result = train(model, y, config, paths["checkpoint"], progress=progress, log_weights=log_weights,
                   scores=scores, space=augment, on_dsm_end=save_dsm)
    save_model_file(paths["model"], result.model, space, {**meta, "phase": "dsm+diffclf", "steps": result.step})
    if not paths["dsm_model"].exists():  # clf_steps = 0: the final model is the DSM model
        save_dsm(result.model)
    quality = evaluate(result.model)
    dsm_quality = evaluate(load_model_file(paths["dsm_model"], device=device).model)
    baseline_quality = None
    if baseline:
        _, _, base = _space_and_model(settings, target, train_frames, schedule)
        base = base.to(device)
        base_config = replace(config, dsm_steps=config.total_steps, clf_steps=0)
        base_result = train(base, y, base_config, paths["baseline_checkpoint"], progress=progress,
                            log_weights=log_weights, scores=scores, space=augment)
        save_model_file(paths["baseline_model"], base_result.model, space,
                        {**meta, "phase": "dsm-baseline", "steps": base_result.step})
        baseline_quality = evaluate(base_result.model)
    report = TrainReport(paths["model"], paths["dsm_model"], paths["checkpoint"], paths["report"], quality,
                         dsm_quality, baseline_quality, len(train_frames.positions), len(held.positions), holdout,
                         time.perf_counter() - start, _energy_ms_per_1000(result.model, space, held.positions),
                         settings)
    _write_report(report)
    return report


def _write_report(report: TrainReport) -> None:
    data = {"model": str(report.model_path), "dsm_model": str(report.dsm_model_path), "n_train": report.n_train,
            "n_holdout": report.n_holdout, "holdout": report.holdout, "seconds": report.seconds,
            "energy_ms_per_1000": report.energy_ms_per_1000, "quality": report.quality.as_dict(),
            "dsm_quality": report.dsm_quality.as_dict(),
            "baseline_quality": None if report.baseline_quality is None else report.baseline_quality.as_dict(),
            "settings": asdict(report.settings)}
    tmp = report.report_path.with_name(report.report_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(report.report_path)


# ---- sampling -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleReport:
    """What :func:`sample_model` wrote and measured (``summary`` is what summary.json holds)."""

    out: Path
    run_dirs: tuple[Path, ...]
    summary: dict


def run_seeds(seed: int, runs: int) -> list[int]:
    """Independent seeds for ``runs`` runs from one user seed (numpy SeedSequence spawning)."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(runs)]


def _prepare_sample_out(out) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty: choose a new folder (samples are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _summary(runs: list, settings, figures, recalibration: bool, meta: dict) -> dict:
    """summary.json: per-run totals, means over runs and their standard errors (None with one run)."""
    from .analysis.free_energy import mean_and_error

    log_z, log_z_err = mean_and_error([r.log_z for r in runs])
    return {
        "n_runs": len(runs), "n_particles_per_run": int(len(runs[0].log_weights)),
        "ess_fraction": float(np.mean([r.ess_fraction for r in runs])),
        "bridge_ess_fraction": float(np.mean([r.bridge_ess_fraction for r in runs])),
        "levels_ess_fraction": float(np.mean([r.result.stage_end("levels").ess_fraction for r in runs])),
        "lineages": [r.n_lineages for r in runs],
        "torsion_acceptance": float(np.mean([r.torsion_acceptance for r in runs])),
        "log_z": log_z, "log_z_err": log_z_err,
        **figures.summary_figures(),  # the molecule's declared free energies (delta_f_<key>_kT) and basins
        "target_evaluations": int(sum(r.target_evaluations for r in runs)),
        "model_evaluations": int(sum(r.model_evaluations for r in runs)),
        "seconds": float(sum(r.seconds for r in runs)),
        "recalibration": recalibration,
        "per_run": [r.diagnostics()["totals"] for r in runs],
        "settings": asdict(settings), **meta,
    }


def sample_model(target, model_path, out, *, particles: int = 2500, runs: int = 4, settings=None,
                 seed: int = 0, device: str | torch.device = "cpu", progress: bool = False,
                 compile: bool = True, cvs=None) -> SampleReport:
    """``runs`` independent SMC runs of a trained model toward ``target``'s Boltzmann distribution.

    Writes ``out/run-000`` ... (see :mod:`boltzgen.samples`) and ``out/summary.json``. A model of
    the same molecule under another force field or solvent is corrected to ``target``
    (recalibration, reported as ``summary["recalibration"]``).

    Args:
        target: the OpenMMTarget to sample (the torch force field is used where it applies).
        model_path: a model file written by ``boltzgen train``.
        out: a new (or empty) folder.
        particles, runs: N per run and the number of independent runs (error bars need >= 2).
        settings: :class:`boltzgen.sampling.SampleSettings` (default settings when None).
        seed: the runs' seeds are spawned from it.
        device: where the model and the particles live.
        progress: a tqdm bar per run (stderr).
        compile: compile the torch force field (faster on large batches; False skips the
            20-80 s compilation, e.g. for small tests).
        cvs: the collective variables, basins and free energies the summary reports
            (``systems.collective_variables(name)``); None: those of the named system ``target.name``.
    """
    from .io import sample_runs as samples
    from .analysis.runs import run_figures
    from .models import check_compatible
    from .sampling import SampleSettings, sample_molecule
    settings = SampleSettings() if settings is None else settings
    model_file = load_model_file(model_path, device=device)
    same_system = check_compatible(model_file, target)
    out = _prepare_sample_out(out)
    fast = _fast_target(target, compile)
    results, dirs = [], []
    for k, run_seed in enumerate(run_seeds(seed, runs)):
        bar = RunProgress(f"run {k + 1}/{runs}", settings) if progress else None
        result = sample_molecule(model_file, target, particles, settings, seed=run_seed,
                                 target_energy=fast.reduced_energy, progress=bar)
        if bar is not None:
            bar.close()
        diagnostics = {**result.diagnostics(), "seed": run_seed, "model": str(model_path), "system": target.name}
        dirs.append(samples.write_sample_run(out / f"run-{k:03d}", result.positions, result.log_weights,
                                             result.energies, target.topology, diagnostics))
        results.append(result)
    figures = run_figures([str(d) for d in dirs], cvs=cvs)
    meta = {"system": target.name, "model": str(model_path), "seed": seed, "device": str(device),
            "model_system": model_file.metadata.get("system")}
    summary = _summary(results, settings, figures, not same_system, meta)
    samples.write_json(out / "summary.json", summary)
    return SampleReport(out, tuple(dirs), summary)


def _fast_target(target, compile: bool):
    """The torch force field of ``target`` where it applies, chosen once; a fallback to OpenMM warns (never hidden)."""
    import warnings

    from .targets import fast_target
    from .targets.torchff.forcefield import CompileNotice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileNotice)  # compile notices only; the OpenMM fallback warning shows
        return fast_target(target, compile=compile)


class RunProgress:
    """One tqdm bar over a whole run (levels, bridge, mixing), in estimated energy evaluations, with an ETA.

    Levels cost 1 + level_moves evaluations per step, mixing 1 + torsion moves per move; the bridge's
    length is not known in advance, so it is budgeted as 40 steps and advanced by its lambda.
    """

    _BRIDGE_STEPS = 40

    def __init__(self, label: str, settings):
        from tqdm.auto import tqdm

        m = settings.mixing
        self.level_cost = 1 + settings.level_moves
        self.bridge_cost = self._BRIDGE_STEPS * (2 + settings.bridge.moves)
        self.mixing_cost = 1 + m.torsions.moves
        total = settings.n_levels * self.level_cost + self.bridge_cost + m.moves * self.mixing_cost
        self.bar = tqdm(total=total, desc=label, unit="eval", leave=False, unit_scale=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
        self.bridge_done = 0.0

    def __call__(self, stage, position: float, step) -> None:
        if step.stage == "levels":
            self.bar.update(self.level_cost)
            self.bar.set_postfix_str(f"levels t={step.value:.3f} ESS={step.ess_fraction:.2f} "
                                     f"lineages={step.n_ancestors}", refresh=False)
        elif step.stage == "bridge":
            self.bar.update(self.bridge_cost * (position - self.bridge_done))
            self.bridge_done = position
            self.bar.set_postfix_str(f"bridge lambda={step.value:.3f} ESS={step.ess_fraction:.2f}", refresh=False)
        elif step.stage == "mixing":
            block = getattr(stage, "block", 0)
            self.bar.update(block * self.mixing_cost)
            self.bar.set_postfix_str(f"mixing {int(step.value)} moves, torsion acceptance "
                                     f"{step.moves.get('torsion.acceptance', float('nan')):.2f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class NamedRunResult:
    """What :func:`run_named` did: the sample runs, their analysis (plots), the printed table."""

    sample: SampleReport
    analysis: object
    analysis_text: str
    reference: dict | None


def shipped_reference(name: str) -> dict | None:
    """The reference figures shipped next to a named system (``<name>.reference.json``), or None."""
    from . import systems

    spec = systems.specs()[name]
    path = spec.path.with_name(f"{name}.reference.json")
    return json.loads(path.read_text()) if path.is_file() else None


def run_named(name: str, out, *, particles: int = 1000, runs: int = 4, settings=None, seed: int = 0,
              device: str | torch.device = "cpu", progress: bool = False, compile: bool = True) -> NamedRunResult:
    """The whole job on a named system with the model shipped for it: sample, correct, analyse.

    Writes the sample runs and ``summary.json`` (:func:`sample_model`) and the plots to ``out``;
    the summary also holds the shipped reference figures (biased MD) when there are some.
    """
    from . import systems
    from .analysis.report import analyze_runs, format_analysis
    from .io.sample_runs import write_json

    model = systems.shipped_model(name)
    target = systems.load(name)
    try:
        report = sample_model(target, model, out, particles=particles, runs=runs, settings=settings, seed=seed,
                              device=device, progress=progress, compile=compile)
    finally:
        target.close()
    analysis = analyze_runs([str(d) for d in report.run_dirs], plot_dir=report.out, label=name)
    reference = shipped_reference(name)
    text = format_analysis(analysis)
    if reference is not None:
        text += (f"\n  reference ({reference['source']}): dF(phi>0 vs phi<0) = "
                 f"{reference['delta_f_phi_positive_kT']:.3f} +- {reference['delta_f_phi_positive_err_kT']:.3f} kT")
        summary = {**report.summary, "reference": reference}
        write_json(report.out / "summary.json", summary)
        report = SampleReport(report.out, report.run_dirs, summary)
    return NamedRunResult(report, analysis, text, reference)


@dataclass(frozen=True)
class FreeEnergyReport:
    """What :func:`free_energy_between` wrote and measured (``summary`` is what summary.json holds)."""

    out: Path
    run_dirs: tuple[Path, ...]
    summary: dict


def _md_reference(target_a, target_b, out: Path, runs: int, ns: float, seed: int):
    """``runs`` biased (phi metadynamics) MD runs of each state, for the BAR reference."""
    dirs_a, dirs_b = [], []
    seeds = run_seeds(seed + 1, 2 * runs)  # every MD run its own seed
    for k in range(runs):
        for j, (target, dirs, label) in enumerate(((target_a, dirs_a, "from"), (target_b, dirs_b, "to"))):
            folder = out / f"md-{label}-{k:03d}"
            md.run_md(target, ns, folder, seeds[2 * k + j] % (2**31 - 2), bias=md.Metadynamics())
            dirs.append(folder)
    return dirs_a, dirs_b


def free_energy_between(target_a, target_b, model_path, out, *, particles: int = 1000, runs: int = 4,
                        settings=None, switch_settings=None, seed: int = 0, device: str | torch.device = "cpu",
                        md_from=None, md_to=None, reference_ns: float | None = None, progress: bool = False,
                        compile: bool = True) -> FreeEnergyReport:
    """F_B - F_A (kT) between two states of one molecule, two ways, with error bars over runs.

    Each of ``runs`` independent runs samples A with the Boltzmann generator, carries the weighted
    samples to B along an SMC bridge (:func:`boltzgen.switching.switch`), and samples B with the
    generator too (its log Z gives the second estimate, log Z_A - log Z_B). Writes ``out/run-000``
    ... (the bridge's weighted samples of B as a sample-run folder, whose diagnostics.json holds
    the bridge steps) and ``out/summary.json`` (``delta_f_kT``, ``delta_f_err_kT``, the log Z
    estimate, ESS along the bridge, evaluations, seconds, and the BAR reference when MD runs of
    both states are given (``md_from``/``md_to``) or made (``reference_ns`` ns each)).

    Args:
        target_a, target_b: OpenMM targets of the same molecule (A: ``--from``, B: ``--to``).
        model_path: a model file of that molecule (for either state, or another force field).
        out: a new (or empty) folder.
        particles, runs: N per run and independent runs (error bars need >= 2).
        settings: :class:`boltzgen.sampling.SampleSettings` of the generator runs.
        switch_settings: :class:`boltzgen.switching.SwitchSettings` of the bridge.
        seed: seeds everything (runs, bridges and MD are independent).
        device, progress, compile: as for :func:`sample_model`.
    """
    from dataclasses import replace as replaced

    from . import switching
    from .io import sample_runs as samples
    from .models import check_compatible
    from .analysis.free_energy import mean_and_error
    from .sampling import SampleSettings, sample_molecule
    from .smc import evaluate

    settings = SampleSettings() if settings is None else settings
    switch_settings = switching.SwitchSettings() if switch_settings is None else switch_settings
    if (md_from is None) != (md_to is None):
        raise ValueError("give MD runs of both states (--md-from and --md-to) for the BAR reference, or neither")
    if md_from is not None and reference_ns is not None:
        raise ValueError("give either existing MD runs (--md-from/--md-to) or --reference NS to make them, not both")
    if reference_ns is not None and not reference_ns > 0:
        raise ValueError(f"reference_ns must be a positive MD length in ns, got {reference_ns!r}")
    if target_a.n_atoms != target_b.n_atoms or ([a.name for a in target_a.topology.atoms()]
                                                != [a.name for a in target_b.topology.atoms()]):
        raise ValueError(f"--from {target_a.name} and --to {target_b.name} are not the same molecule "
                         "(atom counts or names differ)")
    if md_from is not None:  # read them now: a bad folder must not cost the sampling first
        if len(md_from) != len(md_to) or not md_from:
            raise ValueError(f"give as many MD runs of B (--md-to) as of A (--md-from), got {len(md_to)} and {len(md_from)}")
        for d, target in [(d, target_a) for d in md_from] + [(d, target_b) for d in md_to]:
            md.load_log_weights(d)
            n_atoms = md.load_topology(d).n_atoms
            if n_atoms != target.n_atoms:
                raise ValueError(f"MD run {d} has {n_atoms} atoms, {target.name} has {target.n_atoms}: "
                                 "not a run of this molecule")
    model_file = load_model_file(model_path, device=device)
    for target in (target_a, target_b):
        check_compatible(model_file, target)
    out = _prepare_sample_out(out)
    fast_a, fast_b = _fast_target(target_a, compile), _fast_target(target_b, compile)
    start = time.perf_counter()
    per_run, dirs = [], []
    seeds = run_seeds(seed, 3 * runs)
    for k in range(runs):
        bar = RunProgress(f"run {k + 1}/{runs}: {target_a.name}", settings) if progress else None
        run_a = sample_molecule(model_file, target_a, particles, settings, seed=seeds[3 * k],
                                target_energy=fast_a.reduced_energy, progress=bar)
        # the bridge to B starts with the generator run's adapted step size
        adapted = replaced(switch_settings, bridge=replaced(switch_settings.bridge, step_size=run_a.step_size))
        sw = switching.switch(model_file.space, run_a.positions, run_a.log_weights, fast_a.reduced_energy,
                              fast_b.reduced_energy, adapted, topology=target_a.topology, seed=seeds[3 * k + 1],
                              device=device, progress=bar)
        if bar is not None:
            bar.close()
        bar = RunProgress(f"run {k + 1}/{runs}: {target_b.name}", settings) if progress else None
        run_b = sample_molecule(model_file, target_b, particles, settings, seed=seeds[3 * k + 2],
                                target_energy=fast_b.reduced_energy, progress=bar)
        if bar is not None:
            bar.close()
        positions, _ = model_file.space.finish(model_file.space.to_positions(sw.result.particles).detach()
                                               .to(torch.float64), target_b.topology)
        energies = evaluate(fast_b.reduced_energy, positions, settings.chunk_size).cpu().numpy()
        folded = positions.cpu().numpy()
        record = {"delta_f_kT": sw.delta_f, "delta_f_log_z_kT": run_a.log_z - run_b.log_z,
                  "log_z_from": run_a.log_z, "log_z_to": run_b.log_z, "ess_fraction": sw.result.ess_fraction,
                  "min_ess_fraction": sw.min_ess_fraction, "bridge_steps": len(sw.result.diagnostics),
                  "lineages": sw.result.n_lineages, "target_evaluations": sw.target_evaluations
                  + run_a.target_evaluations + run_b.target_evaluations + particles,
                  "model_evaluations": run_a.model_evaluations + run_b.model_evaluations,
                  "seconds": sw.seconds + run_a.seconds + run_b.seconds}
        diagnostics = {"run": "free-energy bridge", "from": target_a.name, "to": target_b.name,
                       "steps": [asdict(s) for s in sw.result.diagnostics],
                       "totals": record, "from_run": run_a.diagnostics()["totals"],
                       "to_run": run_b.diagnostics()["totals"], "model": str(model_path)}
        dirs.append(samples.write_sample_run(out / f"run-{k:03d}", folded, sw.result.log_weights.detach().cpu().numpy(),
                                             energies, target_b.topology, diagnostics))
        per_run.append(record)
    reference = None
    if reference_ns is not None:
        md_from, md_to = _md_reference(target_a, target_b, out, runs, reference_ns, seed)
    if md_from is not None:
        ref = switching.bar_reference(md_from, md_to, fast_a.reduced_energy, fast_b.reduced_energy)
        reference = {"method": f"MBAR (pymbar; BAR for plain MD) on all frames of MD of both states, "
                                f"{len(md_from)} pair(s) of runs",
                     "delta_f_kT": ref.mean, "delta_f_err_kT": ref.standard_error if np.isfinite(ref.standard_error) else None,
                     "md_from": [str(d) for d in md_from], "md_to": [str(d) for d in md_to]}
    delta_f, delta_f_err = mean_and_error([r["delta_f_kT"] for r in per_run])
    log_z_df, log_z_df_err = mean_and_error([r["delta_f_log_z_kT"] for r in per_run])
    summary = {"from": target_a.name, "to": target_b.name, "model": str(model_path),
               "model_system": model_file.metadata.get("system"), "n_runs": runs, "n_particles_per_run": particles,
               "delta_f_kT": delta_f, "delta_f_err_kT": delta_f_err,
               "delta_f_log_z_kT": log_z_df, "delta_f_log_z_err_kT": log_z_df_err,
               "ess_fraction": float(np.mean([r["ess_fraction"] for r in per_run])),
               "min_ess_fraction": float(min(r["min_ess_fraction"] for r in per_run)),
               "target_evaluations": int(sum(r["target_evaluations"] for r in per_run)),
               "model_evaluations": int(sum(r["model_evaluations"] for r in per_run)),
               "seconds": time.perf_counter() - start, "reference": reference, "per_run": per_run,
               "settings": asdict(settings), "switch_settings": asdict(switch_settings), "seed": seed,
               "device": str(device)}
    samples.write_json(out / "summary.json", summary)
    return FreeEnergyReport(out, tuple(dirs), summary)
