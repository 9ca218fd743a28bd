"""Analysis of weighted samples: dihedral angles, free energy surfaces, basins and free energy differences.

    angles = phi_psi(x, target.topology)[:, 0]                  # (n, 2) radians, alanine dipeptide
    fes = free_energy_surface(angles, log_weights)              # F(phi, psi) in kT
    p = basin_probabilities(angles, ALANINE_DIPEPTIDE_BASINS, log_weights)
    df = basin_free_energy_runs(runs, basins["beta/C7eq"], basins["alpha_L/C7ax"])  # Estimate in kT

A molecule's collective variables, basins and free energies are declared in its system YAML
(:mod:`boltzgen.cvs`); :func:`run_figures` and ``boltzgen analyze`` report what it declares.
``ALANINE_DIPEPTIDE_BASINS`` and ``PHI_POSITIVE`` / ``PHI_NEGATIVE`` / ``PHI_0_TO_2`` /
``PHI_OUTSIDE_0_TO_2`` are alanine dipeptide's, read from its molecule file when used.

Positions are in nm, angles in radians, free energies in kT (float64). Error bars come from
independent runs (:func:`with_error`), since resampling correlates particles within one run.
Figures are in :mod:`boltzgen.analysis.plots` (imported on its own, so that matplotlib is only
loaded when plotting), e.g. ``plot_ramachandran(angles, log_weights, basins=ALANINE_DIPEPTIDE_BASINS)``.
"""
from .dihedrals import backbone_atoms, dihedrals, phi_psi
from .free_energy import (
    Basin,
    Estimate,
    FreeEnergySurface,
    basin_free_energy,
    basin_free_energy_runs,
    basin_probabilities,
    delta_f_bar,
    delta_f_exp,
    delta_f_from_log_z,
    delta_f_mbar,
    delta_f_phi_positive,
    free_energy_surface,
    with_error,
)

__all__ = [
    "ALANINE_DIPEPTIDE_BASINS", "Basin", "Estimate", "FreeEnergySurface", "PHI_0_TO_2", "PHI_NEGATIVE",
    "PHI_OUTSIDE_0_TO_2", "PHI_POSITIVE", "backbone_atoms", "basin_free_energy", "basin_free_energy_runs",
    "basin_probabilities", "delta_f_bar", "delta_f_exp", "delta_f_from_log_z", "delta_f_mbar", "delta_f_phi_positive",
    "dihedrals", "free_energy_surface", "phi_psi", "with_error",
]



def __getattr__(name: str):
    """Alanine dipeptide's basins (ALANINE_DIPEPTIDE_BASINS, PHI_POSITIVE, ...), read from its molecule file
    when used (see boltzgen.analysis.free_energy)."""
    from . import free_energy

    if name == "ALANINE_DIPEPTIDE_BASINS" or name in free_energy._ALANINE_DIPEPTIDE_STATES:
        return getattr(free_energy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Weighted runs (MD, plain or metadynamics, and SMC sample runs) and their figures.
from .runs import RunFigures, WeightedRun, cv_values, load_basins, load_run, run_figures, transitions  # noqa: E402

__all__ += ["RunFigures", "WeightedRun", "cv_values", "load_basins", "load_run", "run_figures", "transitions"]

# How many lineages of an SMC run carry each declared state.
from .lineages import effective_lineages, lineages_over_runs, state_lineages  # noqa: E402

__all__ += ["effective_lineages", "lineages_over_runs", "state_lineages"]

# Samples against a reference, and `boltzgen analyze` as a library call.
from .compare import KL_BINS, energy_w2, ramachandran_kl, torus_w2, weighted_histogram  # noqa: E402
from .report import AnalysisReport, Comparison, analyze_runs, compare_runs, format_analysis  # noqa: E402

__all__ += ["KL_BINS", "energy_w2", "ramachandran_kl", "torus_w2", "weighted_histogram", "AnalysisReport",
            "Comparison", "analyze_runs", "compare_runs", "format_analysis"]
