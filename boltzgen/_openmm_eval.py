"""OpenMM energies and forces on batches of positions, with numpy only (no torch).

This module is what runs inside the worker processes of :class:`boltzgen.targets.OpenMMTarget`;
it imports only numpy and OpenMM so a worker starts in a fraction of a second. Units are OpenMM's
own: positions in nm, energies in kJ/mol, forces in kJ/mol/nm. Reduced units are the caller's job.
"""
from __future__ import annotations

import time

import numpy as np
import openmm
import openmm.unit as unit

_KJ_PER_MOL = unit.kilojoule_per_mole
_KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer


class ContextEvaluator:
    """One OpenMM Context that evaluates batches of configurations, one configuration at a time.

    Args:
        system_xml: the System serialized with ``openmm.XmlSerializer``.
        platform: OpenMM platform name ("Reference", "CPU", "CUDA", "OpenCL").
        properties: platform properties, e.g. ``{"Threads": "1"}`` for the CPU platform.
    """

    def __init__(self, system_xml: str, platform: str, properties: dict[str, str] | None = None):
        system = openmm.XmlSerializer.deserialize(system_xml)
        # A Context needs an integrator; it is never stepped here.
        self._integrator = openmm.VerletIntegrator(0.001)
        self._context = openmm.Context(
            system, self._integrator, openmm.Platform.getPlatformByName(platform), dict(properties or {})
        )
        self.n_atoms = system.getNumParticles()

    def evaluate(self, x: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Potential energies (n,) in kJ/mol and, if ``forces``, forces (n, n_atoms, 3) in kJ/mol/nm.

        ``x`` has shape (n, n_atoms, 3) in nm (already validated). A configuration whose energy or
        forces are not finite (overlapping atoms, infinite coordinates) or that makes OpenMM raise
        gets energy +inf and zero forces, so one bad configuration never spoils a batch.
        """
        n = x.shape[0]
        energies = np.empty(n, dtype=np.float64)
        f_out = np.zeros((n, self.n_atoms, 3), dtype=np.float64) if forces else None
        for i in range(n):
            energies[i], f = self._one(x[i], forces)
            if forces and f is not None:
                f_out[i] = f
        return energies, f_out

    def _one(self, xi: np.ndarray, forces: bool) -> tuple[float, np.ndarray | None]:
        try:
            self._context.setPositions(xi)
            state = self._context.getState(getEnergy=True, getForces=forces)
        except openmm.OpenMMException:
            return np.inf, None
        energy = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL)
        if not np.isfinite(energy):
            return np.inf, None
        if not forces:
            return energy, None
        f = state.getForces(asNumpy=True).value_in_unit(_KJ_PER_MOL_NM)
        if not np.isfinite(f).all():
            return np.inf, None
        return energy, f


def seconds_per_call(system_xml: str, platform: str, positions: np.ndarray,
                     properties: dict[str, str] | None = None, n_calls: int = 30) -> float:
    """Measured wall time of one energy+forces evaluation at ``positions`` (n_atoms, 3) nm.

    The median over ``n_calls`` calls after two warm-up calls (the first call on a platform
    includes one-off set-up).
    """
    evaluator = ContextEvaluator(system_xml, platform, properties)
    x = np.asarray(positions, dtype=np.float64)[None]
    evaluator.evaluate(x)
    evaluator.evaluate(x)
    times = []
    for _ in range(n_calls):
        t0 = time.perf_counter()
        evaluator.evaluate(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---- worker-process side of the pool -------------------------------------------------------
# Each worker process holds exactly one evaluator, built once by the pool initializer. This is
# per-process state by construction (a worker exists to own a Context), not shared state.
_worker_evaluator: ContextEvaluator | None = None


def init_worker(system_xml: str, platform: str, properties: dict[str, str]) -> None:
    """Pool initializer: build this worker's Context."""
    global _worker_evaluator
    _worker_evaluator = ContextEvaluator(system_xml, platform, properties)


def evaluate_in_worker(x: np.ndarray, forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Pool task: evaluate a chunk (n, n_atoms, 3) nm with this worker's Context."""
    return _worker_evaluator.evaluate(x, forces)
