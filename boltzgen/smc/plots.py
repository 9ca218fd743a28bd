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
