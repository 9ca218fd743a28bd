"""Sampling from a diffusion model's score: reverse SDE (Euler-Maruyama) and probability-flow ODE.

These samplers use only the score s(t, x) = -grad_x E(t, x), so they are biased by the model's
errors and by discretisation; the SMC sampler (boltzgen.smc) corrects both using the energies.
Both start from the model's Gaussian at t = 1, N(alpha_1 mu, v_1 I), and integrate from t = 1
down to t_min on a grid uniform in t. ``project`` (e.g. ``space.project`` of a
boltzgen.coordinates.cartesian.MolecularSpace) keeps noise and scores, hence samples, in the data's subspace.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._checks import check_count


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def prior_sample(model, n: int, generator: torch.Generator | None = None, project=None) -> torch.Tensor:
    """n draws from the model's top-level Gaussian N(alpha_1 mu, (alpha_1^2 v + sigma_1^2) I), (n, d).

    With ``project`` the Gaussian noise is projected onto the subspace (the model's own density there).
    """
    n = check_count(n, "n")
    P = project or _identity
    s = model.schedule
    one = torch.tensor(1.0, dtype=torch.float64)
    alpha, var = s.alpha(one).item(), s.marginal_variance(one, model.data_variance).item()
    z = P(_randn((n, model.dim), generator, model.data_mean))
    return alpha * model.data_mean + var**0.5 * z


def _grid(model, n_steps: int) -> torch.Tensor:
    n_steps = check_count(n_steps, "n_steps")
    return torch.linspace(1.0, model.schedule.t_min, n_steps + 1, dtype=torch.float64)


def sample_sde(model, n: int, n_steps: int = 500, generator: torch.Generator | None = None,
               progress: bool = False, project=None) -> torch.Tensor:
    """Reverse-time SDE dx = [f x - g^2 s] dt + g dW (dt < 0) by Euler-Maruyama; returns (n, d) at t_min."""
    P = project or _identity
    x = prior_sample(model, n, generator, project)
    times = _grid(model, n_steps)
    s = model.schedule
    for t, t_next in tqdm(list(zip(times[:-1], times[1:])), disable=not progress, desc="reverse SDE"):
        dt = (t - t_next).item()
        f, g2 = s.drift(t).item(), s.diffusion_squared(t).item()
        score = P(model.score(torch.full((n,), t.item(), dtype=x.dtype, device=x.device), x))
        x = x - (f * x - g2 * score) * dt + (g2 * dt) ** 0.5 * P(_randn(x.shape, generator, x))
    return x.detach()


def sample_ode(model, n: int, n_steps: int = 200, generator: torch.Generator | None = None,
               progress: bool = False, project=None) -> torch.Tensor:
    """Probability-flow ODE dx/dt = f x - g^2 s / 2 integrated with Heun's method; (n, d) at t_min."""
    P = project or _identity
    x = prior_sample(model, n, generator, project)
    times = _grid(model, n_steps)
    s = model.schedule

    def velocity(t, x):
        score = P(model.score(torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device), x))
        return s.drift(torch.tensor(t)).item() * x - 0.5 * s.diffusion_squared(torch.tensor(t)).item() * score

    for t, t_next in tqdm(list(zip(times[:-1].tolist(), times[1:].tolist())), disable=not progress, desc="PF ODE"):
        h = t_next - t  # negative
        v1 = velocity(t, x)
        x_pred = x + h * v1
        x = x + 0.5 * h * (v1 + velocity(t_next, x_pred))
    return x.detach()
