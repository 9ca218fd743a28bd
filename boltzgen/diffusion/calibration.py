"""Dihedral calibration: a fitted Fourier correction of an internal-coordinate model's dihedral energies.

Score-based training (DSM, target score matching) constrains gradients, so the free-energy offsets
between basins separated by a dihedral barrier are learned only through DiffCLF's global signal;
on alanine tetrapeptide the trained model placed the rare phi3 > 0 basins ~5 kT too high, and SMC
could not restore their mass. Those offsets are, to a good approximation, functions of the
dihedrals alone, so they can be fitted after training, on frames of the target that visit every
basin (biased MD with its weights), and ideally frames the network never saw:

    E_theta(t_min, z) + c(phi),   c(phi) = sum_j sum_k a_jk cos(k phi_j) + b_jk sin(k phi_j),

with c the maximum-likelihood tilt: it minimises KL(p || p_theta e^{-c}), a convex problem in the
coefficients whose data are the residuals u_y - E_theta(t_min) (u_y: the force field in the model's
coordinates, log-Jacobian included); see :func:`fit_dihedral_calibration`. That estimates the model's
normaliser on the frames, which cannot see mass the model puts where no frame is (a peptide model
can put most of its own mass in a basin the data rarely visit); :func:`calibrate_on_samples` takes
it on the model's own samples instead (:func:`fit_dihedral_calibration_on_samples`), so the tilted
model's own dihedral marginals match the data's.
The calibrated model is E_theta(t, z) + c_t(phi_t), where c_t damps harmonic k by
exp(-k^2 s_t^2 / 2), s_t the dihedrals' noise at level t: c convolved with the wrapped-normal
noising kernel. That is an approximation of the noised tilt (exact for small c only where the
model's dihedral marginal is flat across the kernel); SMC's weights keep the result exact, but a
poor intermediate tilt costs lineages. It vanishes at t = 1 (s_1 ~ 150 rad), where the model must
stay its analytic top level.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_count, check_flat


class DihedralCalibration(nn.Module):
    """c_t(phi): per-dihedral Fourier series with heat-kernel damping (zero until fitted).

    Args:
        n_periodic: number of dihedrals D.
        n_harmonics: harmonics K per dihedral.

    Buffers ``cos_coefficients`` and ``sin_coefficients`` (D, K) hold a_jk and b_jk in kT.
    """

    def __init__(self, n_periodic: int, n_harmonics: int):
        super().__init__()
        self.n_periodic = check_count(n_periodic, "n_periodic")
        self.n_harmonics = check_count(n_harmonics, "n_harmonics")
        self.register_buffer("cos_coefficients", torch.zeros(self.n_periodic, self.n_harmonics))
        self.register_buffer("sin_coefficients", torch.zeros(self.n_periodic, self.n_harmonics))
        self.register_buffer("harmonics", torch.arange(1, self.n_harmonics + 1, dtype=torch.float32), persistent=False)

    def features(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos(k phi) and sin(k phi), each (n, D, K), for dihedrals phi (n, D) in radians."""
        angle = phi[:, :, None] * self.harmonics.to(phi)
        return torch.cos(angle), torch.sin(angle)

    def forward(self, phi: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        """c_t(phi) (n,) kT, for dihedrals phi (n, D) radians and the dihedral noise variance s_t^2 (n,) rad^2."""
        cos, sin = self.features(phi)
        damping = torch.exp(-0.5 * self.harmonics.to(phi) ** 2 * noise_variance.to(phi)[:, None])  # (n, K)
        terms = cos * self.cos_coefficients.to(phi) + sin * self.sin_coefficients.to(phi)  # (n, D, K)
        return (terms * damping[:, None, :]).sum((1, 2))


def fit_dihedral_calibration(phi, residuals, n_harmonics: int, weights=None, ridge: float = 1e-4,
                             fitted=None) -> DihedralCalibration:
    """The maximum-likelihood Fourier tilt of the model on frames of the target.

    With r = u_y - E_theta(t_min) and the tilted model p_c ~ exp(-E_theta - c), minimises over the
    coefficients of c

        KL(p || p_c) + const = E_p[c - r] + log E_p[exp(r - c)]   (+ ridge |coefficients|^2),

    a convex problem whose optimum matches the tilted model's Fourier moments of every fitted
    dihedral to the data's: E_{p_c}[cos k phi_j] = E_p[cos k phi_j] (same for sin). KL(p || p_c)
    is the mass-covering direction: it is what a proposal pays for missing a basin of p.

    Args:
        phi: (n, D) dihedrals of the frames, radians.
        residuals: (n,) u_y - E_theta(t_min) of the same frames, kT (any constant offset).
        n_harmonics: K harmonics per dihedral.
        weights: optional (n,) non-negative weights that make the frames a sample of p (biased MD:
            exp(+V/kT)); None: equal (plain MD frames).
        ridge: weight of the coefficients' squared norm (kT per kT^2): keeps a direction the data
            do not determine from running away.
        fitted: optional (D,) bool mask of the dihedrals to fit (the others keep zero coefficients);
            None fits all. A stiff dihedral (spread ~0.1 rad) has nearly collinear harmonics, whose
            large fitted coefficients do not carry over to other frames: leave those out.

    Returns the fitted :class:`DihedralCalibration` (float32 buffers).
    """
    phi = check_flat(phi, "phi").to(device="cpu", dtype=torch.float64)  # a small fit: on the CPU
    n = phi.shape[0]
    r = torch.as_tensor(residuals, dtype=torch.float64).reshape(-1).cpu()
    if r.shape != (n,) or not torch.isfinite(r).all():
        raise ValueError(f"residuals must be finite with shape ({n},) (one per frame), got {tuple(r.shape)}")
    log_p = _log_frame_weights(weights, n)
    # the model's normaliser on the frames themselves: E_q[exp(-c)] is E_p[exp(r - c)] up to a constant
    return _fit_tilt(phi, log_p, phi, log_p + r - r.max(), n_harmonics, ridge, fitted)


def fit_dihedral_calibration_on_samples(phi, weights, sample_phi, sample_log_weights, n_harmonics: int,
                                        ridge: float = 1e-4, fitted=None) -> DihedralCalibration:
    """The maximum-likelihood Fourier tilt, with the model's normaliser taken on the model's own samples.

    Minimises KL(p || q_c) + const = E_p[c] + log E_q[exp(-c)] (+ ridge |coefficients|^2) over the
    coefficients of c, with E_p over frames of the target and E_q over weighted samples of the model
    q ~ exp(-E_theta(t_min)). :func:`fit_dihedral_calibration` estimates E_q on the frames instead,
    which cannot see mass the model puts where no frame is; here that mass counts, so the tilted
    model's own Fourier moments (all of its mass) match the data's. Convex, as there.

    Args:
        phi: (n, D) dihedrals of the target's frames, radians.
        weights: optional (n,) non-negative weights that make the frames a sample of p; None: equal.
        sample_phi: (m, D) dihedrals of the model's own samples, radians.
        sample_log_weights: (m,) their log-weights toward q (any offset; -inf: no weight).
        n_harmonics, ridge, fitted: as for :func:`fit_dihedral_calibration`.

    Returns the fitted :class:`DihedralCalibration` (float32 buffers).
    """
    phi = check_flat(phi, "phi").to(device="cpu", dtype=torch.float64)
    sample_phi = check_flat(sample_phi, "sample_phi", phi.shape[1]).to(device="cpu", dtype=torch.float64)
    m = sample_phi.shape[0]
    log_q = torch.as_tensor(sample_log_weights, dtype=torch.float64).reshape(-1).cpu()
    if log_q.shape != (m,) or torch.isnan(log_q).any() or (log_q == math.inf).any() or not torch.isfinite(log_q).any():
        raise ValueError(f"sample_log_weights must have shape ({m},), finite or -inf with at least one finite, "
                         f"got shape {tuple(log_q.shape)}")
    return _fit_tilt(phi, _log_frame_weights(weights, phi.shape[0]), sample_phi, log_q - log_q.max(), n_harmonics,
                     ridge, fitted)


def _log_frame_weights(weights, n: int) -> torch.Tensor:
    """Normalised log-weights (n,) float64 of the frames (equal for None), or a ValueError naming ``weights``."""
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64).cpu()
    if w.shape != (n,) or not (w >= 0).all() or not w.sum() > 0:
        raise ValueError(f"weights must be non-negative with shape ({n},) and a positive sum")
    return torch.log(w / w.sum())


