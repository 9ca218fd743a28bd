"""Noise schedules: x_t = alpha_t x_0 + sigma_t eps, eps ~ N(0, I), t in [t_min, 1].

Two families share one interface (a frozen dataclass with ``alpha``, ``sigma``, their time
derivatives, the SDE drift/diffusion coefficients and a grid of levels):

* :class:`VPSchedule` (default): variance preserving, alpha_t^2 + sigma_t^2 = 1, with the linear
  beta(t) of Song et al. (2021), so alpha_1 = exp(-(beta_max - beta_min)/4 - beta_min/2) ~ 0.0066
  and p_1 is a standard Gaussian to within that.
* :class:`VESchedule`: variance exploding, alpha_t = 1, sigma_t geometric from sigma_min to
  sigma_max, so p_1 ~ N(0, sigma_max^2 I) when sigma_max dominates the data scale.
* :class:`LogSNRSchedule`: variance preserving with the log signal-to-noise ratio
  log(alpha_t^2 / sigma_t^2) linear in t. Uniform times then cover every noise scale equally
  (log sigma is nearly uniform at low noise), which molecules need: their stiffest modes (bond
  stretches, ~0.003 nm) only appear at noise far below what a linear-beta schedule ever samples,
  while the variance-preserving form keeps p_t near unit variance at every level (no Gaussian
  shrinking for SMC to pay for).

Times may be Python floats or tensors of any shape; outputs are tensors of the same shape (float64
for floats). Time is dimensionless; alpha and sigma are in the units of x (for molecules, nm
after the package's data scaling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _t(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)


class _Schedule:
    """Shared methods; subclasses define log_alpha, d_log_alpha, sigma, d_sigma."""

    t_min: float

    def alpha(self, t):
        """alpha_t, the signal scale, same shape as t."""
        return torch.exp(self.log_alpha(t))

    def d_alpha(self, t):
        """d alpha_t / dt."""
        return self.alpha(t) * self.d_log_alpha(t)

    def drift(self, t):
        """f(t) of the forward SDE dx = f(t) x dt + g(t) dW (f = d log alpha / dt)."""
        return self.d_log_alpha(t)

    def diffusion_squared(self, t):
        """g(t)^2 of the forward SDE: d sigma^2/dt - 2 f(t) sigma^2."""
        s = self.sigma(t)
        return 2.0 * s * self.d_sigma(t) - 2.0 * self.drift(t) * s * s

    def marginal_variance(self, t, data_variance: float = 1.0):
        """Variance alpha_t^2 v + sigma_t^2 of x_t when x_0 has per-coordinate variance v."""
        return self.alpha(t) ** 2 * data_variance + self.sigma(t) ** 2

    def levels(self, n_levels: int, t_min: float | None = None) -> torch.Tensor:
        """``n_levels`` times from t_min to 1 (inclusive), uniform in t, float64, shape (n_levels,)."""
        if not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
        lo = self.t_min if t_min is None else t_min
        return torch.linspace(lo, 1.0, n_levels, dtype=torch.float64)

    def sample_times(self, n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n times drawn uniformly on [t_min, 1], shape (n,)."""
        u = torch.rand(n, generator=generator, dtype=dtype, device=generator.device if generator is not None else None)
        return self.t_min + (1.0 - self.t_min) * u

    def noise(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t eps for x0, eps of shape (n, d) and t of shape (n,) or scalar."""
        t = _t(t).to(x0.dtype)
        if t.ndim == 1:
            t = t[:, None]
        return self.alpha(t) * x0 + self.sigma(t) * eps


@dataclass(frozen=True)
class VPSchedule(_Schedule):
    """Variance-preserving schedule with linear beta(t) = beta_min + t (beta_max - beta_min).

    log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2;  sigma_t = sqrt(1 - alpha_t^2).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3

    def __post_init__(self):
        if not (0 < self.beta_min < self.beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min}")

    def beta(self, t):
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        t = _t(t)
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_log_alpha(self, t):
        return -0.5 * self.beta(t)

    def sigma(self, t):
        # -expm1(2 log alpha) = 1 - alpha^2 without cancellation at small t
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_sigma(self, t):
        a2 = torch.exp(2.0 * self.log_alpha(t))
        return -a2 * self.d_log_alpha(t) / self.sigma(t)


@dataclass(frozen=True)
class VESchedule(_Schedule):
    """Variance-exploding schedule: alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-3

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min}")

    def log_alpha(self, t):
        return torch.zeros_like(_t(t))

    def d_log_alpha(self, t):
        return torch.zeros_like(_t(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(_t(t) * math.log(self.sigma_max / self.sigma_min))

    def d_sigma(self, t):
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)


@dataclass(frozen=True)
class LogSNRSchedule(_Schedule):
    """Variance preserving, log-SNR lambda_t = log(alpha_t^2 / sigma_t^2) linear in t.

    lambda runs from ``log_snr_max`` at t_min to ``log_snr_min`` at t = 1, so
    alpha_t^2 = sigmoid(lambda_t) and sigma_t^2 = sigmoid(-lambda_t). The defaults give
    sigma_{t_min} = exp(-6.75) ~ 1.2e-3 and alpha_1 = exp(-5) ~ 6.7e-3 (as VPSchedule's alpha_1), in
    the units of x: with molecular data scaled to unit variance (~0.2 nm), sigma_{t_min} ~ 2.4e-4 nm,
    a tenth of the C-H bond's thermal spread.
    """

    log_snr_max: float = 13.5
    log_snr_min: float = -10.0
    t_min: float = 1e-3

    def __post_init__(self):
        if not self.log_snr_min < self.log_snr_max:
            raise ValueError(f"need log_snr_min < log_snr_max, got {self.log_snr_min}, {self.log_snr_max}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min}")

    @property
    def _slope(self) -> float:
        return (self.log_snr_min - self.log_snr_max) / (1.0 - self.t_min)

    def log_snr(self, t):
        """lambda_t = log(alpha_t^2 / sigma_t^2), same shape as t."""
        return self.log_snr_max + self._slope * (_t(t) - self.t_min)

    def log_alpha(self, t):
        return 0.5 * torch.nn.functional.logsigmoid(self.log_snr(t))

    def d_log_alpha(self, t):
        return 0.5 * torch.sigmoid(-self.log_snr(t)) * self._slope

    def sigma(self, t):
        return torch.exp(0.5 * torch.nn.functional.logsigmoid(-self.log_snr(t)))

    def d_sigma(self, t):
        lam = self.log_snr(t)
        return -0.5 * self.sigma(t) * torch.sigmoid(lam) * self._slope


_SCHEDULES = {"vp": VPSchedule, "ve": VESchedule, "logsnr": LogSNRSchedule}


def schedule_from_config(config: dict) -> _Schedule:
    """Build a schedule from ``{"kind": "vp"|"ve"|"logsnr", **parameters}`` (as stored in checkpoints)."""
    config = dict(config)
    kind = config.pop("kind", "vp")
    if kind not in _SCHEDULES:
        raise ValueError(f"schedule kind must be one of {sorted(_SCHEDULES)}, got {kind!r}")
    return _SCHEDULES[kind](**config)


def schedule_config(schedule: _Schedule) -> dict:
    """Inverse of :func:`schedule_from_config`."""
    from dataclasses import asdict

    kind = next(k for k, cls in _SCHEDULES.items() if type(schedule) is cls)
    return {"kind": kind, **asdict(schedule)}
