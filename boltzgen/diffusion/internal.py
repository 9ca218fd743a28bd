"""A diffusion energy-based model in internal coordinates: bonds and angles on the line, dihedrals on the circle.

Coordinates z (n, d) of an :class:`~boltzgen.coordinates.internal.InternalSpace`: L standardised
bonds and angles, then D dihedrals in radians (``periodic``). Noise at level t, with the
variance-preserving schedule's alpha_t, sigma_t:

    linear:    z_t = alpha_t z_0 + sigma_t eps                          (as the Cartesian model)
    periodic:  z_t = wrap(z_0 + s_t eps),  s_t = sigma_t / alpha_t        (variance exploding, wrapped)

so both kinds see the same signal-to-noise ratio at every t, and at t = 1 (s_1 ~ 150 rad) the
dihedrals are uniform on the circle. The energy

    E(t, z) = sum_linear z^2 / (2 v_t) - sum_dihedrals log M_t(z) + (1 - t) g_theta(t, z),

has an analytic base that is the exact noised marginal of a simple fit: each standardised
coordinate N(0, 1) (v_t = alpha_t^2 + sigma_t^2), each dihedral a mixture of wrapped normals M
fitted to the data (:class:`~boltzgen.diffusion.circular.WrappedMixture`), noised to s_t by
adding s_t^2 to every component's variance. The network g sees the noised linear coordinates
standardised by v_t and cos/sin of every dihedral, so the energy is periodic in each dihedral;
the factor (1 - t) makes E(1, .) the known base (Gaussian times uniform), which anchors the
learned log-normaliser f(t) as for the Cartesian model: f(1) = (L / 2) log(2 pi v_1). A model may
carry a fitted dihedral calibration c_t (boltzgen.diffusion.calibration), added to E; it vanishes at t = 1.

DSM in these coordinates regresses the conditional score of each coordinate's noising kernel:
-eps / sigma_t on the line, the wrapped normal's score on the circle, weighted by sigma_t and s_t
(:meth:`InternalEnergy.dsm_residual`). The reverse-diffusion proposal of SMC
(:class:`WrappedReverseDiffusion`) uses the DDPM posterior step on the line and its
variance-exploding analogue on the circle, with wrapped normal densities for the backward and
forward kernels, so its weights stay exact.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_count, check_flat
from ..smc.kernels import ParticleState
from .calibration import DihedralCalibration
from .circular import WrappedMixture, log_wrapped_normal, wrap, wrapped_normal_score
from .networks import EnergyModel, ResidualBlock
from .schedule import schedule_from_config


class PeriodicCorrection(nn.Module):
    """g(t, z): a residual MLP of [linear coordinates / sqrt(v_t), cos and sin of the dihedrals, time]; zero at init."""

    def __init__(self, n_linear: int, n_periodic: int, hidden: int = 256, n_blocks: int = 3, n_time_features: int = 16):
        super().__init__()
        self.config = dict(hidden=hidden, n_blocks=n_blocks)
        self.n_linear = n_linear
        e = 2 * n_time_features
        self.inp = nn.Linear(n_linear + 2 * n_periodic + e, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, e) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z, v_t, emb) -> torch.Tensor:
        lin, per = z[:, :self.n_linear], z[:, self.n_linear:]
        h = self.inp(torch.cat([lin / v_t.sqrt()[:, None], torch.cos(per), torch.sin(per), emb], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(h)).squeeze(-1)


class InternalEnergy(EnergyModel):
    """E_theta(t, z) for flat internal coordinates z (n, n_linear + n_periodic) (see the module docstring).

    Args:
        n_linear: standardised bonds and angles (first in z).
        n_periodic: dihedrals (last in z), radians.
        schedule: variance-preserving noise schedule (LogSNRSchedule is the molecular default).
        hidden, n_blocks, n_time_features: network size.
        n_components: wrapped normals per dihedral in the base.

    Call :meth:`fit` on the training data (and weights) before training, to fit the dihedral base.
    """

    def __init__(self, n_linear: int, n_periodic: int, schedule, hidden: int = 256, n_blocks: int = 3,
                 n_time_features: int = 16, n_components: int = 3):
        n_linear = check_count(n_linear, "n_linear", minimum=0)
        n_periodic = check_count(n_periodic, "n_periodic", minimum=0)
        dim = check_count(n_linear + n_periodic, "n_linear + n_periodic")
        correction = PeriodicCorrection(n_linear, n_periodic, hidden, n_blocks, n_time_features)
        super().__init__(correction, "internal", dim, schedule, None, 1.0, n_time_features, max(n_linear, 1))
        self.config.update(n_linear=n_linear, n_periodic=n_periodic, n_components=n_components)
        self.n_linear, self.n_periodic = n_linear, n_periodic
        # the anchor of the learned log-normaliser is f(1) = (L / 2) log(2 pi v_1): the dihedral base
        # is normalised on the circle, so only the L linear coordinates count, none when L = 0
        # (EnergyModel needs subspace_dim >= 1, hence the max(n_linear, 1) passed above)
        self.log_normaliser_net.dim = n_linear
        self.dihedral_base = WrappedMixture(n_periodic, n_components)
        periodic = torch.zeros(dim, dtype=torch.bool)
        periodic[n_linear:] = True
        self.register_buffer("periodic", periodic)
        # per-coordinate data variance for the reverse steps: 1 for standardised coordinates, the
        # dihedral base's spread for dihedrals (set by fit)
        self.register_buffer("coordinate_variance", torch.ones(dim))
        # a fitted DihedralCalibration (see with_calibration); only a calibrated model has
        # calibration_harmonics in its config, so uncalibrated configs (and checkpoints) are as before
        self.calibration = None

    @torch.no_grad()
    def fit(self, z0: torch.Tensor, weights: torch.Tensor | None = None) -> "InternalEnergy":
        """Fit the dihedral base (and the dihedrals' spread) to clean data z0 (N, d), optional weights (N,); returns self."""
        z0 = check_flat(z0, "z0", self.dim)
        per = z0[:, self.n_linear:].to(torch.float64)
        self.dihedral_base.fit(per, weights)
        w = torch.full((z0.shape[0],), 1.0 / z0.shape[0], dtype=torch.float64) if weights is None \
            else weights.to(torch.float64) / weights.sum()
        resultant = torch.sqrt((w @ torch.cos(per)) ** 2 + (w @ torch.sin(per)) ** 2).clamp(1e-6, 1 - 1e-12)
        self.coordinate_variance[self.n_linear:] = (-2.0 * torch.log(resultant)).to(self.coordinate_variance.dtype)
        return self

    # --- noise --------------------------------------------------------------------------------
    def noise_scales(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) per coordinate, each (n, d): (alpha_t, sigma_t) on the line, (1, sigma_t / alpha_t) on the circle."""
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        a = torch.where(self.periodic, torch.ones_like(alpha)[:, None], alpha[:, None])
        s = torch.where(self.periodic, (sigma / alpha)[:, None], sigma[:, None])
        return a, s

    def noise(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """z_t from clean z0 (n, d) at levels t (n,) or scalar with standard normal eps (n, d)."""
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[0])
        a, s = self.noise_scales(t)
        zt = a * x0 + s * eps
        return torch.where(self.periodic, wrap(zt), zt)

    def dsm_residual(self, score: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """scale * (model score - conditional score of the noising kernel), (n, d): the DSM residual.

        On the line this is sigma_t s + eps; on the circle s_t (s - d/dz log WN(z_t - z_0; s_t^2)).
        """
        t = torch.as_tensor(t, dtype=xt.dtype, device=xt.device).expand(xt.shape[0])
        a, s = self.noise_scales(t)
        linear = s * score + eps
        circular = s * (score - wrapped_normal_score(xt - x0, s**2))
        return torch.where(self.periodic, circular, linear)

    def tsm_target(self, score0: torch.Tensor, t) -> torch.Tensor:
        """The noised density's score at low noise from the clean score: score0 / alpha_t on the line, score0 on the circle."""
        t = torch.as_tensor(t, dtype=score0.dtype, device=score0.device).expand(score0.shape[0])
        a, _ = self.noise_scales(t)
        return score0 / a

    # --- energies -----------------------------------------------------------------------------
    def energy(self, t, x) -> torch.Tensor:
        """E_theta(t, z): t a float or (n,) times in [0, 1], z (n, d) -> (n,) energies (kT)."""
        t, z = self._prepare(t, x)
        alpha, sigma, v_t = self._levels(t)
        lin, per = z[:, :self.n_linear], z[:, self.n_linear:]
        base = 0.5 * (lin**2).sum(1) / v_t - self.dihedral_base.log_prob(per, (sigma / alpha) ** 2).sum(1)
        emb = self.embed(sigma**2 / v_t)
        energy = base + (1.0 - t) * self.correction(z, v_t, emb)
        if self.calibration is not None:
            energy = energy + self.calibration(per, (sigma / alpha) ** 2)
        return energy

    forward = energy

    def with_calibration(self, calibration: DihedralCalibration | None) -> "InternalEnergy":
        """A copy of this model with ``calibration`` added to its energy (None: without one); self is unchanged.

        The learned log-normaliser f(t) is not adjusted: a calibrated model's ``log_prob`` at t < 1 is
        off by log E[exp(-c_t)] (SMC weights do not use it; further DiffCLF training refits f).
        """
        if calibration is not None and calibration.n_periodic != self.n_periodic:
            raise ValueError(f"calibration has {calibration.n_periodic} dihedrals but the model has {self.n_periodic}")
        calibrated = copy.deepcopy(self)
        calibrated.calibration = None if calibration is None else \
            copy.deepcopy(calibration).to(device=self.data_mean.device)
        calibrated.config.pop("calibration_harmonics", None)
        if calibration is not None:
            calibrated.config["calibration_harmonics"] = calibration.n_harmonics
        return calibrated

    def base_energy(self, t, x) -> torch.Tensor:
        """The analytic base alone (Gaussian on the line, noised wrapped mixtures on the circle), (n,) kT."""
        t, z = self._prepare(t, x)
        alpha, sigma, v_t = self._levels(t)
        lin, per = z[:, :self.n_linear], z[:, self.n_linear:]
        return 0.5 * (lin**2).sum(1) / v_t - self.dihedral_base.log_prob(per, (sigma / alpha) ** 2).sum(1)

    # --- sampling -----------------------------------------------------------------------------
    def top_level(self, project=None):
        """The model at t = 1 as a normalised distribution: N(0, v_1) on the line times uniform dihedrals."""
        if project is not None:
            raise ValueError("internal coordinates have no projection (project must be None)")
        return TopLevel(self)

    def reverse_proposal(self, t: float, t_next: float, project=None, k: int | None = None, x0_variance: bool = True):
        """The reverse-diffusion step from level t to t_next (:class:`WrappedReverseDiffusion`)."""
        return WrappedReverseDiffusion(self, t, t_next, x0_variance)

    @classmethod
    def from_config(cls, config: dict) -> "InternalEnergy":
        """Rebuild an (untrained, unfitted) model from ``model.config``."""
        c = dict(config)
        model = cls(c["n_linear"], c["n_periodic"], schedule_from_config(c["schedule"]), c["hidden"], c["n_blocks"],
                    c["n_time_features"], c["n_components"])
        harmonics = c.get("calibration_harmonics", 0)  # absent in models saved before calibration existed
        return model.with_calibration(DihedralCalibration(model.n_periodic, harmonics)) if harmonics else model


_LOG_2PI = math.log(2.0 * math.pi)


class TopLevel:
    """N(0, v_1 I_L) times Uniform[-pi, pi)^D: an :class:`InternalEnergy` at t = 1 (normalised, float64)."""

    def __init__(self, model: InternalEnergy):
        device = model.data_mean.device
        t = torch.tensor([1.0], dtype=torch.float64, device=device)
        self.variance = float(model.schedule.alpha(t)[0] ** 2 + model.schedule.sigma(t)[0] ** 2)
        self.n_linear, self.n_periodic, self.dim, self.device = model.n_linear, model.n_periodic, model.dim, device

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) float64 samples."""
        lin = math.sqrt(self.variance) * torch.randn(n, self.n_linear, generator=generator, dtype=torch.float64,
                                                     device=self.device)
        per = (2 * torch.rand(n, self.n_periodic, generator=generator, dtype=torch.float64, device=self.device) - 1)
        return torch.cat([lin, math.pi * per], dim=1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(n,) float64 normalised log density."""
        lin = z[:, :self.n_linear].to(torch.float64)
        return (-0.5 * (lin**2).sum(1) / self.variance - 0.5 * self.n_linear * (_LOG_2PI + math.log(self.variance))
                - self.n_periodic * _LOG_2PI)


