"""Distances between a weighted sample set P and a weighted reference Q.

P is typically the output of a sampler (SMC particles with their log-weights), Q a reference
(e.g. biased MD frames reweighted to the target). Each set comes as values with log-weights of
shape (n,): the weights are self-normalised here (any constant offset is irrelevant), ``None``
means equal weights, and a non-finite log-weight is a zero weight, as in
:mod:`boltzgen.smc.weights`. Zero-weight samples are dropped before anything is computed, so
their values may be NaN; a NaN (or infinite) value with non-zero weight raises a ValueError.

* :func:`ramachandran_kl`: KL(Q || P) between (phi, psi) histograms on the torus (nats).
* :func:`energy_w2`: exact 2-Wasserstein distance between reduced-energy distributions (kT).
* :func:`torus_w2`: 2-Wasserstein distance on the (phi, psi) torus, estimated from a resampled
  subset (radians).
* :func:`weighted_histogram` and :func:`histogram_bins`: the histograms behind the plots
  (:func:`boltzgen.analysis.plots.plot_phi_profile`, ``plot_energy_histogram``).

Angles are (phi, psi) in radians within [-pi, pi] (shape (n, 2)), reduced energies in kT, all
computed in float64. Values within ``1e-6`` rad beyond +-pi are accepted, as in
:mod:`boltzgen.analysis.free_energy` (float32 pi lies 8.7e-8 above float64 pi).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .._checks import check_count
from .free_energy import _angles, _float64, _wrap

_TWO_PI = 2.0 * math.pi

#: Default number of bins per angle for :func:`ramachandran_kl`: 36 bins of 10 degrees.
KL_BINS = 36


# ---- inputs -------------------------------------------------------------------------------------
def _weights(log_weights, n: int, name: str) -> np.ndarray:
    """Normalised weights W (n,), float64, summing to one; equal weights for None."""
    if log_weights is None:
        return np.full(n, 1.0 / n)
    lw = _float64(log_weights, name)
    if lw.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one log-weight per sample, got {lw.shape}")
    finite = np.isfinite(lw)
    if not finite.any():
        raise ValueError(f"{name} has no finite entry: every sample has zero weight")
    w = np.zeros(n)
    w[finite] = np.exp(lw[finite] - lw[finite].max())
    return w / w.sum()


def _check_values(x: np.ndarray, w: np.ndarray, name: str, what: str) -> None:
    """Refuse NaN or infinite values among the samples with non-zero weight."""
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(1) & (w > 0)
    if bad.any():
        raise ValueError(f"{name} has NaN or infinite {what} at {int(bad.sum())} samples with non-zero weight "
                         f"(first: sample {int(np.flatnonzero(bad)[0])})")


def _weighted_angles(angles, log_weights, name: str, weights_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(phi, psi) of the samples with non-zero weight, (m, 2) radians, and their weights W (m,)."""
    a = _angles(angles, name)
    w = _weights(log_weights, a.shape[0], weights_name)
    _check_values(a, w, name, "angles")
    keep = w > 0
    return a[keep], w[keep]


def _values(values, name: str) -> np.ndarray:
    """A non-empty float64 array (n,)."""
    x = _float64(values, name)
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), one value per sample, got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one sample")
    return x


