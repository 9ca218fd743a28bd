"""Error bars of one correlated trajectory: statistical inefficiency and a suggested burn-in (pymbar).

A figure of one MD run is a self-normalised weighted average, a = sum_i W_i h_i / sum_i W_i (W_i the
frame weights, h_i an indicator or an energy), or a smooth function of several (a free energy
-ln(P_state / P_reference)). To first order its error is the mean of a per-frame *influence series*
z_i (for an average, z_i = W_i (h_i - a) with the weights scaled to mean 1), so

    SE(a) = sqrt(g * var(z) / n),

with g = 1 + 2 tau the statistical inefficiency of z (tau its integrated autocorrelation time, in
frames) and n / g the effective sample size. g comes from pymbar's
``timeseries.statistical_inefficiency`` (Chodera et al., JCTC 3, 26 (2007)); it presumes the run is
long against its slowest time scale, which a run with few barrier crossings is not: several
independent runs give the honest error bar then.

:func:`suggested_burn_in` is pymbar's ``detect_equilibration`` (the start that maximises the number
of effectively uncorrelated frames), reported to the user and never applied silently.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np


def _timeseries():
    # pymbar prints a banner on import (JAX, timeseries); library code must stay quiet
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from pymbar import timeseries
        from pymbar.utils import ParameterError
    return timeseries, ParameterError


def _series(values, name: str) -> np.ndarray:
    z = np.asarray(values, dtype=np.float64)
    if z.ndim != 1 or z.size < 2:
        raise ValueError(f"{name} must have shape (n,) with n >= 2 frames in time order, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(z)).sum())} non-finite values")
    return z


@dataclass(frozen=True)
class CorrelatedError:
    """The standard error of a trajectory average from its influence series.

    Attributes:
        standard_error: sqrt(g var(z) / n), in the unit of the figure.
        statistical_inefficiency: g = 1 + 2 tau >= 1 (tau: integrated autocorrelation time, frames).
        n_frames: n.
    """

    standard_error: float
    statistical_inefficiency: float
    n_frames: int

    @property
    def effective_samples(self) -> float:
        """n / g: the number of effectively uncorrelated frames."""
        return self.n_frames / self.statistical_inefficiency


def correlated_error(z) -> CorrelatedError:
    """Standard error of the mean of a correlated series ``z`` (n,) in time order (any unit).

    ``z`` is the per-frame influence series of a figure (see the module docstring); its mean need
    not be zero. A constant series (no fluctuation at all) has standard error 0 and g = 1.
    """
    z = _series(z, "z")
    timeseries, ParameterError = _timeseries()
    variance = float(np.mean((z - z.mean()) ** 2))
    if variance == 0.0:
        return CorrelatedError(0.0, 1.0, z.size)
    try:
        g = float(timeseries.statistical_inefficiency(z))
    except ParameterError:  # pymbar's own zero-variance test (round-off below ours)
        return CorrelatedError(0.0, 1.0, z.size)
    return CorrelatedError(math.sqrt(g * variance / z.size), g, z.size)


def suggested_burn_in(values, origins: int = 100) -> int:
    """Frames to drop from the start of a trajectory, by pymbar's ``detect_equilibration``.

    Args:
        values: (n,) an observable in time order (e.g. the reduced energy u, kT).
        origins: how many candidate starts to try, evenly spaced (pymbar's ``nskip`` is n // origins,
            which bounds the cost on long runs).
    Returns:
        the suggested first frame of the equilibrated part (0: nothing to drop).
    """
    a = _series(values, "values")
    timeseries, _ = _timeseries()
    start, _, _ = timeseries.detect_equilibration(a, fast=True, nskip=max(1, a.size // max(1, int(origins))))
    return int(start)


__all__ = ["CorrelatedError", "correlated_error", "suggested_burn_in"]
