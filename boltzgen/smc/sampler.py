"""Sequential Monte Carlo (and annealed importance sampling) over a path of targets: :func:`smc`.

These are conveniences over the one engine (:mod:`boltzgen.smc.engine`): an :class:`Initial`
draw from a proposal, then one :class:`PathStage` per segment of the path.

One step toward the next target gamma_next = exp(-E_next):
  1. reweight: log w += E_current(x) - E_next(x)   (the particles are distributed ~ gamma_current);
  2. resample when ESS / N < resample_threshold (weights reset to their mean, so that
     log Z = log mean exp(log w) holds at every step);
  3. move with ``n_moves`` MCMC moves that leave gamma_next invariant; adapt the step size.
The first step is the same with the proposal q in place of gamma_current: log w = -E_first - log q.
Hence, for a normalised q, ``log_z`` estimates log Z of the *final* target itself. Z (not log Z)
is unbiased; log Z is biased low by about Var(log Z) / 2.

Annealed importance sampling is the same code with resampling off (:func:`ais`). Independent
runs (different seeds) give honest error bars; particles within one run are correlated.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._checks import check_count
from .energy import Projection
from .engine import Draw, SMCResult, SMCStep, StepOptions, as_generator, empty_state, run, weighted_state
from .kernels import MALA
from .path import Path
from .stages import Initial, path_stages


def _check_path(path) -> None:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a boltzgen.smc.Path (see energy_path, geometric_path, diffusion_path), got {type(path).__name__}")


def _records(progress):
    return None if progress is None else (lambda stage, position, record: progress(record))


def smc(path: Path, proposal, n_particles: int, *, kernel=None, n_moves: int = 5,
        resample_threshold: float = 0.5, resampler: str = "systematic", adapt_step_size: bool = True,
        project: Projection | None = None, seed: int | torch.Generator = 0, chunk_size: int | None = 4096,
        max_steps: int = 10_000, progress: Callable[[SMCStep], None] | None = None) -> SMCResult:
    """Run SMC from ``proposal`` along ``path`` and return the weighted particles and log Z.

    Args:
        path: the targets (:func:`energy_path`, :func:`family_path`, :func:`geometric_path`,
            :func:`diffusion_path`, or sums of them).
        proposal: initial distribution with ``sample(n, generator) -> (n, d)`` and a normalised
            ``log_prob(x) -> (n,)`` (e.g. :class:`GaussianProposal`).
        n_particles: N >= 1.
        kernel: MCMC kernel (:class:`MALA` (default) or :class:`HMC`, or a combinator), with its
            initial step size.
        n_moves: MCMC moves per step (0: pure reweighting). In high dimension the accuracy of
            log Z and of mode weights is limited by how well these moves mix at each step, often
            more than by N: raise n_moves when independent runs disagree.
        resample_threshold: resample when ESS / N falls below this (0: never, i.e. AIS).
        resampler: "systematic", "stratified", "residual" or "multinomial".
        adapt_step_size: move the step size toward the kernel's target acceptance between moves.
        project: optional orthogonal projection (n, d) -> (n, d) of noise, momenta and gradients,
            keeping particles in a linear subspace (e.g. ``space.project`` of a
            boltzgen.coordinates.cartesian.MolecularSpace). Default: the proposal's ``project`` if it has one (as
            ``space.proposal()`` does). Proposal samples outside the subspace are refused.
        seed: an int, or a torch.Generator that supplies all randomness.
        chunk_size: energies are evaluated on at most this many particles at a time (None: all).
        max_steps: bound on the number of steps (adaptive segments could otherwise crawl).
        progress: optional callback, called with each :class:`SMCStep` as it completes.

    Returns:
        :class:`SMCResult`. Particles whose energy is not finite get zero weight (counted in
        ``SMCStep.n_nonfinite``, with a RuntimeWarning); if every particle does, RuntimeError.
    """
    _check_path(path)
    n_particles = check_count(n_particles, "n_particles")
    n_moves = check_count(n_moves, "n_moves", minimum=0)
    max_steps = check_count(max_steps, "max_steps")
    project = project if project is not None else getattr(proposal, "project", None)
    draw = Draw(proposal, project)
    options = StepOptions(resample_threshold, resampler, adapt_step_size, project, chunk_size)
    kernel = MALA() if kernel is None else kernel
    first = path.segments[0]
    initial = Initial(draw, first.target(first.start), options, first.name, first.start, n_moves, kernel,
                      gradients=n_moves > 0)
    stages = [initial] + path_stages(path, options, n_moves, gradients=n_moves > 0)
    return run(empty_state(n_particles), stages, as_generator(seed), max_steps=max_steps, progress=_records(progress))


def smc_from(start: SMCResult, path: Path, *, kernel=None, n_moves: int = 5, resample_threshold: float = 0.5,
             resampler: str = "systematic", adapt_step_size: bool = True, project: Projection | None = None,
             seed: int | torch.Generator = 0, chunk_size: int | None = 4096, max_steps: int = 10_000,
             progress: Callable[[SMCStep], None] | None = None) -> SMCResult:
    """Continue weighted particles that target the path's first target along ``path``.

    Their log-weights (hence log Z) and lineages carry over; no initial step is taken.

    Args:
        start: an :class:`SMCResult` (e.g. of :func:`boltzgen.smc.denoising_smc`) whose particles
            target the path's first target.
        path, kernel, n_moves, resample_threshold, resampler, adapt_step_size, project, seed,
            chunk_size, max_steps, progress: as for :func:`smc` (kernel default ``MALA()``).
    """
    _check_path(path)
    if not isinstance(start, SMCResult):
        raise TypeError(f"start must be an SMCResult, got {type(start).__name__}")
    n_moves = check_count(n_moves, "n_moves", minimum=0)
    max_steps = check_count(max_steps, "max_steps")
    options = StepOptions(resample_threshold, resampler, adapt_step_size, project, chunk_size)
    kernel = MALA() if kernel is None else kernel
    first = path.segments[0]
    state = weighted_state(start.particles, start.log_weights, first.target(first.start), origin=start.origin,
                           kernel=kernel, gradients=n_moves > 0, chunk_size=chunk_size)
    return run(state, path_stages(path, options, n_moves, gradients=n_moves > 0), as_generator(seed),
               max_steps=max_steps, progress=_records(progress))


def ais(path: Path, proposal, n_particles: int, **kwargs) -> SMCResult:
    """Annealed importance sampling: :func:`smc` with resampling off (same arguments otherwise)."""
    if "resample_threshold" in kwargs:
        raise TypeError("ais never resamples; use smc to set resample_threshold")
    return smc(path, proposal, n_particles, resample_threshold=0.0, **kwargs)
