"""Analytic targets with exact log Z, exact mode weights and (for mixtures) exact noised marginals.

These are the ground truth the tests and benchmarks check the learned energies and the samplers
against. Inputs are flat batches ``x`` of shape (n, d); energies are reduced (dimensionless,
"kT"), returned as float64 tensors of shape (n,) and differentiable with respect to ``x``.

Convention: ``reduced_energy(x) = -log_prob(x) - log_Z``, so that the integral of
exp(-reduced_energy) equals exp(log_Z). ``log_Z`` is a free constant for the mixtures (default 0,
set it to test normaliser estimates) and the true normaliser for the double well.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import as_tensor, check_count, check_flat

_LOG_2PI = math.log(2.0 * math.pi)


def _schedule_coefficients(schedule, t, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t as float64 tensors of shape (n,) (t a scalar or shape (n,))."""
    tt = as_tensor(t, "t", dtype=torch.float64)
    if tt.ndim == 0:
        tt = tt.expand(n)
    if tt.shape != (n,):
        raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(tt.shape)}")
    if (tt < 0).any() or (tt > 1).any():
        raise ValueError(f"t must lie in [0, 1], got values in [{tt.min().item():g}, {tt.max().item():g}]")
    return schedule.alpha(tt), schedule.sigma(tt)


