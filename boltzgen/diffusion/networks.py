"""Time-dependent energy networks E_theta(t, x) on flat inputs x of shape (n, d).

Every noise level is an explicit energy (an energy-based model), so the score is
s_theta(t, x) = -grad_x E_theta(t, x) by autograd and every level can be used as an unnormalised
density by the samplers. :class:`EnergyModel` writes the shared parts once and wraps any
correction network g_theta:

    E_theta(t, x) = |x - alpha_t mu|^2 / (2 v_t) + (1 - t) g_theta(t, x),
    v_t = alpha_t^2 v_data + sigma_t^2,

with g_theta's last layer initialised at zero, so an untrained model is exactly the Gaussian with
the data's mean mu and per-coordinate variance v_data, noised to level t (right at high noise),
and the network only learns corrections. The factor (1 - t) makes the correction vanish at t = 1
by construction: E_theta(1, .) is the known Gaussian, so the learned log-normaliser f(t) (a small
time-MLP, trained by DiffCLF; see losses.py) is anchored there exactly. Without it both losses
are blind to a constant added to E_theta at every level, and f(t_min) would be off by that
unconstrained constant.

Corrections see time through the noise fraction sigma_t^2 / v_t in (0, 1], which changes where
p_t changes: at low noise it is nearly constant, so the sparsely trained lowest levels inherit
the shape learned at slightly higher noise instead of extrapolating in t.

* :class:`EnergyMLP`: a residual MLP on the standardised input (x - alpha_t mu) / sqrt(v_t), for
  generic flat data (Gaussian mixtures, toy targets).
* :class:`MolecularEnergy`: for centre-free molecular coordinates (see boltzgen.coordinates.cartesian). The
  correction sees only interatomic distances, standardised per pair with their data mean and
  spread noised to level t, so it is invariant to rotations, translations and reflections (mirror
  images get the same energy, as under a force field; see the chirality note there). The Gaussian
  base is centred at zero (a mean structure has an orientation, so none enters).

:func:`model_from_config` rebuilds either from the ``config`` dict stored with its weights.
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

    At t = 1 the model's energy is exactly the Gaussian base (the correction carries a factor
    1 - t), whose normaliser (d/2) log(2 pi v_1) is the known anchor; h(t) learns the rest.
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


def _data_variance(value) -> float:
    try:
        value = float(value)  # also numpy scalars and 0-d tensors
    except (TypeError, ValueError) as exc:
        raise TypeError(f"data_variance must be a number (units of x^2), got {type(value).__name__}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"data_variance must be a finite positive number, got {value!r}")
    return value


class EnergyModel(nn.Module):
    """E_theta(t, x) in kT for flat x (n, d): Gaussian base + (1 - t) * correction(...).

    Args:
        correction: an nn.Module called as ``correction(x_centred, alpha, sigma, v_t, embedding)``
            with x_centred (n, d) = x - alpha_t mu, alpha, sigma, v_t (n,) and the time embedding
            (n, 2 n_time_features), returning (n,) energies in kT; it should start at zero. Its
            ``config`` dict is stored in this model's.
        kind: name of the correction in configs (see :func:`model_from_config`).
        dim: d, the number of coordinates.
        schedule: a noise schedule (boltzgen.diffusion.schedule).
        data_mean: (d,) mean of the training data (units of x), default 0.
        data_variance: per-coordinate variance of the training data (scalar, units of x^2).
        n_time_features: size of the Fourier time embedding.
        subspace_dim: the dimension of the subspace the data and noise live in when training
            projects the noise (e.g. 3 n_atoms - 3 for centre-free molecules; default d). It sets
            the Gaussian anchor of the log-normaliser, f(1) = (subspace_dim / 2) log(2 pi v_1).
    """

    def __init__(self, correction: nn.Module, kind: str, dim: int, schedule, data_mean=None,
                 data_variance: float = 1.0, n_time_features: int = 16, subspace_dim: int | None = None):
        super().__init__()
        dim = check_count(dim, "dim")
        subspace_dim = check_count(subspace_dim, "subspace_dim", allow_none=True)
        if subspace_dim is not None and subspace_dim > dim:
            raise ValueError(f"subspace_dim must be at most dim = {dim}, got {subspace_dim}")
        data_variance = _data_variance(data_variance)
        mean = torch.zeros(dim) if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32).reshape(-1)
        if mean.shape != (dim,):
            raise ValueError(f"data_mean must have shape ({dim},), got {tuple(mean.shape)}")
        self.kind, self.dim, self.schedule = kind, dim, schedule
        self.config = dict(kind=kind, dim=dim, schedule=schedule_config(schedule), data_mean=mean.tolist(),
                           data_variance=data_variance, n_time_features=n_time_features, **correction.config)
        if subspace_dim is not None:
            self.config["subspace_dim"] = subspace_dim
        self.register_buffer("data_mean", mean)
        self.data_variance = data_variance
        self.subspace_dim = subspace_dim or dim
        self.embed = FourierTime(n_time_features)
        self.correction = correction
        self.log_normaliser_net = LogNormaliser(self.subspace_dim)

    # --- energies --------------------------------------------------------------------------
    def _prepare(self, t, x):
        # the network's dtype wins (float32 by default): samplers may hand in float64 particles,
        # and the cast is differentiable, so their gradients come back in their own dtype
        x = check_flat(x, "x", self.dim).to(self.data_mean.dtype)
        t = check_time(t, "t", x.shape[0], t_min=0.0).to(device=x.device, dtype=x.dtype)
        return t, x

    def _levels(self, t: torch.Tensor):
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        return alpha, sigma, alpha**2 * self.data_variance + sigma**2

    def energy(self, t, x) -> torch.Tensor:
        """E_theta(t, x): t a float or (n,) times in [0, 1], x (n, d) -> (n,) energies (kT)."""
        t, x = self._prepare(t, x)
        alpha, sigma, v_t = self._levels(t)
        centred = x - alpha[:, None] * self.data_mean
        base = 0.5 * (centred**2).sum(1) / v_t
        emb = self.embed(sigma**2 / v_t)
        return base + (1.0 - t) * self.correction(centred, alpha, sigma, v_t, emb)

    forward = energy

    def base_energy(self, t, x) -> torch.Tensor:
        """The analytic Gaussian part alone, (n,) kT."""
        t, x = self._prepare(t, x)
        alpha, _, v_t = self._levels(t)
        return 0.5 * ((x - alpha[:, None] * self.data_mean) ** 2).sum(1) / v_t

    def log_normaliser(self, t) -> torch.Tensor:
        """f(t), the model's estimate of log Z_t (trained by DiffCLF); t float or (n,) -> (n,)."""
        tt = torch.as_tensor(t, dtype=self.data_mean.dtype, device=self.data_mean.device)
        tt = tt.reshape(-1) if tt.ndim else tt.reshape(1)
        return self.log_normaliser_net(tt, self._levels(tt)[2])

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


