"""Wrapped normal densities on the circle, and mixtures of them fitted to angles.

The wrapped normal WN(mu, v) is the law of (mu + sqrt(v) eps) mod 2 pi. Its density

    p(theta) = sum_k N(theta - mu + 2 pi k; 0, v)                         (images)
             = (1 / 2 pi) (1 + 2 sum_n exp(-n^2 v / 2) cos(n (theta - mu)))  (Fourier)

is evaluated by images for v <= 16 (as many images each side as put every neglected one beyond
7 standard deviations: one for v up to 0.1, five at v = 16) and by its Fourier series above (6
terms: the first neglected one is below exp(-98)). A batch uses one branch when all its variances
fall on one side, so a level's energy costs only what its noise needs. Noising is
exact: WN(mu, v) convolved with WN(0, s^2) is WN(mu, v + s^2), so a mixture of wrapped normals
noised to any level is again one (:class:`WrappedMixture`). Angles in radians, any real value.
"""
from __future__ import annotations

import math

import torch

_TWO_PI = 2.0 * math.pi
_IMAGES = 5  # images on each side for v <= _FOURIER_ABOVE
_FOURIER_ABOVE = 16.0  # variance above which the Fourier series is used
_FOURIER_TERMS = 6


def wrap(theta: torch.Tensor) -> torch.Tensor:
    """Angles mapped into [-pi, pi), same shape."""
    return torch.remainder(theta + math.pi, _TWO_PI) - math.pi


def _n_images(variance: torch.Tensor) -> int:
    """Images on each side so that every neglected one lies beyond 7 standard deviations."""
    largest = float(variance.max()) if variance.numel() else 0.0
    return max(1, min(_IMAGES, math.ceil((7.0 * math.sqrt(max(largest, 0.0)) + math.pi) / _TWO_PI)))


def _images(delta: torch.Tensor, variance: torch.Tensor):
    """(delta + 2 pi k) for k = -K..K along a new last axis, and the Gaussian log-terms."""
    n = _n_images(variance.detach())
    k = torch.arange(-n, n + 1, dtype=delta.dtype, device=delta.device)
    shifted = wrap(delta)[..., None] + _TWO_PI * k
    v = variance[..., None]
    return shifted, -0.5 * shifted**2 / v - 0.5 * torch.log(_TWO_PI * v)


def _fourier(delta: torch.Tensor, variance: torch.Tensor):
    n = torch.arange(1, _FOURIER_TERMS + 1, dtype=delta.dtype, device=delta.device)
    decay = torch.exp(-0.5 * n**2 * variance[..., None])
    series = 1.0 + 2.0 * (decay * torch.cos(n * delta[..., None])).sum(-1)
    slope = -2.0 * (decay * n * torch.sin(n * delta[..., None])).sum(-1)
    return series, slope


def log_wrapped_normal(delta: torch.Tensor, variance) -> torch.Tensor:
    """log WN(delta; 0, variance), elementwise (variance broadcast to delta's shape), differentiable."""
    v = torch.as_tensor(variance, dtype=delta.dtype, device=delta.device).expand_as(delta)
    small = v <= _FOURIER_ABOVE
    all_small, none_small = bool(small.all()), not bool(small.any())
    if not none_small:
        _, terms = _images(delta, torch.where(small, v, torch.ones_like(v)))
        by_images = torch.logsumexp(terms, dim=-1)
        if all_small:
            return by_images
    series, _ = _fourier(delta, torch.where(small, torch.full_like(v, _FOURIER_ABOVE), v))
    by_fourier = torch.log(series.clamp_min(1e-300)) - math.log(_TWO_PI)
    return by_fourier if none_small else torch.where(small, by_images, by_fourier)


