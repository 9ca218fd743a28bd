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

from ._checks import as_device, check_count
from .analysis.free_energy import Estimate, delta_f_mbar, with_error
from .sampling import BridgeSettings, TorsionSettings
from .smc import MALA, SMCResult, StepOptions, evaluate, geometric_path
from .smc import weights as W
from .smc.energy import CountedEnergy
from .smc.engine import as_generator, run, weighted_state
from .smc.kernels import Sequence as KernelSequence
from .smc.stages import PathStage


@dataclass(frozen=True)
class SwitchSettings:
    """Choices of the SMC bridge from state A to state B.

    Attributes:
        bridge: :class:`~boltzgen.sampling.BridgeSettings` (cess, MALA moves per step, initial step
            size, resample threshold; the step size is replaced by an adapted one when the caller
            has it).
        torsions: :class:`~boltzgen.sampling.TorsionSettings`: torsion moves after each MALA move
            of every bridge step.
        chunk_size: particles per energy evaluation.
    """

    bridge: BridgeSettings = BridgeSettings(resample_threshold=0.3)
    torsions: TorsionSettings = TorsionSettings()
    chunk_size: int = 1000

    def __post_init__(self):
        check_count(self.chunk_size, "chunk_size")


@dataclass(frozen=True)
class Switch:
    """One SMC bridge from weighted samples of A to weighted samples of B.

    Attributes:
        delta_f: F_B - F_A in kT (minus the log of the estimated Z_B / Z_A).
        result: the bridge's SMCResult: particles (N, d) in model units weighted toward
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


def switch(space, positions, log_weights, energy_a: Callable, energy_b: Callable,
           settings: SwitchSettings = SwitchSettings(), *, topology=None, seed: int | torch.Generator = 0,
           device: str | torch.device | None = None, progress: Callable | None = None) -> Switch:
    """Carry weighted samples of A to B by SMC and estimate F_B - F_A (see the module docstring).

    Args:
        space: the molecule's coordinate space (model units of the moves), e.g. a model file's.
        positions: (N, n_atoms, 3) nm, samples of A (e.g. a :class:`boltzgen.sampling.MolecularRun`'s).
        log_weights: (N,) their log-weights toward exp(-u_A).
        energy_a, energy_b: reduced energies u_A, u_B on (n, n_atoms, 3) nm -> (n,) kT.
        settings: :class:`SwitchSettings`.
        topology: the molecule's topology, for torsion moves (None: MALA only).
        seed: an int or a torch.Generator.
        device: where the particles live (default: torch's default device).
        progress: called after every step with (stage, position, record).
    """
    start_time = time.perf_counter()
    device = as_device(device)
    y = space.to_flat(torch.as_tensor(np.asarray(positions), dtype=torch.float64)).to(device)
    log_w = W.clean_log_weights(torch.as_tensor(np.asarray(log_weights), dtype=torch.float64)).to(device)
    if log_w.shape != (y.shape[0],):
        raise ValueError(f"log_weights must have shape ({y.shape[0]},) (one per configuration), got {tuple(log_w.shape)}")
    if not torch.isfinite(log_w).any():
        raise ValueError("log_weights are all -inf or NaN: no sample of A carries weight")
    generator = as_generator(check_count(seed, "seed", minimum=0) if not isinstance(seed, torch.Generator) else seed,
                             y.device)
    ua, ub = CountedEnergy(space.flat_energy(energy_a)), CountedEnergy(space.flat_energy(energy_b))
    b, t = settings.bridge, settings.torsions
    kernel = MALA(step_size=b.step_size)
    turn = space.torsion_kernel(topology, t.reflect) if topology is not None and t.moves else None
    if turn is not None:
        kernel = KernelSequence((kernel,) + (turn,) * t.moves)
    options = StepOptions(b.resample_threshold, "systematic", True, space.projection, settings.chunk_size)
    state = weighted_state(y, log_w, ua, kernel=kernel, gradients=b.moves > 0, chunk_size=settings.chunk_size)
    initial_log_z = state.log_z
    path = geometric_path(ua, ub, cess_target=b.cess)
    result = run(state, [PathStage(path.segments[0], options, b.moves, name="switch", gradients=b.moves > 0)],
                 generator, progress=progress)
    return Switch(delta_f=-(result.log_z - initial_log_z), result=result, target_evaluations=ua.count + ub.count,
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