def _fit_tilt(phi_p, log_p, phi_q, log_q, n_harmonics: int, ridge: float, fitted) -> DihedralCalibration:
    """Minimise E_p[c] + log E_q[exp(-c)] + ridge |beta|^2 over c's coefficients beta (L-BFGS, float64).

    ``phi_p`` (n, D) with normalised log-weights ``log_p`` (n,) sample p; ``phi_q`` (m, D) with log-weights
    ``log_q`` (m,) (any offset) sample q; ``fitted`` is the (D,) bool mask of the dihedrals to fit (None: all).
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    d = phi_p.shape[1]
    mask = torch.ones(d, dtype=torch.bool) if fitted is None else torch.as_tensor(fitted, dtype=torch.bool)
    if mask.shape != (d,) or not mask.any():
        raise ValueError(f"fitted must be a bool mask of shape ({d},) with at least one True")
    calibration = DihedralCalibration(d, n_harmonics)

    def design(phi):  # (rows, 2 m K): cos then sin of every fitted dihedral and harmonic
        cos, sin = calibration.features(phi[:, mask])
        return torch.cat([cos.reshape(len(phi), -1), sin.reshape(len(phi), -1)], dim=1)

    design_p, design_q, p = design(phi_p), design(phi_q), log_p.exp()
    beta = torch.zeros(design_p.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([beta], max_iter=1000, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = p @ (design_p @ beta) + torch.logsumexp(log_q - design_q @ beta, 0) + ridge * (beta**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    beta = beta.detach()
    m = int(mask.sum())
    half = m * n_harmonics
    calibration.cos_coefficients[mask] = beta[:half].reshape(m, n_harmonics).to(calibration.cos_coefficients)
    calibration.sin_coefficients[mask] = beta[half:].reshape(m, n_harmonics).to(calibration.sin_coefficients)
    return calibration


@torch.no_grad()
def calibrate(model, z, energies, n_harmonics: int, weights=None, min_spread: float = 0.35,
              chunk_size: int = 4096):
    """``model`` with a dihedral calibration fitted on frames (a new model; ``model`` is unchanged).

    Args:
        model: an InternalEnergy (any calibration it carries is refitted from scratch).
        z: (n, d) frames in the model's flat internal coordinates.
        energies: (n,) the target's reduced energy in the same coordinates, u_y (kT, log-Jacobian included).
        n_harmonics: K harmonics per dihedral.
        weights: optional (n,) weights that make the frames a sample of the target (biased MD:
            exp(+V/kT)); None: equal (plain MD).
        min_spread: only dihedrals whose circular standard deviation in the model's training data
            (``model.coordinate_variance``) exceeds this many radians are calibrated: the rotatable
            ones (backbone phi/psi, methyl rotors), where basins are separated by barriers, not
            the stiff ones (~0.1 rad), whose offsets the scores already fix.
        chunk_size: frames per model evaluation.
    """
    if not hasattr(model, "with_calibration"):
        raise TypeError(f"model must be an internal-coordinate model (InternalEnergy), got {type(model).__name__}")
    bare = model.with_calibration(None)
    z = check_flat(z, "z", bare.dim).to(bare.data_mean)
    t_min = float(bare.schedule.t_min)
    e = _energies(bare, t_min, z, chunk_size)
    residuals = torch.as_tensor(energies, dtype=torch.float64).reshape(-1).to(e.device) - e
    phi = z[:, bare.n_linear:].double().cpu()
    fitted = fit_dihedral_calibration(phi, residuals.cpu(), n_harmonics, weights, fitted=_rotatable(bare, min_spread))
    return bare.with_calibration(fitted)


def _rotatable(bare, min_spread: float) -> torch.Tensor:
    """(D,) bool: the dihedrals whose circular spread in the model's training data exceeds ``min_spread`` rad."""
    spread = bare.coordinate_variance[bare.n_linear:].double().sqrt().cpu()
    if not (spread > min_spread).any():
        raise ValueError(f"no dihedral of the model spreads more than min_spread={min_spread} rad: "
                         "nothing to calibrate")
    return spread > min_spread