class GaussianMixture:
    """Mixture of K Gaussians in d dimensions with exact densities, scores and noised marginals.

    Args:
        means: (K, d) component means.
        stds: isotropic standard deviations, a scalar, shape (K,), or per-coordinate shape (K, d).
        covs: full covariances, shape (K, d, d) (give ``stds`` or ``covs``, not both).
        weights: (K,) positive mixture weights (normalised internally); default equal.
        log_Z: the log normaliser of ``exp(-reduced_energy)`` (a free constant, default 0).
    """

    def __init__(self, means, stds=None, covs=None, weights=None, log_Z: float = 0.0):
        m = as_tensor(means, "means", dtype=torch.float64)
        if m.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(m.shape)}")
        k, d = m.shape
        if (stds is None) == (covs is None):
            raise ValueError("give exactly one of stds (shape (), (K,) or (K, d)) or covs (shape (K, d, d))")
        if covs is not None:
            c = as_tensor(covs, "covs", dtype=torch.float64)
            if c.shape != (k, d, d):
                raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {tuple(c.shape)}")
            if not torch.allclose(c, c.transpose(1, 2)):
                raise ValueError("covs must be symmetric")
            evals, evecs = torch.linalg.eigh(c)
        else:
            s = as_tensor(stds, "stds", dtype=torch.float64)
            if s.ndim == 0:
                s = s.expand(k)
            if s.shape == (k,):
                s = s[:, None].expand(k, d)
            if s.shape != (k, d):
                raise ValueError(f"stds must be a scalar or have shape ({k},) or ({k}, {d}), got {tuple(s.shape)}")
            evals = s**2
            evecs = torch.eye(d, dtype=torch.float64).expand(k, d, d)
        if not torch.isfinite(evals).all() or (evals <= 0).any():
            raise ValueError("component covariances must be positive definite (stds > 0)")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else as_tensor(weights, "weights", dtype=torch.float64)
        if w.shape != (k,) or not torch.isfinite(w).all() or (w <= 0).any():
            raise ValueError(f"weights must be {k} positive finite numbers, got {w.tolist()}")
        self.means = m.contiguous()
        self.eigenvalues = evals.contiguous()  # (K, d)
        self.eigenvectors = evecs.contiguous()  # (K, d, d), columns are eigenvectors
        self.weights = w / w.sum()
        self.log_Z = float(log_Z)

    # --- description -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def covariances(self) -> torch.Tensor:
        """(K, d, d) component covariances."""
        u, lam = self.eigenvectors, self.eigenvalues
        return u @ torch.diag_embed(lam) @ u.transpose(1, 2)

    @property
    def data_variance(self) -> float:
        """Mean per-coordinate variance of the mixture (for scaling a model's Gaussian base)."""
        w = self.weights
        mean = (w[:, None] * self.means).sum(0)
        second = (w[:, None] * (self.means**2 + torch.diagonal(self.covariances, dim1=1, dim2=2))).sum(0)
        return float((second - mean**2).mean())

    # --- densities ----------------------------------------------------------------------------
    def _component_terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per-component log densities (n, K) and whitened residuals for the noised mixture."""
        lam = alpha[:, None, None] ** 2 * self.eigenvalues[None] + sigma[:, None, None] ** 2  # (n, K, d)
        diff = x[:, None, :] - alpha[:, None, None] * self.means[None]  # (n, K, d)
        y = torch.einsum("nkd,kde->nke", diff, self.eigenvectors)  # coordinates in the eigenbasis
        log_n = -0.5 * ((y**2 / lam).sum(-1) + torch.log(lam).sum(-1) + self.dim * _LOG_2PI)
        return log_n, y, lam

    def _log_prob_and_score(self, x, alpha, sigma, need_score: bool):
        log_n, y, lam = self._component_terms(x, alpha, sigma)
        joint = torch.log(self.weights)[None] + log_n  # (n, K)
        log_p = torch.logsumexp(joint, dim=1)
        if not need_score:
            return log_p, None
        resp = torch.softmax(joint, dim=1)  # (n, K)
        # grad of log N_k = -C_k^{-1} (x - mu_k) = -U (y / lam)
        grads = -torch.einsum("kde,nke->nkd", self.eigenvectors, y / lam)
        return log_p, (resp[..., None] * grads).sum(1)

    def _x(self, x) -> torch.Tensor:
        return check_flat(x, "x", self.dim).to(torch.float64)

    def log_prob(self, x) -> torch.Tensor:
        """Normalised log density, (n, d) -> (n,) float64."""
        x = self._x(x)
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return self._log_prob_and_score(x, one, 0.0 * one, False)[0]

    def reduced_energy(self, x) -> torch.Tensor:
        """Unnormalised energy -log_prob(x) - log_Z in kT, (n, d) -> (n,) float64."""
        return -self.log_prob(x) - self.log_Z

    def score(self, x) -> torch.Tensor:
        """grad_x log p(x) in closed form, (n, d) -> (n, d) float64."""
        x = self._x(x)
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return self._log_prob_and_score(x, one, 0.0 * one, True)[1]

    def component_log_probs(self, x) -> torch.Tensor:
        """log w_k + log N_k(x), shape (n, K): responsibilities follow by a softmax over K."""
        x = self._x(x)
        one = torch.ones(x.shape[0], dtype=torch.float64)
        log_n, _, _ = self._component_terms(x, one, 0.0 * one)
        return torch.log(self.weights)[None] + log_n

    def assign(self, x) -> torch.Tensor:
        """Index of the most responsible component for each sample, shape (n,) int64."""
        return self.component_log_probs(x).argmax(dim=1)

    # --- noised marginals -----------------------------------------------------------------------
    def noised_log_prob(self, schedule, t, x) -> torch.Tensor:
        """Exact log p_t(x) of x_t = alpha_t x_0 + sigma_t eps, x_0 from this mixture.

        t: scalar or (n,) times; x: (n, d). Returns (n,) float64.
        """
        x = self._x(x)
        alpha, sigma = _schedule_coefficients(schedule, t, x.shape[0])
        return self._log_prob_and_score(x, alpha, sigma, False)[0]

    def noised_score(self, schedule, t, x) -> torch.Tensor:
        """Exact grad_x log p_t(x), shape (n, d) float64."""
        x = self._x(x)
        alpha, sigma = _schedule_coefficients(schedule, t, x.shape[0])
        return self._log_prob_and_score(x, alpha, sigma, True)[1]

    def noised(self, schedule, t: float) -> "GaussianMixture":
        """The noised marginal p_t at one time t, itself a GaussianMixture (same log_Z)."""
        a, s = _schedule_coefficients(schedule, float(t), 1)
        a, s = a[0], s[0]
        covs = self.eigenvectors @ torch.diag_embed(a**2 * self.eigenvalues + s**2) @ self.eigenvectors.transpose(1, 2)
        return GaussianMixture(a * self.means, covs=0.5 * (covs + covs.transpose(1, 2)), weights=self.weights, log_Z=self.log_Z)

    # --- sampling ----------------------------------------------------------------------------
    def sample_with_labels(self, n: int, generator: torch.Generator | None = None):
        """n samples (n, d) float64 and their component labels (n,) int64."""
        n = check_count(n, "n", minimum=0)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + torch.einsum("nde,ne->nd", self.eigenvectors[labels], z * self.eigenvalues[labels].sqrt())
        return x, labels

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples, shape (n, d) float64."""
        return self.sample_with_labels(n, generator)[0]


