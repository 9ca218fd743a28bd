"""Boltzmann targets from an OpenMM System: reduced energies u(x) = U(x)/kT on torch batches.

:class:`OpenMMTarget` is the reference energy of every molecular system in boltzgen. It takes
positions of shape (n, n_atoms, 3) in nm as a torch tensor and returns u(x) in kT as float64 of
shape (n,), differentiable with respect to x through OpenMM's forces (F = -dU/dx). Batches are
evaluated one configuration at a time by OpenMM, in this process or split over a pool of worker
processes that each own a Context.

Units are converted here and only here: temperature (K) -> kT (kJ/mol) at construction, and
kJ/mol -> kT on the way out.
"""
from __future__ import annotations

import hashlib

import warnings
import weakref
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import multiprocessing

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

from .. import _openmm_eval
from .._checks import check_positive, check_positions


def kT_kj_per_mol(temperature: float) -> float:
    """Thermal energy k_B T in kJ/mol for a temperature in K."""
    return (unit.MOLAR_GAS_CONSTANT_R * temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)


def _positions_nm(positions, n_atoms: int) -> np.ndarray:
    """Reference positions as a float64 (n_atoms, 3) array in nm (accepts an OpenMM Quantity)."""
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    p = np.array([[v[0], v[1], v[2]] for v in positions] if isinstance(positions, list) else positions,
                 dtype=np.float64)
    if p.shape != (n_atoms, 3) or not np.isfinite(p).all():
        raise ValueError(f"positions must be finite with shape ({n_atoms}, 3) in nm, got shape {p.shape}")
    return p


def _check_system(system, topology, n_atoms: int) -> None:
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    if not isinstance(topology, app.Topology):
        raise TypeError(f"topology must be an openmm.app.Topology, got {type(topology).__name__}")
    if system.getNumParticles() != topology.getNumAtoms():
        raise ValueError(
            f"system has {system.getNumParticles()} particles but topology has {topology.getNumAtoms()} atoms"
        )
    check_sampleable(system)


def system_fingerprint(system) -> str:
    """sha256 (hex) of the serialized OpenMM System: equal exactly when the Hamiltonian and its parameters are.

    MD runs and model files record it, so a run resumed or a model used with another force field,
    solvent model or edited YAML is noticed.
    """
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    return hashlib.sha256(openmm.XmlSerializer.serialize(system).encode()).hexdigest()


def check_sampleable(system) -> None:
    """Raise ValueError unless every atom of ``system`` can be sampled freely.

    A Boltzmann generator moves every atom, so constraints, periodic boxes and virtual sites
    (whose positions are not sampled) are refused, with what to do instead.
    """
    if system.getNumConstraints() > 0:
        raise ValueError(
            f"system has {system.getNumConstraints()} constraints; boltzgen samples every atom freely, "
            "so build the System with constraints=None and rigidWater=False"
        )
    if system.usesPeriodicBoundaryConditions():
        raise ValueError("system uses periodic boundary conditions; build it with nonbondedMethod=NoCutoff")
    if any(system.isVirtualSite(i) for i in range(system.getNumParticles())):
        raise ValueError("systems with virtual sites are not supported (their positions are not sampled)")


class UnitCheck:
    """A cheap guard against positions in angstrom: warns once when bonds look ten times too long.

    Reads up to ``max_bonds`` bonds (atom pairs and equilibrium lengths r0 in nm) of the System's
    HarmonicBondForce(s) once. :meth:`check` then measures those bonds in one configuration
    (n_atoms, 3): when the median ratio d / r0 is 7.5-12.5 and at least 85% of the bonds lie within
    20% of that median, the positions are almost surely in Å (1 Å = 0.1 nm) and a ``UserWarning``
    says so, once per target. Random or exploded configurations in nm have bond ratios spread over
    a wide range and do not trigger it (none of 150,000 Gaussian configurations of alanine
    dipeptide at scales 0.2-3 nm did).
    """

    def __init__(self, system: openmm.System, name: str, max_bonds: int = 64):
        self.name = name
        pairs, lengths = [], []
        for force in system.getForces():
            if not isinstance(force, openmm.HarmonicBondForce):
                continue
            for b in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(b)
                r0 = r0.value_in_unit(unit.nanometer) if unit.is_quantity(r0) else float(r0)
                if r0 > 0 and len(pairs) < max_bonds:
                    pairs.append((i, j))
                    lengths.append(r0)
        self.pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self.lengths = np.array(lengths, dtype=np.float64)
        self.warned = False

    def check(self, x0) -> None:
        """Measure the bonds of one configuration x0 (n_atoms, 3) (array or tensor; assumed nm)."""
        if self.warned or self.lengths.size == 0:
            return
        if isinstance(x0, torch.Tensor):
            x0 = x0.detach().to(device="cpu", dtype=torch.float64).numpy()
        d = np.linalg.norm(x0[self.pairs[:, 0]] - x0[self.pairs[:, 1]], axis=1)
        ratio = d / self.lengths
        median = float(np.median(ratio))
        if 7.5 < median < 12.5 and np.mean(np.abs(ratio / median - 1.0) < 0.2) >= 0.85:
            self.warned = True
            warnings.warn(
                f"{self.name}: the bonds of x[0] are {median:.1f} times the force field's bond lengths: "
                "the positions look like angstrom (Å), but boltzgen takes nm; divide them by 10",
                UserWarning, stacklevel=4)


