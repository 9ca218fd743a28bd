"""Training: DSM pre-training, then DSM + DiffCLF fine-tuning, with EMA weights and resume.

The run is a pure function of (model init, data, config): batches, times and noise all come
from one torch.Generator seeded by ``config.seed`` whose state is checkpointed with the model,
optimiser and EMA weights, so a run that is interrupted and resumed from its checkpoint ends
with exactly the parameters of an uninterrupted run.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from .._checks import check_count, check_flat
from .losses import LossParts, capped_energies, combined_loss, own_sample_loss
from ..coordinates.cartesian import random_rotations
from .networks import EnergyModel, model_from_config


REGRESSION_FRAMES = ("weighted", "drawn")


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training run.

    dsm_steps: DSM-only pre-training steps. clf_steps: then DSM + clf_weight * DiffCLF steps
    (clf_weight = 0 gives a DSM-only run of the same length). clf_levels: k in the multi-level
    classification (2 = binary). clf_batch_size: x_0 per CLF step (each costs clf_levels^2
    energies); None uses batch_size. tsm_weight, tsm_max_sigma: weight and noise range of target
    score matching in both phases (needs the data's scores; see losses.target_score_loss).
    regression_frames: which frames TSM and energy matching see when the data are weighted:
    "weighted" (the DSM batch, drawn by weight) or "drawn" (a second batch drawn uniformly over the
    samples as given, e.g. biased MD frames covering every basin; their optimum is the same, but a
    rare basin then counts in the fit of its offset). Without log_weights both are the same.
    clf_learning_rate: peak learning rate of the second phase
    (None: learning_rate); a gentler one keeps the low-noise fit of the DSM phase intact while
    DiffCLF moves the relative mode masses.
    own_weight, own_every, own_pool, own_clip: weight of
    :func:`~boltzgen.diffusion.losses.own_sample_loss` on the model's own samples (0: off; needs
    ``train(own_sampler=...)``), the steps between fresh pools of them (drawn from the model being
    trained: at a fresh pool the term's gradient is twice that of KL(q_theta || p); between pools
    the pool's weights describe the model that drew it, so it is the log-variance divergence with
    that model as reference), samples per pool, and the cap of the gap above its weighted median
    (kT), fixed when a pool is drawn.
    """

    dsm_steps: int = 4000
    clf_steps: int = 4000
    batch_size: int = 512
    clf_batch_size: int | None = None
    learning_rate: float = 1e-3
    min_lr_fraction: float = 0.05
    clf_weight: float = 1.0
    clf_levels: int = 2
    clf_window: float = 1.0
    clf_learning_rate: float | None = None
    tsm_weight: float = 0.0
    tsm_max_sigma: float = 5e-3
    energy_weight: float = 0.0
    regression_frames: str = "weighted"
    own_weight: float = 0.0
    own_every: int = 500
    own_pool: int = 1000
    own_clip: float = 20.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self):
        # Counts are stored as plain ints (numpy integers are accepted), so the config stays JSON-able.
        for name, minimum in (("dsm_steps", 0), ("clf_steps", 0), ("batch_size", 1), ("checkpoint_every", 1),
                              ("clf_levels", 2), ("own_every", 1),
                              ("own_pool", 1)):
            object.__setattr__(self, name, check_count(getattr(self, name), name, minimum=minimum))
        object.__setattr__(self, "clf_batch_size", check_count(self.clf_batch_size, "clf_batch_size", allow_none=True))
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.clf_learning_rate is not None and not (self.clf_learning_rate > 0 and math.isfinite(self.clf_learning_rate)):
            raise ValueError(f"clf_learning_rate must be positive or None, got {self.clf_learning_rate}")
        if self.clf_weight < 0:
            raise ValueError(f"clf_weight must be >= 0, got {self.clf_weight}")
        if not self.energy_weight >= 0:
            raise ValueError(f"energy_weight must be >= 0, got {self.energy_weight}")
        if not (self.own_weight >= 0 and math.isfinite(self.own_weight)):
            raise ValueError(f"own_weight must be >= 0, got {self.own_weight}")
        if not (self.own_clip > 0 and math.isfinite(self.own_clip)):
            raise ValueError(f"own_clip must be positive (kT), got {self.own_clip}")
        if self.regression_frames not in REGRESSION_FRAMES:
            raise ValueError(f"regression_frames must be one of {REGRESSION_FRAMES}, got {self.regression_frames!r}")
        if self.tsm_weight < 0 or not self.tsm_max_sigma > 0:
            raise ValueError(f"need tsm_weight >= 0 and tsm_max_sigma > 0, got {self.tsm_weight}, {self.tsm_max_sigma}")
        if not (0 < self.clf_window <= 1):
            raise ValueError(f"clf_window must lie in (0, 1], got {self.clf_window!r}")
        if not (0 <= self.min_lr_fraction <= 1):
            raise ValueError(f"min_lr_fraction must lie in [0, 1], got {self.min_lr_fraction}")
        if not (0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")

    @property
    def total_steps(self) -> int:
        return self.dsm_steps + self.clf_steps


@dataclass(frozen=True)
class TrainingResult:
    """What a run returns: the EMA model (use it for sampling), the raw model and the loss history."""

    model: EnergyModel
    raw_model: EnergyModel
    history: list = field(repr=False)  # list[LossParts], one per step
    step: int
    seconds: float


@dataclass
class _State:
    """Mutable training state, checkpointed as a whole."""

    model: EnergyModel
    ema: EnergyModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int
    history: list
    own_pool: "OwnPool | None" = None


@dataclass(frozen=True)
class OwnPool:
    """The model's own samples at t_min that own_sample_loss draws its batches from.

    Attributes:
        y: (m, d) samples in the model's coordinates; energies: (m,) their target energies u (kT), far
        gaps capped by :func:`~boltzgen.diffusion.losses.capped_energies`; log_weights: (m,) their
        log-weights toward the model's t_min density (finite or -inf).
    """

    y: torch.Tensor
    energies: torch.Tensor
    log_weights: torch.Tensor


def _device(model) -> torch.device:
    return model.data_mean.device


def _new_state(model: EnergyModel, config: TrainingConfig) -> _State:
    # the generator lives on the model's device, so batches and noise are drawn where they are used
    generator = torch.Generator(device=_device(model)).manual_seed(config.seed)
    model.train().requires_grad_(True)  # an EMA model from an earlier run comes back frozen
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    return _State(model, copy.deepcopy(model).requires_grad_(False), optimizer, generator, 0, [])


def save_checkpoint(path: str | os.PathLike, state: _State, config: TrainingConfig) -> None:
    """Write model + EMA + optimiser + RNG + config + step + history atomically (tmp, then rename)."""
    payload = {
        "model_config": state.model.config,
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "training_config": asdict(config),
        "step": state.step,
        "history": [asdict(p) for p in state.history],
        "own_pool": None if state.own_pool is None else asdict(state.own_pool),
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_state(path, model: EnergyModel, config: TrainingConfig) -> _State:
    payload = torch.load(path, weights_only=False, map_location=_device(model))
    # a key added to TrainingConfig after the checkpoint was written reads as its default
    if {**asdict(TrainingConfig()), **payload["training_config"]} != asdict(config):
        raise ValueError(f"checkpoint {path} was written with a different training config; "
                         f"use the same config to resume or a new checkpoint path to start over")
    if payload["model_config"] != model.config:
        raise ValueError(f"checkpoint {path} holds a model with a different architecture/config")
    state = _new_state(model, config)
    state.model.load_state_dict(payload["model"])
    state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["generator"].cpu())
    state.step = payload["step"]
    state.history = [LossParts(**p) for p in payload["history"]]
    pool = payload.get("own_pool")
    state.own_pool = None if pool is None else OwnPool(**{k: v.to(_device(model)) for k, v in pool.items()})
    return state


def load_model(path: str | os.PathLike, ema: bool = True) -> EnergyModel:
    """Load the EMA (default) or raw model from a training checkpoint, in eval mode (on the CPU)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, weights_only=False, map_location="cpu")
    model = model_from_config(payload["model_config"])
    model.load_state_dict(payload["ema" if ema else "model"])
    return model.eval()


@torch.no_grad()
def _update_ema(ema: EnergyModel, model: EnergyModel, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def learning_rate(step: int, config: TrainingConfig) -> float:
    """Cosine decay from learning_rate to min_lr_fraction * learning_rate within each phase.

    Each phase ends at a small learning rate so the weights settle (the mode weights that DiffCLF
    fixes are a small, global signal that a noisy large step would blur).
    """
    if step < config.dsm_steps:
        phase_start, phase_len, peak = 0, config.dsm_steps, config.learning_rate
    else:
        phase_start, phase_len = config.dsm_steps, config.clf_steps
        peak = config.learning_rate if config.clf_learning_rate is None else config.clf_learning_rate
    progress = (step - phase_start) / max(phase_len, 1)
    floor = config.min_lr_fraction
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class _Data:
    """Internal: training samples, their sampling probabilities and the space they live in."""

    x: torch.Tensor  # (N, d) on the model's device
    scores: torch.Tensor | None  # (N, d) grad log p_0 at x, or None
    energies: torch.Tensor | None  # (N,) target energies at x (kT), or None
    probabilities: torch.Tensor | None  # (N,) or None for uniform
    project: object  # projection of the noise, or None
    space: object  # a MolecularSpace: batches are randomly rotated; or None

    def batch(self, size: int, generator: torch.Generator, drawn: bool = False) -> tuple:
        """``size`` samples, their scores and energies (or None), rotated at random for a molecular space.

        Samples are drawn by their probabilities, or uniformly over the data as given when ``drawn``.
        """
        if self.probabilities is None or drawn:
            idx = torch.randint(self.x.shape[0], (size,), generator=generator, device=generator.device)
        else:
            idx = torch.multinomial(self.probabilities, size, replacement=True, generator=generator)
        idx = idx.to(self.x.device)
        x, s = self.x[idx], None if self.scores is None else self.scores[idx]
        e = None if self.energies is None else self.energies[idx]
        if self.space is not None:
            rotations = random_rotations(size, generator, x.dtype).to(x.device)
            x = self.space.rotate(x, rotations)
            s = None if s is None else self.space.rotate(s, rotations)
        return x, s, e


def _step(state: _State, data: _Data, config: TrainingConfig) -> LossParts:
    in_clf_phase = state.step >= config.dsm_steps and config.clf_weight > 0
    size = (config.clf_batch_size or config.batch_size) if in_clf_phase else config.batch_size
    x, scores, energies = data.batch(size, state.generator)
    x_regression = None
    regressions = config.tsm_weight > 0 or config.energy_weight > 0
    if regressions and config.regression_frames == "drawn" and data.probabilities is not None:
        x_regression, scores, energies = data.batch(size, state.generator, drawn=True)
    loss, parts = combined_loss(state.model, x, state.generator,
                                clf_weight=config.clf_weight if in_clf_phase else 0.0,
                                n_levels=config.clf_levels, project=data.project, window=config.clf_window,
                                score0=scores, tsm_weight=config.tsm_weight, tsm_max_sigma=config.tsm_max_sigma,
                                energy0=energies, energy_weight=config.energy_weight, x_regression=x_regression)
    if config.own_weight > 0:
        own = own_sample_loss(state.model, *_own_batch(state.own_pool, size, state.generator))
        loss = loss + config.own_weight * own
        parts = replace(parts, total=loss.item(), own=own.item())
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(state.step, config)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
    state.optimizer.step()
    _update_ema(state.ema, state.model, config.ema_decay)
    state.step += 1
    return parts


def _own_batch(pool: OwnPool, size: int, generator: torch.Generator) -> tuple:
    """``size`` of the pool's samples drawn by their weights, and their energies."""
    probabilities = torch.exp(pool.log_weights - pool.log_weights.max()).to(generator.device)
    idx = torch.multinomial(probabilities, size, replacement=True, generator=generator).to(pool.y.device)
    return pool.y[idx], pool.energies[idx]


def _draw_pool(state: _State, own_sampler, config: TrainingConfig) -> OwnPool:
    """A fresh pool from a frozen copy of the model as it is now (seeded by the step: resumable)."""
    frozen = copy.deepcopy(state.model).eval().requires_grad_(False)
    y, energies, log_weights = own_sampler(frozen, config.own_pool, config.seed + state.step)
    device, dtype = _device(state.model), state.model.data_mean.dtype
    y = check_flat(y, "own_sampler's samples", state.model.dim).to(device=device, dtype=dtype)
    energies = torch.as_tensor(energies, dtype=torch.float64).reshape(-1).to(device)
    log_weights = torch.as_tensor(log_weights, dtype=torch.float64).reshape(-1).to(device)
    m = config.own_pool
    if y.shape[0] != m or energies.shape != (m,) or log_weights.shape != (m,):
        raise ValueError(f"own_sampler must return ({m}, d) samples and ({m},) energies and log-weights (own_pool = "
                         f"{m}), got {tuple(y.shape)}, {tuple(energies.shape)}, {tuple(log_weights.shape)}")
    # the far gaps are capped once, against the model that drew the pool: fixed regression targets
    targets = capped_energies(frozen, y, energies, config.own_clip, log_weights)
    usable = torch.isfinite(targets)  # NaN where the model's own energy is not finite: never drawn
    log_weights = torch.where(usable, log_weights, torch.full_like(log_weights, -math.inf))
    if not torch.isfinite(log_weights).any():
        raise ValueError("no sample of the pool has a finite model energy and a finite weight")
    return OwnPool(y, torch.where(usable, targets, torch.zeros_like(targets)), log_weights)


@contextmanager
def _interrupt_between_steps():
    """Defer the first Ctrl-C (SIGINT) to the end of the current step.

    Yields a function telling whether one arrived. A KeyboardInterrupt raised in the middle of a
    step would leave the generator advanced but the step uncounted, so the resumed run would
    differ from an uninterrupted one. A second Ctrl-C interrupts at once (the handler is
    restored after the first). Outside the main thread signals cannot be caught: no deferral.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    received = []
    previous = signal.getsignal(signal.SIGINT)

    def defer(signum, frame):
        received.append(signum)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, defer)
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def _training_data(model, data, log_weights, scores, project, space, device, config, energies=None) -> _Data:
    x = check_flat(data, "data", model.dim)
    if x.shape[0] == 0 or not torch.isfinite(x).all():
        raise ValueError("data must hold at least one sample and only finite values")
    if scores is not None:
        scores = check_flat(scores, "scores", model.dim)
        if scores.shape[0] != x.shape[0] or not torch.isfinite(scores).all():
            raise ValueError(f"scores must be finite with shape {tuple(x.shape)} (one per sample of data)")
        scores = scores.to(device=device, dtype=model.data_mean.dtype)
    elif config.tsm_weight > 0:
        raise ValueError("config.tsm_weight > 0 needs scores, grad log p_0 of every sample of data")
    if energies is not None:
        energies = torch.as_tensor(energies, dtype=torch.float64).reshape(-1)
        if energies.shape != (x.shape[0],) or not torch.isfinite(energies).all():
            raise ValueError(f"energies must be finite with shape ({x.shape[0]},) (one per sample of data)")
        energies = energies.to(device)
    elif config.energy_weight > 0:
        raise ValueError("config.energy_weight > 0 needs energies, the target energy of every sample of data")
    probabilities = None
    if log_weights is not None:
        lw = torch.as_tensor(log_weights, dtype=torch.float64).reshape(-1)
        if lw.shape[0] != x.shape[0]:
            raise ValueError(f"log_weights must have shape ({x.shape[0]},) (one per sample of data), got {tuple(lw.shape)}")
        if torch.isnan(lw).any() or not torch.isfinite(lw).any() or (lw == float("inf")).any():
            raise ValueError("log_weights must be finite or -inf (zero weight), with at least one finite value")
        probabilities = torch.exp(lw - lw.max()).to(device)
    if space is not None:
        if project is not None:
            raise ValueError("give either space or project, not both (the space owns the projection)")
        if space.dim != model.dim:
            raise ValueError(f"space has dimension {space.dim} but the model takes {model.dim}")
        if not space.contains(x):
            raise ValueError("data must lie in the space's centre-free subspace (build it with space.to_flat)")
        project = space.project
    return _Data(x.to(device=device, dtype=model.data_mean.dtype), scores, energies, probabilities, project, space)


def train(model: EnergyModel, data, config: TrainingConfig = TrainingConfig(), checkpoint=None,
          progress: bool = False, project=None, callback=None, *, log_weights=None, scores=None, space=None,
          on_dsm_end=None, energies=None, own_sampler=None) -> TrainingResult:
    """Train ``model`` in place on ``data`` (N, d) and return the EMA model and loss history.

    Args:
        model: an EnergyModel (its data_mean/data_variance should describe ``data``); training
            runs on the model's device.
        data: (N, d) training samples, finite.
        config: TrainingConfig.
        checkpoint: optional path. If it exists the run resumes from it (same config required);
            it is rewritten every ``config.checkpoint_every`` steps, at the end of the DSM phase,
            at the end, and on Ctrl-C, which takes effect at the end of the current step, so no
            completed step is lost and the resumed run equals an uninterrupted one.
        progress: show a tqdm progress bar (stderr) with the current losses and time left.
        project: optional projection of the noise onto the data's subspace (see losses).
        callback: optional ``callback(step, parts)`` called after every step (logging, early
            stopping: raising KeyboardInterrupt from it checkpoints and stops like Ctrl-C).
        log_weights: optional (N,) log-weights of the samples (e.g. +V/kT of frames from biased
            MD); batches are then drawn with probability proportional to exp(log_weights), so the
            model learns the reweighted (Boltzmann) distribution.
        scores: optional (N, d) scores grad log p_0 of the samples (for molecules in model units:
            scale * forces / kT), needed by target score matching (config.tsm_weight > 0).
        energies: optional (N,) target energies of the samples in the model's coordinates (kT), needed
            by energy matching (config.energy_weight > 0).
        space: optional boltzgen.coordinates.cartesian.MolecularSpace: its projection is used for the noise and
            every batch is randomly rotated (the Boltzmann density is rotation invariant).
        on_dsm_end: optional ``on_dsm_end(ema_model)`` called once when the DSM phase completes
            (before the checkpoint at that step), e.g. to save a DSM-only snapshot.
        own_sampler: needed when ``config.own_weight > 0``: ``own_sampler(model, m, seed) -> (y, energies,
            log_weights)``, m = ``config.own_pool`` of the model's own weighted samples at t_min (m, d)
            with their target energies (m,) in kT and log-weights (m,) (tensors on any device); called
            with a frozen copy of the model every ``config.own_every`` steps. It must be deterministic
            given (model, seed); the pool is checkpointed, so a resumed run equals an uninterrupted one.
    """
    state = _load_state(checkpoint, model, config) if checkpoint and os.path.exists(checkpoint) else _new_state(model, config)
    batches = _training_data(model, data, log_weights, scores, project, space, _device(model), config, energies)
    if config.own_weight > 0 and own_sampler is None:
        raise ValueError("config.own_weight > 0 needs own_sampler, which draws the model's own samples")
    start = time.perf_counter()
    bar = tqdm(total=config.total_steps, initial=state.step, disable=not progress, desc="training", unit="step",
               dynamic_ncols=True)
    mid_step = False
    try:
        with _interrupt_between_steps() as interrupted:
            while state.step < config.total_steps:
                mid_step = True
                if config.own_weight > 0 and (state.own_pool is None or state.step % config.own_every == 0):
                    state.own_pool = _draw_pool(state, own_sampler, config)
                parts = _step(state, batches, config)
                mid_step = False
                state.history.append(parts)
                bar.update(1)
                if state.step % 50 == 0:
                    bar.set_postfix(dsm=f"{parts.dsm:.4f}", clf=f"{parts.clf:.4f}", tsm=f"{parts.tsm:.4f}",
                                    energy=f"{parts.energy:.3f}", own=f"{parts.own:.3g}")
                phase_end = state.step == config.dsm_steps and config.clf_steps > 0
                if phase_end and on_dsm_end is not None:
                    on_dsm_end(state.ema)
                if checkpoint and (state.step % config.checkpoint_every == 0 or phase_end):
                    save_checkpoint(checkpoint, state, config)
                if callback is not None:
                    callback(state.step, parts)
                if interrupted():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Only a state between steps is consistent (RNG, optimiser and step counter agree);
        # after a second Ctrl-C inside a step the last periodic checkpoint stands.
        if checkpoint and not mid_step:
            save_checkpoint(checkpoint, state, config)
        raise
    finally:
        bar.close()
    if checkpoint:
        save_checkpoint(checkpoint, state, config)
    return TrainingResult(state.ema.eval(), state.model, state.history, state.step, time.perf_counter() - start)
