"""Exact correction of a model by Sequential Monte Carlo and importance weights.

    path = diffusion_path(model.energy, times, target_energy=u)      # or geometric_path, ...
    result = smc(path, GaussianProposal(d), n_particles=2048, seed=0)
    result.log_z, result.weights, result.diagnostics

See :mod:`boltzgen.smc.sampler` for the algorithm and :mod:`boltzgen.smc.weights` for the ESS
and log Z estimates. The plot helper lives in :mod:`boltzgen.smc.plots` (imports matplotlib).
"""
from .denoising import denoising_smc, initial_gaussian, level_grid
from .energy import evaluate, evaluate_with_grad, flat_energy, mean_free_projection, subspace_dimension
from .importance import ImportanceResult, importance_reweight, importance_sample
from .kernels import HMC, MALA, Move, ParticleState, particle_state
from .path import Path, Segment, diffusion_path, energy_path, family_path, geometric_path
from .proposal import GaussianProposal
from .resampling import resample
from .sampler import SMCResult, SMCStep, ais, smc
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
    "HMC", "MALA", "GaussianProposal", "ImportanceResult", "Move", "ParticleState", "Path", "SMCResult",
    "SMCStep", "Segment", "WeightSummary", "ais", "conditional_ess", "denoising_smc", "initial_gaussian", "level_grid", "diffusion_path", "energy_path", "ess",
    "ess_clipped", "ess_fraction", "evaluate", "evaluate_with_grad", "family_path", "flat_energy",
    "geometric_path", "importance_reweight", "importance_sample", "log_mean_exp", "max_weight_share",
    "mean_free_projection", "normalized_weights", "particle_state", "resample", "smc", "subspace_dimension",
    "summarize", "weighted_mean",
]
