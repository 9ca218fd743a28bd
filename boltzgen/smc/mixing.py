"""Equilibrate weighted particles at their own target: resample, then many MCMC moves.

SMC's estimates are exact in the limit of many particles, but with a finite population the mass
of a basin is carried by the few lineages that reached it; when the moves along the path cannot
cross between basins, independent runs disagree on that mass by more than their weights say.
Moves that leave the final target invariant fix this without any bias: every particle's chain
converges to the target, so the weighted estimate does too as the moves mix (and the weights
were already right on average). Resampling first makes every particle count equally. Mixing
costs only evaluations of the final target (cheap for a force field) and keeps log Z.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._checks import check_count
from . import weights as W
from .energy import EnergyFn, Projection
from .path import family_path
from .resampling import RESAMPLERS, resample
from .sampler import SMCResult, SMCStep, _generator, smc


def resampled(result: SMCResult, resampler: str = "systematic", seed: int | torch.Generator = 0) -> SMCResult:
    """``result``'s particles resampled to equal weights (log Z, the kernel and lineages kept)."""
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {sorted(RESAMPLERS)}, got {resampler!r}")
    idx = resample(result.log_weights, resampler, _generator(seed)).to(result.particles.device)
    log_w = torch.full_like(result.log_weights, W.log_mean_exp(result.log_weights))
    origin = None if result.origin is None else result.origin[idx]
    return SMCResult(result.particles[idx], log_w, result.log_z, result.diagnostics, result.kernel, origin)


def mix(result: SMCResult, energy: EnergyFn, kernel, n_moves: int, *, block: int = 50,
        project: Projection | None = None, seed: int | torch.Generator = 0, chunk_size: int | None = 4096,
        progress: Callable[[SMCStep], None] | None = None) -> SMCResult:
    """Resample ``result`` and move its particles ``n_moves`` times under exp(-energy).

    Args:
        result: weighted particles (N, d) that target exp(-energy) (e.g. the end of an SMC run).
        energy: the final target's energy, (n, d) -> (n,) kT.
        kernel: an MCMC kernel (MALA, HMC, or a :class:`~boltzgen.smc.torsion.TorsionMove`);
            its step size is adapted after every move.
        n_moves: MCMC moves per particle (>= 1), rounded up to whole blocks of ``block`` moves.
        block: moves per diagnostic step (:class:`SMCStep` named "mixing", value = moves so far).
        project, seed, chunk_size, progress: as for :func:`boltzgen.smc.smc`.
    Returns:
        :class:`SMCResult` with equal weights, the same log Z and the mixing steps' diagnostics
        (the input's diagnostics are not repeated).
    """
    n_moves = check_count(n_moves, "n_moves")
    block = min(check_count(block, "block"), n_moves)
    generator = _generator(seed)
    start = resampled(result, seed=generator)
    n_blocks = math.ceil(n_moves / block)
    moves = [block * k for k in range(n_blocks + 1)]
    # one target for every step: the steps only carry moves (their reweighting is the identity)
    path = family_path(lambda _, x: energy(x), lambdas=[float(m) for m in moves], name="mixing")
    mixed = smc(path, initial=start, kernel=kernel, n_moves=block, resample_threshold=0.0, project=project,
                seed=generator, chunk_size=chunk_size, progress=progress)
    return mixed
