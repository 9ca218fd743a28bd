"""Time-dependent energy networks E_theta(t, x) for flat inputs x of shape (n, d).

Every noise level is an explicit energy (an energy-based model), so the score is
s_theta(t, x) = -grad_x E_theta(t, x) by autograd and every level can be used as an unnormalised
density by the samplers. The energy is an analytic Gaussian part plus a learned correction,

    E_theta(t, x) = |x - alpha_t mu|^2 / (2 v_t) + g_theta(t, (x - alpha_t mu) / sqrt(v_t)),
    v_t = alpha_t^2 v_data + sigma_t^2,

with g_theta's last layer initialised at zero. The network sees time through the noise fraction
sigma_t^2 / v_t in (0, 1], which changes where p_t changes: at low noise it is nearly constant,
so the sparsely trained lowest levels inherit the shape learned at slightly higher noise instead
of extrapolating in t. With the zero-initialised last layer an untrained model is exactly the Gaussian with
the data's mean mu and per-coordinate variance v_data, noised to level t (right at high noise),
and the network only learns corrections. The model also carries a small time-MLP f(t), its
estimate of log Z_t = log integral exp(-E_theta(t, x)) dx, anchored at t = 1 to the Gaussian
normaliser; the DiffCLF loss trains it (see losses.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_count, check_flat, check_time
from .schedule import schedule_config, schedule_from_config


class FourierTime(nn.Module):
    """Embed s in [0, 1] as [sin(pi k s), cos(pi k s)], k = 1..n_features: shape (n, 2 n_features)."""

    def __init__(self, n_features: int = 16):
        super().__init__()
        self.register_buffer("frequencies", math.pi * torch.arange(1, n_features + 1, dtype=torch.float32))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies.to(t.dtype)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResidualBlock(nn.Module):
    """h + W2 silu(W1 silu(h) + U emb): smooth (SiLU) so second derivatives exist for DSM."""

    def __init__(self, hidden: int, embed: int):
        super().__init__()
        self.inner = nn.Linear(hidden, hidden)
        self.time = nn.Linear(embed, hidden)
        self.outer = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.outer(nn.functional.silu(self.inner(nn.functional.silu(h)) + self.time(emb)))


class LogNormaliser(nn.Module):
    """f(t) ~ log Z_t: the Gaussian base normaliser plus (1 - t) h(t), so f(1) is pinned.

    At t = 1 the noised data is Gaussian to O(alpha_1^2) and g_theta ~ 0, so the base
    normaliser (d/2) log(2 pi v_1) is the known anchor; h(t) learns the rest.
    """

    def __init__(self, dim: int, hidden: int = 64, n_features: int = 8):
        super().__init__()
        self.dim = dim
        self.embed = FourierTime(n_features)
        self.net = nn.Sequential(nn.Linear(2 * n_features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        gaussian = 0.5 * self.dim * torch.log(2 * math.pi * v_t)
        return gaussian + (1.0 - t) * self.net(self.embed(t)).squeeze(-1)


class EnergyMLP(nn.Module):
    """Scalar energy E_theta(t, x) in kT for flat x of shape (n, d).

    Args:
        dim: d, the number of coordinates.
        schedule: a VPSchedule/VESchedule (boltzgen.diffusion.schedule).
        data_mean: (d,) mean of the training data (units of x).
        data_variance: per-coordinate variance of the training data (scalar, units of x^2).
        hidden, n_blocks, n_time_features: network size.
        subspace_dim: the dimension of the subspace the data and noise live in, when training uses
            a ``project=`` (e.g. 3 n_atoms - 3 for centre-of-mass-free molecules; default d). It
            sets the Gaussian anchor of the log-normaliser, f(1) = (subspace_dim / 2) log(2 pi v_1).
    """

    def __init__(self, dim: int, schedule, data_mean=None, data_variance: float = 1.0,
                 hidden: int = 256, n_blocks: int = 3, n_time_features: int = 16, subspace_dim: int | None = None):
        super().__init__()
        dim = check_count(dim, "dim")
        subspace_dim = check_count(subspace_dim, "subspace_dim", allow_none=True)
        if subspace_dim is not None and subspace_dim > dim:
            raise ValueError(f"subspace_dim must be at most dim = {dim}, got {subspace_dim}")
        try:
            data_variance = float(data_variance)  # also numpy scalars and 0-d tensors
        except (TypeError, ValueError) as exc:
            raise TypeError(f"data_variance must be a number (units of x^2), got {type(data_variance).__name__}") from exc
        if not (data_variance > 0 and math.isfinite(data_variance)):
            raise ValueError(f"data_variance must be a finite positive number, got {data_variance!r}")
        mean = torch.zeros(dim) if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32).reshape(-1)
        if mean.shape != (dim,):
            raise ValueError(f"data_mean must have shape ({dim},), got {tuple(mean.shape)}")
        self.dim, self.schedule = dim, schedule
        self.config = dict(dim=dim, schedule=schedule_config(schedule), data_mean=mean.tolist(),
                           data_variance=float(data_variance), hidden=hidden, n_blocks=n_blocks,
                           n_time_features=n_time_features)
        if subspace_dim is not None:  # only when set: configs (and checkpoints) from before it stay equal
            self.config["subspace_dim"] = subspace_dim
        self.register_buffer("data_mean", mean)
        self.data_variance = float(data_variance)
        self.embed = FourierTime(n_time_features)
        e = 2 * n_time_features
        self.inp = nn.Linear(dim + e, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, e) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.log_normaliser_net = LogNormaliser(subspace_dim or dim)

    @classmethod
    def from_config(cls, config: dict) -> "EnergyMLP":
        """Rebuild an (untrained) model from ``model.config``."""
        c = dict(config)
        return cls(c.pop("dim"), schedule_from_config(c.pop("schedule")), **c)

    # --- energies --------------------------------------------------------------------------
    def _prepare(self, t, x):
        # the network's dtype wins (float32 by default): samplers may hand in float64 particles,
        # and the cast is differentiable, so their gradients come back in their own dtype
        x = check_flat(x, "x", self.dim).to(self.data_mean.dtype)
        t = check_time(t, "t", x.shape[0], t_min=0.0).to(x.dtype)
        return t, x

    def _centred(self, t: torch.Tensor, x: torch.Tensor):
        alpha = self.schedule.alpha(t)
        v_t = alpha**2 * self.data_variance + self.schedule.sigma(t) ** 2
        return x - alpha[:, None] * self.data_mean.to(x.dtype), v_t

    def energy(self, t, x) -> torch.Tensor:
        """E_theta(t, x): t a float or (n,) times in [0, 1], x (n, d) -> (n,) energies (kT)."""
        t, x = self._prepare(t, x)
        centred, v_t = self._centred(t, x)
        base = 0.5 * (centred**2).sum(1) / v_t
        emb = self.embed(self.schedule.sigma(t) ** 2 / v_t)
        h = self.inp(torch.cat([centred / v_t.sqrt()[:, None], emb], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return base + self.out(nn.functional.silu(h)).squeeze(-1)

    forward = energy

    def base_energy(self, t, x) -> torch.Tensor:
        """The analytic Gaussian part alone, (n,) kT."""
        t, x = self._prepare(t, x)
        centred, v_t = self._centred(t, x)
        return 0.5 * (centred**2).sum(1) / v_t

    def log_normaliser(self, t) -> torch.Tensor:
        """f(t), the model's estimate of log Z_t (trained by DiffCLF); t float or (n,) -> (n,)."""
        tt = torch.as_tensor(t, dtype=self.data_mean.dtype)
        tt = tt.reshape(-1) if tt.ndim else tt.reshape(1)
        v_t = self.schedule.alpha(tt) ** 2 * self.data_variance + self.schedule.sigma(tt) ** 2
        return self.log_normaliser_net(tt, v_t)

    def log_prob(self, t, x) -> torch.Tensor:
        """-E_theta(t, x) - f(t): the model's (approximately normalised) log p_t(x), (n,)."""
        t, x = self._prepare(t, x)
        return -self.energy(t, x) - self.log_normaliser(t)

    def score(self, t, x, create_graph: bool = False) -> torch.Tensor:
        """s_theta(t, x) = -grad_x E_theta(t, x), shape (n, d).

        create_graph=True keeps the graph for training (DSM differentiates through the score);
        False returns a detached score for sampling.
        """
        return energy_score(self.energy, t, x, create_graph)


def energy_score(energy_fn, t, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """-grad_x energy_fn(t, x) by autograd for any energy callable, shape of x."""
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        e = energy_fn(t, xg)
        (grad,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph)
    return -grad if create_graph else -grad.detach()
