"""Equilibrate weighted particles at their own target: resample, then many MCMC moves.

SMC's estimates are exact in the limit of many particles, but with a finite population the mass
of a basin is carried by the few lineages that reached it; when the moves along the path cannot
cross between basins, independent runs disagree on that mass by more than their weights say.
Moves that leave the final target invariant fix this without any bias: every particle's chain
converges to the target, so the weighted estimate does too as the moves mix (and the weights
were already right on average). Resampling first makes every particle count equally. Mixing
costs only evaluations of the final target (cheap for a force field) and keeps log Z.

:func:`mix` runs the :class:`~boltzgen.smc.stages.Mixing` stage on a finished result.
"""
from __future__ import annotations

from typing import Callable

import torch

from .energy import EnergyFn, Projection
from .engine import SMCResult, SMCStep, StepOptions, as_generator, run, weighted_state
from .resampling import RESAMPLERS
from .stages import Mixing


def mix(result: SMCResult, energy: EnergyFn, kernel, n_moves: int, *, block: int = 50,
        project: Projection | None = None, resampler: str = "systematic", seed: int | torch.Generator = 0,
        chunk_size: int | None = 4096, progress: Callable[[SMCStep], None] | None = None) -> SMCResult:
    """Resample ``result`` and move its particles ``n_moves`` times under exp(-energy).

    Args:
        result: weighted particles (N, d) that target exp(-energy) (e.g. the end of an SMC run).
        energy: the final target's energy, (n, d) -> (n,) kT.
        kernel: an MCMC kernel (MALA, HMC, or a combinator such as
            :func:`~boltzgen.smc.torsion.with_torsion_moves`); its step size is adapted after every move.
        n_moves: MCMC moves per particle (>= 1), rounded up to whole blocks of ``block`` moves.
        block: moves per diagnostic step (:class:`SMCStep` named "moves", value = moves so far).
        project, resampler, seed, chunk_size, progress: as for :func:`boltzgen.smc.smc`.
    Returns:
        :class:`SMCResult` with equal weights, the same log Z and the mixing steps' diagnostics
        (the input's diagnostics are not repeated).
    """
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {sorted(RESAMPLERS)}, got {resampler!r}")
    options = StepOptions(0.0, resampler, True, project, chunk_size)
    stage = Mixing(energy, n_moves, block, options)
    state = weighted_state(result.particles, result.log_weights, energy, origin=result.origin, kernel=kernel,
                           chunk_size=chunk_size)
    callback = None if progress is None else (lambda stage, position, record: progress(record))
    return run(state, [stage], as_generator(seed), progress=callback)
