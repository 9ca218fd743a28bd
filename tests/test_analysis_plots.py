"""Plots of free energies: what is drawn is read back from the artists and checked against the data."""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from boltzgen.analysis import ALANINE_DIPEPTIDE_BASINS, Basin, Estimate, free_energy_surface  # noqa: E402
from boltzgen.analysis.plots import (  # noqa: E402
    plot_basin_free_energies,
    plot_free_energy_surface,
    plot_ramachandran,
)

from angle_samples import DEG, cluster, no_pyplot_figures  # noqa: E402,F401  (autouse fixture)


def mesh_of(ax) -> QuadMesh:
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1
    return meshes[0]


def cell_centres(mesh: QuadMesh) -> np.ndarray:
    """(rows, cols, 2) x/y centre of every cell from the mesh's vertex coordinates."""
    v = mesh.get_coordinates()  # (rows + 1, cols + 1, 2)
    return 0.25 * (v[:-1, :-1] + v[1:, :-1] + v[:-1, 1:] + v[1:, 1:])


def rectangles(ax) -> list[tuple[float, float, float, float]]:
    """(x0, x1, y0, y1) of every Rectangle patch, rounded to 1e-6."""
    out = []
    for p in ax.patches:
        assert isinstance(p, Rectangle)
        x, y = p.get_xy()
        out.append(tuple(round(float(v), 6) for v in (x, x + p.get_width(), y, y + p.get_height())))
    return sorted(out)


# ---- free energy surface --------------------------------------------------------------------------
def test_ramachandran_returns_figure_with_colorbar_labels_and_full_torus():
    angles = cluster(-90, 150, 500, 20, seed=0)
    fig = plot_ramachandran(angles)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # the surface and its colorbar
    ax, cax = fig.axes
    assert cax.get_ylabel() == "F / kT"
    assert ax.get_xlabel() == "φ (deg)" and ax.get_ylabel() == "ψ (deg)"
    assert ax.get_xlim() == pytest.approx((-180, 180)) and ax.get_ylim() == pytest.approx((-180, 180))
    assert ax.get_title() == ""  # no weights, no title: nothing to report


def test_minimum_lands_at_the_samples_phi_on_x_psi_on_y():
    # 8 degree bins: phi = -90 lies in [-92, -84), psi = 150 in [148, 156); 95% of the samples are in that bin
    angles = np.concatenate([cluster(-90, 150, 2000, 1.0, seed=1), cluster(60, -60, 200, 10.0, seed=2)])
    for degrees, scale in ((True, 1.0), (False, DEG)):
        fig = plot_ramachandran(angles, bins=45, degrees=degrees)
        mesh = mesh_of(fig.axes[0])
        f = mesh.get_array()
        assert f.shape == (45, 45)
        row, col = np.unravel_index(np.ma.argmin(f), f.shape)
        x, y = cell_centres(mesh)[row, col]
        half_bin = 4.0 * scale
        assert abs(x - (-90 * scale)) <= half_bin and abs(y - 150 * scale) <= half_bin
        assert f[row, col] == 0.0


def test_drawn_array_is_the_transposed_surface_with_empty_bins_masked():
    angles = np.concatenate([cluster(-90, 150, 300, 15, seed=3), cluster(60, 40, 100, 15, seed=4)])
    fes = free_energy_surface(angles, bins=30)
    empty = ~np.isfinite(fes.free_energy)
    assert empty.sum() > 100  # most of the torus holds no sample
    fig = plot_free_energy_surface(fes, max_free_energy=2.0)
    f = mesh_of(fig.axes[0]).get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(f), empty.T)
    np.testing.assert_array_equal(f.compressed(), fes.free_energy.T[~empty.T])
    # bins above the colour scale are drawn (top colour), not hidden; the colorbar says so
    assert f.max() > 2.0
    assert mesh_of(fig.axes[0]).norm.vmax == 2.0
    assert fig.axes[1].get_ylabel() == "F / kT"


def test_weights_enter_the_surface_and_the_ess_is_in_the_title():
    angles = np.concatenate([cluster(-90, 150, 200, 10, seed=5), cluster(60, -60, 200, 10, seed=6)])
    log_w = torch.cat([torch.zeros(200), torch.full((200,), -math.inf)])  # the second cluster has no weight
    fig = plot_ramachandran(angles, log_w, title="SMC")
    ax = fig.axes[0]
    assert ax.get_title().splitlines() == ["SMC", "ESS = 200 of 400 samples"]
    f = mesh_of(ax).get_array()
    centres = cell_centres(mesh_of(ax))[~np.ma.getmaskarray(f)]
    assert (centres[:, 0] < 0).all()  # only the weighted cluster at phi = -90 is drawn


def test_surface_in_a_window_uses_its_edges_and_radians():
    angles = cluster(-90, 150, 300, 15, seed=7)
    fes = free_energy_surface(angles, bins=10, range=((-math.pi, 0.0), (0.0, math.pi)))
    ax = plot_free_energy_surface(fes, degrees=False).axes[0]
    assert ax.get_xlim() == pytest.approx((-math.pi, 0.0)) and ax.get_ylim() == pytest.approx((0.0, math.pi))
    assert ax.get_xlabel() == "φ (rad)" and ax.get_ylabel() == "ψ (rad)"


