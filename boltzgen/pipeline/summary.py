"""summary.json: a reduce over a job's run folders.

Everything in a summary is read back from the run folders (their ``diagnostics.json`` totals and
their samples) and the job's manifest, never from memory, so a resumed job, or runs made by
separate jobs and pooled (:func:`summarize`), give the same summary as one uninterrupted job.
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

from ..io.sample_runs import read_diagnostics, run_folders, write_json
from .jobs import MANIFEST


def versions() -> dict:
    """The versions of boltzgen, torch, openmm and Python that produced a result."""
    import openmm
    import torch

    from .. import __version__

    return {"boltzgen": __version__, "torch": torch.__version__, "openmm": openmm.__version__,
            "python": platform.python_version()}


def molar_units(manifest: dict) -> dict:
    """kT in kJ/mol and kcal/mol at the job's temperature, so that every ``*_kT`` figure of a summary
    converts by one multiplication (empty for a manifest without ``temperature_K``)."""
    from ..units import kt_in_kcal_per_mol, kt_in_kj_per_mol

    temperature = manifest.get("temperature_K")
    if temperature is None:
        return {}
    return {"kT_kJ_per_mol": kt_in_kj_per_mol(temperature), "kT_kcal_per_mol": kt_in_kcal_per_mol(temperature)}


def _mean(values) -> float:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def sample_summary(run_dirs, manifest: dict, cvs=None) -> dict:
    """The summary of sample runs: per-run totals, means over runs, the molecule's free energies with
    errors over runs (see :func:`boltzgen.analysis.run_figures`), and what made them."""
    from ..analysis.free_energy import mean_and_error
    from ..analysis.lineages import lineages_over_runs
    from ..analysis.runs import load_run, run_figures

    dirs = [Path(d) for d in run_dirs]
    totals = [read_diagnostics(d)["totals"] for d in dirs]  # the samples are read once, by load_run
    runs = [load_run(d, cvs) for d in dirs]
    figures = run_figures(runs)
    log_z, log_z_err = mean_and_error([t["log_z"] for t in totals])
    return {
        "n_runs": len(dirs), "n_particles_per_run": int(totals[0]["n_particles"]),
        "ess_fraction": _mean(t["ess_fraction"] for t in totals),
        "bridge_ess_fraction": _mean(t["bridge_ess_fraction"] for t in totals),
        "levels_ess_fraction": _mean(t["levels_ess_fraction"] for t in totals),
        "lineages": [t["n_lineages"] for t in totals],
        "levels_lineages": [t.get("levels_lineages") for t in totals],  # where the model's levels left them
        "tilt_applied": _mean(t.get("tilt", 0.0) for t in totals),  # absent before tilts
        "tilt_ess_fraction": _mean(t.get("tilt_ess_fraction", 1.0) for t in totals),
        "torsion_acceptance": _mean(t["torsion_acceptance"] for t in totals),
        "log_z": log_z, "log_z_err": log_z_err,
        **figures.summary_figures(),  # the molecule's declared free energies (delta_f_<key>_kT) and basins
        # per free energy, the lineages carrying its rarer side in each run (absent when no run saved them)
        **({"state_lineages": per_state} if (per_state := lineages_over_runs(runs)) else {}),
        "target_evaluations": int(sum(t["target_evaluations"] for t in totals)),
        "model_evaluations": int(sum(t["model_evaluations"] for t in totals)),
        "seconds": float(sum(t["seconds"] for t in totals)),
        "per_run": totals, "run_dirs": [d.name for d in dirs],
        **manifest, **molar_units(manifest), "versions": versions(), "command": " ".join(sys.argv),
    }


def summarize(out, cvs=None) -> dict:
    """Write ``out/summary.json`` from the run folders in ``out`` (and return it).

    ``out`` is a job folder (with job.json) of ``sample`` or ``run``; runs copied in from other jobs
    of the same manifest (e.g. two halves run separately) are pooled like the job's own.
    """
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out} holds no job.json: not a folder written by `boltzgen sample` or `boltzgen run`")
    manifest = json.loads(path.read_text())
    dirs = run_folders(out)
    if not dirs:
        raise ValueError(f"{out} holds no complete run folder (run-000, ...) yet")
    summary = sample_summary(dirs, manifest, cvs)
    write_json(out / "summary.json", summary)
    return summary
