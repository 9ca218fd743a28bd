"""Free energies from weighted samples: surfaces, basin populations, and differences between targets.

Everything is in kT (reduced units) and float64. Weights enter as log-weights of shape (n,),
self-normalised here (so any constant offset is irrelevant); ``None`` means equal weights.
As in :mod:`boltzgen.smc.weights`, a non-finite log-weight is a zero weight.

Error bars: resampling inside one SMC run correlates its particles, so a within-run error
estimate is optimistic. Run the sampler several times independently and combine the per-run
estimates with :func:`with_error` (or :func:`basin_free_energy_runs`).
"""
from __future__ import annotations

import contextlib
import io
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import as_tensor, check_count
from ..cvs import in_arc
from ..smc.weights import clean_log_weights, ess, normalized_log_weights

_TWO_PI = 2.0 * math.pi
#: Angles may exceed pi by this much (radians): float32 pi is 8.7e-8 above float64 pi.
_ANGLE_TOLERANCE = 1e-6


# ---- inputs -------------------------------------------------------------------------------------
def _float64(x, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array."""
    return as_tensor(x, name, dtype=torch.float64).detach().cpu().numpy()


def _angles(angles, name: str = "angles") -> np.ndarray:
    """(phi, psi) pairs as a float64 numpy array (n, 2), n >= 1."""
    a = _float64(angles, name)
    if a.ndim != 2 or a.shape[1] != 2:
        hint = " (for phi_psi output (n, k, 2) pick one residue: angles[:, i])" if a.ndim == 3 else ""
        raise ValueError(f"{name} must have shape (n, 2) of (phi, psi) in radians, got {a.shape}{hint}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one sample")
    _check_radians(a, name)
    return a


def _check_radians(a: np.ndarray, name: str) -> None:
    """Refuse angles outside [-pi, pi] (a tiny tolerance aside): degrees, or radians in [0, 2 pi)."""
    finite = a[np.isfinite(a)]
    largest = float(np.abs(finite).max()) if finite.size else 0.0
    if largest <= math.pi + _ANGLE_TOLERANCE:
        return
    if largest > _TWO_PI + _ANGLE_TOLERANCE:
        hint = "they look like degrees: convert them with numpy.deg2rad or torch.deg2rad"
    else:
        hint = ("they look like degrees (convert with numpy.deg2rad or torch.deg2rad) or radians in [0, 2 pi) "
                "(map those with (a + pi) % (2 pi) - pi)")
    raise ValueError(f"{name} must be (phi, psi) in radians within [-pi, pi], got |angle| up to {largest:.4g}; "
                     f"{hint}")


def _log_weights(log_weights, n: int, name: str = "log_weights") -> np.ndarray:
    """Normalised log-weights float64 (n,); equal weights for None."""
    if log_weights is None:
        return np.full(n, -math.log(n))
    lw = clean_log_weights(torch.from_numpy(_float64(log_weights, name)), name)
    if lw.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one per sample, got {tuple(lw.shape)}")
    return normalized_log_weights(lw).cpu().numpy()


def _weighted_angles(angles, log_weights) -> tuple[np.ndarray, np.ndarray]:
    """Angles (n, 2) and normalised log-weights (n,); NaN angles are refused unless their weight is zero."""
    a = _angles(angles)
    lw = _log_weights(log_weights, a.shape[0])
    bad = ~np.isfinite(a).all(1) & np.isfinite(lw)
    if bad.any():
        raise ValueError(f"angles has NaN or infinite values at {int(bad.sum())} samples with non-zero weight "
                         f"(first: sample {int(np.flatnonzero(bad)[0])})")
    return a, lw


def _wrap(a: np.ndarray, low: float) -> np.ndarray:
    """Angles mapped into [low, low + 2 pi); values already there are left exactly as they are."""
    inside = (a >= low) & (a < low + _TWO_PI)
    return np.where(inside, a, low + np.mod(a - low, _TWO_PI))


# ---- free energy surface ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FreeEnergySurface:
    """A weighted 2-D histogram of (phi, psi) and its free energy.

    Attributes:
        phi_edges: bin edges along phi, float64 (bins + 1,) in radians.
        psi_edges: bin edges along psi, float64 (bins + 1,) in radians.
        free_energy: F[i, j] = -ln p[i, j] - min, float64 (bins, bins) in kT for phi bin i and
            psi bin j (transpose it for ``imshow``); 0 at the most populated bin, +inf where empty.
            The bins have equal areas, so this is also the free energy of the density.
        probability: p[i, j], the weighted fraction of all samples in each bin, float64 (bins, bins);
            it sums to one when the range covers the whole torus.
        ess: Kish effective sample size of the weights.
    """

    phi_edges: np.ndarray
    psi_edges: np.ndarray
    free_energy: np.ndarray
    probability: np.ndarray
    ess: float

    @property
    def phi_centers(self) -> np.ndarray:
        """Bin centres along phi, (bins,) in radians."""
        return 0.5 * (self.phi_edges[1:] + self.phi_edges[:-1])

    @property
    def psi_centers(self) -> np.ndarray:
        """Bin centres along psi, (bins,) in radians."""
        return 0.5 * (self.psi_edges[1:] + self.psi_edges[:-1])


def _check_range(range_, name: str = "range") -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        (a, b), (c, d) = range_
        pairs = ((float(a), float(b)), (float(c), float(d)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be ((phi_min, phi_max), (psi_min, psi_max)) in radians, got {range_!r}") from exc
    for low, high in pairs:
        if not (math.isfinite(low) and math.isfinite(high) and low < high <= low + _TWO_PI + 1e-12):
            raise ValueError(f"{name} must hold finite intervals (low, high) with low < high and width at most "
                             f"2 pi radians, got {range_!r}")
    return pairs


def free_energy_surface(angles, log_weights=None, bins: int = 60,
                        range=((-math.pi, math.pi), (-math.pi, math.pi))) -> FreeEnergySurface:  # noqa: A002
    """Free energy surface F(phi, psi) = -ln p(phi, psi) in kT from (weighted) samples.

    Angles are periodic: each is mapped into [low, low + 2 pi) of its range before binning, so
    phi = pi and phi = -pi fall into the same bin. Angles outside [-pi, pi] raise a ValueError
    (they are usually degrees). A range narrower than 2 pi shows a window;
    its probabilities stay fractions of all samples.

    Args:
        angles: (n, 2) (phi, psi) in radians within [-pi, pi] (torch tensor or array), e.g.
            ``phi_psi(x, top)[:, 0]``.
        log_weights: (n,) log importance weights (any offset), or None for equal weights.
        bins: number of bins along each angle.
        range: ((phi_min, phi_max), (psi_min, psi_max)) in radians, each at most 2 pi wide.

    Returns:
        A :class:`FreeEnergySurface` (bins x bins, phi along the first axis).
    """
    bins = check_count(bins, "bins")
    (phi_lo, phi_hi), (psi_lo, psi_hi) = _check_range(range)
    a, lw = _weighted_angles(angles, log_weights)
    keep = np.isfinite(lw)
    w = np.exp(lw[keep])
    counts, phi_edges, psi_edges = np.histogram2d(
        _wrap(a[keep, 0], phi_lo), _wrap(a[keep, 1], psi_lo), bins=bins,
        range=((phi_lo, phi_hi), (psi_lo, psi_hi)), weights=w)
    probability = counts / w.sum()
    with np.errstate(divide="ignore"):
        f = -np.log(probability)
    f = f - f.min() if np.isfinite(f.min()) else f  # all +inf when no sample falls in the window
    for arr in (phi_edges, psi_edges, f, probability):
        arr.flags.writeable = False
    return FreeEnergySurface(phi_edges=phi_edges, psi_edges=psi_edges, free_energy=f,
                             probability=probability, ess=ess(torch.from_numpy(lw)))


# ---- basins -------------------------------------------------------------------------------------
def _in_arc(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """Mask of angles on the arc [low, high), which runs through +-pi when low > high."""
    return in_arc(a, low, high)


@dataclass(frozen=True)
class Basin:
    """A rectangle on the (phi, psi) torus, each side an arc that may wrap around +-pi.

    Each range (low, high) is the half-open arc [low, high) in radians, with -pi <= low, high <= pi
    and low != high. When low > high the arc runs through pi: (2.0, -2.5) is
    [2.0, pi) together with [-pi, -2.5). (-pi, pi) is the whole circle. Half-open arcs let
    neighbouring basins share a boundary without overlapping.

    Attributes:
        name: the basin's name (used as the key of :func:`basin_probabilities`).
        phi_range: (low, high) arc of phi in radians.
        psi_range: (low, high) arc of psi in radians.
    """

    name: str
    phi_range: tuple[float, float]
    psi_range: tuple[float, float]

    def __post_init__(self):
        for field in ("phi_range", "psi_range"):
            value = getattr(self, field)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{field} must be a pair (low, high) in radians, got {value!r}") from exc
            if not (-math.pi <= low <= math.pi and -math.pi <= high <= math.pi and low != high):
                raise ValueError(f"{field} must be (low, high) with both in [-pi, pi] radians and low != high "
                                 f"(low > high wraps through pi), got {value!r}")
            object.__setattr__(self, field, (low, high))

    def contains(self, angles) -> np.ndarray:
        """Boolean mask (n,): which of the (n, 2) (phi, psi) pairs in radians lie in the basin.

        Angles must lie in [-pi, pi] (pi counts as -pi); others raise a ValueError (they are
        usually degrees). NaN angles are in no basin.
        """
        a = _angles(angles)
        return _in_arc(a[:, 0], *self.phi_range) & _in_arc(a[:, 1], *self.psi_range)


# Alanine dipeptide's basins are facts about that molecule: they are declared in
# systems/alanine-dipeptide/alanine-dipeptide.molecule.yaml (boltzgen.cvs). The names below are kept
# for code written before that, and are read from that file whenever they are used (module
# __getattr__, PEP 562), so there is one definition:
#
# * ALANINE_DIPEPTIDE_BASINS: {"beta/C7eq", "alpha_R", "alpha_L/C7ax"} -> Basin, the declared basins
#   (they tile the (phi, psi) torus; the YAML gives their convention and sources);
# * PHI_POSITIVE / PHI_NEGATIVE: phi in [0, pi) / [-pi, 0), every psi (the states of the declared
#   free energy "phi_positive", see delta_f_phi_positive);
# * PHI_0_TO_2 / PHI_OUTSIDE_0_TO_2: 0 <= phi < 2 rad / the rest (the states of "phi_0_to_2").
_ALANINE_DIPEPTIDE_STATES = {"PHI_POSITIVE": "phi>0", "PHI_NEGATIVE": "phi<0", "PHI_0_TO_2": "0<=phi<2",
                             "PHI_OUTSIDE_0_TO_2": "phi<0 or phi>=2"}


def _phi_psi_basin(region) -> Basin:
    """A :class:`Basin` from a region on the CVs phi and psi (an unnamed one is the whole circle)."""
    arcs = region.arcs_rad(("phi", "psi"))
    if set(region.cvs) - {"phi", "psi"}:
        raise ValueError(f"region {region.name!r} uses CVs other than phi and psi: {region.cvs}")
    return Basin(region.name, phi_range=tuple(arcs["phi"]), psi_range=tuple(arcs["psi"]))


def _alanine_dipeptide(name: str):
    from ..systems import collective_variables

    cvs = collective_variables("alanine-dipeptide")
    if name == "ALANINE_DIPEPTIDE_BASINS":
        return {b.name: _phi_psi_basin(b) for b in cvs.basins}
    return _phi_psi_basin(cvs.region(_ALANINE_DIPEPTIDE_STATES[name]))


def __getattr__(name: str):
    if name == "ALANINE_DIPEPTIDE_BASINS" or name in _ALANINE_DIPEPTIDE_STATES:
        return _alanine_dipeptide(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _basin_dict(basins) -> dict[str, Basin]:
    if isinstance(basins, Basin):
        basins = [basins]
    items = basins.items() if isinstance(basins, Mapping) else ((getattr(b, "name", None), b) for b in basins)
    out = {}
    for name, basin in items:
        if not isinstance(basin, Basin):
            raise TypeError(f"basins must hold Basin objects (a dict name -> Basin or a list), "
                            f"got {type(basin).__name__}")
        out[name] = basin
    if not out:
        raise ValueError("basins is empty: give at least one Basin")
    return out


def _log_probability(a: np.ndarray, lw: np.ndarray, basin: Basin) -> float:
    """log of the weighted fraction of samples in ``basin`` (-inf when it holds none)."""
    inside = lw[basin.contains(a)]
    return float(torch.logsumexp(torch.from_numpy(inside), 0)) if inside.size else -math.inf


def basin_probabilities(angles, basins, log_weights=None) -> dict[str, float]:
    """Weighted population of each basin.

    Args:
        angles: (n, 2) (phi, psi) in radians.
        basins: a dict name -> :class:`Basin` (e.g. ``ALANINE_DIPEPTIDE_BASINS``) or a list of Basins.
        log_weights: (n,) log importance weights, or None for equal weights.

    Returns:
        {name: P} with P = sum of the self-normalised weights of the samples in the basin, float.
    """
    a, lw = _weighted_angles(angles, log_weights)
    return {name: math.exp(_log_probability(a, lw, b)) for name, b in _basin_dict(basins).items()}


def basin_free_energy(angles, basin_a: Basin, basin_b: Basin, log_weights=None) -> float:
    """Free energy of basin B relative to basin A, dF = F_B - F_A = -ln(P_B / P_A), in kT.

    Args:
        angles: (n, 2) (phi, psi) in radians.
        basin_a, basin_b: the reference basin A and the basin B.
        log_weights: (n,) log importance weights, or None for equal weights.

    Returns:
        dF in kT as a float (computed from log-probabilities, so tiny populations stay accurate).

    Raises:
        ValueError: naming the basin when no sample with non-zero weight lies in it (dF would be +-inf).
    """
    a, lw = _weighted_angles(angles, log_weights)
    for arg, basin in (("basin_a", basin_a), ("basin_b", basin_b)):
        if not isinstance(basin, Basin):
            raise TypeError(f"{arg} must be a Basin, got {type(basin).__name__}")
    log_pa, log_pb = _log_probability(a, lw, basin_a), _log_probability(a, lw, basin_b)
    for arg, basin, log_p in (("basin_a", basin_a, log_pa), ("basin_b", basin_b, log_pb)):
        if log_p == -math.inf:
            raise ValueError(f"{arg} ({basin.name!r}) holds no sample with non-zero weight: its free energy is "
                             f"unbounded; sample longer or check the basin boundaries")
    return log_pa - log_pb


def delta_f_phi_positive(angles, log_weights=None) -> float:
    """Free energy of phi > 0 relative to phi < 0: -ln(P(phi > 0) / P(phi < 0)) in kT.

    The same as ``basin_free_energy(angles, PHI_NEGATIVE, PHI_POSITIVE, log_weights)``: alanine
    dipeptide's declared free energy ``phi_positive`` on (phi, psi) pairs.

    Args:
        angles: (n, 2) (phi, psi) in radians within [-pi, pi] (only phi is used).
        log_weights: (n,) log importance weights, or None for equal weights.

    Returns:
        dF in kT as a float (positive when phi > 0 is the rarer side).

    Raises:
        ValueError: when one side holds no sample with non-zero weight (dF would be +-inf).
    """
    return basin_free_energy(angles, _alanine_dipeptide("PHI_NEGATIVE"), _alanine_dipeptide("PHI_POSITIVE"),
                             log_weights)


# ---- combining independent estimates ------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """An estimate with its standard error.

    Attributes:
        mean: the estimate (kT for free energies).
        standard_error: its standard error, same unit (0 for an exact value, NaN if unknown).
        n: how many independent estimates or samples it rests on.
    """

    mean: float
    standard_error: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.standard_error:.2g} (n={self.n})"


def with_error(estimates) -> Estimate:
    """Mean and standard error of independent estimates (e.g. one per independent SMC run).

    Args:
        estimates: (n,) floats, n >= 2, all finite.

    Returns:
        Estimate(mean, standard_error = sample std (ddof=1) / sqrt(n), n).
    """
    values = _float64(estimates, "estimates")
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"estimates must have shape (n,) with n >= 2 independent estimates, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"estimates must be finite, got {values.tolist()}")
    n = values.shape[0]
    return Estimate(mean=float(values.mean()), standard_error=float(values.std(ddof=1) / math.sqrt(n)), n=n)


def delta_f_over_runs(p_state, p_reference) -> Estimate:
    """dF = F(state) - F(reference) = -ln(mean P(state) / mean P(reference)) in kT over independent runs.

    The populations are averaged over the runs first and the logarithm taken last. Averaging the
    per-run -ln(P_r(state) / P_r(reference)) instead is biased upward by about Var(P_r) / (2 P^2)
    (Jensen's inequality), which does not shrink with more runs: for a rare state estimated from a
    few lineages (relative spread 0.3-0.5 per run) that is 0.05-0.13 kT. The populations of SMC
    runs and of MD runs are (nearly) unbiased, their mean over runs too. A run with no weight in
    the state contributes P = 0 (it is not dropped). The standard error is the delta method's:
    the spread over runs of -dP_state/P_state + dP_reference/P_reference, over sqrt(n).

    Args:
        p_state, p_reference: (n,) populations (weighted fractions) of the two states, one per
            independent run, n >= 2.

    Returns:
        Estimate(mean, standard_error, n); ValueError when a mean population is zero (dF unbounded).
    """
    ps, pr = _float64(p_state, "p_state"), _float64(p_reference, "p_reference")
    if ps.ndim != 1 or ps.shape != pr.shape or ps.shape[0] < 2:
        raise ValueError(f"p_state and p_reference must have the same shape (n,), n >= 2; got {ps.shape}, {pr.shape}")
    if not (np.isfinite(ps).all() and np.isfinite(pr).all()) or (ps < 0).any() or (pr < 0).any():
        raise ValueError("populations must be finite and non-negative")
    ms, mr = ps.mean(), pr.mean()
    if ms == 0 or mr == 0:
        raise ValueError(f"no run has weight in the {'state' if ms == 0 else 'reference'}: dF is unbounded")
    influence = -(ps - ms) / ms + (pr - mr) / mr
    n = ps.shape[0]
    return Estimate(mean=float(math.log(mr) - math.log(ms)),
                    standard_error=float(influence.std(ddof=1) / math.sqrt(n)), n=n)


def z_score(value, standard_error, reference, reference_error) -> float | None:
    """(value - reference) / their combined standard error sqrt(se^2 + se_ref^2); None when a value or an
    error is missing or not finite, or the combined error is zero (an exact value against an exact one).

    Args:
        value, standard_error: an estimate and its standard error (any one unit, e.g. kT).
        reference, reference_error: the reference and its standard error, same unit (0 for an exact one).
    """
    numbers = (value, standard_error, reference, reference_error)
    if any(v is None or not math.isfinite(v) for v in numbers):
        return None
    combined = math.hypot(standard_error, reference_error)
    return (value - reference) / combined if combined > 0 else None


def mean_and_error(values) -> tuple[float, float | None]:
    """Mean of per-run values and its standard error over the runs (None with one run or a NaN error).

    The form summary.json uses: with a single run there is no honest error bar.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must hold at least one per-run value")
    if len(values) < 2:
        return values[0], None
    e = with_error(values)
    return e.mean, e.standard_error if math.isfinite(e.standard_error) else None


def basin_free_energy_runs(runs: Iterable, basin_a: Basin, basin_b: Basin) -> Estimate:
    """dF = F_B - F_A in kT over independent runs, with the standard error from their spread.

    Args:
        runs: a list of (angles (n_r, 2) radians, log_weights (n_r,) or None), one per
            independent run (at least two).
        basin_a, basin_b: as for :func:`basin_free_energy`.

    Returns:
        :func:`with_error` of the per-run :func:`basin_free_energy` values.
    """
    values = []
    for r, run in enumerate(runs):
        try:
            angles, log_weights = run
        except (TypeError, ValueError) as exc:
            raise ValueError(f"runs[{r}] must be a pair (angles, log_weights), got {type(run).__name__}") from exc
        try:
            values.append(basin_free_energy(angles, basin_a, basin_b, log_weights))
        except ValueError as exc:
            raise ValueError(f"runs[{r}]: {exc}") from exc
    return with_error(values)


# ---- free energy differences between two targets ------------------------------------------------
def _energies(u, name: str) -> torch.Tensor:
    t = torch.from_numpy(_float64(u, name))
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be reduced energies in kT of shape (n,), n >= 1, got {tuple(t.shape)}")
    return t


def delta_f_exp(u_a, u_b, log_weights=None) -> Estimate:
    """Free energy difference F_B - F_A in kT by exponential averaging (Zwanzig FEP) from samples of A.

    dF = -ln sum_i W_i exp(-(u_b(x_i) - u_a(x_i))), with W the (self-normalised) weights of the
    samples of A (equal weights for plain samples: the usual -ln mean exp(-w)). Computed in log
    space, so energies of any size are safe. A non-finite u_b - u_a (a clash in B, or NaN) counts
    as zero weight. The standard error is the delta-method one, sqrt(sum_i (V_i - W_i)^2) with
    V_i proportional to W_i exp(-(u_b - u_a)); for equal weights sqrt(1/ESS - 1/n), pymbar's EXP
    error. It assumes independent samples: for one SMC run it is optimistic (use several runs).

    Args:
        u_a: (n,) reduced energies u_A(x_i) in kT of samples x_i from A.
        u_b: (n,) reduced energies u_B(x_i) in kT of the same samples.
        log_weights: (n,) log-weights of the samples (weighted samples of A), or None.

    Returns:
        Estimate(mean = F_B - F_A in kT, standard_error, n).
    """
    ua, ub = _energies(u_a, "u_a"), _energies(u_b, "u_b")
    if ub.shape != ua.shape:
        raise ValueError(f"u_b must have the shape of u_a {tuple(ua.shape)}, got {tuple(ub.shape)}")
    n = ua.shape[0]
    log_w = torch.from_numpy(_log_weights(log_weights, n))
    log_terms = clean_log_weights(log_w - (ub - ua))  # log W_i - w_i, non-finite -> zero weight
    log_mean = torch.logsumexp(log_terms, 0)
    if not torch.isfinite(log_mean):
        raise ValueError("every sample has zero weight in exp(-(u_b - u_a)): u_b is +inf or NaN wherever "
                         "the weights are non-zero, so F_B - F_A cannot be estimated from these samples")
    v = torch.exp(log_terms - log_mean)
    se = torch.sqrt(((v - torch.exp(log_w)) ** 2).sum())
    return Estimate(mean=float(-log_mean), standard_error=float(se), n=n)


def _import_bar():
    # pymbar prints a banner on import (JAX, timeseries); library code must stay quiet
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from pymbar.other_estimators import bar
        from pymbar.utils import BoundsError, ConvergenceError, ParameterError
    return bar, (BoundsError, ConvergenceError, ParameterError)


def delta_f_bar(w_forward, w_reverse) -> Estimate:
    """Free energy difference F_B - F_A in kT by the Bennett acceptance ratio (pymbar).

    Args:
        w_forward: (n_F,) reduced works u_B(x) - u_A(x) in kT for samples x from A.
        w_reverse: (n_R,) reduced works u_A(x) - u_B(x) in kT for samples x from B.

    Returns:
        Estimate(mean = pymbar's Delta_f, standard_error = its dDelta_f, n = n_F + n_R),
        for independent samples (NaN standard error where pymbar cannot estimate it).

    Raises:
        ValueError: for non-finite works, and when BAR fails: pymbar gives up on poor overlap
            (it would return 0 with zero uncertainty) or cannot bracket the solution.
    """
    wf, wr = _energies(w_forward, "w_forward").numpy(), _energies(w_reverse, "w_reverse").numpy()
    for name, w in (("w_forward", wf), ("w_reverse", wr)):
        if not np.isfinite(w).all():
            raise ValueError(f"{name} must be finite works in kT; {int((~np.isfinite(w)).sum())} are not "
                             f"(drop clashing samples or use delta_f_exp)")
    bar, pymbar_errors = _import_bar()
    try:
        with np.errstate():  # pymbar changes numpy's global error settings; restore them afterwards
            result = bar(wf, wr)
    except pymbar_errors as exc:
        raise ValueError(f"BAR failed (pymbar: {exc}); the two samples may not overlap") from exc
    mean, se = float(result["Delta_f"]), float(result["dDelta_f"])
    if mean == 0.0 and se == 0.0:
        raise ValueError("BAR failed: pymbar found no overlap between the forward and reverse works "
                         "(it returns 0 with no uncertainty in that case)")
    return Estimate(mean=mean, standard_error=se, n=len(wf) + len(wr))


def _import_mbar():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from pymbar import MBAR
        from pymbar.utils import ParameterError
    return MBAR, ParameterError


def delta_f_mbar(u_kn, n_k, i: int, j: int) -> Estimate:
    """F_j - F_i in kT between two of K states by MBAR (pymbar), from the samples of all of them.

    States with no samples (``n_k[k] = 0``) are allowed: biased MD runs are sampled states
    (u + V/kT) and the unbiased states they stand for are unsampled ones, so every frame counts
    at its weight with no resampling. With two sampled states and no others this is BAR.

    Args:
        u_kn: (K, N) reduced energies in kT of all N samples in each of the K states; the samples
            of state 0 come first, then those of state 1, and so on.
        n_k: (K,) number of samples drawn from each state (summing to N).
        i, j: the two states compared.

    Returns:
        Estimate(mean = F_j - F_i, standard_error = pymbar's dDelta_f (it assumes independent
        samples, so it is optimistic for MD frames), n = N).

    Raises:
        ValueError: for a malformed ``u_kn`` / ``n_k``, non-finite energies, or a state index out
            of range.
    """
    u = np.asarray(u_kn, dtype=np.float64)
    counts = np.asarray(n_k)
    if u.ndim != 2 or counts.shape != (u.shape[0],):
        raise ValueError(f"u_kn must be (K, N) and n_k (K,), got {u.shape} and {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any() or counts.sum() != u.shape[1]:
        raise ValueError(f"n_k must be non-negative integers summing to N = {u.shape[1]}, got {counts.tolist()}")
    if not np.isfinite(u).all():
        raise ValueError(f"u_kn must be finite reduced energies in kT; {int((~np.isfinite(u)).sum())} are not")
    for name, k in (("i", i), ("j", j)):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < u.shape[0]:
            raise ValueError(f"{name} must be a state index in [0, {u.shape[0]}), got {k!r}")
    mbar_class, errors = _import_mbar()
    try:
        with np.errstate():  # pymbar changes numpy's global error settings; restore them afterwards
            # BAR initialisation: faster here, and it spares the fallback warning of the default solver
            result = mbar_class(u, counts, initialize="BAR").compute_free_energy_differences()
    except errors as exc:
        raise ValueError(f"MBAR failed (pymbar: {exc}); the states may not overlap") from exc
    return Estimate(mean=float(result["Delta_f"][i, j]), standard_error=float(result["dDelta_f"][i, j]),
                    n=int(u.shape[1]))


def _as_estimate(value, name: str) -> Estimate:
    if isinstance(value, Estimate):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return Estimate(mean=float(value), standard_error=0.0, n=1)
    raise TypeError(f"{name} must be a finite float or an Estimate, got {value!r}")


def delta_f_from_log_z(log_z_a, log_z_b) -> Estimate:
    """F_B - F_A = -(ln Z_B - ln Z_A) in kT from two log-normaliser estimates (e.g. SMC log Z).

    Both must be log Z of the reduced energies on the same coordinates (same units of x).

    Args:
        log_z_a, log_z_b: ln Z of A and of B, each a float (taken as exact) or an :class:`Estimate`.

    Returns:
        Estimate(mean = log_z_a - log_z_b, standard_error = errors added in quadrature,
        n = the smaller n of the two).
    """
    a, b = _as_estimate(log_z_a, "log_z_a"), _as_estimate(log_z_b, "log_z_b")
    return Estimate(mean=a.mean - b.mean, standard_error=math.hypot(a.standard_error, b.standard_error),
                    n=min(a.n, b.n))


# (ALANINE_DIPEPTIDE_BASINS and PHI_* are served by __getattr__, read from the molecule file, so not listed)
__all__ = [
    "Basin", "Estimate", "FreeEnergySurface", "basin_free_energy", "basin_free_energy_runs", "basin_probabilities",
    "delta_f_bar", "delta_f_exp", "delta_f_from_log_z", "delta_f_mbar", "delta_f_phi_positive", "free_energy_surface",
    "with_error", "z_score",
]