def wrapped_normal_score(delta: torch.Tensor, variance) -> torch.Tensor:
    """d/d delta of log WN(delta; 0, variance), elementwise (no graph needed)."""
    v = torch.as_tensor(variance, dtype=delta.dtype, device=delta.device).expand_as(delta)
    small = v <= _FOURIER_ABOVE
    all_small, none_small = bool(small.all()), not bool(small.any())
    if not none_small:
        v_small = torch.where(small, v, torch.ones_like(v))
        shifted, terms = _images(delta, v_small)
        by_images = (torch.softmax(terms, dim=-1) * (-shifted / v_small[..., None])).sum(-1)
        if all_small:
            return by_images
    series, slope = _fourier(delta, torch.where(small, torch.full_like(v, _FOURIER_ABOVE), v))
    by_fourier = slope / series.clamp_min(1e-300)
    return by_fourier if none_small else torch.where(small, by_images, by_fourier)


class WrappedMixture(torch.nn.Module):
    """An independent mixture of K wrapped normals per angle: D angles, parameters (D, K).

    ``log_prob(theta, extra_variance)`` is the log density of the mixture noised by WN(0, extra):
    each component's variance grows by it (exact). Fitted by EM (:meth:`fit`).
    """

    def __init__(self, n_angles: int, n_components: int = 3):
        super().__init__()
        self.register_buffer("means", torch.zeros(n_angles, n_components))
        self.register_buffer("variances", torch.ones(n_angles, n_components))
        self.register_buffer("log_weights", torch.full((n_angles, n_components), -math.log(n_components)))

    def log_prob(self, theta: torch.Tensor, extra_variance=0.0) -> torch.Tensor:
        """(n, D) angles -> (n, D) log densities of each angle's mixture noised by ``extra_variance`` (scalar or (n,))."""
        extra = torch.as_tensor(extra_variance, dtype=theta.dtype, device=theta.device)
        extra = extra.reshape(-1, 1, 1) if extra.ndim else extra
        delta = theta[..., None] - self.means.to(theta.dtype)
        v = (self.variances.to(theta.dtype) + extra).expand_as(delta)
        terms = log_wrapped_normal(delta, v) + self.log_weights.to(theta.dtype)
        return torch.logsumexp(terms, dim=-1)

    @torch.no_grad()
    def fit(self, theta: torch.Tensor, weights: torch.Tensor | None = None, n_iterations: int = 60,
            min_variance: float = 1e-4) -> "WrappedMixture":
        """Fit every angle's mixture to data by EM, returns self.

        Args:
            theta: (n, D) angles in radians.
            weights: optional (n,) non-negative sample weights.
            n_iterations: EM iterations.
            min_variance: floor on component variances (rad^2).

        Components start at K angles spread over the circle shifted to the data's circular mean;
        the M-step sets each component's mean to its weighted circular mean and its variance to
        -2 ln R (R its mean resultant length: the wrapped normal's own relation).
        """
        x = theta.to(torch.float64)
        n, d = x.shape
        k = self.means.shape[1]
        w = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights.to(torch.float64) / weights.sum()
        centre = torch.atan2((w[:, None] * torch.sin(x)).sum(0), (w[:, None] * torch.cos(x)).sum(0))
        means = wrap(centre[:, None] + _TWO_PI * torch.arange(k, dtype=torch.float64) / k)
        variances = torch.full((d, k), 0.3, dtype=torch.float64)
        log_w = torch.full((d, k), -math.log(k), dtype=torch.float64)
        for _ in range(n_iterations):
            terms = log_wrapped_normal(x[..., None] - means, variances.expand(n, d, k)) + log_w
            resp = torch.softmax(terms, dim=-1) * w[:, None, None]  # (n, d, k)
            mass = resp.sum(0).clamp_min(1e-300)  # (d, k)
            c = (resp * torch.cos(x)[..., None]).sum(0) / mass
            s = (resp * torch.sin(x)[..., None]).sum(0) / mass
            means = torch.atan2(s, c)
            resultant = torch.sqrt(c**2 + s**2).clamp(1e-12, 1.0 - 1e-12)
            variances = (-2.0 * torch.log(resultant)).clamp_min(min_variance)
            log_w = torch.log(mass) - torch.log(mass.sum(1, keepdim=True))
        self.means.copy_(means)
        self.variances.copy_(variances)
        self.log_weights.copy_(log_w.clamp_min(-700.0))
        return self
