"""Pooled outputs of a sampling job that other tools read: one trajectory and one COLVAR-style table.

``export_pooled(out)`` writes, next to the run folders of a ``sample``/``run`` job:

* ``pooled.trr`` + ``pooled.pdb``: every run's samples as one mdtraj-readable trajectory (nm);
* ``pooled.colvar``: one line per frame, PLUMED-COLVAR style (``#! FIELDS`` header), with the run,
  the frame in it, its log-weight, its weight normalised so that **every run counts equally** (the
  weights of one run sum to 1 / n_runs, all of them to 1), the reduced energy u (kT), the potential
  energy U (kJ/mol) and each declared collective variable (degrees).

Weighted averages over the pooled frames with that weight column equal the mean over runs of each
run's self-normalised average, the estimator whose error bars boltzgen reports.

    traj = mdtraj.load("OUT/pooled.trr", top="OUT/pooled.pdb")
    w = numpy.loadtxt("OUT/pooled.colvar", usecols=3)
"""
from __future__ import annotations

from pathlib import Path

import mdtraj
import numpy as np

from .sample_runs import load_sample_run, run_folders


def _normalised(log_weights: np.ndarray, share: float) -> np.ndarray:
    lw = np.where(np.isfinite(log_weights), log_weights, -np.inf)
    top = lw.max()
    w = np.exp(lw - top)
    return share * w / w.sum()


def export_pooled(out, temperature_K: float, cvs=None) -> tuple[Path, Path]:
    """Write ``pooled.trr``, ``pooled.pdb`` and ``pooled.colvar`` for the run folders in ``out``.

    Args:
        out: a job folder written by ``boltzgen sample``/``run`` (run-000, run-001, ...).
        temperature_K: the target's temperature (for U = u kT in kJ/mol).
        cvs: the molecule's :class:`boltzgen.cvs.MoleculeCVs` (their values become columns); None: none.
    Returns:
        the paths of the trajectory and of the table.
    """
    from ..analysis.runs import cv_values
    from ..targets.openmm import kT_kj_per_mol

    out = Path(out)
    dirs = run_folders(out)
    if not dirs:
        raise ValueError(f"{out} holds no complete run folder (run-000, ...) to pool")
    kT = kT_kj_per_mol(temperature_K)
    trajectories, rows, names = [], [], []
    for k, d in enumerate(dirs):
        run = load_sample_run(d)
        trajectories.append(run.trajectory)
        w = _normalised(np.asarray(run.log_weights, dtype=np.float64), 1.0 / len(dirs))
        values = {} if cvs is None or cvs.is_empty else cv_values(run.trajectory.xyz.astype(np.float64),
                                                                  run.trajectory.topology, cvs)
        columns = [np.full(len(w), k), np.arange(len(w)), run.log_weights, w, run.energies, run.energies * kT]
        columns += [np.degrees(values[name]) for name in values]
        rows.append(np.column_stack(columns))
        names = list(values)
    pooled = trajectories[0] if len(trajectories) == 1 else mdtraj.join(trajectories, check_topology=False)
    traj_path, pdb_path, table_path = out / "pooled.trr", out / "pooled.pdb", out / "pooled.colvar"
    pooled.save_trr(str(traj_path))
    pooled[0].save_pdb(str(pdb_path))
    fields = ["run", "frame", "log_weight", "weight", "u_kT", "U_kJ_per_mol"] + [f"{n}_deg" for n in names]
    header = (f"#! FIELDS {' '.join(fields)}\n#! SET temperature_K {temperature_K:g}\n"
              f"#! SET weight_normalisation every_run_counts_equally ({len(dirs)} runs)")
    formats = ["%d", "%d", "%.10g", "%.10g", "%.10g", "%.10g"] + ["%.6f"] * len(names)
    table = np.concatenate(rows)
    np.savetxt(table_path, table, fmt=formats, header=header, comments="")
    return traj_path, table_path
