"""Targets whose reduced energy comes from the batched torch force field.

:class:`TorchForceFieldTarget` has the interface of :class:`boltzgen.targets.OpenMMTarget`
(``reduced_energy``, ``energy_and_forces``, ``log_prob``, the same attributes) and evaluates a
whole batch in torch. :func:`torch_target` builds one from an OpenMM target; :func:`fast_target`
does so when every force is supported and otherwise keeps the OpenMM target, with a warning.
"""
from __future__ import annotations

import warnings

import openmm
import torch

from ..._checks import as_tensor, check_positive
from ..openmm import ReducedEnergyFunction, UnitCheck, _positions_nm, check_sampleable, kT_kj_per_mol
from .forcefield import TorchForceField
from .reader import unsupported_forces


class TorchForceFieldTarget:
    """Reduced energy u(x) = U(x)/kT of an OpenMM System, evaluated by the torch force field.

    Args:
        system: the openmm.System (every force supported, see :class:`TorchForceField`).
        temperature: temperature in K; sets kT.
        topology: the matching openmm.app.Topology (optional; kept for analysis and MD output).
        positions: a reference structure (n_atoms, 3) in nm (optional).
        name: a label.
        dtype: torch.float64 (default) or torch.float32 for the force-field arithmetic;
            results are float64 either way.
        chunk_size: configurations per chunk (bounds memory; default from the number of pairs).
        compile: fuse the force field with torch.compile (default True: several times faster
            after a one-off 20-80 s compilation per system on first use, announced by a
            :class:`~boltzgen.targets.torchff.CompileNotice` warning; falls back to eager
            torch with a warning when compilation is not possible).
        threads: threads evaluating compiled chunks at once (default: one per available CPU core).
        device: where the force field lives and evaluates (default: torch's default device, e.g.
            "cuda" for a GPU); results come back on the device of the positions given.

    Attributes:
        name, system, topology, positions (float64 (n_atoms, 3) nm or None), temperature (K),
        kT (kJ/mol), n_atoms, forcefield (the :class:`TorchForceField`).
    """

    def __init__(self, system: openmm.System, temperature: float, *, topology=None, positions=None,
                 name: str = "custom", dtype: torch.dtype = torch.float64, chunk_size: int | None = None,
                 compile: bool = True, threads: int | None = None, device: str | torch.device | None = None):
        self.temperature = check_positive(temperature, "temperature")
        check_sampleable(system)
        self.forcefield = TorchForceField(system, dtype=dtype, chunk_size=chunk_size, compile=compile,
                                          threads=threads, device=device)
        self.system = system
        self.topology = topology
        self.n_atoms = system.getNumParticles()
        self.positions = None if positions is None else _positions_nm(positions, self.n_atoms)
        self.kT = kT_kj_per_mol(self.temperature)
        self.name = str(name)
        self._units = UnitCheck(system, self.name)
        self._units_checked_off_cpu = False

    def _reduced(self, x, gradient: bool):
        """(u (n,) kT, du/dx (n, n_atoms, 3) kT/nm or None), float64; the force field checks x."""
        if not isinstance(x, torch.Tensor):
            x = as_tensor(x, "x")
        if x.ndim == 3 and x.shape[0] and x.shape[1:] == (self.n_atoms, 3):  # else the force field raises
            # positions in Å instead of nm: warn (once). Off the CPU only the first call is checked,
            # so that no evaluation copies positions to the host.
            if x.device.type == "cpu" or not self._units_checked_off_cpu:
                self._units_checked_off_cpu = x.device.type != "cpu"
                self._units.check(x[0])
        # In place where the force field's fresh float64 outputs allow: whole-batch temporaries
        # are fresh memory pages on every call and cost ~20% of the time here.
        if gradient:
            energy, grad = self.forcefield.energy_and_gradient(x)
            return _to_kT(energy, self.kT), _to_kT(grad, self.kT)
        return _to_kT(self.forcefield.energy(x), self.kT), None

    def reduced_energy(self, x) -> torch.Tensor:
        """u(x) = U(x)/kT, shape (n,) float64, for positions x of shape (n, n_atoms, 3) in nm.

        Differentiable with respect to ``x`` (first derivatives; the gradient is computed with
        the energy when ``x`` requires grad). Non-finite energies (overlapping atoms) come back
        as +inf with zero gradient; NaN positions, a wrong shape or atom count raise ValueError.
        Positions that look like angstrom (the bonds of ``x[0]`` about ten times too long) give a
        UserWarning, once.
        """
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            return ReducedEnergyFunction.apply(x, lambda y: self._reduced(y, gradient=True))
        return self._reduced(x, gradient=False)[0]

    def energy_and_forces(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced energies (n,) float64 in kT and forces -du/dx (n, n_atoms, 3) float64 in kT/nm.

        +inf energy and zero forces where the energy is not finite (as OpenMMTarget).
        """
        u, grad = self._reduced(x, gradient=True)
        return u, grad.neg_()

    def log_prob(self, x) -> torch.Tensor:
        """Unnormalised Boltzmann log-density -u(x), shape (n,) float64."""
        return -self.reduced_energy(x)

    def close(self) -> None:
        """Nothing to release (present for the OpenMMTarget interface)."""

    def __enter__(self) -> "TorchForceFieldTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        # Compiled kernels do not pickle: rebuild the target from its System and settings.
        ff = self.forcefield
        options = dict(topology=self.topology, positions=self.positions, name=self.name, dtype=ff.dtype,
                       chunk_size=ff.chunk_size, compile=ff.compiled, threads=ff.threads, device=str(ff.device))
        return _rebuild, (self.system, self.temperature, options)

    def __repr__(self) -> str:
        return (f"TorchForceFieldTarget(name={self.name!r}, n_atoms={self.n_atoms}, "
                f"temperature={self.temperature:g} K, dtype={self.forcefield.dtype}, "
                f"compiled={self.forcefield.compiled})")


def _to_kT(values: torch.Tensor, kT: float) -> torch.Tensor:
    """values / kT as float64, in place when ``values`` already is float64."""
    return values.div_(kT) if values.dtype == torch.float64 else values.to(torch.float64) / kT


def _rebuild(system, temperature, options) -> TorchForceFieldTarget:
    return TorchForceFieldTarget(system, temperature, **options)


def torch_target(target, **options) -> TorchForceFieldTarget:
    """The torch force-field version of an OpenMM target (same system, temperature, name, ...).

    Args:
        target: an object with ``system``, ``temperature`` and optionally ``topology``,
            ``positions``, ``name`` (e.g. :class:`boltzgen.targets.OpenMMTarget`).
        **options: ``dtype``, ``chunk_size``, ``compile``, ``threads``, ``device`` of
            :class:`TorchForceFieldTarget`.

    Raises:
        UnsupportedForceError: the system has a force the torch force field cannot evaluate.
    """
    for attribute in ("system", "temperature"):
        if not hasattr(target, attribute):
            raise TypeError(f"target must have a '{attribute}' attribute (an OpenMM target), got {type(target).__name__}")
    return TorchForceFieldTarget(
        target.system, target.temperature, topology=getattr(target, "topology", None),
        positions=getattr(target, "positions", None), name=getattr(target, "name", "custom"), **options,
    )


def fast_target(target, **options):
    """The fastest exact target for ``target``: the torch force field when it supports every force.

    Otherwise returns ``target`` itself (the OpenMM path) after a ``UserWarning`` naming the
    unsupported forces, e.g. the ``CustomGBForce`` of the HCT, GBn and GBn2 solvent models (the
    Amber OBC1 / OBC2 CustomGBForces are supported).

    Args:
        target: an OpenMM target (see :func:`torch_target`).
        **options: passed to :class:`TorchForceFieldTarget`.
    """
    problems = unsupported_forces(target.system)
    if problems:
        warnings.warn(
            f"{getattr(target, 'name', 'system')}: using the OpenMM target because " + "; ".join(problems),
            UserWarning, stacklevel=2,
        )
        return target
    return torch_target(target, **options)
