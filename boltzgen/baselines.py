"""MCMC alone: the generator's mixing kernel started from the structure, with no model at all.

Every claim about the generator is measured against this baseline (and biased MD): ``n_chains``
copies of the target's structure are moved by the same kernel as the generator's mixing stage
(MALA moves, each followed by torsion moves, in the same coordinate space) for ``rounds`` rounds.
Snapshots are taken every ``block`` rounds; the rule, fixed in advance, discards the first half of
the snapshots as burn-in and averages the rest. Independent chains sets (different seeds) give the
error bars, exactly as independent SMC runs do for the generator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_count
from .sampling import MixingSettings
from .smc import MALA, StepOptions
from .smc.energy import CountedEnergy
from .smc.engine import as_generator, run, weighted_state
from .smc.kernels import Sequence
from .smc.stages import Mixing


@dataclass(frozen=True)
class McmcRun:
    """One set of chains of the kernel alone.

    Attributes:
        snapshots: (n_snapshots, n_chains, n_atoms, 3) float32 positions in nm, one per block.
        rounds: (n_snapshots,) the round after which each snapshot was taken.
        target_evaluations: configurations at which the target was evaluated.
        seconds: wall time.
    """

    snapshots: np.ndarray
    rounds: np.ndarray
    target_evaluations: int
    seconds: float

    def kept(self) -> np.ndarray:
        """The snapshots after burn-in (the second half, fixed in advance): (k, n_chains, n_atoms, 3)."""
        return self.snapshots[len(self.snapshots) // 2:]


def mcmc_alone(space, target, n_chains: int, rounds: int, *, mixing: MixingSettings = MixingSettings(),
               step_size: float = 1e-4, target_energy=None, seed: int = 0, chunk_size: int = 1000,
               device=None, start=None) -> McmcRun:
    """Run ``n_chains`` chains of the mixing kernel from the structure for ``rounds`` rounds.

    Args:
        space: the coordinate space the kernel moves in (e.g. a model file's).
        target: the target (its ``positions`` (n_atoms, 3) nm start every chain; its ``topology``
            gives the torsion moves).
        n_chains: chains (the particles of one set).
        rounds: MALA moves per chain, each followed by ``mixing.torsions.moves`` torsion moves.
        mixing: the kernel's settings (its ``block`` is the snapshot interval; ``moves`` is ignored).
        step_size: the initial MALA step size (model units squared; adapted after every move).
        target_energy: the reduced energy (default ``target.reduced_energy``), (n, n_atoms, 3) nm -> (n,) kT.
        seed: seeds the chains.
        chunk_size: configurations per energy evaluation.
        device: where the chains live (None: torch's default device).
        start: optional starting positions (n_chains, n_atoms, 3) nm instead of copies of the structure
            (e.g. frames from both sides of a barrier, to check that the kernel relaxes to one answer).
    """
    n_chains, rounds = check_count(n_chains, "n_chains"), check_count(rounds, "rounds")
    began = time.perf_counter()
    reduced = target.reduced_energy if target_energy is None else target_energy
    u = CountedEnergy(space.flat_energy(reduced))
    if start is None:
        x0 = torch.as_tensor(np.asarray(target.positions), dtype=torch.float64, device=device)[None]
        x0 = x0.expand(n_chains, -1, -1).contiguous()
    else:
        x0 = torch.as_tensor(np.asarray(start), dtype=torch.float64, device=device)
        if x0.shape != (n_chains, target.n_atoms, 3):
            raise ValueError(f"start must have shape ({n_chains}, {target.n_atoms}, 3) in nm, got {tuple(x0.shape)}")
    z = space.to_flat(x0)
    kernel = MALA(step_size=step_size)
    turn = space.torsion_kernel(target.topology, mixing.torsions.reflect) if mixing.torsions.moves else None
    if turn is not None:
        kernel = Sequence((kernel,) + (turn,) * mixing.torsions.moves)
    state = weighted_state(z, torch.zeros(n_chains, dtype=torch.float64), u, kernel=kernel, chunk_size=chunk_size)
    snapshots, at = [], []

    def snapshot(checkpoint) -> None:  # after every block of rounds
        snapshots.append(space.to_positions(checkpoint.state.particles.x).detach().cpu().numpy().astype(np.float32))
        at.append(int(checkpoint.position))

    options = StepOptions(0.0, "systematic", True, space.projection, chunk_size)
    run(state, [Mixing(u, rounds, mixing.block, options)], as_generator(seed, device), on_step=snapshot)
    return McmcRun(np.stack(snapshots), np.array(at), u.count, time.perf_counter() - began)