def _energies(model, t: float, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
    return torch.cat([model.energy(t, z[s:s + chunk_size]).double() for s in range(0, z.shape[0], chunk_size)])


@torch.no_grad()
def calibrate_on_samples(model, z, draw, n_harmonics: int, weights=None, rounds: int = 2,
                         min_spread: float = 0.35, chunk_size: int = 4096):
    """``model`` with a dihedral calibration whose normaliser is taken on the model's own samples.

    Each round draws weighted samples of the current model at t_min (``draw``: the sampler's levels),
    reads them as samples of the bare model (their weights times exp(+c) of the current calibration
    c, which the draw's levels included) and refits the tilt from scratch with
    :func:`fit_dihedral_calibration_on_samples`. One round gives the maximum-likelihood tilt already;
    further rounds draw where the tilted model puts its mass, so the normaliser is estimated there
    and the weights stay even.

    Args:
        model: an InternalEnergy (any calibration it carries is refitted from scratch).
        z: (n, d) frames of the target in the model's flat internal coordinates.
        draw: ``draw(model) -> (z_own (m, d), log_weights (m,))``, weighted samples of ``model`` at
            t_min in the same coordinates (e.g. :func:`boltzgen.sampling.model_samples`' particles).
        n_harmonics: K harmonics per dihedral.
        weights: optional (n,) weights that make the frames a sample of the target; None: equal.
        rounds: draws and refits (>= 1).
        min_spread, chunk_size: as for :func:`calibrate`.
    """
    if not hasattr(model, "with_calibration"):
        raise TypeError(f"model must be an internal-coordinate model (InternalEnergy), got {type(model).__name__}")
    rounds = check_count(rounds, "rounds")
    bare = model.with_calibration(None)
    z = check_flat(z, "z", bare.dim).to(bare.data_mean)
    fitted_mask, t_min = _rotatable(bare, min_spread), float(bare.schedule.t_min)
    phi = z[:, bare.n_linear:].double().cpu()
    current = bare
    for _ in range(rounds):
        z_own, log_w = draw(current)
        z_own = check_flat(z_own, "draw's samples", bare.dim).to(bare.data_mean)
        # samples of exp(-E - c) are samples of exp(-E) with weights times exp(+c)
        log_w = torch.as_tensor(log_w, dtype=torch.float64).reshape(-1).to(z_own.device)
        if current is not bare:
            log_w = log_w + _energies(current, t_min, z_own, chunk_size) - _energies(bare, t_min, z_own, chunk_size)
        fitted = fit_dihedral_calibration_on_samples(phi, weights, z_own[:, bare.n_linear:].double().cpu(),
                                                     log_w.cpu(), n_harmonics, fitted=fitted_mask)
        current = bare.with_calibration(fitted)
    return current
