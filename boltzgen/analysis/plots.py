"""Plots of free energies: Ramachandran free energy surfaces with basin outlines, and basin free energies.

Uses matplotlib's object API (no pyplot state), so it works headless and never opens a window.
Every function returns the (root) Figure it drew into; pass ``ax`` to draw into an existing Axes.
Angles come in radians (the package's unit) and are shown in degrees unless ``degrees=False``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MultipleLocator

from .._checks import check_positive
from .free_energy import (
    Estimate,
    FreeEnergySurface,
    _angles,
    _as_estimate,
    _basin_dict,
    free_energy_surface,
)


def _axes(ax, figsize: tuple[float, float]) -> tuple[Axes, Figure]:
    """``ax`` and its root Figure, or a new constrained-layout Figure with one Axes."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig.add_subplot(), fig
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax, ax.figure.figure  # .figure of a SubFigure is the root Figure; of a Figure, itself


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ---- free energy surfaces -----------------------------------------------------------------------
def plot_free_energy_surface(fes: FreeEnergySurface, ax: Axes | None = None, max_free_energy: float = 8.0,
                             degrees: bool = True) -> Figure:
    """Draw F(phi, psi) as a colour mesh: phi on x, psi on y, a colorbar "F / kT".

    Empty bins (F = +inf) are masked, so they stay blank; bins above ``max_free_energy`` take the
    top colour (the colorbar then has an arrow). The axes span the surface's bin edges, the whole
    torus for a default :func:`free_energy_surface`.

    Args:
        fes: a :class:`FreeEnergySurface` (free_energy (bins, bins) in kT, phi along axis 0).
        ax: a matplotlib Axes to draw into (a new 5.5 x 4.5 inch figure by default); the colorbar
            takes space from it.
        max_free_energy: top of the colour scale in kT, finite and positive.
        degrees: show angles in degrees (True) or radians (False).

    Returns:
        The Figure; the mesh is ``ax.collections[0]``, its array F transposed (psi along rows).
    """
    if not isinstance(fes, FreeEnergySurface):
        raise TypeError(f"fes must be a FreeEnergySurface (from free_energy_surface), got {type(fes).__name__}")
    vmax = check_positive(max_free_energy, "max_free_energy")
    degrees = _check_bool(degrees, "degrees")
    ax, fig = _axes(ax, (5.5, 4.5))
    scale = 180.0 / math.pi if degrees else 1.0
    f = np.ma.masked_invalid(fes.free_energy.T)  # pcolormesh wants rows along y: psi
    mesh = ax.pcolormesh(fes.phi_edges * scale, fes.psi_edges * scale, f, cmap="viridis",
                         norm=Normalize(0.0, vmax), shading="flat")
    extend = "max" if f.count() and f.max() > vmax else "neither"
    ax.figure.colorbar(mesh, ax=ax, label="F / kT", extend=extend)
    unit = "deg" if degrees else "rad"
    ax.set(xlabel=f"φ ({unit})", ylabel=f"ψ ({unit})", aspect="equal",
           xlim=(fes.phi_edges[0] * scale, fes.phi_edges[-1] * scale),
           ylim=(fes.psi_edges[0] * scale, fes.psi_edges[-1] * scale))
    if degrees:  # the conventional Ramachandran grid; a narrow window keeps matplotlib's ticks
        for axis, edges in ((ax.xaxis, fes.phi_edges), (ax.yaxis, fes.psi_edges)):
            if (edges[-1] - edges[0]) * scale > 180.0:
                axis.set_major_locator(MultipleLocator(90.0))
    return fig


def _arc_pieces(low: float, high: float) -> list[tuple[float, float]]:
    """An arc [low, high) in radians as intervals within [-pi, pi]; one through +-pi splits in two."""
    pieces = [(low, high)] if low < high else [(low, math.pi), (-math.pi, high)]
    return [(a, b) for a, b in pieces if b > a]  # (pi, x) or (x, -pi) leave an empty piece