class ReducedEnergyFunction(torch.autograd.Function):
    """u(x) whose backward reuses the gradient computed with the energy (first derivatives only).

    ``apply(x, energy_and_gradient)`` with ``energy_and_gradient(x) -> (u (n,), du/dx (n, n_atoms, 3))``:
    one evaluation gives both, so a backward pass costs nothing extra. Shared by the OpenMM and
    torch force-field targets.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, energy_and_gradient) -> torch.Tensor:
        u, grad = energy_and_gradient(x)
        ctx.save_for_backward(grad)
        ctx.x_dtype = x.dtype
        return u.to(x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u: torch.Tensor):
        (grad,) = ctx.saved_tensors
        grad_x = grad * grad_u.to(grad.dtype)[:, None, None]
        return grad_x.to(device=grad_u.device, dtype=ctx.x_dtype), None


class OpenMMTarget:
    """Reduced energy u(x) = U(x)/kT of an OpenMM System, batched and differentiable.

    Args:
        system: an ``openmm.System`` without constraints, periodic boundaries or virtual sites
            (boltzgen samples every atom). Non-energy forces such as ``CMMotionRemover`` are harmless.
        topology: the matching ``openmm.app.Topology`` (used for analysis and MD output).
        positions: a reference structure, (n_atoms, 3) in nm (array or OpenMM Quantity).
        temperature: temperature in K; sets kT.
        name: a label (the named system, or the structure file's stem).
        n_workers: number of worker processes, each with its own Context; 0 or 1 evaluates in
            this process. Workers are started on first use and live until :meth:`close`. They
            are spawned (not forked), so a script using them needs the usual
            ``if __name__ == "__main__":`` guard. A batch is split into n_workers equal parts.
        platform: an OpenMM platform name, or "auto" to time Reference, CPU and one-thread CPU
            on this system and take the fastest (for 22-atom alanine dipeptide with
            HarmonicBond..NonbondedForce/GBSAOBCForce, Reference wins by 3-10x; with a
            CustomGBForce, whose Reference kernel is slow, one-thread CPU wins).

    Attributes:
        name, system, topology, positions (float64 (n_atoms, 3) nm), temperature (K),
        kT (kJ/mol), n_workers, n_atoms, platform (the platform in use), platform_properties
        (e.g. ``{"Threads": "1"}``), platform_timings (seconds per energy+forces call of each
        candidate measured by "auto", else None).

    The target pickles (the System travels as XML; worker processes are not copied and restart
    on first use). Use it as a context manager, or call :meth:`close`, to stop the workers.
    """

    def __init__(self, system, topology, positions, temperature: float, *, name: str = "custom",
                 n_workers: int = 0, platform: str = "auto"):
        n_atoms = system.getNumParticles() if isinstance(system, openmm.System) else None
        _check_system(system, topology, n_atoms)
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be an integer >= 0 (0 or 1 = in-process), got {n_workers!r}")
        self.name = str(name)
        self.system = system
        self.topology = topology
        self.n_atoms = n_atoms
        self.positions = _positions_nm(positions, n_atoms)
        self.temperature = check_positive(temperature, "temperature")
        self.kT = kT_kj_per_mol(self.temperature)
        self.n_workers = n_workers
        self._system_xml = openmm.XmlSerializer.serialize(system)
        self._units = UnitCheck(system, self.name)
        self.platform, self.platform_properties, self.platform_timings = self._choose_platform(platform)
        self._evaluator = None
        self._executor = None
        self._finalizer = None

    # ---- platform -----------------------------------------------------------------------------
    def _properties(self) -> dict[str, str]:
        """Properties for the evaluation Contexts: in a pool the workers already share the cores."""
        if self.platform == "CPU" and self.n_workers > 1:
            return {"Threads": "1"}
        return dict(self.platform_properties)

    def _choose_platform(self, platform: str) -> tuple[str, dict[str, str], dict[str, float] | None]:
        """(platform name, platform properties, measured seconds per call or None)."""
        available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        if platform != "auto":
            if platform not in available:
                raise ValueError(f"platform must be 'auto' or one of {available}, got {platform!r}")
            return platform, {}, None
        # Small molecules: per-call overhead dominates, and the CPU platform's thread pool costs
        # more than it gains, so a one-thread CPU context is a candidate of its own.
        candidates = {"Reference": ("Reference", {}), "CPU": ("CPU", {}), "CPU-1-thread": ("CPU", {"Threads": "1"})}
        if self.n_workers > 1:
            candidates.pop("CPU")
        timings = {
            label: _openmm_eval.seconds_per_call(self._system_xml, name, self.positions, props)
            for label, (name, props) in candidates.items() if name in available
        }
        best = min(timings, key=timings.get)
        name, props = candidates[best]
        return name, props, timings

    # ---- evaluation -----------------------------------------------------------------------------
    def _check(self, x) -> np.ndarray:
        t = check_positions(x, "x", self.n_atoms)
        x_np = t.detach().to(device="cpu", dtype=torch.float64).numpy()
        if x_np.shape[0]:
            self._units.check(x_np[0])  # positions in Å instead of nm: warn (once)
        return x_np

    def _evaluate(self, x: np.ndarray, forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.n_workers <= 1 or x.shape[0] < 2:
            if self._evaluator is None:
                self._evaluator = _openmm_eval.ContextEvaluator(
                    self._system_xml, self.platform, self._properties())
            return self._evaluator.evaluate(x, forces)
        chunks = np.array_split(x, min(self.n_workers, x.shape[0]))
        try:
            results = list(self._pool().map(_openmm_eval.evaluate_in_worker, chunks, [forces] * len(chunks)))
        except BrokenProcessPool as exc:
            self.close()
            raise RuntimeError(
                "an OpenMM worker process died (out of memory or killed?); the pool restarts on the next call"
            ) from exc
        energies = np.concatenate([e for e, _ in results])
        return energies, (np.concatenate([f for _, f in results]) if forces else None)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: forking a process that runs torch/OpenMM threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=self.n_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_openmm_eval.init_worker,
                initargs=(self._system_xml, self.platform, self._properties()),
            )
            self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
        return self._executor

    def _energy_and_gradient(self, x):
        """(u, du/dx) for ReducedEnergyFunction: the gradient is minus the forces."""
        u, f = self.energy_and_forces(x)
        return u, -f

    def energy_and_forces(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced energies and forces of a batch.

        Args:
            x: positions (n, n_atoms, 3) in nm (tensor or array; float32 or float64).

        Returns:
            u: (n,) float64 energies in kT; +inf where the energy is not finite (overlapping atoms).
            f: (n, n_atoms, 3) float64 forces -du/dx in kT/nm; zero where u is +inf.
        """
        e, f = self._evaluate(self._check(x), forces=True)
        return torch.from_numpy(e / self.kT), torch.from_numpy(f / self.kT)

    def reduced_energy(self, x) -> torch.Tensor:
        """u(x) = U(x)/kT, shape (n,) float64, for positions x of shape (n, n_atoms, 3) in nm.

        Differentiable with respect to ``x`` (first derivatives; the backward pass uses the OpenMM
        forces computed in the forward pass). Non-finite energies come back as +inf with zero
        gradient; NaN positions, a wrong shape or atom count raise ValueError. Positions that look
        like angstrom (the bonds of ``x[0]`` about ten times too long) give a UserWarning, once.
        """
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            return ReducedEnergyFunction.apply(x, self._energy_and_gradient)
        e, _ = self._evaluate(self._check(x), forces=False)
        u = torch.from_numpy(e / self.kT)
        return u.to(x.device) if isinstance(x, torch.Tensor) else u

    def log_prob(self, x) -> torch.Tensor:
        """Unnormalised Boltzmann log-density -u(x), shape (n,) float64."""
        return -self.reduced_energy(x)

    # ---- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker processes and drop the Contexts (they restart on the next call)."""
        if self._finalizer is not None:
            self._finalizer()  # shuts the executor down, once
        self._executor = None
        self._finalizer = None
        self._evaluator = None

    def __enter__(self) -> "OpenMMTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # Contexts and processes do not travel; the System travels as its XML.
        for key in ("system", "_evaluator", "_executor", "_finalizer"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.system = openmm.XmlSerializer.deserialize(self._system_xml)
        self._evaluator = None
        self._executor = None
        self._finalizer = None

    def __repr__(self) -> str:
        return (f"OpenMMTarget(name={self.name!r}, n_atoms={self.n_atoms}, temperature={self.temperature:g} K, "
                f"platform={self.platform!r}, n_workers={self.n_workers})")
