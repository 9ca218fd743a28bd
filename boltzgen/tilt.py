"""A tilted run: move part of the model's dihedral calibration from the model into the target.

An internal-coordinate model calibrated by a Fourier tilt c(phi) (:mod:`boltzgen.diffusion.calibration`)
is E_theta + c. A run with tilt fraction ``alpha`` samples the tilted target

    exp(-(u(z) - alpha c(phi)))   with the model   E_theta + (1 - alpha) c_t,

and multiplies every final weight by exp(-alpha c(phi)), so its weighted particles stay exact for
exp(-u) whatever c is. Why: the SMC weights keep every basin's mass right on average, but a basin
is only as well estimated as the number of lineages that carry it, and the resampling where the
basins form leaves a rare basin (1-2 % of the mass) with one or two. The calibration c is what pulls the
network's own (often broader) dihedral marginals down to the target's, so with alpha = 1 the rare
basins keep the share of lineages the bare network gives them, while the one-step bridge ESS is
unchanged (the bridge compares the same two densities, each times exp(alpha c)). The cost is the
final correction's spread, reported as its Kish ESS.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from ._checks import check_probability

TiltFn = Callable[[torch.Tensor], torch.Tensor]


def split_calibration(model, fraction: float) -> tuple[object, TiltFn | None]:
    """The model with ``1 - fraction`` of its calibration, and the moved part as a tilt of the target.

    Args:
        model: an internal-coordinate model with a fitted ``calibration`` (or any model when
            ``fraction`` is 0).
        fraction: alpha in [0, 1]; 0 returns ``(model, None)`` unchanged.
    Returns:
        ``(model, tilt)``: a copy of the model whose calibration is scaled by ``1 - fraction``, and
        tilt(z) = fraction * c(phi) at zero noise, (n, d) -> (n,) kT (the model's coordinates; the
        same dtype and device as z). ``model`` itself is unchanged.
    """
    fraction = check_probability(fraction, "tilt")
    if fraction == 0.0:
        return model, None
    calibration = getattr(model, "calibration", None)
    if calibration is None:
        raise ValueError(f"tilt={fraction} needs a model with a dihedral calibration (an internal-coordinate model "
                         "trained with --calibration-harmonics); this model has none: use tilt 0")
    moved = _scaled(calibration, fraction)
    kept = None if fraction == 1.0 else _scaled(calibration, 1.0 - fraction)
    n_linear = model.n_linear

    def tilt(z: torch.Tensor) -> torch.Tensor:
        per = z[:, n_linear:]
        return moved(per, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)).to(z.dtype)

    return model.with_calibration(kept), tilt


def _scaled(calibration, factor: float):
    """A copy of a DihedralCalibration with its coefficients times ``factor``."""
    out = copy.deepcopy(calibration)
    with torch.no_grad():
        out.cos_coefficients.mul_(factor)
        out.sin_coefficients.mul_(factor)
    return out


def tilted_energy(u: TiltFn, tilt: TiltFn) -> TiltFn:
    """x -> u(x) - tilt(x): the target a tilted run samples, (n, d) -> (n,) kT."""
    return lambda z: u(z) - tilt(z)


def untilt(log_weights: torch.Tensor, particles: torch.Tensor, tilt: TiltFn, chunk_size: int = 4096) -> torch.Tensor:
    """Log-weights toward exp(-u) from a tilted run's log-weights toward exp(-(u - tilt)).

    Args:
        log_weights: (n,) toward the tilted target (log_mean_exp = its log Z).
        particles: (n, d) in the model's coordinates.
        tilt: the run's tilt, (n, d) -> (n,) kT.
        chunk_size: particles per evaluation.
    Returns:
        (n,) log_weights - tilt(particles), float64, whose log_mean_exp estimates log Z of exp(-u).
    """
    with torch.no_grad():
        moved = torch.cat([tilt(chunk) for chunk in particles.split(chunk_size)])
    return log_weights.to(torch.float64) - moved.to(torch.float64)