def _torus_basins(basins) -> dict:
    """Basins to outline on the (phi, psi) torus: :class:`Basin` objects, or regions of
    :mod:`boltzgen.cvs` on the CVs phi and psi (as ``RunFigures.basins`` holds), as {name: Basin}."""
    from ..cvs import Region
    from .free_energy import _phi_psi_basin

    if isinstance(basins, Mapping) and any(isinstance(b, Region) for b in basins.values()):
        return {name: _phi_psi_basin(b) if isinstance(b, Region) else b for name, b in basins.items()}
    return _basin_dict(basins)


def _draw_basins(ax: Axes, basins, scale: float) -> None:
    """Outline every basin (a rectangle per piece of its wrapped arcs) and label it once."""
    for k, (name, basin) in enumerate(_torus_basins(basins).items()):
        rects = [(p0, p1, s0, s1) for p0, p1 in _arc_pieces(*basin.phi_range)
                 for s0, s1 in _arc_pieces(*basin.psi_range)]
        for p0, p1, s0, s1 in rects:
            ax.add_patch(Rectangle((p0 * scale, s0 * scale), (p1 - p0) * scale, (s1 - s0) * scale,
                                   fill=False, edgecolor=f"C{k % 10}", linewidth=1.5, linestyle="--"))
        # label the top-left corner of the largest piece, where it hides less of the data than the centre
        p0, p1, s0, s1 = max(rects, key=lambda r: (r[1] - r[0]) * (r[3] - r[2]))
        ax.annotate(name or "", (p0 * scale, s1 * scale), xytext=(3, -3), textcoords="offset points",
                    ha="left", va="top", color=f"C{k % 10}", fontsize="small", fontweight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0})


def plot_ramachandran(angles, log_weights=None, ax: Axes | None = None, bins: int = 60, basins=None,
                      max_free_energy: float = 8.0, title: str | None = None, degrees: bool = True) -> Figure:
    """Ramachandran plot: the free energy surface F(phi, psi) in kT of (weighted) samples.

    The surface is :func:`free_energy_surface` on the whole torus, drawn by
    :func:`plot_free_energy_surface`. With weights, the title reports the Kish effective sample
    size, so a surface resting on few effective samples is visible as such.

    Args:
        angles: (n, 2) (phi, psi) in radians, e.g. ``phi_psi(x, top)[:, 0]``.
        log_weights: (n,) log importance weights (any offset), or None for equal weights.
        ax: a matplotlib Axes to draw into, or None for a new figure.
        bins: number of bins along each angle.
        basins: None, or a dict name -> :class:`Basin` / list of Basins (e.g.
            ``ALANINE_DIPEPTIDE_BASINS``), or the regions on phi and psi a molecule declares
            (``RunFigures.basins``), to outline; a basin wrapping around +-pi is drawn in pieces.
        max_free_energy: top of the colour scale in kT.
        title: the axes title (the ESS line is added below it when weights are given).
        degrees: show angles in degrees (True) or radians (False).

    Returns:
        The Figure.
    """
    n = _angles(angles).shape[0]
    fes = free_energy_surface(angles, log_weights, bins=bins)
    # validate everything before drawing, so bad input leaves a given ax untouched
    check_positive(max_free_energy, "max_free_energy")
    scale = 180.0 / math.pi if _check_bool(degrees, "degrees") else 1.0
    if basins is not None:
        _torus_basins(basins)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__}")
    fig = plot_free_energy_surface(fes, ax=ax, max_free_energy=max_free_energy, degrees=degrees)
    ax = ax if ax is not None else fig.axes[0]
    if basins is not None:
        _draw_basins(ax, basins, scale)
    lines = [title] if title else []
    if log_weights is not None:
        lines.append(f"ESS = {fes.ess:.4g} of {n} samples")
    if lines:
        ax.set_title("\n".join(lines))
    return fig