class DoubleWell:
    """Asymmetric double well in d dimensions with exact log Z and mode weights (Noé et al. 2019).

    u(x) = a/4 x_1^4 - b/2 x_1^2 + c x_1 + 1/2 sum_{i>1} x_i^2 (kT). With the defaults
    (a=1, b=6, c=1) the wells sit near x_1 = -2.5 and +2.4, ~9 kT barrier, and the left well
    holds ~99% of the mass. ``log_Z`` and ``mode_weights`` come from 1-D quadrature (exact to
    ~1e-10); ``sample`` inverts the 1-D CDF on a fine grid.
    """

    def __init__(self, dim: int = 2, a: float = 1.0, b: float = 6.0, c: float = 1.0):
        dim = check_count(dim, "dim")
        if a <= 0:
            raise ValueError(f"a must be positive (confining quartic), got {a}")
        self.dim, self.a, self.b, self.c = dim, float(a), float(b), float(c)
        grid = np.linspace(-12.0, 12.0, 400_001)
        u1 = self._u1(grid)
        shift = u1.min()
        dens = np.exp(-(u1 - shift))
        dx = grid[1] - grid[0]
        # Simpson's rule on a very fine grid; density is negligible at |x| = 12
        from scipy.integrate import simpson

        z1 = simpson(dens, dx=dx)
        self.log_Z = float(np.log(z1) - shift + 0.5 * (dim - 1) * _LOG_2PI)
        self.barrier = float(grid[np.argmax(np.where(np.abs(grid) < 2.0, u1, -np.inf))])  # local max of u1
        left = grid <= self.barrier
        p_left = simpson(dens[left], dx=dx) / z1
        self.mode_weights = torch.tensor([p_left, 1.0 - p_left], dtype=torch.float64)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * dx)])
        self._grid, self._cdf = grid, cdf / cdf[-1]

    def _u1(self, x1):
        return self.a / 4 * x1**4 - self.b / 2 * x1**2 + self.c * x1

    def reduced_energy(self, x) -> torch.Tensor:
        """u(x) in kT, (n, d) -> (n,) float64."""
        x = check_flat(x, "x", self.dim).to(torch.float64)
        return self._u1(x[:, 0]) + 0.5 * (x[:, 1:] ** 2).sum(1)

    def log_prob(self, x) -> torch.Tensor:
        """Normalised log density, (n, d) -> (n,) float64."""
        return -self.reduced_energy(x) - self.log_Z

    def assign(self, x) -> torch.Tensor:
        """0 for the left well (x_1 below the barrier), 1 for the right; shape (n,) int64."""
        x = check_flat(x, "x", self.dim)
        return (x[:, 0] > self.barrier).long()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n, d) float64: x_1 by inverse CDF on a fine grid, the rest standard normal."""
        n = check_count(n, "n", minimum=0)
        u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        x1 = np.interp(u, self._cdf, self._grid)
        rest = torch.randn(n, self.dim - 1, generator=generator, dtype=torch.float64)
        return torch.cat([torch.as_tensor(x1)[:, None], rest], dim=1)
