"""Exact correction of a model by Sequential Monte Carlo and importance weights.

One engine (:mod:`boltzgen.smc.engine`): ``step(state, transition, generator, options)`` on an
explicit :class:`SMCState`, and :func:`run` over *stages* (:mod:`boltzgen.smc.stages`: an initial
draw, path segments, mixing; :mod:`boltzgen.smc.denoising`: a diffusion model's levels). The
conveniences on top:

    path = geometric_path(start_energy, u)                           # or energy_path, diffusion_path, ...
    result = smc(path, GaussianProposal(d), n_particles=2048, seed=0)
    result.log_z, result.weights, result.diagnostics
    more = smc_from(result, another_path)                            # continue weighted particles

See :mod:`boltzgen.smc.weights` for the ESS and log Z estimates and :mod:`boltzgen.smc.kernels`
for MALA, HMC and the combinators. The plot helper lives in :mod:`boltzgen.smc.plots` (imports
matplotlib).
"""
from .denoising import Levels, ReverseDiffusion, denoising_smc, gaussian_level, initial_gaussian, level_grid
from .energy import evaluate, evaluate_with_grad, flat_energy, mean_free_projection, subspace_dimension
from .engine import (Checkpoint, Draw, SMCResult, SMCState, SMCStep, StepOptions, Transition, empty_state, run, step,
                     weighted_state)
from .importance import ImportanceResult, importance_reweight, importance_sample
from .kernels import HMC, MALA, Mixture, Move, ParticleState, Sequence, particle_state
from .path import Path, Segment, diffusion_path, energy_path, family_path, geometric_path
from .proposal import GaussianProposal
from .resampling import resample
from .sampler import ais, smc, smc_from
from .stages import Initial, Mixing, PathStage, path_stages
from .weights import (
    WeightSummary,
    conditional_ess,
    ess,
    ess_clipped,
    ess_fraction,
    log_mean_exp,
    max_weight_share,
    normalized_weights,
    summarize,
    weighted_mean,
)

__all__ = [
    "Checkpoint", "Draw", "GaussianProposal", "HMC", "ImportanceResult", "Initial", "Levels", "MALA", "Mixing",
    "Mixture", "Move", "ParticleState", "Path", "PathStage", "ReverseDiffusion", "SMCResult", "SMCState", "SMCStep",
    "Segment", "Sequence", "StepOptions", "Transition", "WeightSummary", "ais", "conditional_ess", "denoising_smc",
    "diffusion_path", "empty_state", "energy_path", "ess", "ess_clipped", "ess_fraction", "evaluate",
    "evaluate_with_grad", "family_path", "flat_energy", "gaussian_level", "geometric_path", "importance_reweight",
    "importance_sample", "initial_gaussian", "level_grid", "log_mean_exp", "max_weight_share", "mean_free_projection",
    "normalized_weights", "particle_state", "path_stages", "resample", "run", "smc", "smc_from", "step",
    "subspace_dimension", "summarize", "weighted_mean", "weighted_state",
]