# ---- basin free energies ------------------------------------------------------------------------
def plot_basin_free_energies(estimates: Mapping[str, Estimate], reference=None, ax: Axes | None = None,
                             ylabel: str = "ΔF / kT") -> Figure:
    """Compare free energy estimates (e.g. MD vs SMC vs the bare model): points with ±1 standard error.

    Args:
        estimates: {label: Estimate} in kT, drawn left to right in the dict's order; a plain
            finite float counts as an exact value. The x tick labels show the label and n.
        reference: None, or a known value (float in kT, or an Estimate) drawn as a dashed line
            with a ±1 standard error band.
        ax: a matplotlib Axes to draw into, or None for a new figure.
        ylabel: y axis label.

    Returns:
        The Figure; an unknown (NaN) standard error draws no error bar.
    """
    if not isinstance(estimates, Mapping):
        raise TypeError(f"estimates must be a dict label -> Estimate, got {type(estimates).__name__}")
    if not estimates:
        raise ValueError("estimates is empty: give at least one {label: Estimate}")
    est = {str(k): _as_estimate(v, f"estimates[{k!r}]") for k, v in estimates.items()}
    bad = [k for k, e in est.items() if not math.isfinite(e.mean)]
    if bad:
        raise ValueError(f"estimates must have finite means in kT; not finite: {bad}")
    ref = None if reference is None else _as_estimate(reference, "reference")
    ax, fig = _axes(ax, (1.2 + 0.9 * len(est), 3.5))

    x = np.arange(len(est))
    means = np.array([e.mean for e in est.values()])
    errors = np.array([e.standard_error for e in est.values()])
    ax.errorbar(x, means, yerr=errors, fmt="o", capsize=4, color="C0",  # a NaN error draws no bar
                label="estimate ± 1 s.e.")
    if ref is not None:
        ax.axhline(ref.mean, color="k", linestyle="--", linewidth=1.0, label="reference")
        if math.isfinite(ref.standard_error) and ref.standard_error > 0:
            ax.axhspan(ref.mean - ref.standard_error, ref.mean + ref.standard_error, color="k", alpha=0.12)
        ax.legend(fontsize="small")
    ax.set_xticks(x, [f"{k}\n(n={e.n})" for k, e in est.items()])
    ax.set_xlim(-0.5, len(est) - 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return fig


__all__ = ["plot_basin_free_energies", "plot_free_energy_surface", "plot_ramachandran"]


# ---- comparisons of samples with a reference ----------------------------------------------------
from .._checks import check_count  # noqa: E402
from .compare import _quantile, _sorted_cdf, _weighted_values, histogram_bins  # noqa: E402
from .free_energy import _check_radians, _float64, _wrap  # noqa: E402

_COMPARE_LABELS = ("samples", "reference")


def _reference_pair(reference) -> tuple:
    """``reference`` as (values, log_weights), or raise a ValueError naming it."""
    if not (isinstance(reference, (tuple, list)) and len(reference) == 2):
        raise ValueError("reference must be None or a tuple (values, log_weights) (log_weights may be None), "
                         f"got {type(reference).__name__}")
    return tuple(reference)


def _phi_samples(phi, log_weights, name: str, weights_name: str) -> tuple[np.ndarray, np.ndarray]:
    """phi (m,) in radians wrapped into [-pi, pi) and weights (m,) of the samples with non-zero weight."""
    x = _float64(phi, name)
    if x.ndim == 2 and x.shape[1] == 2:
        raise ValueError(f"{name} must have shape (n,) of phi in radians, got {x.shape}; "
                         f"for (phi, psi) pairs pass {name}[:, 0]")
    _check_radians(x, name)
    x, w = _weighted_values(x, log_weights, name, weights_name)
    return _wrap(x, -math.pi), w


def _bin_count(bins, sets, low: float, high: float) -> int:
    """``bins``, or :func:`histogram_bins` of the smallest Kish ESS among the (values, weights) sets."""
    if bins is not None:
        return check_count(bins, "bins")
    return histogram_bins(min(1.0 / float(np.sum(w * w)) for _, w in sets), low, high)


def plot_phi_profile(phi, log_weights=None, reference=None, bins: int | None = None,
                     ax: Axes | None = None, name: str = "φ") -> Figure:
    """Free energy profile F(phi) = -ln p(phi) in kT of (weighted) samples, and optionally of a reference.

    Any dihedral-angle CV works the same way (``name`` labels the x axis).

    p is the weighted fraction of the samples in each of ``bins`` equal bins over [-pi, pi)
    (periodic: pi counts as -pi); each curve is shifted so that its minimum is 0 and drawn
    through the bin centres, phi in degrees. Empty bins (F = +inf) leave gaps. The y range fits
    the finite values of the curves.

    Args:
        phi: (n,) phi of the samples in radians within [-pi, pi], e.g. ``phi_psi(x, top)[:, 0, 0]``.
        log_weights: (n,) log importance weights (any offset), or None for equal weights.
        reference: None, or a tuple (phi_ref, log_weights_ref) (log_weights_ref may be None),
            drawn as a second line; the legend then reads "samples", "reference".
        bins: number of bins; None picks :func:`~boltzgen.analysis.compare.histogram_bins` of the
            smaller Kish ESS of the two sets.
        ax: a matplotlib Axes to draw into, or None for a new figure.
        name: the angle's name on the x axis ("φ"; a CV name such as "C1-C2-C3-C4" for others).

    Returns:
        The Figure; the curves are ``ax.lines`` (x in degrees, y in kT, NaN at empty bins).
    """
    sets = [_phi_samples(phi, log_weights, "phi", "log_weights")]
    if reference is not None:
        ref_phi, ref_lw = _reference_pair(reference)
        sets.append(_phi_samples(ref_phi, ref_lw, "reference[0]", "reference[1]"))
    n_bins = _bin_count(bins, sets, -math.pi, math.pi)
    ax, fig = _axes(ax, (5.0, 3.5))
    edges = np.linspace(-math.pi, math.pi, n_bins + 1)
    centres = np.degrees(0.5 * (edges[1:] + edges[:-1]))
    top = 0.0
    for k, (x, w) in enumerate(sets):
        counts, _ = np.histogram(x, bins=edges, weights=w)
        with np.errstate(divide="ignore"):
            f = -np.log(counts / counts.sum())
        f = f - f[np.isfinite(f)].min()
        f[~np.isfinite(f)] = np.nan
        top = max(top, float(np.nanmax(f)))
        ax.plot(centres, f, color=f"C{k}", marker="." if n_bins <= 60 else None, label=_COMPARE_LABELS[k])
    margin = 0.05 * top if top > 0 else 0.5
    ax.set(xlabel=f"{'φ' if name == 'phi' else name} (deg)", ylabel="F / kT", xlim=(-180.0, 180.0), ylim=(-margin, top + margin))
    ax.xaxis.set_major_locator(MultipleLocator(90.0))
    ax.grid(alpha=0.3)
    if reference is not None:
        ax.legend(fontsize="small")
    return fig


def plot_profiles(profiles, ax: Axes | None = None, name: str = "φ", max_free_energy: float = 12.0) -> Figure:
    """Free-energy profiles F(cv) in kT with their error bands over runs, one line per entry.

    Args:
        profiles: a dict label -> :class:`~boltzgen.analysis.profiles.Profile` (e.g. "samples",
            "reference"); each is drawn through its bin centres (degrees) with a band of +- one
            standard error where it has one, minimum at 0.
        ax: a matplotlib Axes to draw into, or None for a new figure.
        name: the CV's name on the x axis.
        max_free_energy: top of the y axis in kT at most (a biased reference reaches far higher
            free energies than samples can).

    Returns:
        The Figure; ``ax.lines`` are the profiles in the order given.
    """
    from .profiles import Profile

    check_positive(max_free_energy, "max_free_energy")
    if not isinstance(profiles, Mapping) or not profiles:
        raise ValueError("profiles must be a non-empty dict of label -> Profile")
    for label, profile in profiles.items():
        if not isinstance(profile, Profile):
            raise TypeError(f"profiles[{label!r}] must be a Profile, got {type(profile).__name__}")
    ax, fig = _axes(ax, (5.0, 3.5))
    top = 0.0
    for k, (label, profile) in enumerate(profiles.items()):
        x, f, err = profile.centres_deg, profile.free_energy, profile.error
        runs = f"{profile.n_runs} run{'s' if profile.n_runs != 1 else ''}"
        ax.plot(x, f, color=f"C{k}", marker=".", label=f"{label} ({runs})")
        ax.fill_between(x, f - err, f + err, color=f"C{k}", alpha=0.25, linewidth=0)
        if np.any(np.isfinite(f)):
            top = max(top, float(np.nanmax(f + np.nan_to_num(err))))
    top = min(max(top, 1.0), max_free_energy)
    ax.set(xlabel=f"{'φ' if name == 'phi' else name} (deg)", ylabel="F / kT", xlim=(-180.0, 180.0),
           ylim=(-0.05 * top, 1.05 * top))
    ax.xaxis.set_major_locator(MultipleLocator(90.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="band: +- 1 s.e. over runs", title_fontsize="x-small")
    return fig


def plot_energy_histogram(energies, log_weights=None, reference=None, bins: int | None = None,
                          ax: Axes | None = None) -> Figure:
    """Weighted density of reduced energies u in kT of the samples, and optionally of a reference.

    Both histograms share their bin edges, equal bins spanning the lowest 0.5 and the highest
    99.5 weighted percentile of the sets drawn (so a few clashing outliers do not squeeze the
    plot); each is a density over all of its weight, so the area inside the plot is the weight
    inside the range, about 0.99. Drawn as step outlines (``ax.stairs``).

    Args:
        energies: (n,) reduced energies of the samples in kT (finite where the weight is non-zero).
        log_weights: (n,) log importance weights (any offset), or None for equal weights.
        reference: None, or a tuple (energies_ref, log_weights_ref) (log_weights_ref may be None);
            the legend then reads "samples", "reference".
        bins: number of bins; None picks :func:`~boltzgen.analysis.compare.histogram_bins` of the
            smaller Kish ESS of the two sets.
        ax: a matplotlib Axes to draw into, or None for a new figure.

    Returns:
        The Figure; the histograms are the StepPatch artists in ``ax.patches``.
    """
    sets = [_weighted_values(energies, log_weights, "energies", "log_weights")]
    if reference is not None:
        ref_u, ref_lw = _reference_pair(reference)
        sets.append(_weighted_values(ref_u, ref_lw, "reference[0]", "reference[1]"))
    lows, highs = [], []
    for x, w in sets:
        x_sorted, cdf = _sorted_cdf(x, w)
        low, high = _quantile(x_sorted, cdf, [0.005, 0.995])
        lows.append(float(low))
        highs.append(float(high))
    low, high = min(lows), max(highs)
    if not high > low:  # every sample at one energy
        low, high = low - 0.5, high + 0.5
    n_bins = _bin_count(bins, sets, low, high)
    ax, fig = _axes(ax, (5.0, 3.5))
    edges = np.linspace(low, high, n_bins + 1)
    for k, (x, w) in enumerate(sets):
        counts, _ = np.histogram(x, bins=edges, weights=w)
        ax.stairs(counts / np.diff(edges), edges, color=f"C{k}", linewidth=1.5, label=_COMPARE_LABELS[k])
    ax.set(xlabel="u / kT", ylabel="density (1 / kT)", xlim=(low, high))
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    if reference is not None:
        ax.legend(fontsize="small")
    return fig


__all__ += ["plot_energy_histogram", "plot_phi_profile"]
