"""Training a molecular diffusion EBM from MD frames: ``boltzgen train``.

MD folders (plain or biased, with log-weights) -> the coordinate space fitted to the frames ->
DSM, then DSM + DiffCLF (with target score matching from the force field's forces) -> a model file
with its quality report on held-out frames.
"""
from __future__ import annotations

import copy
import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .._checks import as_device, check_count
from ..analysis.model_quality import ModelQuality, OwnSampleQuality, model_quality, own_sample_quality
from ..analysis.runs import state_populations
from ..coordinates.cartesian import MolecularSpace
from ..diffusion.calibration import calibrate, calibrate_on_samples
from ..diffusion.networks import MolecularEnergy
from ..diffusion.schedule import LogSNRSchedule
from ..diffusion.training import TrainingConfig, train
from ..io.md_runs import load_log_weights, load_trajectory
from ..models import (CHIRALITY_FOLD, CHIRALITY_KEPT, ModelFile, check_compatible, load_model_file,
                      model_metadata, save_model_file)
from ..sampling import model_samples

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
        energy_weight: energy matching at the same low noise: the variance of E_theta - u over a
            batch (kT^2), which pins the offsets between basins that the scores cannot see.
        regression_frames: the frames target score matching and energy matching see: "weighted"
            (the DSM batch) or "drawn" (frames drawn uniformly as the MD sampled them, so a basin
            that biased MD visited but that holds little Boltzmann weight still counts in the fit).
            Default "drawn" (measured on alanine dipeptide, 6,000-step fine-tunes of the shipped model:
            held-out importance ESS 0.558 vs 0.550, model dF(phi>0) 0.58 vs 0.64 kT off, SD of u - E
            over the phi > 0 frames 0.93 vs 2.02 kT; docs/benchmarks.md, regression_frames).
        log_snr_max, log_snr_min: the noise schedule (LogSNRSchedule) in model units.
        weighting: "boltzmann" draws frames with probability proportional to their weights
            (biased MD's exp(+V/kT)), so the model learns the Boltzmann distribution; "biased"
            ignores the weights, so the model learns the flattened biased distribution (a broad
            proposal that SMC must correct).
        holdout_fraction: when no held-out runs are given, the last fraction of every run's
            frames is held out for the quality report.
        seed: initialisation, batches and noise.
        calibration_harmonics: after training, fit a dihedral calibration with this many harmonics
            per rotatable dihedral (boltzgen.diffusion.calibration: the maximum-likelihood tilt of
            the model on the training frames with their Boltzmann weights, which fixes the basins'
            offsets); 0: none (an --init model keeps any calibration it carries, fixed during
            training; K > 0 refits it from scratch). Internal coordinates only.
        calibration_samples: 0 (default): the calibration's normaliser is estimated on the training
            frames, which cannot see mass the model puts where no frame is; N > 0: on N of the
            model's own samples at t_min (the sampler's levels), in two rounds
            (:func:`boltzgen.diffusion.calibration.calibrate_on_samples`), so the tilted model's own
            dihedral marginals, all of its mass, match the data's. Needs calibration_harmonics > 0.
        coordinates: "internal" (bonds, angles and dihedrals from the bond graph; the model keeps
            chirality) or "cartesian" (centre-free positions, pair-distance network; mirror images
            are folded onto L).
        own_samples: after training, draw this many of the model's own samples at t_min (the
            sampler's default levels) and score them against the force field
            (:func:`~boltzgen.analysis.model_quality.own_sample_quality`): the one-step bridge ESS a
            run will see, which held-out frames cannot show; 0 skips it.
        own_weight, own_every, own_pool: train on the reverse direction too
            (:func:`~boltzgen.diffusion.losses.own_sample_loss`, weight ``own_weight``; 0: off): a pool
            of ``own_pool`` of the model's own samples (the sampler's default levels) is drawn every
            ``own_every`` steps, and the variance of E_theta - u on them pushes mass off where the force
            field rates them far worse than typical (clashes), which no loss on MD frames sees.
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
    energy_weight: float = 1.0
    regression_frames: str = "drawn"
    log_snr_max: float = 13.5
    log_snr_min: float = -10.0
    weighting: str = "boltzmann"
    holdout_fraction: float = 0.1
    seed: int = 0
    coordinates: str = "internal"
    calibration_harmonics: int = 0
    calibration_samples: int = 0
    own_samples: int = 1000
    own_weight: float = 0.0
    own_every: int = 500
    own_pool: int = 1000

    def __post_init__(self):
        check_count(self.own_samples, "own_samples", minimum=0)
        check_count(self.calibration_samples, "calibration_samples", minimum=0)
        if self.calibration_samples and not self.calibration_harmonics:
            raise ValueError("calibration_samples > 0 needs calibration_harmonics > 0 (it sets how the tilt's "
                             "normaliser is estimated)")
        if not (isinstance(self.calibration_harmonics, int) and self.calibration_harmonics >= 0):
            raise ValueError(f"calibration_harmonics must be an integer >= 0, got {self.calibration_harmonics!r}")
        if self.calibration_harmonics and self.coordinates != "internal":
            raise ValueError("calibration_harmonics > 0 needs coordinates 'internal' (it corrects dihedral energies)")
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
                              energy_weight=self.energy_weight, regression_frames=self.regression_frames,
                              own_weight=self.own_weight, own_every=self.own_every, own_pool=self.own_pool,
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
        traj = load_trajectory(d)
        if traj.n_atoms != n_atoms:
            raise ValueError(f"{what} {d} has {traj.n_atoms} atoms but the system has {n_atoms}: MD of another molecule")
        x = traj.xyz.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} {d} holds non-finite positions (NaN frames): rerun that MD with a smaller time step")
        xs.append(x)
        lws.append(np.asarray(load_log_weights(d), dtype=np.float64))
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
        quality: DSM + DiffCLF model (calibrated, when asked) on the held-out frames.
        uncalibrated_quality: the same model before its dihedral calibration (None without one).
        dsm_quality: the DSM-phase snapshot on the same frames.
        baseline_quality: a DSM-only model trained for the same number of steps (if asked).
        n_train, n_holdout: frames used; holdout: where the held-out frames came from.
        seconds: wall time of this call; energy_ms_per_1000: model energy+gradient time per
            1,000 particles (one call, after warm-up).
        own_sample_quality: the final model's own samples against the force field (None when
            ``settings.own_samples`` is 0).
        own_populations: {free-energy key: P(state)} of the same own samples for every state the
            molecule declares (:func:`boltzgen.analysis.runs.state_populations`), or None (no own
            samples, or no declaration given).
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
    uncalibrated_quality: ModelQuality | None = None
    own_sample_quality: OwnSampleQuality | None = None
    own_populations: dict | None = None


