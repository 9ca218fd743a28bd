"""How good a trained energy model is as a proposal for a molecule's Boltzmann distribution.

On (held-out, optionally weighted) equilibrium frames x_i with physical reduced energy u(x_i):

* Delta_i = u(x_i) - E_theta(t_min, y(x_i)), with E_theta expressed as a density over positions
  (the space's log-Jacobian added). Its weighted spread is 0 for a perfect proposal: the one-step
  importance weights exp(E_theta - u) of the model's own samples would all be equal. A spread of
  s kT gives an importance ESS fraction of roughly exp(-s^2) for Gaussian Delta.
* The model's implied population of phi > 0 against the data's, by reweighting the frames with
  p_theta / p = exp(Delta) (self-normalised), reported as Delta F = -ln(P(phi > 0) / P(phi < 0)).

Held-out frames see the model only where the data are. The reverse direction -- where the model puts
mass that the data never visit (for a peptide: clashes between groups that no MD frame brings
together) -- is what SMC's bridge meets: :func:`own_sample_quality` scores the model's own samples at
t_min (:func:`boltzgen.sampling.model_samples`) by the same Delta, and gives the one-step importance
ESS of u from them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_count
from ..smc.weights import ess, normalized_weights, weighted_quantiles
from .dihedrals import phi_psi


@dataclass(frozen=True)
class ModelQuality:
    """Model-vs-force-field figures on held-out frames (all energies in kT).

    Attributes:
        n_frames: frames used.
        data_ess: Kish ESS of the frames' own weights (n_frames for plain MD).
        mean_kT, std_kT: weighted mean and standard deviation of u - E_theta(t_min) (position units).
        correlation: weighted Pearson correlation of u and E_theta(t_min).
        importance_ess_fraction: ESS / data_ess of the frames reweighted to the model, exp(Delta).
        delta_f_phi_positive_data_kT: -ln(P(phi>0)/P(phi<0)) of the (weighted) frames (backbone phi of
            the first residue that has one; NaN for a molecule without a peptide backbone).
        delta_f_phi_positive_model_kT: the same under the model (frames reweighted by exp(Delta)).
        residue_delta_f_data_kT, residue_delta_f_model_kT: the same two figures for every residue's
            phi, in backbone order (empty without a peptide backbone); the first equals the above.
        score_errors: relative error of the model's score by kind of coordinate, when the target's
            gradient was given: sqrt(mean |grad(E_theta - u_y)|^2 / mean |grad u_y|^2) over the
            coordinates of each kind ("bonds", "angles", "dihedrals" in internal coordinates; "all"
            in Cartesian ones); 0 for a perfect model. This is how the energy error splits.
    """

    n_frames: int
    data_ess: float
    mean_kT: float
    std_kT: float
    correlation: float
    importance_ess_fraction: float
    delta_f_phi_positive_data_kT: float
    delta_f_phi_positive_model_kT: float
    score_errors: dict | None = None
    residue_delta_f_data_kT: tuple = ()
    residue_delta_f_model_kT: tuple = ()

    def as_dict(self) -> dict:
        """The figures as a plain dict (JSON)."""
        return dict(self.__dict__)


@torch.no_grad()
def _energy_over_positions(model, space, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """E_theta(t_min) as a density over positions x (n, n_atoms, 3) nm: (n,) float64 kT on the CPU.

    E(t_min, y) models u(x(y)) - ln|det dx/dy| (+ a constant), so the log-Jacobian is added back per frame.
    """
    y = space.to_flat(x)
    device, t_min = model.data_mean.device, model.schedule.t_min
    return torch.cat([model.energy(t_min, y[s:s + chunk_size].to(device)).double().cpu()
                      for s in range(0, x.shape[0], chunk_size)]) + space.log_det_jacobian(y).cpu()


def _delta_f_phi_positive(phi: np.ndarray, w: np.ndarray) -> float:
    p = float(w[phi > 0].sum()) / float(w.sum())
    return -math.log(p / (1.0 - p)) if 0.0 < p < 1.0 else (math.inf if p == 0.0 else -math.inf)


@torch.no_grad()
def _coordinate_kinds(space) -> dict:
    """Index groups of a space's coordinates: bonds, angles, dihedrals (internal) or all (Cartesian)."""
    n_atoms = space.n_atoms
    if bool(space.periodic.any()):
        return {"bonds": slice(0, n_atoms - 1), "angles": slice(n_atoms - 1, 2 * n_atoms - 3),
                "dihedrals": slice(2 * n_atoms - 3, space.dim)}
    return {"all": slice(0, space.dim)}