def _weighted_values(values, log_weights, name: str, weights_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite values of the samples with non-zero weight (m,) and their weights W (m,)."""
    x = _values(values, name)
    w = _weights(log_weights, x.shape[0], weights_name)
    _check_values(x, w, name, "values")
    keep = w > 0
    return x[keep], w[keep]


def _sorted_cdf(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values sorted ascending and their cumulative weights, the last exactly 1."""
    order = np.argsort(x, kind="stable")
    cdf = np.cumsum(w[order])
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return x[order], cdf


def _quantile(x_sorted: np.ndarray, cdf: np.ndarray, s) -> np.ndarray:
    """The left-continuous quantile function F^-1(s) = min{x : F(x) >= s} for s in [0, 1]."""
    idx = np.searchsorted(cdf, s, side="left")
    return x_sorted[np.minimum(idx, x_sorted.shape[0] - 1)]


def _circular_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b wrapped into [-pi, pi) radians (its square is the squared geodesic distance on the circle)."""
    return np.mod(a - b + math.pi, _TWO_PI) - math.pi


# ---- histograms ---------------------------------------------------------------------------------
def weighted_histogram(values, log_weights, edges) -> np.ndarray:
    """Weighted fraction of the samples in each bin.

    Bins are half-open [edges[k], edges[k + 1]) except the last, which includes its right edge
    (numpy's convention). The weights are normalised over all samples, so the result sums to
    the weight inside [edges[0], edges[-1]] (one when every sample lies in the range). Values are
    binned as given: map angles into the range first (nothing wraps here).

    Args:
        values: (n,) values (e.g. reduced energies in kT, or phi in radians).
        log_weights: (n,) log importance weights (any offset), or None for equal weights.
        edges: (bins + 1,) finite, strictly increasing bin edges, bins >= 1, in the unit of values.

    Returns:
        Probability per bin, float64 (len(edges) - 1,).

    Raises:
        ValueError: for a wrong shape, empty values, all-zero weights, bad edges, or a NaN value
            with non-zero weight (+-inf values simply fall outside every bin).
    """
    x = _values(values, "values")
    w = _weights(log_weights, x.shape[0], "log_weights")
    e = _float64(edges, "edges")
    if e.ndim != 1 or e.shape[0] < 2:
        raise ValueError(f"edges must have shape (bins + 1,) with bins >= 1, got {e.shape}")
    if not np.isfinite(e).all() or not (np.diff(e) > 0).all():
        raise ValueError("edges must be finite and strictly increasing")
    bad = np.isnan(x) & (w > 0)
    if bad.any():
        raise ValueError(f"values has NaN at {int(bad.sum())} samples with non-zero weight "
                         f"(first: sample {int(np.flatnonzero(bad)[0])})")
    keep = (w > 0) & np.isfinite(x)
    counts, _ = np.histogram(x[keep], bins=e, weights=w[keep])
    return counts


def histogram_bins(n_effective, low, high, min_bins: int = 10, max_bins: int = 100) -> int:
    """A bin count for a histogram of ``n_effective`` effective samples over [low, high].

    Rice's rule, ceil(2 n^(1/3)) for n = ``n_effective`` (pass the Kish ESS of weighted samples,
    not their number), clipped to [min_bins, max_bins]. It gives 10 bins for 125 samples, 20 for
    1000 and 44 for 10^4. The range is only checked (finite, low < high): Rice's count does not
    depend on it.

    Args:
        n_effective: effective sample size, a finite number > 0 (float, e.g. from ``ess``).
        low, high: the histogram's range, in the unit of the values.
        min_bins, max_bins: integers with 1 <= min_bins <= max_bins.

    Returns:
        The number of bins, an int in [min_bins, max_bins].
    """
    if (isinstance(n_effective, bool) or not isinstance(n_effective, numbers.Real)
            or not math.isfinite(n_effective) or n_effective <= 0):
        raise ValueError(f"n_effective must be a finite number > 0 (an effective sample size), got {n_effective!r}")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low < high:
        raise ValueError(f"low must be below high, got low={low!r}, high={high!r}")
    min_bins = check_count(min_bins, "min_bins")
    max_bins = check_count(max_bins, "max_bins")
    if min_bins > max_bins:
        raise ValueError(f"min_bins must be at most max_bins, got min_bins={min_bins}, max_bins={max_bins}")
    rice = math.ceil(2.0 * float(n_effective) ** (1.0 / 3.0) - 1e-9)  # 2 * 125^(1/3) = 10.000000000000002
    return int(min(max(rice, min_bins), max_bins))


# ---- Ramachandran KL ----------------------------------------------------------------------------
def _torus_histogram(a: np.ndarray, w: np.ndarray, bins: int) -> np.ndarray:
    """Weighted (phi, psi) histogram (bins, bins) on [-pi, pi)^2; pi counts as -pi. Sums to one."""
    counts, _, _ = np.histogram2d(_wrap(a[:, 0], -math.pi), _wrap(a[:, 1], -math.pi), bins=bins,
                                  range=((-math.pi, math.pi), (-math.pi, math.pi)), weights=w)
    return counts / counts.sum()


def ramachandran_kl(angles_p, log_weights_p, angles_q, log_weights_q, bins: int = KL_BINS,
                    pseudocount: float = 1e-12) -> float:
    """KL(Q || P) in nats between the (phi, psi) histograms of the samples P and the reference Q.

    The direction is KL(reference || samples) = sum_ij q_ij ln(q_ij / p_ij): it is large where
    the reference has mass that the samples miss (a missed basin), and mild where the samples
    put mass the reference lacks. Both sets are binned on the same bins x bins grid of equal
    bins over [-pi, pi)^2 (periodic: pi falls in the bin of -pi). Then ``pseudocount`` is added
    to every bin of both normalised histograms, which are renormalised:
    p_ij = (h_ij + c) / (1 + bins^2 c), likewise q_ij, so that an empty sample bin gives a
    large but finite term. With the default c = 1e-12 a missed reference bin with mass q costs
    about q ln(q / 1e-12), i.e. 27.6 q nats; with c = 0 it costs +inf.

    The result depends on the binning (finer bins resolve more but need more samples) and
    carries the noise of both histograms; compare values computed with the same ``bins``.

    Args:
        angles_p: (n, 2) (phi, psi) of the samples in radians within [-pi, pi].
        log_weights_p: (n,) log-weights of the samples (any offset), or None for equal weights.
        angles_q: (m, 2) (phi, psi) of the reference in radians.
        log_weights_q: (m,) log-weights of the reference, or None.
        bins: bins per angle (default :data:`KL_BINS` = 36, i.e. 10 degrees).
        pseudocount: c >= 0, the probability added to every bin before renormalising.

    Returns:
        KL(Q || P) >= 0 in nats, a float (0 for identical histograms).
    """
    bins = check_count(bins, "bins")
    if (isinstance(pseudocount, bool) or not isinstance(pseudocount, numbers.Real)
            or not math.isfinite(pseudocount) or pseudocount < 0):
        raise ValueError(f"pseudocount must be a finite number >= 0, got {pseudocount!r}")
    a_p, w_p = _weighted_angles(angles_p, log_weights_p, "angles_p", "log_weights_p")
    a_q, w_q = _weighted_angles(angles_q, log_weights_q, "angles_q", "log_weights_q")
    c = float(pseudocount)
    p = (_torus_histogram(a_p, w_p, bins) + c) / (1.0 + bins * bins * c)
    q = (_torus_histogram(a_q, w_q, bins) + c) / (1.0 + bins * bins * c)
    mass = q > 0
    with np.errstate(divide="ignore"):
        terms = q[mass] * (np.log(q[mass]) - np.log(p[mass]))
    return max(float(terms.sum()), 0.0)  # rounding can leave -1e-17 for identical histograms


# ---- Wasserstein distances ----------------------------------------------------------------------
#: Breakpoints of the two cumulative weights closer than this are taken as one (rounding).
_CDF_TOLERANCE = 1e-12


def _snap(cdf: np.ndarray, onto: np.ndarray) -> np.ndarray:
    """``cdf`` with each value within _CDF_TOLERANCE of a value of ``onto`` replaced by that value.

    Cumulative sums of equal weight sequences computed in different orders or from different
    offsets differ by rounding (~1e-16); left apart, the two quantile functions would jump at
    slightly different s, and a sliver of width 1e-16 times a squared jump of the energies would
    turn an exact 0 into sqrt(1e-16) * (energy range). Snapping moves at most 1e-12 of weight.
    """
    if onto.shape[0] == 1:
        nearest = np.full_like(cdf, onto[0])
    else:  # the nearer of the two neighbours in the sorted ``onto``
        j = np.clip(np.searchsorted(onto, cdf), 1, onto.shape[0] - 1)
        below, above = onto[j - 1], onto[j]
        nearest = np.where(np.abs(cdf - below) < np.abs(above - cdf), below, above)
    return np.where(np.abs(nearest - cdf) <= _CDF_TOLERANCE, nearest, cdf)


def energy_w2(energies_p, log_weights_p, energies_q, log_weights_q) -> float:
    """2-Wasserstein distance in kT between two weighted 1-D distributions of reduced energies.

    Exact for the two weighted empirical distributions: W2^2 = int_0^1 (F_p^-1(s) - F_q^-1(s))^2 ds,
    with F^-1 the (left-continuous, piecewise constant) weighted quantile functions. Both are
    constant between the merged breakpoints of the two cumulative weights, so the integral is a
    finite sum over those pieces (breakpoints of the two within 1e-12 count as one, so that
    rounding in the cumulative sums does not turn an exact 0 into ~1e-8). It is symmetric in P and Q, shift-equivariant
    (W2(P + a, Q + a) = W2(P, Q)) and for Gaussians equals sqrt((m_p - m_q)^2 + (s_p - s_q)^2).

    Args:
        energies_p: (n,) reduced energies u of the samples in kT.
        log_weights_p: (n,) log-weights of the samples (any offset), or None for equal weights.
        energies_q: (m,) reduced energies of the reference in kT.
        log_weights_q: (m,) log-weights of the reference, or None.

    Returns:
        W2 >= 0 in kT, a float.

    Raises:
        ValueError: for wrong shapes, empty inputs, all-zero weights, or NaN / infinite energies
            with non-zero weight.
    """
    x_p, cdf_p = _sorted_cdf(*_weighted_values(energies_p, log_weights_p, "energies_p", "log_weights_p"))
    x_q, cdf_q = _sorted_cdf(*_weighted_values(energies_q, log_weights_q, "energies_q", "log_weights_q"))
    cdf_q = _snap(cdf_q, cdf_p)
    # both quantile functions are constant on (s[k-1], s[k]]; evaluate them at the right ends
    s = np.union1d(cdf_p, cdf_q)  # sorted, ends at 1
    ds = np.diff(s, prepend=0.0)
    diff = _quantile(x_p, cdf_p, s) - _quantile(x_q, cdf_q, s)
    return math.sqrt(max(float(np.sum(ds * diff * diff)), 0.0))


def _systematic_resample(a: np.ndarray, w: np.ndarray, n: int, u: float) -> np.ndarray:
    """n rows of ``a`` by systematic resampling of the positive weights ``w`` with offset u in [0, 1)."""
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    idx = np.searchsorted(cdf, (np.arange(n) + u) / n, side="right")
    return a[np.minimum(idx, a.shape[0] - 1)]


def torus_w2(angles_p, log_weights_p, angles_q, log_weights_q, n_points: int = 1000, seed: int = 0) -> float:
    """2-Wasserstein distance in radians between weighted (phi, psi) sets on the torus [-pi, pi)^2.

    The ground distance is the geodesic one of the flat torus,
    d^2 = wrap(phi_a - phi_b)^2 + wrap(psi_a - psi_b)^2 with wrap into [-pi, pi), so +179 and
    -179 degrees are 2 degrees apart. W2 is *estimated*: ``n_points`` equally weighted points
    are drawn from each weighted set by systematic resampling (one uniform offset from
    ``numpy.random.default_rng(seed)``, shared by both sets, so that identical sets give exactly
    0), then matched optimally by :func:`scipy.optimize.linear_sum_assignment` on the
    n_points x n_points matrix of squared distances; W2 = sqrt(mean matched squared distance).

    The resampled subset carries Monte Carlo error (and, for few points, an upward bias): its
    spread over ``seed`` is the error of the estimate. With ``n_points`` larger than a set (or
    than its effective size) the set is simply resampled with repetition; that adds no
    information. The matching costs O(n_points^3) time and n_points^2 floats of memory
    (about 0.2 s and 8 MB for 1000 points).

    Args:
        angles_p: (n, 2) (phi, psi) of the samples in radians within [-pi, pi].
        log_weights_p: (n,) log-weights of the samples (any offset), or None for equal weights.
        angles_q: (m, 2) (phi, psi) of the reference in radians.
        log_weights_q: (m,) log-weights of the reference, or None.
        n_points: number of resampled points per set.
        seed: a non-negative integer seed of the resampling.

    Returns:
        The W2 estimate in radians, a float in [0, pi sqrt(2)].
    """
    from scipy.optimize import linear_sum_assignment

    n_points = check_count(n_points, "n_points")
    seed = check_count(seed, "seed", minimum=0)
    a_p, w_p = _weighted_angles(angles_p, log_weights_p, "angles_p", "log_weights_p")
    a_q, w_q = _weighted_angles(angles_q, log_weights_q, "angles_q", "log_weights_q")
    u = float(np.random.default_rng(seed).random())
    x = _systematic_resample(a_p, w_p, n_points, u)
    y = _systematic_resample(a_q, w_q, n_points, u)
    cost = (_circular_difference(x[:, None, 0], y[None, :, 0]) ** 2
            + _circular_difference(x[:, None, 1], y[None, :, 1]) ** 2)
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(float(cost[rows, cols].mean()))


__all__ = ["KL_BINS", "energy_w2", "histogram_bins", "ramachandran_kl", "torus_w2", "weighted_histogram"]
