"""Free-energy profiles along one dihedral CV, with error bands over independent runs.

    profile = compute_profile([phi_run1, phi_run2, ...], [lw_run1, lw_run2, ...])   # Profile, kT
    profile.to_dict()   # what a system's shipped reference stores under "profiles"

Each run is one independent estimate: its weighted histogram p_r over equal bins on [-pi, pi)
gives F_r = -ln p_r. The profile is F = -ln(mean_r p_r), every run counting equally (as in the
pooled outputs), shifted so that its minimum is 0; the band is the standard error over runs of
F_r in each bin (NaN where any run left the bin empty, or with one run).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Profile:
    """F(cv) on equal bins over [-pi, pi).

    Attributes:
        edges: (n_bins + 1,) bin edges in radians, from -pi to pi.
        free_energy: (n_bins,) F in kT, minimum 0; NaN where no run has weight.
        error: (n_bins,) standard error of F over runs in kT; NaN where it is not defined.
        n_runs: how many runs the profile pools.
    """

    edges: np.ndarray
    free_energy: np.ndarray
    error: np.ndarray
    n_runs: int

    @property
    def centres_deg(self) -> np.ndarray:
        """(n_bins,) bin centres in degrees."""
        return np.degrees(0.5 * (self.edges[1:] + self.edges[:-1]))

    def to_dict(self) -> dict:
        """Plain lists (angles in degrees, energies in kT; NaN as None) for JSON."""
        def plain(a):
            return [None if not np.isfinite(v) else round(float(v), 5) for v in a]

        return {"edges_deg": [round(float(v), 6) for v in np.degrees(self.edges)],
                "free_energy_kT": plain(self.free_energy), "error_kT": plain(self.error), "n_runs": self.n_runs}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        """The inverse of :meth:`to_dict`."""
        def array(key):
            return np.array([np.nan if v is None else v for v in data[key]], dtype=np.float64)

        edges = np.radians(np.asarray(data["edges_deg"], dtype=np.float64))
        profile = cls(edges, array("free_energy_kT"), array("error_kT"), int(data["n_runs"]))
        if not (profile.free_energy.shape == profile.error.shape == (edges.shape[0] - 1,)):
            raise ValueError("a profile needs one free energy and one error per bin (len(edges_deg) - 1 of each)")
        return profile


def _run_probabilities(values, log_weights, edges: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)) or np.any(np.abs(x) > math.pi + 1e-9):
        raise ValueError(f"values[{k}] must be finite angles in radians within [-pi, pi]")
    if log_weights is None:
        w = np.ones_like(x)
    else:
        lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
        if lw.shape != x.shape:
            raise ValueError(f"log_weights[{k}] must have the shape of values[{k}], {x.shape}; got {lw.shape}")
        w = np.exp(lw - np.max(lw[np.isfinite(lw)])) if np.any(np.isfinite(lw)) else np.zeros_like(x)
    if not w.sum() > 0:
        raise ValueError(f"run {k} has no finite weight")
    wrapped = np.where(x >= math.pi, -math.pi, x)  # periodic: pi is -pi
    counts, _ = np.histogram(wrapped, bins=edges, weights=w)
    return counts / counts.sum()


def compute_profile(values: Sequence, log_weights: Sequence | None = None, bins: int = 36) -> Profile:
    """F(cv) in kT of independent runs, with its standard error over runs in every bin.

    Args:
        values: one (n_r,) array of the CV in radians, within [-pi, pi], per run.
        log_weights: one (n_r,) array of log importance weights (any offset) per run, or None
            for equal weights (a run's entry may also be None).
        bins: number of equal bins over [-pi, pi) (36: 10 degrees).

    Returns:
        A :class:`Profile`.
    """
    if isinstance(values, np.ndarray) or not len(values):
        raise ValueError("values must be a non-empty list with one array of angles per run")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    weights = [None] * len(values) if log_weights is None else list(log_weights)
    if len(weights) != len(values):
        raise ValueError(f"log_weights must hold one array per run ({len(values)}), got {len(weights)}")
    edges = np.linspace(-math.pi, math.pi, int(bins) + 1)
    p = np.stack([_run_probabilities(v, w, edges, k) for k, (v, w) in enumerate(zip(values, weights))])
    with np.errstate(divide="ignore"):
        f = -np.log(p.mean(axis=0))
        per_run = -np.log(p)
    f = np.where(np.isfinite(f), f - np.min(f[np.isfinite(f)]), np.nan)
    error = np.full(f.shape, np.nan)
    if len(p) > 1:
        ok = np.all(np.isfinite(per_run), axis=0)
        error[ok] = per_run[:, ok].std(axis=0, ddof=1) / math.sqrt(len(p))
    return Profile(edges, f, error, len(p))