def _scalar(fn, t: float, like: torch.Tensor) -> float:
    return float(fn(torch.tensor([t], dtype=torch.float64, device=like.device))[0])


@dataclass(frozen=True)
class WrappedReverseDiffusion:
    """The reverse step t -> t_next < t of an :class:`InternalEnergy`, with the noising kernel as backward kernel.

    Per coordinate, with the model's score s at (t, z) (from the particles' energy gradients):
    on the line the DDPM posterior step of :class:`boltzgen.smc.denoising.ReverseDiffusion`; on
    the circle, with d = s_t^2 - s_n^2, the variance-exploding analogue: mean z + d s, variance
    d s_n^2 / s_t^2 (widened by Var[z_0 | z_t] of data with the coordinate's spread when
    ``x0_variance``). Returns z' and log q(z | z') - log r(z' | z) with wrapped normal densities
    on the circle, so the SMC weights are exact.
    """

    model: InternalEnergy
    t: float
    t_next: float
    x0_variance: bool = True

    def __call__(self, particles: ParticleState, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        z = particles.x
        return self.propose(particles, torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device))

    def propose(self, particles: ParticleState, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step with given standard normal ``noise`` (n, d) (e.g. for a trial): z' and the log ratio."""
        z, model = particles.x, self.model
        score = -particles.grad.to(z.dtype)
        v0 = model.coordinate_variance.to(z.dtype)
        periodic = model.periodic
        alpha_t, sigma_t = _scalar(model.schedule.alpha, self.t, z), _scalar(model.schedule.sigma, self.t, z)
        alpha_n, sigma_n = _scalar(model.schedule.alpha, self.t_next, z), _scalar(model.schedule.sigma, self.t_next, z)
        # the line (variance preserving)
        a = alpha_t / alpha_n
        s2 = sigma_t**2 - a**2 * sigma_n**2
        x0 = (z + sigma_t**2 * score) / alpha_t
        mean_lin = (a * sigma_n**2 / sigma_t**2) * z + (alpha_n * s2 / sigma_t**2) * x0
        tau2_lin = torch.full_like(v0, s2 * sigma_n**2 / sigma_t**2)
        if self.x0_variance:
            v_t = alpha_t**2 * v0 + sigma_t**2
            tau2_lin = tau2_lin + (alpha_n * s2 / sigma_t**2) ** 2 * sigma_t**2 * v0 / v_t
        # the circle (variance exploding)
        st2, sn2 = (sigma_t / alpha_t) ** 2, (sigma_n / alpha_n) ** 2
        d = st2 - sn2
        mean_per = z + d * score
        tau2_per = torch.full_like(v0, d * sn2 / st2)
        if self.x0_variance:
            tau2_per = tau2_per + (d / st2) ** 2 * st2 * v0 / (v0 + st2)
        mean = torch.where(periodic, mean_per, mean_lin)
        tau2 = torch.where(periodic, tau2_per, tau2_lin)
        z_next = mean + tau2.sqrt() * noise
        z_next = torch.where(periodic, wrap(z_next), z_next)
        # log q(z | z') - log r(z' | z)
        back_mean = torch.where(periodic, z_next, a * z_next)
        back_var = torch.where(periodic, torch.full_like(v0, d), torch.full_like(v0, s2))
        log_q = _log_kernel(z - back_mean, back_var, periodic)
        log_r = _log_kernel(z_next - mean, tau2, periodic)
        return z_next, (log_q - log_r).to(torch.float64)


def _log_kernel(residual: torch.Tensor, variance: torch.Tensor, periodic: torch.Tensor) -> torch.Tensor:
    """Sum over coordinates of log N (line) or log WN (circle) of residual (n, d) with variances (d,), float64 (n,)."""
    r, v = residual.to(torch.float64), variance.to(torch.float64).expand_as(residual)
    gaussian = -0.5 * r**2 / v - 0.5 * torch.log(2 * math.pi * v)
    wrapped = log_wrapped_normal(r, v)
    return torch.where(periodic, wrapped, gaussian).sum(1)
