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
coordinates, log-Jacobian included); see :func:`fit_dihedral_calibration`.
The calibrated model is E_theta(t, z) + c_t(phi_t), where c_t damps harmonic k by
exp(-k^2 s_t^2 / 2), s_t the dihedrals' noise at level t: c convolved with the wrapped-normal
noising kernel. That is an approximation of the noised tilt (exact for small c only where the
model's dihedral marginal is flat across the kernel); SMC's weights keep the result exact, but a
poor intermediate tilt costs lineages. It vanishes at t = 1 (s_1 ~ 150 rad), where the model must
stay its analytic top level.
"""
from __future__ import annotations

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
    n, d = phi.shape
    r = torch.as_tensor(residuals, dtype=torch.float64).reshape(-1).cpu()
    if r.shape != (n,) or not torch.isfinite(r).all():
        raise ValueError(f"residuals must be finite with shape ({n},) (one per frame), got {tuple(r.shape)}")
    w = torch.ones(n, dtype=torch.float64) if weights is None \
        else torch.as_tensor(weights, dtype=torch.float64).cpu()
    if w.shape != (n,) or not (w >= 0).all() or not w.sum() > 0:
        raise ValueError(f"weights must be non-negative with shape ({n},) and a positive sum")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    mask = torch.ones(d, dtype=torch.bool) if fitted is None else torch.as_tensor(fitted, dtype=torch.bool)
    if mask.shape != (d,) or not mask.any():
        raise ValueError(f"fitted must be a bool mask of shape ({d},) with at least one True")
    calibration = DihedralCalibration(d, n_harmonics)
    cos, sin = calibration.features(phi[:, mask])
    m = int(mask.sum())
    design = torch.cat([cos.reshape(n, -1), sin.reshape(n, -1)], dim=1)  # (n, 2 m K)
    log_p = torch.log(w / w.sum())
    p = log_p.exp()
    r = r - r.max()  # the constant is free; this keeps exp(r - c) in range
    beta = torch.zeros(design.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([beta], max_iter=1000, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        c = design @ beta
        loss = p @ c + torch.logsumexp(log_p + r - c, 0) + ridge * (beta**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    beta = beta.detach()
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
    e = torch.cat([bare.energy(t_min, z[s:s + chunk_size]).double() for s in range(0, z.shape[0], chunk_size)])
    residuals = torch.as_tensor(energies, dtype=torch.float64).reshape(-1).to(e.device) - e
    phi = z[:, bare.n_linear:].double().cpu()
    spread = bare.coordinate_variance[bare.n_linear:].double().sqrt().cpu()
    if not (spread > min_spread).any():
        raise ValueError(f"no dihedral of the model spreads more than min_spread={min_spread} rad: "
                         "nothing to calibrate")
    fitted = fit_dihedral_calibration(phi, residuals.cpu(), n_harmonics, weights, fitted=spread > min_spread)
    return bare.with_calibration(fitted)
