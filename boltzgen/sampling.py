"""The Boltzmann generator for a molecule: a trained model's levels, then a bridge to the force field.

One run, in model units y (centre-free, :class:`~boltzgen.coordinates.cartesian.MolecularSpace`):

1. :func:`~boltzgen.smc.denoising_smc`: N particles from the model's Gaussian at t = 1 down to
   t_min by reverse-diffusion proposals with exact weights, resampling on the ESS, a few MALA
   moves per level;
2. the *one-step bridge ESS*: the ESS of those weights times exp(E_theta(t_min, y) - u(y)), i.e.
   of importance sampling the force field from the model's last level (the figure comparable
   with the importance-sampling ESS published Boltzmann generators report);
3. :func:`~boltzgen.smc.smc` from those weighted particles along the geometric bridge
   exp(-(1 - lam) E_theta(t_min) - lam u), lam: 0 -> 1, adaptive on the conditional ESS, with MALA
   moves at every step;
4. :func:`~boltzgen.smc.mixing.mix`: the particles are resampled and equilibrated at u by MALA
   moves, each followed by a torsion move (:mod:`boltzgen.smc.torsion`: rigid turns of rotatable
   bonds, which cross between backbone basins where MALA cannot). The levels bring a basin's
   mass through a few lineages; without these moves, independent runs disagree on it by more than
   their weights say. They cost only force-field evaluations;
5. mirror images folded onto L (the model is mirror invariant and so is the force field, which is
   checked on the particles).

The weighted particles are exact for exp(-u) whatever the model's errors (the errors cost ESS,
never bias, and the mixing moves leave exp(-u) invariant); log Z is that of exp(-u) over
centre-free positions in nm.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ._checks import check_count, check_probability
from .coordinates import fold_to_l
from .models import ModelFile
from .smc import MALA, SMCResult, SMCStep, denoising_smc, evaluate, geometric_path, smc
from .smc import weights as W
from .smc.mixing import mix
from .smc.energy import CountedEnergy, on_device
from .smc.torsion import TorsionMove, rotatable_torsions_or_none

# A fold onto L is exact only if the force field is mirror symmetric: the largest energy change
# (kT) a reflection may cause before the run is refused.
_MIRROR_TOLERANCE_KT = 1e-3


@dataclass(frozen=True)
class SampleSettings:
    """Choices of one SMC run (defaults: measured on alanine dipeptide, see the README).

    Attributes:
        n_levels: reverse-diffusion levels from t = 1 to t_min (uniform in log SNR).
        level_moves: MALA moves per level.
        bridge_moves: MALA moves per bridge step.
        bridge_cess: conditional ESS fraction each adaptive bridge step aims at.
        resample_threshold: resample when ESS / N falls below this.
        bridge_step_size: initial MALA step size of the bridge (model units squared; adapted after
            every move).
        mixing_moves: MALA moves per particle at u after the bridge (0: no mixing stage).
        torsion_moves: torsion moves after each mixing MALA move (0: MALA only).
        torsion_reflect: probability that a torsion move reflects its dihedrals instead of turning
            them by uniform angles (:mod:`boltzgen.smc.torsion`).
        chunk_size: particles per energy evaluation (bounds memory).
    """

    n_levels: int = 1000
    level_moves: int = 2
    bridge_moves: int = 10
    bridge_cess: float = 0.9
    resample_threshold: float = 0.1
    bridge_step_size: float = 1e-4
    mixing_moves: int = 1500
    torsion_moves: int = 4
    torsion_reflect: float = 0.5
    chunk_size: int = 1000

    def __post_init__(self):
        check_count(self.n_levels, "n_levels")
        check_count(self.level_moves, "level_moves", minimum=0)
        check_count(self.bridge_moves, "bridge_moves", minimum=0)
        check_count(self.mixing_moves, "mixing_moves", minimum=0)
        check_count(self.torsion_moves, "torsion_moves", minimum=0)
        check_count(self.chunk_size, "chunk_size")
        check_probability(self.torsion_reflect, "torsion_reflect")
        if not 0.0 < self.bridge_cess < 1.0:
            raise ValueError(f"bridge_cess must lie in (0, 1), got {self.bridge_cess!r}")
        if not 0.0 <= self.resample_threshold <= 1.0:
            raise ValueError(f"resample_threshold must lie in [0, 1], got {self.resample_threshold!r}")
        if not self.bridge_step_size > 0:
            raise ValueError(f"bridge_step_size must be positive, got {self.bridge_step_size!r}")


@dataclass(frozen=True)
class MolecularRun:
    """One run's weighted samples and diagnostics.

    Attributes:
        positions: (N, n_atoms, 3) float64 nm, L-folded.
        log_weights: (N,) float64 log-weights toward exp(-u) (log_mean_exp = log_z).
        energies: (N,) float64 reduced energies u (kT) of ``positions``.
        log_z: log of the integral of exp(-u) over centre-free positions (nm^(3 n_atoms - 3)).
        bridge_ess_fraction: one-step bridge ESS / N (see the module docstring).
        levels, bridge: the two SMC stages' results (per-step diagnostics, lineages).
        mixing: the mixing stage's result (None when ``mixing_moves`` is 0); after it the
            weights are equal.
        mirror_fraction: fraction of particles that were mirror images (D) and were folded.
        target_evaluations, model_evaluations: configurations on which u and E_theta were
            evaluated (an energy+gradient counts once).
        seconds: wall time.
    """

    positions: np.ndarray
    log_weights: np.ndarray
    energies: np.ndarray
    log_z: float
    bridge_ess_fraction: float
    levels: SMCResult
    bridge: SMCResult
    mixing: SMCResult | None
    mirror_fraction: float
    target_evaluations: int
    model_evaluations: int
    seconds: float

    @property
    def ess_fraction(self) -> float:
        """Kish ESS / N at the end of the bridge (the mixing stage resamples to equal weights)."""
        return self.bridge.ess_fraction

    @property
    def n_lineages(self) -> int:
        """Particles of t = 1 with descendants of positive weight at the end of the bridge."""
        return self.bridge.n_lineages

    @property
    def torsion_acceptance(self) -> float:
        """Mean acceptance of the mixing stage's torsion moves (nan without them)."""
        rates = [s.torsion_acceptance for s in self.mixing.diagnostics] if self.mixing is not None else []
        return float(np.mean(rates)) if rates else float("nan")

    def diagnostics(self) -> dict:
        """Per-step diagnostics of every stage and the run's totals, JSON-ready."""
        def steps(result, stage):
            return [] if result is None else [{"stage": stage, **asdict(s)} for s in result.diagnostics]

        return {"steps": steps(self.levels, "levels") + steps(self.bridge, "bridge") + steps(self.mixing, "mixing"),
                "totals": {"n_particles": int(len(self.log_weights)), "ess_fraction": self.ess_fraction,
                           "bridge_ess_fraction": self.bridge_ess_fraction, "log_z": self.log_z,
                           "levels_ess_fraction": self.levels.ess_fraction, "n_lineages": self.n_lineages,
                           "levels_lineages": self.levels.n_lineages, "n_levels": len(self.levels.diagnostics) - 1,
                           "n_bridge_steps": len(self.bridge.diagnostics), "mirror_fraction": self.mirror_fraction,
                           "mixing_lineages": self.mixing.n_lineages if self.mixing is not None else None,
                           "torsion_acceptance": self.torsion_acceptance,
                           "target_evaluations": self.target_evaluations,
                           "model_evaluations": self.model_evaluations, "seconds": self.seconds}}