def score_errors(model, space, target_energy, positions, log_weights, chunk_size: int = 2048) -> dict:
    """Relative score error of the model at t_min on frames, by kind of coordinate (see :class:`ModelQuality`).

    Args:
        model, space: the model and its coordinate space.
        target_energy: the target's reduced energy on (n, n_atoms, 3) nm, differentiable.
        positions: (n, n_atoms, 3) frames in nm; log_weights: (n,) their log-weights.
    """
    from ..smc import evaluate_with_grad

    x = torch.as_tensor(positions, dtype=torch.float64)
    y = space.to_flat(x)
    w = normalized_weights(torch.as_tensor(log_weights, dtype=torch.float64))
    t_min = float(model.schedule.t_min)
    _, g_u = evaluate_with_grad(space.flat_energy(target_energy), y, chunk_size)
    _, g_e = evaluate_with_grad(lambda v: model.energy(t_min, v.to(model.data_mean.device)), y, chunk_size)
    diff, ref = (g_e.cpu().double() - g_u.double()) ** 2, g_u.double() ** 2
    if space.projection is not None:
        diff, ref = space.projection(g_e.cpu().double() - g_u.double()) ** 2, space.projection(g_u.double()) ** 2
    return {kind: math.sqrt(float(w @ diff[:, cut].sum(1)) / float(w @ ref[:, cut].sum(1)))
            for kind, cut in _coordinate_kinds(space).items()}


