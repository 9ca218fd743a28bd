"""Shared by the torch force-field tests: OpenMM's own energies and forces, the reference path."""
import numpy as np
import openmm
from openmm import unit


def openmm_reference(system, xs):
    """Energies (n,) kJ/mol, forces (n, N, 3) kJ/mol/nm and per-force energies (n, n_forces) from OpenMM.

    The system is copied with force k in group k, so the per-force energies read each force alone.
    """
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    for index, force in enumerate(system.getForces()):
        force.setForceGroup(index)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces, groups = [], [], []
    for x in xs:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        groups.append([context.getState(getEnergy=True, groups={g}).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole) for g in range(system.getNumForces())])
    return np.array(energies), np.array(forces), np.array(groups)
