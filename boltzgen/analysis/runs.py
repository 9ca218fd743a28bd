"""Weighted MD runs (plain or metadynamics) and the reference figures computed from them.

    runs = [load_run(d) for d in ("meta-phi-seed1", "meta-phi-seed2", "meta-phi-seed3")]
    figures = run_figures(runs)                       # populations, dF(phi>0 vs phi<0), ESS, errors
    print(figures.delta_f_phi_positive)               # Estimate in kT
    json.dump(figures.to_dict(), fh)                  # what `boltzgen analyze --json` writes

Every run is weighted: a metadynamics run's frames carry log-weights +V/kT
(:func:`boltzgen.md.load_log_weights`), a plain MD run's are zero. Weights are self-normalised
within each run (every run of its own bias). Error bars: with several runs (independent seeds),
each figure is the mean of the per-run figures and its error the standard error over runs; with
one run, the figure is that of the whole run and its error the standard error over contiguous
blocks of it (MD frames are correlated, blocks much longer than the correlation time are not).
Angles in radians, free energies in kT, float64.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_count
from ..smc.weights import ess
from .free_energy import (
    ALANINE_DIPEPTIDE_BASINS,
    PHI_0_TO_2,
    PHI_NEGATIVE,
    PHI_OUTSIDE_0_TO_2,
    PHI_POSITIVE,
    Basin,
    Estimate,
    basin_free_energy,
    basin_probabilities,
    with_error,
)

#: Cores for counting phi transitions (radians): phi <= -0.5 (beta/C7eq, PII, alpha_R) and
#: 0.5 <= phi <= 2.0 (alpha_L/C7ax). A transition is a frame in one core after the last frame in
#: a core was in the other; frames between the cores do not count (no recrossing noise).
PHI_NEGATIVE_CORE = (-math.pi, -0.5)
PHI_POSITIVE_CORE = (0.5, 2.0)


@dataclass(frozen=True, eq=False)
class WeightedRun:
    """The backbone angles and log-weights of one MD run folder.

    Attributes:
        path: the run folder.
        angles: (n, 2) float64 (phi, psi) in radians of the first residue with both angles.
        log_weights: (n,) float64 log-weights toward the Boltzmann distribution (zeros for plain MD).
        is_l: (n,) bool, whether every alpha carbon has the L configuration.
        biased: whether the run was biased (metadynamics).
        energies: (n,) float64 reduced physical energies u (kT) of the frames, or None.
        kind: "md" (a :func:`boltzgen.md.run_md` folder) or "samples" (a
            :mod:`boltzgen.samples` folder of SMC particles: never split into blocks, its
            particles are correlated through resampling).
        bond_lengths: (n, n_bonds) float64 bond lengths in nm (topology order), or None.
    """

    path: str
    angles: np.ndarray
    log_weights: np.ndarray
    is_l: np.ndarray
    biased: bool
    energies: np.ndarray | None = None
    kind: str = "md"
    bond_lengths: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.angles.shape[0])


def _bond_lengths(traj) -> np.ndarray | None:
    import mdtraj

    pairs = np.array([[b[0].index, b[1].index] for b in traj.topology.bonds], dtype=np.int64)
    return mdtraj.compute_distances(traj, pairs).astype(np.float64) if len(pairs) else None


def load_run(out_dir) -> WeightedRun:
    """Read an MD run folder (:func:`boltzgen.md.run_md`) or a sample-run folder (:mod:`boltzgen.samples`)
    as a :class:`WeightedRun` (ValueError naming a bad file)."""
    from ..coordinates import is_l_amino_acid
    from ..md import load_energies, load_log_weights, load_trajectory
    from ..samples import load_sample_run, looks_like_sample_run
    from .dihedrals import phi_psi

    if looks_like_sample_run(out_dir):  # a damaged one too: its error names the damaged file
        run = load_sample_run(out_dir)
        traj, log_weights, energies, kind = run.trajectory, run.log_weights, run.energies, "samples"
    else:
        traj, log_weights, kind = load_trajectory(out_dir), load_log_weights(out_dir), "md"
        energies = load_energies(out_dir)
    x = torch.from_numpy(traj.xyz.astype(np.float64))
    angles = phi_psi(x, traj.topology)[:, 0].numpy()
    is_l = is_l_amino_acid(x, traj.topology).numpy()
    return WeightedRun(path=str(out_dir), angles=angles, log_weights=log_weights, is_l=is_l,
                       biased=kind == "md" and bool(np.any(log_weights != 0)), energies=energies, kind=kind,
                       bond_lengths=_bond_lengths(traj))


def phi_transitions(phi) -> int:
    """Number of transitions between the phi cores :data:`PHI_NEGATIVE_CORE` and :data:`PHI_POSITIVE_CORE`.

    Args:
        phi: (n,) phi angles in radians, in time order.
    """
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 1:
        raise ValueError(f"phi must have shape (n,) in radians, got {phi.shape}")
    core = np.zeros(len(phi), dtype=np.int8)
    core[(phi >= PHI_NEGATIVE_CORE[0]) & (phi <= PHI_NEGATIVE_CORE[1])] = -1
    core[(phi >= PHI_POSITIVE_CORE[0]) & (phi <= PHI_POSITIVE_CORE[1])] = 1
    visited = core[core != 0]
    return int(np.count_nonzero(visited[1:] != visited[:-1]))


def load_basins(path) -> dict[str, Basin]:
    """Basins from a YAML or JSON file mapping name -> {phi: [low, high], psi: [low, high]} in radians.

    Each [low, high) is an arc in [-pi, pi] that wraps through pi when low > high (see
    :class:`boltzgen.analysis.Basin`); a missing ``psi`` (or ``phi``) is the whole circle. Example::

        alpha_R: {phi: [-3.14159, 0.0], psi: [-1.745, 0.0]}
        phi>0:   {phi: [0.0, 3.14159]}
    """
    import yaml  # JSON is YAML too

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"basins file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"basins file {p} cannot be read as YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"basins file {p} must map basin names to {{phi: [low, high], psi: [low, high]}} "
                         "in radians")
    basins = {}
    for name, arcs in data.items():
        if not isinstance(arcs, Mapping) or not set(arcs) <= {"phi", "psi"}:
            raise ValueError(f"basins file {p}: basin {name!r} must be {{phi: [low, high], psi: [low, high]}} "
                             f"in radians, got {arcs!r}")
        try:
            basins[str(name)] = Basin(str(name), phi_range=tuple(arcs.get("phi", (-math.pi, math.pi))),
                                      psi_range=tuple(arcs.get("psi", (-math.pi, math.pi))))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"basins file {p}: basin {name!r}: {exc}") from exc
    return basins


@dataclass(frozen=True)
class RunFigures:
    """The figures of one or several weighted runs (see the module docstring for the errors).

    Attributes:
        runs: the run folders.
        n_frames: frames of all runs together; n_frames_per_run: of each.
        ess: Kish effective sample size of the weights, summed over runs; ess_per_run: of each.
        error_method: how the errors were computed, in words.
        n_error_units: the number of runs (several runs) or of blocks (one run).
        populations: {basin name: Estimate of its weighted population}.
        p_phi_positive: Estimate of P(phi > 0) (:data:`PHI_POSITIVE`).
        delta_f_phi_positive: Estimate of dF = -ln(P(phi > 0) / P(phi < 0)) in kT, or None when a
            run or block has no weighted frame on one side (``note`` says which).
        delta_f_phi_0_to_2: the same for 0 <= phi < 2 rad against the rest (:data:`PHI_0_TO_2`), or None.
        l_fraction: weighted fraction of L configurations (mean over runs).
        phi_transitions_per_run: :func:`phi_transitions` of each run.
        per_unit: {name: tuple of per-run (several runs) or per-block (one run) values} for every figure.
        basins: the basins used.
        note: why a free energy is missing, or None.
    """

    runs: tuple[str, ...]
    n_frames: int
    n_frames_per_run: tuple[int, ...]
    ess: float
    ess_per_run: tuple[float, ...]
    error_method: str
    n_error_units: int
    populations: dict[str, Estimate]
    p_phi_positive: Estimate
    delta_f_phi_positive: Estimate | None
    delta_f_phi_0_to_2: Estimate | None
    l_fraction: float
    phi_transitions_per_run: tuple[int, ...]
    per_unit: dict[str, tuple]
    basins: dict[str, Basin]
    note: str | None = None

    def to_dict(self) -> dict:
        """The figures as JSON-ready Python values (NaN/inf and missing values become None)."""

        def num(v):
            return float(v) if v is not None and math.isfinite(v) else None

        def est(e, key, unit=""):
            return {f"{key}{unit}": num(e.mean) if e else None,
                    f"{key}_err{unit}": num(e.standard_error) if e else None}

        return {
            **est(self.delta_f_phi_positive, "delta_f_phi_positive", "_kT"),
            **est(self.delta_f_phi_0_to_2, "delta_f_phi_0_to_2", "_kT"),
            **est(self.p_phi_positive, "p_phi_positive"),
            "populations": {name: {"p": num(e.mean), "err": num(e.standard_error)}
                            for name, e in self.populations.items()},
            "n_frames": self.n_frames,
            "n_frames_per_run": list(self.n_frames_per_run),
            "ess_kish": num(self.ess),
            "ess_kish_per_run": [num(v) for v in self.ess_per_run],
            "error_method": self.error_method,
            "n_error_units": self.n_error_units,
            "l_fraction": num(self.l_fraction),
            "phi_transitions_per_run": list(self.phi_transitions_per_run),
            "phi_transition_cores_rad": {"phi<0": list(PHI_NEGATIVE_CORE), "phi>0": list(PHI_POSITIVE_CORE)},
            "per_unit": {k: [num(v) if v is not None else None for v in vals] for k, vals in self.per_unit.items()},
            "basins_rad": {name: {"phi": list(b.phi_range), "psi": list(b.psi_range)}
                           for name, b in self.basins.items()},
            "runs": list(self.runs),
            "note": self.note,
        }

    def write_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` (indented JSON)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _unit_figures(angles, log_weights, is_l, basins) -> dict:
    """Every figure of one run or block (None for a free energy one side of which is empty)."""
    figures = {f"p[{name}]": p for name, p in basin_probabilities(angles, basins, log_weights).items()}
    figures["p_phi_positive"] = basin_probabilities(angles, [PHI_POSITIVE], log_weights)[PHI_POSITIVE.name]
    for key, a, b in (("delta_f_phi_positive", PHI_NEGATIVE, PHI_POSITIVE),
                      ("delta_f_phi_0_to_2", PHI_OUTSIDE_0_TO_2, PHI_0_TO_2)):
        try:
            figures[key] = basin_free_energy(angles, a, b, log_weights)
        except ValueError:
            figures[key] = None
    w = np.exp(log_weights - np.logaddexp.reduce(log_weights))
    figures["l_fraction"] = min(1.0, float((w * is_l).sum()))
    return figures


def run_figures(runs: Sequence, basins: Mapping[str, Basin] | None = None, blocks: int = 5) -> RunFigures:
    """Weighted basin populations and free energies of one or several runs, with errors.

    Args:
        runs: :class:`WeightedRun` objects or run folders (read with :func:`load_run`), at least one;
            a single SMC sample run gets figures without error bars (NaN).
        basins: name -> :class:`Basin` for the populations (default ``ALANINE_DIPEPTIDE_BASINS``).
        blocks: contiguous blocks for the errors of a single run (>= 2; ignored for several runs).

    Returns:
        :class:`RunFigures`. With several runs each figure is the mean over runs and its error
        the standard error over runs; with one run the whole-run figure and the standard error
        over ``blocks`` contiguous blocks.
    """
    runs = [r if isinstance(r, WeightedRun) else load_run(r) for r in runs]
    if not runs:
        raise ValueError("runs is empty: give at least one run folder")
    basins = dict(ALANINE_DIPEPTIDE_BASINS if basins is None else basins)
    blocks = check_count(blocks, "blocks")
    if len(runs) >= 2:
        units = [_unit_figures(r.angles, r.log_weights, r.is_l, basins) for r in runs]
        whole = None
        labels = [str(r.path) for r in runs]
        method = f"standard error over {len(runs)} independent runs (figures: mean over runs)"
    elif runs[0].kind == "samples":  # SMC particles are correlated: no error bar from one run
        run = runs[0]
        whole = _unit_figures(run.angles, run.log_weights, run.is_l, basins)
        units, labels = [whole], [str(run.path)]
        method = "none: one SMC run (error bars need independent runs, never the particles of one run)"
    else:
        run = runs[0]
        if blocks < 2:
            raise ValueError(f"blocks must be at least 2 (error bars of one run need two blocks), got {blocks}")
        if run.n_frames < blocks:
            raise ValueError(f"{run.path} holds {run.n_frames} frames, fewer than blocks={blocks}")
        parts = np.array_split(np.arange(run.n_frames), blocks)
        units = [_unit_figures(run.angles[i], run.log_weights[i], run.is_l[i], basins) for i in parts]
        whole = _unit_figures(run.angles, run.log_weights, run.is_l, basins)
        labels = [f"{run.path} block {k}" for k in range(blocks)]
        method = f"standard error over {blocks} contiguous blocks of one run (figures: whole run)"

    notes = []
    kind = "runs" if whole is None else "blocks"

    def estimate(key):
        values = [u[key] for u in units]
        missing = [label for label, v in zip(labels, values) if v is None]
        if missing or (whole is not None and whole[key] is None):
            side = "0 <= phi < 2 or the rest" if key == "delta_f_phi_0_to_2" else "phi > 0 or phi < 0"
            notes.append(f"{key}: {len(missing)} of {len(units)} {kind} hold no weighted frame on one side "
                         f"({side}), first {missing[0] if missing else runs[0].path}")
            return None
        if len(values) == 1:
            return Estimate(mean=values[0], standard_error=float("nan"), n=1)
        e = with_error(values)
        return Estimate(mean=whole[key], standard_error=e.standard_error, n=e.n) if whole is not None else e

    populations = {name: estimate(f"p[{name}]") for name in basins}
    per_unit = {key: tuple(u[key] for u in units) for key in units[0]}
    ess_per_run = tuple(ess(torch.from_numpy(np.asarray(r.log_weights, dtype=np.float64))) for r in runs)
    return RunFigures(
        runs=tuple(r.path for r in runs), n_frames=sum(r.n_frames for r in runs),
        n_frames_per_run=tuple(r.n_frames for r in runs), ess=float(sum(ess_per_run)), ess_per_run=ess_per_run,
        error_method=method, n_error_units=len(units), populations=populations,
        p_phi_positive=estimate("p_phi_positive"), delta_f_phi_positive=estimate("delta_f_phi_positive"),
        delta_f_phi_0_to_2=estimate("delta_f_phi_0_to_2"),
        l_fraction=float(np.mean([u["l_fraction"] for u in units]) if whole is None else whole["l_fraction"]),
        phi_transitions_per_run=tuple(phi_transitions(r.angles[:, 0]) for r in runs),
        per_unit=per_unit, basins=basins, note="; ".join(notes) or None)


__all__ = ["PHI_NEGATIVE_CORE", "PHI_POSITIVE_CORE", "RunFigures", "WeightedRun", "load_basins", "load_run",
           "phi_transitions", "run_figures"]