def sample_molecule(model_file: ModelFile, target, n_particles: int, settings: SampleSettings = SampleSettings(),
                    *, seed: int = 0, target_energy=None, progress: Callable[[SMCStep], None] | None = None
                    ) -> MolecularRun:
    """One SMC run of the Boltzmann generator (see the module docstring).

    Args:
        model_file: a loaded model file (:func:`boltzgen.models.load_model_file`); its model's
            device is where the particles live.
        target: the OpenMM target (topology, reduced_energy on (n, n_atoms, 3) nm).
        n_particles: N.
        settings: :class:`SampleSettings`.
        seed: seeds the run (two runs with different seeds are independent).
        target_energy: the reduced energy to sample, callable on (n, n_atoms, 3) nm -> (n,) kT
            (default ``target.reduced_energy``; pass the torch force field's for speed).
        progress: called with every SMC step of both stages.
    """
    n_particles = check_count(n_particles, "n_particles")
    start = time.perf_counter()
    model, space = model_file.model, model_file.space
    device = model.data_mean.device
    reduced = target.reduced_energy if target_energy is None else target_energy
    u = CountedEnergy(space.flat_energy(on_device(reduced, "cpu") if device.type != "cpu" else reduced))
    t_min = float(model.schedule.t_min)
    model_energy = CountedEnergy(lambda y: model.energy(t_min, y))
    generator = torch.Generator(device=device).manual_seed(seed)
    levels = denoising_smc(model, n_particles, project=space.project, n_levels=settings.n_levels,
                           n_moves=settings.level_moves, resample_threshold=settings.resample_threshold,
                           seed=generator, chunk_size=settings.chunk_size, progress=progress)
    # every level costs one energy+gradient per particle for the proposal and one per move
    level_evaluations = n_particles * (1 + settings.n_levels * (1 + settings.level_moves))
    e_model = evaluate(model_energy, levels.particles, settings.chunk_size)
    e_target = evaluate(u, levels.particles, settings.chunk_size)
    bridge_ess = W.ess_fraction(levels.log_weights + e_model - e_target)
    bridge = smc(geometric_path(model_energy, u, cess_target=settings.bridge_cess), initial=levels,
                 kernel=MALA(step_size=settings.bridge_step_size), n_moves=settings.bridge_moves,
                 resample_threshold=settings.resample_threshold, seed=generator, chunk_size=settings.chunk_size,
                 progress=progress)
    mixing = None
    if settings.mixing_moves:
        kernel = bridge.kernel
        torsions = rotatable_torsions_or_none(target.topology) if settings.torsion_moves else None
        if torsions is not None:
            kernel = TorsionMove(kernel, torsions, settings.torsion_moves, settings.torsion_reflect)
        mixing = mix(bridge, u, kernel, settings.mixing_moves, project=space.project, seed=generator,
                     chunk_size=settings.chunk_size, progress=progress)
    final = bridge if mixing is None else mixing
    positions = space.to_positions(final.particles).detach().cpu().to(torch.float64)
    folded = fold_to_l(positions.numpy(), target.topology)
    energies = evaluate(reduced, torch.as_tensor(folded.positions), settings.chunk_size).numpy()
    shift = np.abs(energies - evaluate(reduced, positions, settings.chunk_size).numpy())
    worst = float(shift[np.isfinite(shift)].max(initial=0.0))
    if worst > _MIRROR_TOLERANCE_KT:
        raise ValueError(f"the force field is not mirror symmetric (a reflection changes u by up to {worst:.3g} kT): "
                         "D samples of a mirror-invariant model cannot be folded onto L; train a chirality-aware model")
    return MolecularRun(positions=np.asarray(folded.positions, dtype=np.float64),
                        log_weights=final.log_weights.detach().cpu().numpy(), energies=energies,
                        log_z=final.log_z, bridge_ess_fraction=bridge_ess, levels=levels, bridge=bridge, mixing=mixing,
                        mirror_fraction=float(folded.mirror_fraction), target_evaluations=u.count + 2 * n_particles,
                        model_evaluations=level_evaluations + model_energy.count, seconds=time.perf_counter() - start)
