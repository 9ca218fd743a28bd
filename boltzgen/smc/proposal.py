"""Initial distributions for SMC: anything with ``sample(n, generator) -> (n, d)`` and
``log_prob(x) -> (n,)`` (normalised), e.g. :class:`GaussianProposal` or an analytic target.
"""
from __future__ import annotations

import math

import torch

from .._checks import as_tensor, check_count, check_flat
from .energy import Projection, subspace_dimension

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianProposal:
    """Gaussian N(mean, diag(variance)) in d dimensions, optionally restricted to a subspace.

    Args:
        dim: d.
        mean: scalar or (d,) mean, in the units of x (default 0).
        variance: scalar (isotropic) or (d,) (diagonal) variance, in units of x squared (default 1).
        project: optional orthogonal projection (n, d) -> (n, d) onto a linear subspace. Samples
            are mean + project(sqrt(variance) z) and ``log_prob`` is the density w.r.t. Lebesgue
            measure on the subspace through ``mean``; needs an isotropic variance.
        subspace_dim: dimension of that subspace (default: the trace of ``project``).
        dtype, device: of the samples (float64 on CPU by default).
    """

    def __init__(self, dim: int, mean=0.0, variance=1.0, project: Projection | None = None,
                 subspace_dim: int | None = None, dtype: torch.dtype = torch.float64, device=None):
        dim = check_count(dim, "dim")
        m = as_tensor(mean, "mean", dtype=dtype).to(device)
        v = as_tensor(variance, "variance", dtype=dtype).to(device)
        for name, t in (("mean", m), ("variance", v)):
            if t.shape not in ((), (dim,)):
                raise ValueError(f"{name} must be a scalar or have shape ({dim},), got {tuple(t.shape)}")
        if not torch.isfinite(m).all():
            raise ValueError("mean must be finite")
        if not torch.isfinite(v).all() or (v <= 0).any():
            raise ValueError("variance must be finite and positive (units of x squared)")
        if project is not None and v.ndim == 1 and not torch.allclose(v, v[0].expand(dim)):
            raise ValueError("with project, variance must be isotropic (a scalar)")
        self.dim, self.project = dim, project
        self.mean, self.variance = m.expand(dim), v.expand(dim)
        self.subspace_dim = subspace_dimension(project, dim, dtype, device) if subspace_dim is None else subspace_dim
        if not isinstance(self.subspace_dim, int) or not 1 <= self.subspace_dim <= dim:
            raise ValueError(f"subspace_dim must be an integer in [1, {dim}], got {subspace_dim!r}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples, shape (n, d)."""
        n = check_count(n, "n")
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        z = z * self.variance.sqrt()
        if self.project is not None:
            z = self.project(z)
        return self.mean + z

    def log_prob(self, x) -> torch.Tensor:
        """Normalised log density at x (n, d), float64 (n,) (w.r.t. the subspace if projected)."""
        x = check_flat(x, "x", self.dim)
        r = (x - self.mean).to(torch.float64)
        v = self.variance.to(torch.float64)
        if self.project is not None:
            r = self.project(r)
            return -0.5 * (r**2).sum(1) / v[0] - 0.5 * self.subspace_dim * (_LOG_2PI + torch.log(v[0]))
        return -0.5 * ((r**2 / v).sum(1) + torch.log(v).sum() + self.dim * _LOG_2PI)