# ---- basin outlines -------------------------------------------------------------------------------
def test_alanine_basins_wrap_around_into_four_rectangles():
    fig = plot_ramachandran(cluster(-90, 150, 300, 20, seed=8), basins=ALANINE_DIPEPTIDE_BASINS)
    ax = fig.axes[0]
    psi_lo, psi_hi = -100.0, 0.0
    # beta/C7eq's psi arc [0, -100) deg runs through +-180 degrees: two pieces; the others are one each
    assert rectangles(ax) == sorted([
        (-180.0, 0.0, psi_hi, 180.0), (-180.0, 0.0, -180.0, psi_lo),  # beta/C7eq
        (-180.0, 0.0, psi_lo, psi_hi),  # alpha_R
        (0.0, 180.0, -180.0, 180.0),  # alpha_L/C7ax
    ])
    assert sorted(t.get_text() for t in ax.texts) == sorted(ALANINE_DIPEPTIDE_BASINS)


def test_basin_wrapping_in_both_angles_gives_four_pieces_and_empty_pieces_are_dropped():
    both = Basin("both", phi_range=(2.0, -2.0), psi_range=(3.0, -3.0))
    edge = Basin("edge", phi_range=(2.0, -math.pi), psi_range=(math.pi, -1.0))  # wraps, but ends at -+pi
    ax = plot_ramachandran(cluster(0, 0, 100, 30, seed=9), basins=[both, edge], degrees=False).axes[0]
    pi = round(math.pi, 6)
    assert rectangles(ax) == sorted([
        (2.0, pi, 3.0, pi), (2.0, pi, -pi, -3.0), (-pi, -2.0, 3.0, pi), (-pi, -2.0, -pi, -3.0),
        (2.0, pi, -pi, -1.0),
    ])


# ---- drawing into a given ax ----------------------------------------------------------------------
def test_draws_into_a_given_axes_of_a_subfigure():
    root = Figure(figsize=(10, 4))
    left, right = root.subfigures(1, 2)
    ax_fes = left.add_subplot()
    ax_f = right.add_subplot()
    angles = cluster(-90, 150, 300, 20, seed=10)
    assert plot_ramachandran(angles, ax=ax_fes, basins=ALANINE_DIPEPTIDE_BASINS) is root
    assert plot_basin_free_energies({"MD": Estimate(1.0, 0.1, 5)}, ax=ax_f) is root
    assert len(left.axes) == 2 and len(right.axes) == 1  # the colorbar joins the surface's subfigure
    mesh_of(ax_fes)
    assert len(ax_fes.patches) == 4 and len(ax_f.containers) == 1
    assert not any(isinstance(c, QuadMesh) for c in ax_f.collections)


# ---- basin free energies --------------------------------------------------------------------------
def test_basin_free_energies_points_error_bars_labels_and_reference():
    est = {"MD": Estimate(2.0, 0.1, 10), "SMC": Estimate(2.3, 0.2, 5), "model": 3.1, "IS": Estimate(2.5, math.nan, 1)}
    fig = plot_basin_free_energies(est, reference=Estimate(2.1, 0.05, 1))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    points, _, (bars,) = ax.containers[0]
    np.testing.assert_allclose(points.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(points.get_ydata(), [2.0, 2.3, 3.1, 2.5])
    segments = bars.get_segments()
    np.testing.assert_allclose([seg[1, 1] - seg[0, 1] for seg in segments[:3]], [0.2, 0.4, 0.0],
                               atol=1e-12)  # ±1 s.e.; a plain float is exact
    assert segments[3].size == 0  # unknown (NaN) error: no bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["MD\n(n=10)", "SMC\n(n=5)", "model\n(n=1)", "IS\n(n=1)"]
    assert ax.get_ylabel() == "ΔF / kT"
    (ref_line,) = [ln for ln in ax.lines if ln.get_label() == "reference"]
    assert list(ref_line.get_ydata()) == [2.1, 2.1]
    assert len(ax.patches) == 1  # the ±1 s.e. band of the reference


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_input_raises_naming_the_argument():
    angles = cluster(-90, 150, 50, 20, seed=11)
    with pytest.raises(ValueError, match=r"angles must have shape \(n, 2\)"):
        plot_ramachandran(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="log_weights"):
        plot_ramachandran(angles, np.zeros(3))
    with pytest.raises(TypeError, match="fes must be a FreeEnergySurface"):
        plot_free_energy_surface({"free_energy": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="max_free_energy"):
        plot_ramachandran(angles, max_free_energy=-1.0)
    with pytest.raises(TypeError, match="degrees"):
        plot_ramachandran(angles, degrees="yes")
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plot_ramachandran(angles, ax=Figure())
    with pytest.raises(TypeError, match="basins"):
        plot_ramachandran(angles, basins=["beta"])
    with pytest.raises(TypeError, match="estimates must be a dict"):
        plot_basin_free_energies([Estimate(1.0, 0.1, 2)])
    with pytest.raises(ValueError, match="estimates is empty"):
        plot_basin_free_energies({})
    with pytest.raises(TypeError, match=r"estimates\['MD'\]"):
        plot_basin_free_energies({"MD": "1.0"})
    with pytest.raises(TypeError, match="reference"):
        plot_basin_free_energies({"MD": 1.0}, reference="2")


def test_bad_input_leaves_a_given_axes_untouched():
    ax = Figure().add_subplot()
    with pytest.raises(TypeError, match="basins"):
        plot_ramachandran(cluster(0, 0, 50, 20, seed=12), ax=ax, basins=[1])
    assert not ax.collections and len(ax.figure.axes) == 1
