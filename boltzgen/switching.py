"""Free energies between two thermodynamic states of one molecule (vacuum -> solvent, force field A -> B).

Two independent estimates of Delta F_AB = F_B - F_A = -ln(Z_B / Z_A) (kT), both from the
Boltzmann generator:

* **switching** (:func:`switch`): the generator's weighted samples of A are carried by SMC along
  the geometric bridge exp(-(1 - lam) u_A - lam u_B), lam: 0 -> 1 (adaptive on the conditional
  ESS, MALA and torsion moves at every step); the product of the steps' weight means is Z_B / Z_A.
  Its error does not include that of log Z_A: only the ratio is estimated;
* **log Z difference**: one generator run for each state; Delta F = log Z_A - log Z_B
  (:func:`boltzgen.analysis.free_energy.delta_f_from_log_z`).

:func:`bar_reference` is the check: MBAR (pymbar; BAR for plain runs) on all MD frames of both states
(a biased run enters as the biased state it sampled), one estimate per pair of independent runs.
All log Z are of exp(-u) over centre-free positions in nm, so both states' figures are comparable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ._checks import check_count, check_probability
from .analysis.free_energy import Estimate, delta_f_mbar, with_error
from .smc import MALA, SMCResult, SMCStep, evaluate, geometric_path, smc
from .smc import weights as W
from .smc.energy import CountedEnergy, on_device
from .smc.torsion import TorsionMove
from .coordinates.cartesian import MolecularSpace


@dataclass(frozen=True)
class SwitchSettings:
    """Choices of the SMC bridge from state A to state B.

    Attributes:
        cess: conditional ESS fraction each adaptive step aims at.
        moves: MCMC moves per step (MALA, each followed by ``torsion_moves`` torsion moves).
        torsion_moves: torsion moves after each MALA move (0: MALA only).
        torsion_reflect: probability that a torsion move reflects its dihedrals instead of turning
            them by uniform angles.
        resample_threshold: resample when ESS / N falls below this.
        step_size: initial MALA step size (model units squared) when no adapted kernel is given.
        chunk_size: particles per energy evaluation.
    """

    cess: float = 0.9
    moves: int = 10
    torsion_moves: int = 4
    torsion_reflect: float = 0.5
    resample_threshold: float = 0.3
    step_size: float = 1e-4
    chunk_size: int = 1000

    def __post_init__(self):
        check_count(self.moves, "moves", minimum=0)
        check_count(self.torsion_moves, "torsion_moves", minimum=0)
        check_count(self.chunk_size, "chunk_size")
        check_probability(self.torsion_reflect, "torsion_reflect")
        if not 0.0 < self.cess < 1.0:
            raise ValueError(f"cess must lie in (0, 1), got {self.cess!r}")
        if not 0.0 <= self.resample_threshold <= 1.0:
            raise ValueError(f"resample_threshold must lie in [0, 1], got {self.resample_threshold!r}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size!r}")


@dataclass(frozen=True)
class Switch:
    """One SMC bridge from weighted samples of A to weighted samples of B.

    Attributes:
        delta_f: F_B - F_A in kT (minus the log of the estimated Z_B / Z_A).
        result: the bridge's SMCResult: particles (N, 3 n_atoms) in model units weighted toward
            exp(-u_B), per-step diagnostics (ESS, conditional ESS, acceptances, lineages).
        target_evaluations: configurations on which u_A or u_B was evaluated (both count).
        seconds: wall time.
    """

    delta_f: float
    result: SMCResult
    target_evaluations: int
    seconds: float

    @property
    def min_ess_fraction(self) -> float:
        """The smallest ESS / N along the bridge (before resampling)."""
        return min(s.ess_fraction for s in self.result.diagnostics)


def switch(space: MolecularSpace, positions, log_weights, energy_a: Callable, energy_b: Callable,
           settings: SwitchSettings = SwitchSettings(), *, torsions=None, kernel=None,
           seed: int | torch.Generator = 0, device: str | torch.device = "cpu",
           progress: Callable[[SMCStep], None] | None = None) -> Switch:
    """Carry weighted samples of A to B by SMC and estimate F_B - F_A (see the module docstring).

    Args:
        space: the molecule's :class:`~boltzgen.coordinates.cartesian.MolecularSpace` (model units of the moves).
        positions: (N, n_atoms, 3) nm, samples of A (e.g. a :class:`boltzgen.sampling.MolecularRun`'s).
        log_weights: (N,) their log-weights toward exp(-u_A).
        energy_a, energy_b: reduced energies u_A, u_B on (n, n_atoms, 3) nm -> (n,) kT.
        settings: :class:`SwitchSettings`.
        torsions: the molecule's :class:`~boltzgen.smc.torsion.Torsions` for torsion moves (None:
            MALA only).
        kernel: an adapted MALA kernel to start from (e.g. the generator run's), else
            ``MALA(settings.step_size)``.
        seed: an int or a torch.Generator.
        device: where the particles live.
        progress: called with every SMC step.
    """
    start_time = time.perf_counter()
    y = space.to_flat(torch.as_tensor(np.asarray(positions), dtype=torch.float64)).to(device)
    log_w = W.clean_log_weights(torch.as_tensor(np.asarray(log_weights), dtype=torch.float64)).to(device)
    if log_w.shape != (y.shape[0],):
        raise ValueError(f"log_weights must have shape ({y.shape[0]},) (one per configuration), got {tuple(log_w.shape)}")
    if not torch.isfinite(log_w).any():
        raise ValueError("log_weights are all -inf or NaN: no sample of A carries weight")
    if y.device.type != "cpu":  # force fields evaluate on the CPU; particles (and moves) stay on the device
        energy_a, energy_b = on_device(energy_a, "cpu"), on_device(energy_b, "cpu")
    if not isinstance(seed, torch.Generator):  # the moves draw on the particles' device
        seed = torch.Generator(device=y.device).manual_seed(check_count(seed, "seed", minimum=0))
    ua, ub = CountedEnergy(space.flat_energy(energy_a)), CountedEnergy(space.flat_energy(energy_b))
    mala = kernel if kernel is not None else MALA(step_size=settings.step_size)
    if torsions is not None and settings.torsion_moves:
        mala = TorsionMove(mala, torsions, settings.torsion_moves, settings.torsion_reflect)
    initial = SMCResult(y, log_w, W.log_mean_exp(log_w), (), mala, torch.arange(y.shape[0], device=y.device))
    result = smc(geometric_path(ua, ub, cess_target=settings.cess), initial=initial, kernel=mala,
                 n_moves=settings.moves, resample_threshold=settings.resample_threshold, project=space.project,
                 seed=seed, chunk_size=settings.chunk_size, progress=progress)
    return Switch(delta_f=-(result.log_z - initial.log_z), result=result, target_evaluations=ua.count + ub.count,
                  seconds=time.perf_counter() - start_time)


def _bias_energy(run_dir, x: np.ndarray) -> np.ndarray:
    """V(x)/kT of a biased MD run's frozen bias on positions ``x`` (n, n_atoms, 3) nm; zeros for plain MD."""
    from . import md

    if not md.is_biased(run_dir):
        return np.zeros(len(x))
    return md.load_bias(run_dir).reduced_energy(x)


def bar_reference(dirs_a: Sequence, dirs_b: Sequence, energy_a: Callable, energy_b: Callable, *,
                  chunk_size: int = 1000) -> Estimate:
    """F_B - F_A in kT from MD runs of both states (every frame at its weight), with an error over pairs of runs.

    Run k of A is paired with run k of B; each pair gives one MBAR estimate (pymbar) on all frames
    of both runs. A metadynamics run's production sampled exp(-(u + V/kT)) with its frozen bias V,
    so it enters as that biased state, and A and B themselves as unsampled states: no frame is
    dropped or duplicated. For two plain runs this is BAR. With two or more pairs the estimate is
    their mean with the standard error over pairs; with one pair, pymbar's own error (which assumes
    independent frames, so it is optimistic for MD).

    Args:
        dirs_a, dirs_b: ``boltzgen md`` folders of A and of B (the same number of each).
        energy_a, energy_b: reduced energies on (n, n_atoms, 3) nm -> (n,) kT.
        chunk_size: frames per energy evaluation.
    """
    from . import md

    if len(dirs_a) != len(dirs_b) or not dirs_a:
        raise ValueError(f"give the same number (>= 1) of MD runs of each state, got {len(dirs_a)} and {len(dirs_b)}")
    chunk_size = check_count(chunk_size, "chunk_size")
    estimates = []
    for da, db in zip(dirs_a, dirs_b):
        xa, xb = (md.load_trajectory(d).xyz.astype(np.float64) for d in (da, db))
        x = np.concatenate([xa, xb])
        ua, ub = (evaluate(energy, torch.from_numpy(x), chunk_size).numpy() for energy in (energy_a, energy_b))
        # states: A, B (unsampled), then the states the two runs sampled
        u_kn = np.stack([ua, ub, ua + _bias_energy(da, x), ub + _bias_energy(db, x)])
        estimates.append(delta_f_mbar(u_kn, np.array([0, 0, len(xa), len(xb)]), 0, 1))
    if len(estimates) == 1:
        return estimates[0]
    return with_error([e.mean for e in estimates])

