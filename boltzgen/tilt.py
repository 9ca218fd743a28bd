"""Tilted runs: sample a target that gives rare basins more mass, then correct the weights exactly.

A tilt is a Fourier series b(phi) of an internal-coordinate model's dihedrals (a
:class:`~boltzgen.diffusion.calibration.DihedralCalibration`, damped the same way at noisy levels).
A run with tilt b samples

    exp(-(u(z) - b(phi)))   with the model   E_theta + c_t - b_t        (c: the model's own calibration)

and multiplies every final weight by exp(-b(phi)), so its weighted particles stay exact for exp(-u)
whatever b is. Why: SMC keeps every basin's mass right on average, but a basin is only as well
estimated as the number of lineages that carry it, and the resampling where the basins form leaves
a basin with 1-2 % of the mass one or two of them. A tilt that roughly balances the two sides of
each declared free energy (:func:`balance_tilt`) gives both sides a similar share of lineages. The
price is the final correction's spread (its Kish ESS is reported) and whatever the model's errors
weigh more where the tilt moves mass.

The tilt a model file carries (``metadata["sampling_tilt"]``, :func:`stored_tilt`) is written by
:func:`boltzgen.pipeline.tilting.fit_sampling_tilt`.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Callable

import numpy as np
import torch

from ._checks import check_count, check_probability
from .cvs import in_arc
from .diffusion.calibration import DihedralCalibration
from .smc.energy import EnergyFn

TiltFn = Callable[[torch.Tensor], torch.Tensor]
METADATA_KEY = "sampling_tilt"


def tilted_model(model, tilt: DihedralCalibration, fraction: float = 1.0) -> tuple[object, TiltFn]:
    """The model a tilted run's levels sample, and the tilt of its target.

    Args:
        model: an internal-coordinate model (with or without a calibration c).
        tilt: b, a DihedralCalibration over the model's dihedrals.
        fraction: how much of b to apply, in [0, 1].
    Returns:
        ``(model', tilt_fn)``: a copy of the model with calibration c - fraction b, and
        tilt_fn(z) = fraction b(phi) at zero noise, (n, d) -> (n,) kT in z's dtype. ``model`` is unchanged.
    """
    fraction = check_probability(fraction, "tilt")
    if tilt.n_periodic != getattr(model, "n_periodic", None):
        raise ValueError(f"the tilt covers {tilt.n_periodic} dihedrals but the model has "
                         f"{getattr(model, 'n_periodic', 'no')} (a tilt fitted for another model?)")
    moved = scaled(tilt, fraction)
    kept = combine(model.calibration, moved, -1.0)
    n_linear = model.n_linear

    def tilt_fn(z: torch.Tensor) -> torch.Tensor:
        per = z[:, n_linear:]
        return moved(per, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)).to(z.dtype)

    return model.with_calibration(kept), tilt_fn


def scaled(calibration: DihedralCalibration, factor: float) -> DihedralCalibration:
    """A copy of ``calibration`` with every coefficient times ``factor``."""
    return combine(None, calibration, factor)


def combine(a: DihedralCalibration | None, b: DihedralCalibration, factor: float) -> DihedralCalibration:
    """a + factor b as one DihedralCalibration (harmonics: the larger of the two; a None is zero), float64."""
    harmonics = max(b.n_harmonics, a.n_harmonics if a is not None else 0)
    out = DihedralCalibration(b.n_periodic, harmonics).double()
    with torch.no_grad():
        for source, weight in ((a, 1.0), (b, factor)):
            if source is None:
                continue
            k = source.n_harmonics
            out.cos_coefficients[:, :k] += weight * source.cos_coefficients.double().cpu()
            out.sin_coefficients[:, :k] += weight * source.sin_coefficients.double().cpu()
    return out


def tilted_energy(u: EnergyFn, tilt: TiltFn) -> EnergyFn:
    """z -> u(z) - tilt(z): the target a tilted run samples, (n, d) -> (n,) kT."""
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


# ---- a tilt that balances declared free energies ----------------------------------------------------
def _arc_moments(low: float, high: float, k: int = 1) -> tuple[float, float]:
    """(integral of cos k theta, integral of sin k theta) over the arc [low, high) (low > high wraps through pi)."""
    if low > high:
        c1, s1 = _arc_moments(low, math.pi, k)
        c2, s2 = _arc_moments(-math.pi, high, k)
        return c1 + c2, s1 + s2
    return (math.sin(k * high) - math.sin(k * low)) / k, (math.cos(k * low) - math.cos(k * high)) / k


def _step_coefficients(state: tuple, reference: tuple, harmonics: int) -> tuple[np.ndarray, np.ndarray]:
    """Fourier coefficients (a_k, b_k), k = 1..K, of 1[state] - 1[reference] with Lanczos sigma factors
    (which damp the ringing of a truncated step), each (K,)."""
    a, b = np.zeros(harmonics), np.zeros(harmonics)
    for k in range(1, harmonics + 1):
        cs, ss = _arc_moments(*state[1:], k)
        cr, sr = _arc_moments(*reference[1:], k)
        x = k / (harmonics + 1)
        sigma = math.sin(math.pi * x) / (math.pi * x) if harmonics > 1 else 1.0
        a[k - 1], b[k - 1] = sigma * (cs - cr) / math.pi, sigma * (ss - sr) / math.pi
    return a, b


def _one_arc(cvs, name: str):
    region = cvs.region(name)
    return region.arcs[0] if len(region.arcs) == 1 else None


def balance_tilt(dihedrals: np.ndarray, log_weights: np.ndarray, cvs, columns: dict[str, int],
                 n_periodic: int, harmonics: int = 1) -> tuple[DihedralCalibration, dict[str, float]]:
    """A tilt that brings both sides of each declared one-dihedral free energy to about equal mass.

    For a free energy between a state and a reference that are arcs of the same dihedral theta, the tilt
    adds s g(theta), with g the first ``harmonics`` Fourier harmonics of 1[state] - 1[reference] (with
    Lanczos sigma factors when more than one) and s chosen so that the tilt's mean difference between the
    two sides, under the given samples, equals their free-energy difference dF = -ln(P(state) /
    P(reference)): to first order the tilted samples hold both sides equally. More harmonics make g
    closer to a step, so the final correction exp(-b) varies less *within* each side (the weights then
    mostly reweight whole sides). Free energies whose states are not single arcs of one model dihedral
    are left untilted, and each dihedral is tilted once (its first free energy).

    Args:
        dihedrals: (n, D) the samples' dihedral coordinates, radians (e.g. a model's own samples).
        log_weights: (n,) their log-weights (any offset).
        cvs: the molecule's declaration (:class:`boltzgen.cvs.MoleculeCVs`).
        columns: {CV name: its column in ``dihedrals``} for the CVs that are model coordinates.
        n_periodic: D.
        harmonics: K >= 1.
    Returns:
        (the tilt (n_periodic dihedrals, K harmonics), {free-energy key: the dF it balances, kT}).
    """
    harmonics = check_count(harmonics, "harmonics")
    theta_all = np.asarray(dihedrals, dtype=np.float64)
    lw = np.asarray(log_weights, dtype=np.float64)
    w = np.exp(lw - lw.max())
    tilt = DihedralCalibration(n_periodic, harmonics).double()
    balanced, done = {}, set()
    for fe in cvs.free_energies:
        state, reference = _one_arc(cvs, fe.state), _one_arc(cvs, fe.reference)
        if state is None or reference is None or state[0] != reference[0] or state[0] not in columns:
            continue
        j = columns[state[0]]
        if j in done:
            continue
        theta = theta_all[:, j]
        in_state, in_reference = in_arc(theta, state[1], state[2]), in_arc(theta, reference[1], reference[2])
        mass_s, mass_r = w[in_state].sum(), w[in_reference].sum()
        if mass_s == 0 or mass_r == 0:
            raise ValueError(f"the samples hold no mass in {fe.state if mass_s == 0 else fe.reference!r}: draw more "
                             "samples to fit a tilt for the free energy " + repr(fe.key))
        a, b = _step_coefficients(state, reference, harmonics)
        k = np.arange(1, harmonics + 1)
        g = np.cos(theta[:, None] * k) @ a + np.sin(theta[:, None] * k) @ b
        gap = (w[in_state] @ g[in_state]) / mass_s - (w[in_reference] @ g[in_reference]) / mass_r
        if not gap > 1e-6:  # the harmonic does not tell the two sides apart on these samples
            raise ValueError(f"the free energy {fe.key!r}: its first Fourier harmonic does not separate "
                             f"{fe.state!r} from {fe.reference!r} on these samples (mean gap {gap:.3g}); no tilt fitted")
        delta_f = float(-math.log(mass_s / mass_r))
        scale = delta_f / gap
        with torch.no_grad():
            tilt.cos_coefficients[j] = torch.from_numpy(scale * a)
            tilt.sin_coefficients[j] = torch.from_numpy(scale * b)
        balanced[fe.key] = delta_f
        done.add(j)
    return tilt, balanced


# ---- stored in a model file ---------------------------------------------------------------------
def tilt_metadata(tilt: DihedralCalibration, **notes) -> dict:
    """The model-file metadata entry of a tilt (JSON-ready), with any notes (e.g. how it was fitted)."""
    return {"n_periodic": tilt.n_periodic, "n_harmonics": tilt.n_harmonics,
            "cos": tilt.cos_coefficients.double().cpu().tolist(), "sin": tilt.sin_coefficients.double().cpu().tolist(),
            **notes}


def tilt_digest(metadata: dict) -> str | None:
    """SHA-256 of a model file's stored tilt entry (None without one): identifies the tilt a run applied."""
    entry = metadata.get(METADATA_KEY)
    return None if entry is None else hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def stored_tilt(metadata: dict) -> DihedralCalibration | None:
    """The tilt a model file's metadata carries, or None."""
    entry = metadata.get(METADATA_KEY)
    if entry is None:
        return None
    tilt = DihedralCalibration(int(entry["n_periodic"]), int(entry["n_harmonics"])).double()
    with torch.no_grad():
        tilt.cos_coefficients.copy_(torch.tensor(entry["cos"], dtype=torch.float64))
        tilt.sin_coefficients.copy_(torch.tensor(entry["sin"], dtype=torch.float64))
    return tilt


def tilt_fraction(model_file, fraction: float | None) -> float:
    """The fraction of the stored tilt a run applies: ``fraction``, or for None all of the stored tilt when
    the file carries one (it was fitted to be sampled with), else 0."""
    if fraction is None:
        return 0.0 if stored_tilt(model_file.metadata) is None else 1.0
    return check_probability(fraction, "tilt")


def run_tilt(model_file, fraction: float | None) -> tuple[object, TiltFn | None]:
    """(model, tilt_fn) of a run with :func:`tilt_fraction` of the model file's stored tilt; (its model, None)
    when that is 0.

    Raises:
        ValueError: a fraction above 0 for a model file that carries no tilt.
    """
    fraction = tilt_fraction(model_file, fraction)
    if fraction == 0.0:
        return model_file.model, None
    tilt = stored_tilt(model_file.metadata)
    if tilt is None:
        raise ValueError(f"tilt={fraction} needs a model file that carries a sampling tilt (written by "
                         "boltzgen.pipeline.fit_sampling_tilt); this one has none: use tilt 0")
    return tilted_model(model_file.model, tilt, fraction)
