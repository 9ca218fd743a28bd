"""How many independent lineages carry each declared state of an SMC run.

SMC keeps every state's mass right *on average over runs*, but one run estimates a state only as
well as the draws from t = 1 (lineages) its weight descends from. A state carried by a few
lineages gets right-skewed per-run estimates: most runs low, a few high. The mean over a few
runs is then usually low and its standard error does not cover it. Measured on the vacuum
alanine tetrapeptide: per-run P(phi3 > 0 state --+) had mean 0.0087, median 0.0059 and maximum
0.038 over 32 runs, and a 4-run mean was 3.7 standard errors off (docs/method.md, Tilt).

    lineages = state_lineages(load_run("job/run-000"))   # {free-energy key: effective lineages}

The count is a Kish effective number: a lineage whose descendants hold most of a state's weight
counts as about one, however many particles share it.
"""
from __future__ import annotations

import numpy as np

from .runs import WeightedRun

FEW_LINEAGES = 10.0
"""A rule of thumb, not a fitted figure: below about ten effective lineages a state's per-run
estimate rests on a handful of independent draws, too few for its spread over runs to show.
For scale: `boltzgen run alanine-dipeptide` (whose error bars hold against MD) carries phi > 0 on
about 11 per run; the vacuum tetrapeptide's 4 x 1,000 runs carry each residue's rarer side on 2-4."""


def effective_lineages(origins, log_weights, mask) -> float:
    """The Kish effective number of lineages carrying the weight of the particles in ``mask``.

    With m_l the summed weight of lineage l's particles in ``mask``, (sum_l m_l)^2 / sum_l m_l^2:
    the number of lineages if they carried equal weight, fewer when a few dominate.

    Args:
        origins: (N,) int index of each particle's initial ancestor (its lineage) at t = 1.
        log_weights: (N,) float log-weights of the particles (any offset; -inf = zero weight).
        mask: (N,) bool, the particles in the state.
    Returns:
        the effective number, >= 1; 0.0 when the state holds no weight.
    """
    origins = np.asarray(origins)
    lw = np.asarray(log_weights, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if not (origins.shape == lw.shape == mask.shape and lw.ndim == 1):
        raise ValueError(f"origins, log_weights and mask must have one shape (N,), got {origins.shape}, "
                         f"{lw.shape} and {mask.shape}")
    inside = mask & np.isfinite(lw)
    if not inside.any():
        return 0.0
    w = np.exp(lw[inside] - lw[inside].max())
    _, lineage = np.unique(origins[inside], return_inverse=True)
    m = np.bincount(lineage, weights=w)
    return float(m.sum() ** 2 / (m ** 2).sum())


def state_lineages(run: WeightedRun) -> dict[str, float]:
    """{key: effective lineages} for every free energy the run's molecule declares: those of the side
    (state or reference) that fewer lineages carry, since either side's estimate enters the free energy.

    Args:
        run: a sample run read by :func:`boltzgen.analysis.load_run` with its lineages (``origins``).
    Raises:
        ValueError: the run has no lineages (an MD run, or a sample run written before they were saved).
    """
    if run.origins is None:
        raise ValueError(f"{run.path} records no lineages (origins.npy): an MD run, a free-energy "
                         "bridge run, or a sample run written before runs saved their lineages")
    out = {}
    for fe in run.cvs.free_energies:
        sides = (run.cvs.region(fe.state), run.cvs.region(fe.reference))
        out[fe.key] = min(effective_lineages(run.origins, run.log_weights, side.contains(run.cv_values))
                          for side in sides)
    return out


def lineages_over_runs(runs) -> dict[str, list[float | None]]:
    """{free-energy key: per-run :func:`state_lineages`} of independent runs, None for a run that saved
    no lineages (an MD run, or a sample run written before runs saved them); {} when none did.

    Args:
        runs: WeightedRuns read by :func:`boltzgen.analysis.load_run`.
    """
    per_run = [None if r.origins is None else state_lineages(r) for r in runs]
    keys = next((list(p) for p in per_run if p is not None), None)
    if keys is None:
        return {}
    return {key: [None if p is None else p[key] for p in per_run] for key in keys}


def format_state_lineages(per_state: dict, n_runs: int, indent: str = "  ") -> list[str]:
    """Lines on the lineages carrying each declared free energy's rarer side (mean over runs), with a
    warning for those below :data:`FEW_LINEAGES`; [] when no run saved its lineages.

    Args:
        per_state: {free-energy key: per-run lineages or None}, as :func:`lineages_over_runs` gives.
        n_runs: the runs of the job (a run that saved no lineages is said to be left out).
    """
    known = {key: [v for v in values if v is not None] for key, values in per_state.items()}
    means = {key: sum(values) / len(values) for key, values in known.items() if values}
    if not means:
        return []
    runs = max(len(values) for values in known.values())
    lines = [f"{indent}{'lineages per state':<24}" + ", ".join(f"{key} {m:.1f}" for key, m in means.items())
             + " (effective, rarer side, mean over runs"
             + (f"; {runs} of {n_runs} runs saved their lineages)" if runs < n_runs else ")")]
    few = [key for key, m in means.items() if m < FEW_LINEAGES]
    if few:
        lines.append(f"{indent}  fewer than {FEW_LINEAGES:g}: {', '.join(few)}: each run's estimate rests on a few "
                     "draws, so runs are skewed (most low, a few high) and the error bar may be too small; use "
                     "more runs")
    return lines