def output_paths(out) -> dict:
    """Files of a training run named after the model file ``out`` (e.g. model.pt)."""
    out = Path(out)
    stem, suffix = out.stem, out.suffix or ".pt"
    return {"model": out, "dsm_model": out.with_name(f"{stem}-dsm{suffix}"), "checkpoint": out.with_suffix(".ckpt"),
            "baseline_model": out.with_name(f"{stem}-dsm-baseline{suffix}"),
            "baseline_checkpoint": out.with_name(f"{stem}-dsm-baseline.ckpt"), "report": out.with_suffix(".json")}


def _scores(target, space, positions: np.ndarray, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The target in the space's coordinates on frames: its energies (n,) float64 kT and scores
    grad_y log p(y) (n, d) float32 (minus its gradient, projected where the space projects)."""
    from ..smc import evaluate_with_grad

    energy = space.flat_energy(target.reduced_energy)
    energies, parts = [], []
    for start in range(0, len(positions), chunk):
        y = space.to_flat(torch.as_tensor(positions[start:start + chunk], dtype=torch.float64))
        e, grad = evaluate_with_grad(energy, y)
        energies.append(e)
        parts.append(-grad if space.projection is None else space.projection(-grad))
    scores = torch.cat(parts).to(torch.float32)
    if not torch.isfinite(scores).all():
        raise ValueError("the force field gives non-finite forces on some training frames (overlapping atoms?)")
    return torch.cat(energies), scores


def _space_and_model(settings: "TrainSettings", target, frames: "Frames", schedule):
    """The coordinate space fitted to the training frames, the flat data and an untrained model of that kind."""
    positions = torch.from_numpy(frames.positions)
    weights = None
    if settings.weighting == "boltzmann":
        weights = torch.exp(torch.as_tensor(frames.log_weights) - float(np.max(frames.log_weights)))
    with torch.random.fork_rng():  # the network's initialisation, without touching the caller's global RNG
        torch.manual_seed(settings.seed)
        return _build(settings, target, positions, weights, schedule)


def _build(settings, target, positions, weights, schedule):
    from ..coordinates.internal import InternalSpace, zmatrix
    from ..diffusion.internal import InternalEnergy

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


def _checked_init(init, settings: "TrainSettings", target):
    """The model file ``init`` to fine-tune, checked against ``target`` and ``settings`` before any data is read.

    The model keeps its own network, noise schedule and coordinate standardisation (the weights
    only mean something with them), so settings that would change those must agree with it.
    """
    init_file = load_model_file(init)
    check_compatible(init_file, target)  # ValueError for another molecule; another force field is fine
    kind = "cartesian" if isinstance(init_file.space, MolecularSpace) else "internal"
    config = init_file.model.config
    schedule = config["schedule"]
    kept = {"coordinates": kind, "hidden": config["hidden"], "n_blocks": config["n_blocks"],
            "log_snr_max": schedule.get("log_snr_max"), "log_snr_min": schedule.get("log_snr_min")}
    for name, theirs in kept.items():
        mine = getattr(settings, name)
        if mine != theirs:
            raise ValueError(f"--init {init}: the model has {name} {theirs!r} but the settings ask for {mine!r}; a "
                             f"fine-tuned model keeps its network and schedule: set {name} to {theirs!r} (flag or config)")
    return init_file


def own_sampler(target, space):
    """``draw(model, n, seed)`` for :func:`boltzgen.diffusion.training.train`: ``n`` of the model's own weighted
    samples at t_min (the sampler's default levels, :func:`boltzgen.sampling.model_samples`) as the levels
    leave them, (n, d) in the space's coordinates, with their target energies there (n,) in kT (+inf off
    the space's domain) and their log-weights (n,), float64 on the CPU."""
    energy = space.flat_energy(target.reduced_energy)

    def draw(model, n: int, seed: int):
        drawn = model_samples(ModelFile(model, space, {}), target.topology, n, seed=seed)
        y = torch.as_tensor(drawn.particles)
        with torch.no_grad():
            return y, energy(y).detach(), torch.as_tensor(drawn.log_weights)

    return draw


def _calibration_draw(target, space, n: int, seed: int):
    """``draw(model) -> (particles (n, d), log_weights (n,))``: the model's own weighted samples at t_min (the
    sampler's default levels, a fresh seed per round) in the space's coordinates, for
    :func:`boltzgen.diffusion.calibration.calibrate_on_samples`."""
    rounds = itertools.count()

    def draw(model):
        drawn = model_samples(ModelFile(model, space, {}), target.topology, n, seed=seed + 7919 * next(rounds))
        return torch.as_tensor(drawn.particles), torch.as_tensor(drawn.log_weights)

    return draw


def _energy_ms_per_1000(model, space, positions) -> float:
    y = space.to_flat(torch.as_tensor(positions[:1000])).to(model.data_mean)
    y = y.repeat((1000 + len(y) - 1) // len(y), 1)[:1000]
    model.score(model.schedule.t_min, y)  # warm-up
    start = time.perf_counter()
    model.score(model.schedule.t_min, y)
    return 1000.0 * (time.perf_counter() - start)


def train_model(target, data_dirs, out, settings: TrainSettings = TrainSettings(), *, holdout_dirs=None,
                baseline: bool = False, device: str | torch.device | None = None,
                progress: bool = False, init=None, cvs=None) -> TrainReport:
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
        device: where to train, e.g. cuda (default: torch's default device, the CPU unless set otherwise).
        progress: tqdm progress bars (stderr).
        init: a model file to start from instead of a fresh network (fine-tuning, e.g. a vacuum
            model on implicit-solvent frames): its network, schedule and coordinate space are kept,
            so ``settings`` must agree with them (ValueError otherwise); the baseline starts from
            it too.
        cvs: the molecule's declared collective variables (:func:`boltzgen.systems.collective_variables`):
            the report then gives where the model's own samples put their mass among the declared
            states (``own_populations``); None: not reported.
    """
    start = time.perf_counter()
    device = as_device(device)
    data_dirs = [Path(d) for d in data_dirs]
    paths = output_paths(out)
    init_file = None if init is None else _checked_init(init, settings, target)
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
    def start_model():  # a fresh network, or a trainable copy of the --init model in its own space
        if init_file is None:
            return _space_and_model(settings, target, train_frames, schedule)
        y = init_file.space.to_flat(torch.from_numpy(train_frames.positions)).to(torch.float32)
        return init_file.space, y, copy.deepcopy(init_file.model).train().requires_grad_(True)

    space, y, model = start_model()
    model = model.to(device)
    log_weights = train_frames.log_weights if settings.weighting == "boltzmann" else None
    # the force field on every training frame: for TSM, energy matching, or the frames' calibration residuals
    frame_calibration = settings.calibration_harmonics and not settings.calibration_samples
    frame_energies, scores = _scores(target, space, train_frames.positions) \
        if settings.tsm_weight > 0 or settings.energy_weight > 0 or frame_calibration else (None, None)
    energies = frame_energies if settings.energy_weight > 0 else None
    scores = scores if settings.tsm_weight > 0 else None  # computed with the energies, used by TSM only
    chirality = CHIRALITY_FOLD if settings.coordinates == "cartesian" else CHIRALITY_KEPT
    meta = model_metadata(target, chirality, training_data=[str(d) for d in data_dirs], settings=asdict(settings),
                          **({} if init is None else {"init": str(init)}))

    held_u = target.reduced_energy(held.positions)  # once: every model is scored on the same frames

    def evaluate(m) -> ModelQuality:
        return model_quality(m, space, held_u, held.positions, target.topology, held.log_weights,
                             target_energy=target.reduced_energy)

    def save_dsm(ema) -> None:
        save_model_file(paths["dsm_model"], ema, space, {**meta, "phase": "dsm", "steps": settings.dsm_steps})

    config = settings.training_config()
    augment = space if isinstance(space, MolecularSpace) else None  # Cartesian batches are randomly rotated
    draw_own = own_sampler(target, space) if settings.own_weight > 0 else None
    result = train(model, y, config, paths["checkpoint"], progress=progress, log_weights=log_weights,
                   scores=scores, space=augment, on_dsm_end=save_dsm, energies=energies, own_sampler=draw_own)
    final, uncalibrated_quality = result.model, None
    if settings.calibration_harmonics:
        # the tilt is fitted to the Boltzmann distribution the frames represent, whatever the model learned
        boltzmann = np.exp(train_frames.log_weights - np.max(train_frames.log_weights))
        if settings.calibration_samples:
            draw = _calibration_draw(target, space, settings.calibration_samples, settings.seed)
            final = calibrate_on_samples(result.model, y, draw, settings.calibration_harmonics, boltzmann)
        else:
            final = calibrate(result.model, y, frame_energies, settings.calibration_harmonics, boltzmann)
        uncalibrated_quality = evaluate(result.model)
    save_model_file(paths["model"], final, space, {**meta, "phase": "dsm+diffclf", "steps": result.step})
    if not paths["dsm_model"].exists():  # clf_steps = 0: the final model is the DSM model
        save_dsm(result.model)
    quality = evaluate(final)
    # without a DiffCLF phase the DSM snapshot is the model before calibration: scored once
    dsm_quality = uncalibrated_quality if settings.clf_steps == 0 and uncalibrated_quality is not None \
        else evaluate(load_model_file(paths["dsm_model"], device=device).model)
    baseline_quality = None
    if baseline:
        _, _, base = start_model()
        base = base.to(device)
        base_config = replace(config, dsm_steps=config.total_steps, clf_steps=0, own_weight=0.0)  # DSM (+ TSM) only
        base_result = train(base, y, base_config, paths["baseline_checkpoint"], progress=progress,
                            log_weights=log_weights, scores=scores, space=augment, energies=energies)
        save_model_file(paths["baseline_model"], base_result.model, space,
                        {**meta, "phase": "dsm-baseline", "steps": base_result.step})
        baseline_quality = evaluate(base_result.model)
    own, own_populations = None, None
    if settings.own_samples:  # the reverse direction: where the model puts mass (the sampler's default levels)
        saved = load_model_file(paths["model"], device=device)
        drawn = model_samples(saved, target.topology, settings.own_samples, seed=settings.seed)
        own = own_sample_quality(saved.model, saved.space, drawn.positions, target.reduced_energy(drawn.positions),
                                 drawn.log_weights)
        if cvs is not None and cvs.free_energies:
            own_populations = state_populations(drawn.positions, target.topology, cvs, drawn.log_weights)
    report = TrainReport(paths["model"], paths["dsm_model"], paths["checkpoint"], paths["report"], quality,
                         dsm_quality, baseline_quality, len(train_frames.positions), len(held.positions), holdout,
                         time.perf_counter() - start, _energy_ms_per_1000(final, space, held.positions),
                         settings, uncalibrated_quality, own, own_populations)
    _write_report(report)
    return report


def _write_report(report: TrainReport) -> None:
    data = {"model": str(report.model_path), "dsm_model": str(report.dsm_model_path), "n_train": report.n_train,
            "n_holdout": report.n_holdout, "holdout": report.holdout, "seconds": report.seconds,
            "energy_ms_per_1000": report.energy_ms_per_1000, "quality": report.quality.as_dict(),
            "dsm_quality": report.dsm_quality.as_dict(),
            "baseline_quality": None if report.baseline_quality is None else report.baseline_quality.as_dict(),
            "uncalibrated_quality": None if report.uncalibrated_quality is None
            else report.uncalibrated_quality.as_dict(),
            "own_sample_quality": None if report.own_sample_quality is None else report.own_sample_quality.as_dict(),
            "own_populations": report.own_populations,
            "settings": asdict(report.settings)}
    tmp = report.report_path.with_name(report.report_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(report.report_path)