def model_quality(model, space, reduced_energies, positions, topology, log_weights=None,
                  chunk_size: int = 2048, target_energy=None) -> ModelQuality:
    """Evaluate ``model`` at its lowest level against the physical energy on frames.

    Args:
        model: an EnergyModel on the flat coordinates of ``space``.
        space: the model's coordinate space (Cartesian or internal).
        reduced_energies: (n,) u(x) of the frames in kT (e.g. a target's ``reduced_energy(positions)``;
            computed once by the caller, who may score several models on the same frames).
        positions: (n, n_atoms, 3) frames in nm, e.g. held-out MD.
        topology: the molecule's topology (for phi).
        log_weights: optional (n,) log-weights of the frames (biased MD: +V/kT); None = equal.
        chunk_size: frames per model evaluation.
        target_energy: optional differentiable reduced energy on positions: then the score errors by
            kind of coordinate are reported too (one gradient of the target per frame).
    """
    x = torch.as_tensor(positions, dtype=torch.float64)
    n = x.shape[0]
    lw = torch.zeros(n, dtype=torch.float64) if log_weights is None else torch.as_tensor(log_weights, dtype=torch.float64)
    if lw.shape != (n,):
        raise ValueError(f"log_weights must have shape ({n},), one per frame, got {tuple(lw.shape)}")
    u = torch.as_tensor(reduced_energies, dtype=torch.float64).detach().reshape(-1)
    if u.shape != (n,):
        raise ValueError(f"reduced_energies must have shape ({n},), one per frame, got {tuple(u.shape)}")
    e = _energy_over_positions(model, space, x, chunk_size)
    delta = u - e
    keep = torch.isfinite(delta) & torch.isfinite(lw)
    w = normalized_weights(torch.where(keep, lw, torch.full_like(lw, -math.inf)))
    mean = float((w * torch.where(keep, delta, 0.0)).sum())
    centred = torch.where(keep, delta - mean, 0.0)
    std = math.sqrt(float((w * centred**2).sum()))
    cu = torch.where(keep, u - float((w * torch.where(keep, u, 0.0)).sum()), 0.0)
    ce = torch.where(keep, e - float((w * torch.where(keep, e, 0.0)).sum()), 0.0)
    corr = float((w * cu * ce).sum() / math.sqrt(float((w * cu**2).sum()) * float((w * ce**2).sum())))
    model_lw = torch.where(keep, lw + delta, torch.full_like(lw, -math.inf))
    try:
        phis = phi_psi(x, topology)[:, :, 0].numpy()  # (n, residues)
    except ValueError:  # no peptide backbone: the phi > 0 figures do not apply (NaN)
        phis = np.zeros((n, 0))
    data_w, model_w = w.numpy(), normalized_weights(model_lw).numpy()
    data_df = tuple(_delta_f_phi_positive(phi, data_w) for phi in phis.T)
    model_df = tuple(_delta_f_phi_positive(phi, model_w) for phi in phis.T)
    nan = float("nan")
    every = max(1, n // 5000)  # the gradients of the target cost one force evaluation per frame: at most ~5,000
    errors = None if target_energy is None else score_errors(model, space, target_energy, x[::every], lw[::every],
                                                             chunk_size)
    return ModelQuality(
        n_frames=int(n), data_ess=ess(lw), mean_kT=mean, std_kT=std, correlation=corr, score_errors=errors,
        importance_ess_fraction=ess(model_lw) / ess(lw),
        delta_f_phi_positive_data_kT=data_df[0] if data_df else nan,
        delta_f_phi_positive_model_kT=model_df[0] if model_df else nan,
        residue_delta_f_data_kT=data_df, residue_delta_f_model_kT=model_df,
    )


FAR_KT = 20.0  # Delta above its median by this much: weight below e^-20 of a typical sample


@dataclass(frozen=True)
class OwnSampleQuality:
    """The force field's view of the model's own samples at t_min (energies in kT).

    Attributes:
        n_samples: samples scored.
        one_step_ess_fraction: Kish ESS / n of the importance weights of u from the samples, their own
            weights times exp(-Delta), Delta = u - E_theta(t_min) (the log-Jacobian added): with the
            levels' weights this is the one-step bridge ESS of a run.
        delta_quantiles_kT: {"5%", "25%", "50%", "75%", "95%"}: weighted quantiles of Delta minus its
            weighted median (non-finite Delta counts as +inf).
        far_fraction: the samples' weight whose Delta exceeds the median by more than 20 kT (the force
            field gives them under e^-20 of a typical sample's weight: mass the model wastes, e.g. on
            clashes); non-finite energies count here.
    """

    n_samples: int
    one_step_ess_fraction: float
    delta_quantiles_kT: dict
    far_fraction: float

    def as_dict(self) -> dict:
        """The figures as a plain dict (JSON)."""
        return dict(self.__dict__)


@torch.no_grad()
def own_sample_quality(model, space, positions, reduced_energies, log_weights=None,
                       chunk_size: int = 2048) -> OwnSampleQuality:
    """Score the model's own samples against the force field (see :class:`OwnSampleQuality`).

    Args:
        model: an EnergyModel on the flat coordinates of ``space``.
        space: its coordinate space.
        positions: (n, n_atoms, 3) samples of the model at t_min in nm (:func:`boltzgen.sampling.model_samples`).
        reduced_energies: (n,) u of those samples in kT (may be +inf or NaN for broken geometry).
        log_weights: (n,) their log-weights toward the model's t_min density (the levels' weights), or
            None for equally weighted samples. The ESS is then that of log_weights - Delta, exactly the
            one-step bridge ESS of a run, and the quantiles and the far share are weighted.
        chunk_size: samples per model evaluation.
    """
    chunk_size = check_count(chunk_size, "chunk_size")
    x = torch.as_tensor(positions, dtype=torch.float64)
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[2] != 3:
        raise ValueError(f"positions must have shape (n, n_atoms, 3) in nm with n >= 1, got {tuple(x.shape)}")
    n = x.shape[0]
    u = torch.as_tensor(reduced_energies, dtype=torch.float64).detach().cpu().reshape(-1)
    if u.shape != (n,):
        raise ValueError(f"reduced_energies must have shape ({n},), one per sample, got {tuple(u.shape)}")
    lw = torch.zeros(n, dtype=torch.float64) if log_weights is None else \
        torch.as_tensor(log_weights, dtype=torch.float64).detach().cpu().reshape(-1)
    if lw.shape != (n,) or torch.isnan(lw).any() or (lw == math.inf).any():
        raise ValueError(f"log_weights must have shape ({n},), finite or -inf, got shape {tuple(lw.shape)}")
    e = _energy_over_positions(model, space, x, chunk_size)
    delta = torch.where(torch.isfinite(u), u - e, torch.full_like(u, math.inf))
    finite = torch.isfinite(delta)
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    w = normalized_weights(lw).numpy()
    if not (finite.numpy() & (w > 0)).any():
        return OwnSampleQuality(int(n), 0.0, {f"{round(100 * q)}%": math.inf for q in levels}, 1.0)
    keep = finite.numpy() & (w > 0)
    (median,) = weighted_quantiles(delta[keep], lw[keep], (0.5,))
    # non-finite Delta counts as +inf: on the far side of every quantile
    shifted = torch.where(finite, delta - median, torch.full_like(delta, math.inf)).numpy()
    quantiles = dict(zip((f"{round(100 * q)}%" for q in levels), weighted_quantiles(shifted, lw, levels)))
    importance = torch.where(finite, lw - (delta - median), torch.full_like(delta, -math.inf))
    return OwnSampleQuality(
        n_samples=int(n), one_step_ess_fraction=ess(importance) / n, delta_quantiles_kT=quantiles,
        far_fraction=float(w[shifted > FAR_KT].sum()))