class MLPCorrection(nn.Module):
    """g(x) = residual MLP of [(x - alpha mu) / sqrt(v_t), time embedding] -> scalar (zero at init)."""

    def __init__(self, dim: int, hidden: int = 256, n_blocks: int = 3, n_time_features: int = 16):
        super().__init__()
        self.config = dict(hidden=hidden, n_blocks=n_blocks)
        e = 2 * n_time_features
        self.inp = nn.Linear(dim + e, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, e) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, centred, alpha, sigma, v_t, emb) -> torch.Tensor:
        h = self.inp(torch.cat([centred / v_t.sqrt()[:, None], emb], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(h)).squeeze(-1)


class EnergyMLP(EnergyModel):
    """E_theta(t, x) for generic flat x (n, d) with a residual-MLP correction.

    Args:
        dim, schedule, data_mean, data_variance, n_time_features, subspace_dim: see :class:`EnergyModel`.
        hidden, n_blocks: network width and number of residual blocks.
    """

    def __init__(self, dim: int, schedule, data_mean=None, data_variance: float = 1.0,
                 hidden: int = 256, n_blocks: int = 3, n_time_features: int = 16, subspace_dim: int | None = None):
        dim = check_count(dim, "dim")
        super().__init__(MLPCorrection(dim, hidden, n_blocks, n_time_features), "mlp", dim, schedule, data_mean,
                         data_variance, n_time_features, subspace_dim)

    @classmethod
    def from_config(cls, config: dict) -> "EnergyMLP":
        """Rebuild an (untrained) model from ``model.config``."""
        c = dict(config)
        c.pop("kind", None)
        return cls(c.pop("dim"), schedule_from_config(c.pop("schedule")), **c)


class PairDistanceCorrection(nn.Module):
    """g from interatomic distances, each standardised by its data mean and spread at level t.

    For a pair (i, j) with clean-data distance mean m and standard deviation s (model units), the
    noised distance at level t has about mean sqrt(alpha^2 m^2 + 6 sigma^2) and spread
    sqrt(alpha^2 s^2 + 2 sigma^2) (centre-free noise has variance 2 sigma^2 per coordinate of a
    difference). The feature (r - mean_t) / spread_t is O(1) at every level and, at low noise, is
    exactly the standardised bond/angle/torsion distance, so stiff modes (C-H bonds) are resolved.
    Distances are invariant to rotations, translations and reflections.
    """

    def __init__(self, n_atoms: int, pairs, hidden: int = 256, n_blocks: int = 3, n_time_features: int = 16):
        super().__init__()
        pairs = torch.as_tensor(pairs, dtype=torch.int64)
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
            raise ValueError(f"pairs must have shape (m, 2) with m >= 1 atom pairs, got {tuple(pairs.shape)}")
        if pairs.min() < 0 or pairs.max() >= n_atoms or (pairs[:, 0] == pairs[:, 1]).any():
            raise ValueError(f"pairs must be pairs of distinct atom indices in [0, {n_atoms})")
        self.n_atoms = n_atoms
        self.config = dict(n_atoms=n_atoms, pairs=pairs.tolist(), hidden=hidden, n_blocks=n_blocks)
        self.register_buffer("pairs", pairs)
        self.register_buffer("pair_mean", torch.ones(pairs.shape[0]))
        self.register_buffer("pair_std", torch.ones(pairs.shape[0]))
        e = 2 * n_time_features
        self.inp = nn.Linear(pairs.shape[0] + e, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, e) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """(n, m) distances of the pairs for flat x (n, 3 n_atoms); smooth at zero distance."""
        r = x.reshape(x.shape[0], self.n_atoms, 3)
        diff = r[:, self.pairs[:, 0]] - r[:, self.pairs[:, 1]]
        return torch.sqrt((diff**2).sum(-1) + 1e-12)

    @torch.no_grad()
    def fit(self, x0: torch.Tensor) -> None:
        """Set the per-pair mean and spread from clean data x0 (N, 3 n_atoms), model units."""
        d = self.distances(x0.to(self.pair_mean.dtype))
        self.pair_mean.copy_(d.mean(0))
        self.pair_std.copy_(d.std(0).clamp_min(1e-4 * float(d.mean())))

    def features(self, x, alpha, sigma) -> torch.Tensor:
        """(n, m) noise-aware standardised distances."""
        a2, s2 = (alpha**2)[:, None], (sigma**2)[:, None]
        mean = torch.sqrt(a2 * self.pair_mean**2 + 6.0 * s2)
        spread = torch.sqrt(a2 * self.pair_std**2 + 2.0 * s2)
        return (self.distances(x) - mean) / spread

    def forward(self, centred, alpha, sigma, v_t, emb) -> torch.Tensor:
        h = self.inp(torch.cat([self.features(centred, alpha, sigma), emb], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(h)).squeeze(-1)


def all_pairs(n_atoms: int) -> list[tuple[int, int]]:
    """Every atom pair (i < j): n_atoms (n_atoms - 1) / 2 of them."""
    n_atoms = check_count(n_atoms, "n_atoms", minimum=2)
    return [(i, j) for i in range(n_atoms) for j in range(i + 1, n_atoms)]


class MolecularEnergy(EnergyModel):
    """E_theta(t, y) for centre-free flat molecular coordinates y (n, 3 n_atoms) in model units.

    Gaussian base centred at zero on the (3 n_atoms - 3)-dimensional subspace, plus a
    :class:`PairDistanceCorrection` (invariant to rotations, translations and reflections).
    Call :meth:`fit` on the training data before training to set the per-pair statistics.

    Args:
        n_atoms: atoms of the molecule.
        schedule: noise schedule (boltzgen.diffusion.schedule.LogSNRSchedule is the molecular default).
        data_variance: per-coordinate variance of the (centre-free, scaled) data, about 1 after
            boltzgen.coordinates.cartesian.MolecularSpace.fit.
        pairs: atom pairs the correction sees (default: all pairs); e.g. pairs within a few bonds
            for larger molecules.
        hidden, n_blocks, n_time_features: network size.
    """

    def __init__(self, n_atoms: int, schedule, data_variance: float = 1.0, pairs=None, hidden: int = 256,
                 n_blocks: int = 3, n_time_features: int = 16):
        n_atoms = check_count(n_atoms, "n_atoms", minimum=2)
        correction = PairDistanceCorrection(n_atoms, all_pairs(n_atoms) if pairs is None else pairs, hidden,
                                            n_blocks, n_time_features)
        super().__init__(correction, "molecular", 3 * n_atoms, schedule, None, data_variance, n_time_features,
                         3 * n_atoms - 3)

    def fit(self, y0) -> "MolecularEnergy":
        """Set the correction's per-pair distance statistics from clean data y0 (N, 3 n_atoms); returns self."""
        y0 = check_flat(y0, "y0", self.dim)
        if y0.shape[0] < 2 or not torch.isfinite(y0).all():
            raise ValueError("y0 must hold at least two configurations and only finite values")
        self.correction.fit(y0)
        return self

    @classmethod
    def from_config(cls, config: dict) -> "MolecularEnergy":
        """Rebuild an (untrained, unfitted) model from ``model.config``."""
        c = dict(config)
        return cls(c["n_atoms"], schedule_from_config(c["schedule"]), c["data_variance"], c["pairs"], c["hidden"],
                   c["n_blocks"], c["n_time_features"])


def model_kinds() -> dict:
    """The registry of model kinds: the ``kind`` stored in a model's config -> its class."""
    from .internal import InternalEnergy  # imported here: it builds on this module

    return {"mlp": EnergyMLP, "molecular": MolecularEnergy, "internal": InternalEnergy}


def model_from_config(config: dict) -> EnergyModel:
    """Rebuild an untrained model of the right kind from a stored ``config`` (load weights after)."""
    kind = config.get("kind", "mlp")  # configs from before kinds existed are MLPs
    kinds = model_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(kinds)}")
    return kinds[kind].from_config(config)


def energy_score(energy_fn, t, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """-grad_x energy_fn(t, x) by autograd for any energy callable, shape of x."""
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        e = energy_fn(t, xg)
        (grad,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph)
    return -grad if create_graph else -grad.detach()
