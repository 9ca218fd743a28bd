"""Plot helper for SMC runs: ESS and acceptance traces, and the final weight distribution.

Uses matplotlib's object API (no pyplot state), so it works headless and never opens a window.
"""
from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

from .engine import SMCResult
from .weights import normalized_log_weights


def plot_smc_diagnostics(result: SMCResult, figure: Figure | None = None) -> Figure:
    """Three panels: ESS / CESS / ancestor fractions per step (resampling steps marked),
    acceptance rate and step size per step, and a histogram of log10(N W_i) of the final weights.

    Args:
        result: an :class:`SMCResult`.
        figure: a matplotlib Figure to draw into (a new 12 x 3.6 inch one by default).

    Returns:
        The figure; save it with ``figure.savefig(path)``.
    """
    if not isinstance(result, SMCResult):
        raise TypeError(f"result must be an SMCResult, got {type(result).__name__}")
    fig = figure if figure is not None else Figure(figsize=(12, 3.6), layout="constrained")
    ax_ess, ax_acc, ax_w = fig.subplots(1, 3)
    steps = result.diagnostics
    idx = [s.index for s in steps]
    n = steps[0].n_particles

    ax_ess.plot(idx, [s.ess_fraction for s in steps], label="ESS / N")
    ax_ess.plot(idx, [s.conditional_ess_fraction for s in steps], label="CESS / N", alpha=0.7)
    ax_ess.plot(idx, [s.n_ancestors / n for s in steps], label="ancestors / N", ls="--")
    resampled = [s for s in steps if s.resampled]
    ax_ess.scatter([s.index for s in resampled], [s.ess_fraction for s in resampled], s=12, color="k",
                   zorder=3, label="resampled")
    ax_ess.set(xlabel="step", ylabel="fraction of N", ylim=(0, 1.05), title="effective sample size")
    ax_ess.legend(fontsize="small")

    for key in sorted({k for s in steps for k in s.moves if k.endswith("acceptance")}):
        ax_acc.plot(idx, [s.moves.get(key, math.nan) for s in steps], label=key)
    ax_acc.set(xlabel="step", ylabel="acceptance rate", ylim=(0, 1.05), title="MCMC moves")
    if ax_acc.lines:
        ax_acc.legend(fontsize="small")
    ax_step = ax_acc.twinx()
    ax_step.plot(idx, [s.step_size for s in steps], color="C1")
    ax_step.set_yscale("log")
    ax_step.set_ylabel("step size", color="C1")

    lw = normalized_log_weights(result.log_weights)
    finite = lw[torch.isfinite(lw)]
    ax_w.hist(((finite + math.log(n)) / math.log(10)).numpy(), bins=40)
    ax_w.set(xlabel="log10(N W_i)  (0 = uniform)", ylabel="particles",
             title=f"final weights (ESS/N = {result.ess_fraction:.2f})")
    return fig


_STAGE_SHADES = {"levels": "#dde8f5", "bridge": "#f5e6d3", "mixing": "#e0f0dc"}


def plot_run_diagnostics(diagnostics, title: str | None = None, figure: Figure | None = None) -> Figure:
    """The SMC diagnostics of sample runs, as written to their ``diagnostics.json``: per step, the
    ESS fraction, the lineages alive from t = 1 (distinct ancestors) as a fraction of N, and the
    move acceptance rates; the stages (model levels, bridge, mixing) are shaded.

    The lineages panel is the honest one: after mixing all weights are equal (ESS = N) however few
    lineages carried the run.

    Args:
        diagnostics: one mapping per run, each with ``"steps"`` (a list of step records: ``index``,
            ``stage``, ``ess_fraction``, ``n_ancestors``, ``n_particles``, ``moves``), as loaded from
            ``run-*/diagnostics.json``.
        title: the figure's title, or None.
        figure: a matplotlib Figure to draw into (a new 12 x 3.6 inch one by default).

    Returns:
        The figure; save it with ``figure.savefig(path)``.
    """
    runs = list(diagnostics)
    if not runs or any(not isinstance(d, dict) or not d.get("steps") for d in runs):
        raise ValueError("diagnostics must be a non-empty list of run diagnostics, each with a non-empty 'steps' list")
    fig = figure if figure is not None else Figure(figsize=(12, 3.6), layout="constrained")
    ax_ess, ax_lin, ax_acc = fig.subplots(1, 3, sharex=True)
    for ax in (ax_ess, ax_lin, ax_acc):
        _shade_stages(ax, runs[0]["steps"])
    for k, run in enumerate(runs):
        steps = run["steps"]
        idx = [s["index"] for s in steps]
        ax_ess.plot(idx, [s["ess_fraction"] for s in steps], color=f"C{k % 10}", lw=1)
        ax_lin.plot(idx, [s["n_ancestors"] / s["n_particles"] for s in steps], color=f"C{k % 10}", lw=1,
                    label=f"run {k + 1}: {steps[-1]['n_ancestors']}")
        for j, key in enumerate(sorted({m for s in steps for m in s["moves"] if m.endswith("acceptance")})):
            ax_acc.plot(idx, [s["moves"].get(key, math.nan) for s in steps], color=f"C{k % 10}", lw=1,
                        ls=("-", "--", ":", "-.")[j % 4], label=key if k == 0 else None)
    ax_ess.set(xlabel="step", ylabel="ESS / N", ylim=(0, 1.05), title="effective sample size")
    ax_lin.set(xlabel="step", ylabel="lineages / N", ylim=(0, 1.05), title="lineages alive from t = 1")
    ax_lin.legend(fontsize="x-small", title="lineages at the end", title_fontsize="x-small")
    ax_acc.set(xlabel="step", ylabel="acceptance rate", ylim=(0, 1.05), title="MCMC moves")
    if ax_acc.lines:
        ax_acc.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return fig


def _shade_stages(ax, steps) -> None:
    """Shade the steps of each stage (levels, bridge, mixing) and name them once at the top."""
    start = 0
    for k in range(1, len(steps) + 1):
        if k == len(steps) or steps[k]["stage"] != steps[start]["stage"]:
            stage = steps[start]["stage"]
            if stage in _STAGE_SHADES:
                lo, hi = steps[start]["index"] - 0.5, steps[k - 1]["index"] + 0.5
                ax.axvspan(lo, hi, color=_STAGE_SHADES[stage], zorder=0)
                ax.text(0.5 * (lo + hi), 0.03, stage, ha="center", va="bottom", fontsize="x-small", rotation=90,
                        color="0.35", transform=ax.get_xaxis_transform())
            start = k
