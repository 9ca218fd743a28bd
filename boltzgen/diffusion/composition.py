"""Composing diffusion EBMs: products, mixtures, and an EBM times an analytic energy, sampled exactly by SMC.

Every trained model is a family of energies E_k(t, x) (kT), one per noise level. Compositions are
again such families, so they plug in wherever a model's ``energy(t, x)`` goes:

* :class:`Product` (a, b, ...): E(t, x) = sum_k E_k(t, x), the density prod_k exp(-E_k(t, x)) (a
  product of experts; e.g. two models that each learned one restraint or one force field term).
* :class:`Mixture` (models, weights): E(t, x) = -logsumexp_k(log w_k - E_k(t, x) - log Z_k(t)),
  the density sum_k w_k p_k(t, x) with p_k the *normalised* density of component k at level t.
  Noising is linear in the data distribution, so at every level this is exactly the noised
  marginal of the mixture of the components' data distributions (it is a diffusion of that
  mixture, not only a path to it). It needs each component's log-normaliser at every level; see
  "Normalisers" below.
* :class:`Tilted` (model, analytic, at="every" | "end"): E(t, x) = E_model(t, x) + u(x), an EBM
  times exp(-u) for an analytic energy u (a restraint on a dihedral, a wall, a bias), added at
  every level ("every", the default) or only at the end ("end": at levels t <= t_end, by default
  the model's t_min; :func:`composition_path` then switches u on at the last level by an
  adaptive geometric bridge lam: 0 -> 1, so the restraint costs no single large reweighting
  step). ``WithEnergy`` is an alias.

Components are anything with ``energy(t, x) -> (n,)`` (an :class:`~boltzgen.diffusion.networks.EnergyModel`,
an :class:`~boltzgen.diffusion.evaluation.ExactEnergyModel`, another composition) or a plain
callable ``f(t, x) -> (n,)``; compositions nest. They are frozen dataclasses and pure functions:
no state, no device of their own; every tensor they make follows ``x`` (device) and the components'
outputs (dtype, promoted: a float32 network and a float64 analytic energy give float64).

Sampling exactly (:func:`sample_composition`): SMC (:func:`boltzgen.smc.smc`) from the Gaussian at
the top level through exp(-E(t, .)) at every level down to the last one. The path is only a
sequence of targets: whatever the intermediate levels are, and however wrong the models or the
normalisers are there, the weighted particles and log Z are exact (up to Monte Carlo error) for
the *final* target exp(-E(t_last, .)). The composition decides what is sampled; the levels only
decide how efficiently.

Normalisers (Mixture). log Z_k(t) = log integral exp(-E_k(t, x)) dx, the normaliser of component
k's own level-t energy. Three sources:

1. the component's ``log_normaliser(t)`` (default). For an EnergyModel this is the learned
   offset f(t) trained by DiffCLF. It is identifiable because the model's correction carries a
   factor (1 - t), so E(1, .) is the known Gaussian and f(1) is pinned to its normaliser; DSM
   and DiffCLF are both blind to a constant added to E at every level, and this anchor fixes it.
   DiffCLF's Bayes-optimal offset is then log Z_t of the model's own energy. **A DSM-only model's
   f(t) is never trained** (it stays the Gaussian anchor), so do not use it for mixtures.
2. :func:`estimate_log_normalisers`: SMC through the component's own levels; the running log Z
   of SMC at each level is an estimate of log Z_k(t) there (exact up to Monte Carlo error, for
   any model, DSM-only included), returned as a :class:`LogNormaliserTable` (linear in t between
   its levels; exact at them).
3. a number (the same at every level) or any callable t -> (n,).

Only the normalisers at the final level matter for what is sampled (they set the mixture
weights of the final target); elsewhere they shape the path.

Closed-form references: :func:`gaussian_mixture_product` and :func:`gaussian_mixture_mixture`
give the product and mixture of :class:`~boltzgen.targets.analytic.GaussianMixture` s as Gaussian
mixtures, with exact component weights, means, covariances and log Z; :func:`smc_mode_weights`
reads mode weights off weighted particles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .._checks import as_tensor, check_count, check_flat
from ..smc import weights as W
from ..smc.denoising import gaussian_level, level_grid
from ..smc.path import Path, diffusion_path, geometric_path
from ..smc.proposal import GaussianProposal
from ..smc.engine import SMCResult
from ..smc.sampler import smc
from ..targets.analytic import GaussianMixture

__all__ = [
    "LogNormaliserTable", "Mixture", "Product", "Tilted", "WithEnergy", "composition_path",
    "estimate_log_normalisers", "gaussian_mixture_mixture", "gaussian_mixture_product", "level_times",
    "sample_composition", "smc_mode_weights", "top_level_gaussian",
]

_AT = ("every", "end")
_T_TOLERANCE = 1e-9  # levels this close to t_end count as t <= t_end


# --- components --------------------------------------------------------------------------------
def _energy_fn(component, name: str) -> Callable:
    """The callable energy(t, x) of a component (a model's ``energy`` method, or the callable itself)."""
    fn = getattr(component, "energy", None)
    if callable(fn):
        return fn
    if callable(component):
        return component
    raise TypeError(f"{name} must have energy(t, x) -> (n,) (a model or a composition) or be callable as "
                    f"f(t, x) -> (n,), got {type(component).__name__}")


def _checked_output(e, n: int, name: str) -> torch.Tensor:
    if not isinstance(e, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape ({n},) (energies in kT), got {type(e).__name__}")
    if e.shape != (n,):
        raise ValueError(f"{name} must return shape ({n},) (one energy in kT per row of x), got {tuple(e.shape)}")
    return e


def _component_energy(component, t, x: torch.Tensor, end, name: str) -> torch.Tensor:
    """E(t, x) of a component; compositions get ``end`` (the scale of their end-only terms)."""
    if isinstance(component, _Composition):
        return component._energy(t, x, end)
    return _checked_output(_energy_fn(component, name)(t, x), x.shape[0], name)


def _check_x(x) -> torch.Tensor:
    return check_flat(x, "x")


def _dims(components) -> int | None:
    dims = {int(c.dim) for c in components if isinstance(getattr(c, "dim", None), int)}
    if len(dims) > 1:
        raise ValueError(f"components must all take the same dimension d, got dims {sorted(dims)}")
    return dims.pop() if dims else None


def _t_mins(components) -> list[float]:
    out = []
    for c in components:
        if isinstance(c, _Composition):
            if c.t_min is not None:
                out.append(c.t_min)
        else:
            schedule = getattr(c, "schedule", None)
            if schedule is not None and hasattr(schedule, "t_min"):
                out.append(float(schedule.t_min))
    return out


def _common_dtype(tensors) -> torch.dtype:
    dtype = tensors[0].dtype
    for e in tensors[1:]:
        dtype = torch.promote_types(dtype, e.dtype)
    return dtype


class _Composition:
    """Shared behaviour: call like a model, ``energy(t, x)``; nested end-only terms."""

    def energy(self, t, x) -> torch.Tensor:
        """E(t, x) in kT: t a float or (n,) times in [0, 1], x (n, d) -> (n,), on x's device.

        Terms of :class:`Tilted` components with ``at="end"`` are included where t <= their t_end.
        """
        x = _check_x(x)
        return self._energy(t, x, None)

    def __call__(self, t, x) -> torch.Tensor:
        return self.energy(t, x)

    def score(self, t, x, create_graph: bool = False) -> torch.Tensor:
        """-grad_x E(t, x) by autograd, shape of x (n, d)."""
        from .networks import energy_score

        return energy_score(self.energy, t, x, create_graph)

    # internal protocol ------------------------------------------------------------------------
    def _energy(self, t, x: torch.Tensor, end) -> torch.Tensor:  # pragma: no cover - abstract
        """E(t, x) with end-only terms scaled by ``end`` (a float in [0, 1]), or by t <= t_end if None."""
        raise NotImplementedError

    @property
    def _children(self) -> tuple:
        return ()

    def _has_end_terms_at(self, t: float) -> bool:
        """Whether the public energy at level t contains end-only terms (so a bridge switches them on)."""
        return any(isinstance(c, _Composition) and c._has_end_terms_at(t) for c in self._children)

    @property
    def dim(self) -> int | None:
        """d, when the components say (None when none does)."""
        return _dims(self._children)

    @property
    def t_min(self) -> float | None:
        """The largest of the components' schedule t_min: the lowest level every component was trained at."""
        values = _t_mins(self._children)
        return max(values) if values else None


@dataclass(frozen=True, init=False)
class Product(_Composition):
    """Product of experts: E(t, x) = sum_k E_k(t, x) (kT), i.e. density prod_k exp(-E_k(t, x)).

    Args:
        *components: at least one model, composition or callable f(t, x) -> (n,), all on the
            same coordinates x (n, d).

    The product's own normaliser is not known in closed form: SMC estimates it
    (:func:`sample_composition`'s ``log_z``; minus the components' normalisers it is the log of
    the overlap integral of their normalised densities).
    """

    components: tuple

    def __init__(self, *components):
        if len(components) == 1 and isinstance(components[0], (list, tuple)):
            components = tuple(components[0])
        if len(components) == 0:
            raise ValueError("components: Product needs at least one component, got none")
        for k, c in enumerate(components):
            _energy_fn(c, f"components[{k}]")
        _dims(components)
        object.__setattr__(self, "components", tuple(components))

    @property
    def _children(self) -> tuple:
        return self.components

    def _energy(self, t, x, end):
        total = None
        for k, c in enumerate(self.components):
            e = _component_energy(c, t, x, end, f"components[{k}]")
            total = e if total is None else total + e
        return total


def _log_normaliser_source(component, source, name: str):
    """Normalise a user's normaliser: None -> component.log_normaliser, a number, or a callable."""
    if source is None:
        fn = getattr(component, "log_normaliser", None)
        if not callable(fn):
            raise TypeError(
                f"{name}: component has no log_normaliser(t); give log_normalisers= (numbers, callables t -> (n,), "
                "or LogNormaliserTable from estimate_log_normalisers)")
        return fn
    if isinstance(source, bool):
        raise TypeError(f"{name} must be a number, a callable t -> (n,) or None, got a bool")
    if isinstance(source, (int, float)):
        if not math.isfinite(source):
            raise ValueError(f"{name} must be finite, got {source!r}")
        return float(source)
    if callable(source):
        return source
    raise TypeError(f"{name} must be a number, a callable t -> (n,) or None, got {type(source).__name__}")


def _log_z_values(source, t, n: int, dtype: torch.dtype, device, name: str) -> torch.Tensor:
    """log Z_k(t) as an (n,) tensor of ``dtype`` (the energies') on ``device`` (x's)."""
    if isinstance(source, float):
        return torch.full((n,), source, dtype=dtype, device=device)
    value = source(t)
    value = as_tensor(value, name).to(dtype=dtype).to(device=device)  # cast first: some devices lack float64
    value = value.reshape(-1)
    if value.numel() == 1:
        value = value.expand(n)
    if value.shape != (n,):
        raise ValueError(f"{name} must return shape (1,) or ({n},) for t of that shape, got {tuple(value.shape)}")
    return value


@dataclass(frozen=True, init=False)
class Mixture(_Composition):
    """Mixture sum_k w_k p_k(t, .) of normalised component densities, as an energy (kT):

        E(t, x) = -logsumexp_k(log w_k - E_k(t, x) - log Z_k(t)),

    with log Z_k(t) = log integral exp(-E_k(t, x)) dx. With exact normalisers E is normalised
    (its log Z is 0 at every level, so :meth:`log_normaliser` returns 0 and a mixture can itself be
    a mixture's component), and at every level it is exactly the noised marginal of the mixture
    of the components' data distributions.

    Args:
        components: sequence of K >= 1 models / compositions / callables f(t, x) -> (n,).
        weights: K positive finite mixture weights (normalised here); default equal.
        log_normalisers: one entry per component, each None (use the component's
            ``log_normaliser(t)``: the DiffCLF-trained f(t) of an EnergyModel, exactly 0 for an
            ExactEnergyModel), a number (log Z_k, the same at every level), or a callable
            t -> (n,) / (1,) such as a :class:`LogNormaliserTable` from
            :func:`estimate_log_normalisers` (the only right choice for DSM-only models, whose
            f(t) is untrained). Default: None for every component. See the module notes.
    """

    components: tuple
    log_weights: tuple
    log_normalisers: tuple

    def __init__(self, components, weights=None, log_normalisers=None):
        if isinstance(components, (str, bytes)) or not isinstance(components, Sequence):
            raise TypeError(f"components must be a sequence of models or energies, got {type(components).__name__}")
        components = tuple(components)
        k = len(components)
        if k == 0:
            raise ValueError("components: Mixture needs at least one component, got none")
        for i, c in enumerate(components):
            _energy_fn(c, f"components[{i}]")
        _dims(components)
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            w = as_tensor(weights, "weights", dtype=torch.float64).detach().cpu().reshape(-1)
            if w.shape != (k,):
                raise ValueError(f"weights must hold one weight per component ({k}), got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w <= 0).any():
                raise ValueError(f"weights must be positive finite numbers, got {w.tolist()}")
        log_w = torch.log(w / w.sum())
        if log_normalisers is None:
            log_normalisers = (None,) * k
        elif isinstance(log_normalisers, (str, bytes)) or not isinstance(log_normalisers, Sequence):
            raise TypeError("log_normalisers must be a sequence with one entry (None, a number or a callable) per "
                            f"component, got {type(log_normalisers).__name__}")
        if len(log_normalisers) != k:
            raise ValueError(f"log_normalisers must hold one entry per component ({k}), got {len(log_normalisers)}")
        sources = tuple(_log_normaliser_source(c, s, f"log_normalisers[{i}]")
                        for i, (c, s) in enumerate(zip(components, log_normalisers)))
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "log_weights", tuple(float(v) for v in log_w))
        object.__setattr__(self, "log_normalisers", sources)

    @property
    def weights(self) -> tuple[float, ...]:
        """The normalised mixture weights w_k."""
        return tuple(math.exp(v) for v in self.log_weights)

    @property
    def _children(self) -> tuple:
        return self.components

    def _energy(self, t, x, end):
        n = x.shape[0]
        energies = [_component_energy(c, t, x, end, f"components[{i}]") for i, c in enumerate(self.components)]
        dtype = _common_dtype(energies)
        terms = []
        for i, (e, source) in enumerate(zip(energies, self.log_normalisers)):
            log_z = _log_z_values(source, t, n, dtype, x.device, f"log_normalisers[{i}]")
            terms.append(self.log_weights[i] - e.to(dtype) - log_z)
        return -torch.logsumexp(torch.stack(terms, dim=1), dim=1)

    def log_normaliser(self, t) -> torch.Tensor:
        """log Z(t) of the mixture: 0 (float64, shape (n,) for t (n,), (1,) for a float), exact when
        the component normalisers are."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        return torch.zeros_like(tt.reshape(-1) if tt.ndim else tt.reshape(1))


def _analytic_fn(analytic) -> Callable:
    fn = getattr(analytic, "reduced_energy", None)
    if callable(fn):
        return fn
    if callable(analytic):
        return analytic
    raise TypeError(f"analytic must be callable as u(x) -> (n,) (kT) or have reduced_energy(x), got {type(analytic).__name__}")


@dataclass(frozen=True, init=False)
class Tilted(_Composition):
    """An EBM times an analytic density: E(t, x) = E_model(t, x) + u(x) (kT).

    Args:
        model: a model, composition or callable f(t, x) -> (n,).
        analytic: u(x) -> (n,) reduced energy in kT of x (n, d) (a restraint, a bias, a wall), or
            any object with ``reduced_energy(x)`` (a target). Differentiable in x for MCMC moves.
        at: "every" (default): u is added at every level, so every intermediate target already
            carries the restraint (the top level is then not Gaussian; SMC's first importance
            step accounts for that). "end": u is part of the final target only: the energy
            includes it at levels t <= t_end, and :func:`composition_path` runs the levels
            without it and then switches it on at the last level by an adaptive geometric bridge
            (lam: 0 -> 1). Both give the same final target at t_min; "every" adapts the whole
            path to the restraint (better when it is strong), "end" keeps the model's own path
            (better when the restraint is mild or not meaningful on noisy x).
        t_end: for at="end", the largest level that carries u (default: the model's schedule t_min).
    """

    model: object
    analytic: Callable
    at: str
    t_end: float | None

    def __init__(self, model, analytic, at: str = "every", t_end: float | None = None):
        _energy_fn(model, "model")
        _analytic_fn(analytic)
        if not isinstance(at, str) or at not in _AT:
            raise ValueError(f"at must be one of {_AT} (apply the analytic energy at every level, or only at the end), got {at!r}")
        if at == "end":
            if t_end is None:
                mins = _t_mins([model])
                if not mins:
                    raise ValueError("t_end: at='end' needs t_end (the levels t <= t_end carry the analytic energy) "
                                     "when the model has no schedule")
                t_end = mins[0]
            if isinstance(t_end, bool) or not isinstance(t_end, (int, float)) or not 0.0 <= t_end <= 1.0:
                raise ValueError(f"t_end must be a level in [0, 1], got {t_end!r}")
            t_end = float(t_end)
        elif t_end is not None:
            raise ValueError("t_end is only used with at='end'")
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "analytic", analytic)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "t_end", t_end)

    @property
    def _children(self) -> tuple:
        return (self.model,)

    def _has_end_terms_at(self, t: float) -> bool:
        if self.at == "end" and t <= self.t_end + _T_TOLERANCE:
            return True
        return super()._has_end_terms_at(t)

    def analytic_energy(self, x) -> torch.Tensor:
        """u(x) in kT, (n, d) -> (n,)."""
        x = _check_x(x)
        return _checked_output(_analytic_fn(self.analytic)(x), x.shape[0], "analytic")

    def _energy(self, t, x, end):
        e = _component_energy(self.model, t, x, end, "model")
        u = _checked_output(_analytic_fn(self.analytic)(x), x.shape[0], "analytic")
        dtype = torch.promote_types(e.dtype, u.dtype)
        e, u = e.to(dtype), u.to(dtype)
        if self.at == "every":
            return e + u
        if end is None:  # the public energy: u where t <= t_end
            tt = t.detach() if isinstance(t, torch.Tensor) else torch.tensor(float(t))
            on = (tt <= self.t_end + _T_TOLERANCE).to(x.device).reshape(-1).expand(x.shape[0])
            return e + torch.where(on, u, torch.zeros_like(u))  # never 0 * inf = NaN off the end
        if end == 0:
            return e  # never 0 * inf = NaN where the restraint is infinite
        return e + end * u


WithEnergy = Tilted


# --- levels, paths, proposals ----------------------------------------------------------------------
def level_times(n_levels: int, t_min: float, power: float = 2.0) -> torch.Tensor:
    """``n_levels`` levels from 1 down to t_min, t = t_min + (1 - t_min) s^power on a uniform s grid.

    power = 2 (default) puts more levels at low noise, where p_t changes fastest. float64 (n_levels,),
    decreasing. The same grid as :func:`boltzgen.smc.level_grid` (which counts steps, not levels).
    """
    n_levels = check_count(n_levels, "n_levels", minimum=2)
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min!r}")
    return torch.tensor(level_grid(float(t_min), n_levels - 1, power=power), dtype=torch.float64)


def _times(energy, times) -> tuple[float, ...]:
    if isinstance(times, bool):
        raise TypeError("times must be a sequence of levels or an integer number of levels, got a bool")
    if isinstance(times, int):
        t_min = energy.t_min if isinstance(energy, _Composition) else _first(_t_mins([energy]))
        if t_min is None:
            raise ValueError("times: an integer number of levels needs components with a schedule (for t_min); "
                             "give the levels themselves")
        times = level_times(times, t_min)
    if isinstance(times, torch.Tensor):
        times = times.detach().cpu().reshape(-1).tolist()
    try:
        levels = sorted({float(v) for v in times}, reverse=True)
    except (TypeError, ValueError) as exc:
        raise TypeError("times must be a sequence of levels (floats in [0, 1]) or an integer number of levels") from exc
    if len(levels) < 2:
        raise ValueError(f"times must hold at least two distinct levels, got {levels}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in levels):
        raise ValueError(f"times must lie in [0, 1], got {levels[-1]} .. {levels[0]}")
    return tuple(levels)


def _first(values):
    return values[0] if values else None


def _public_energy(energy) -> Callable:
    return energy.energy if isinstance(energy, _Composition) else _energy_fn(energy, "energy")


def composition_path(energy, times, cess_target: float = 0.9, adaptive_times: bool = False) -> Path:
    """The SMC path of a composition: its levels from max(times) down to t_last = min(times).

    Level targets exp(-E(t, .)) with end-only terms (:class:`Tilted` at="end") off; if the
    composition's energy at t_last has such terms, an adaptive geometric bridge at t_last switches
    them on (lam: 0 -> 1). The final target is always exp(-energy.energy(t_last, .)).

    Args:
        energy: a composition, a model or a callable f(t, x) -> (n,) (kT).
        times: the levels (any order, at least two distinct values in [0, 1]), or an integer
            number of levels (then :func:`level_times` down to the components' t_min).
        cess_target: conditional ESS fraction of each adaptive step (bridge, adaptive_times).
        adaptive_times: choose the levels between max(times) and min(times) adaptively.
    """
    levels = _times(energy, times)
    if isinstance(energy, _Composition):
        def level_energy(t, x):
            return energy._energy(t, _check_x(x), 0.0)
    else:
        level_energy = _energy_fn(energy, "energy")
    path = diffusion_path(level_energy, levels, cess_target=cess_target, adaptive_times=adaptive_times)
    t_last = levels[-1]
    if isinstance(energy, _Composition) and energy._has_end_terms_at(t_last):
        path = path + geometric_path(lambda x: level_energy(t_last, x), lambda x: energy.energy(t_last, x),
                                     cess_target=cess_target, name="end")
    return path


def _model_gaussian(component, t: float):
    """(mean (d,) float64, per-coordinate variance) of a model's Gaussian base at level t."""
    if isinstance(component, Product):
        parts = [_model_gaussian(c, t) for c in component.components]
        precision = sum(1.0 / v for _, v in parts)
        mean = sum(m / v for m, v in parts) / precision
        return mean, 1.0 / precision
    if isinstance(component, Mixture):
        parts = [_model_gaussian(c, t) for c in component.components]
        w = component.weights
        mean = sum(wk * m for wk, (m, _) in zip(w, parts))
        var = sum(wk * (v + float(((m - mean) ** 2).mean())) for wk, (m, v) in zip(w, parts))
        return mean, var
    if isinstance(component, Tilted):
        return _model_gaussian(component.model, t)
    if any(getattr(component, a, None) is None for a in ("schedule", "data_mean", "data_variance")):
        raise TypeError(f"cannot read a Gaussian top level off a {type(component).__name__} (needs schedule, data_mean "
                        "and data_variance): give proposal=")
    return gaussian_level(component, t)


def top_level_gaussian(energy, t: float = 1.0, dtype: torch.dtype = torch.float64, device=None,
                       project=None) -> GaussianProposal:
    """A Gaussian proposal N(m, v I) close to exp(-E(t, .)) at the top level t (default 1).

    Each model contributes its Gaussian base N(alpha_t mu, alpha_t^2 v_data + sigma_t^2) (exact at
    t = 1 for an EnergyModel, whose correction vanishes there); a :class:`Product` multiplies them
    (precisions add), a :class:`Mixture` moment-matches them, a :class:`Tilted` uses its model's
    (the analytic energy is left to SMC's first importance step).

    Args:
        energy: a composition or model with ``schedule``, ``data_mean`` (d,) and ``data_variance``.
        t: the level. dtype, device: of the samples (device default: the first model's
            ``data_mean`` device).
        project: optional orthogonal projection onto the data's subspace (e.g. ``space.project``
            for centre-free molecules); the Gaussian then lives on that subspace.
    Returns:
        :class:`~boltzgen.smc.GaussianProposal` in d dimensions (normalised, so SMC's log Z is absolute).
    """
    mean, var = _model_gaussian(energy, t)
    if device is None:
        device = _first_device(energy)
    return GaussianProposal(mean.numel(), mean=mean, variance=var, project=project, dtype=dtype, device=device)


def _first_device(energy):
    if isinstance(energy, _Composition):
        for c in energy._children:
            d = _first_device(c)
            if d is not None:
                return d
        return None
    m = getattr(energy, "data_mean", None)
    return m.device if isinstance(m, torch.Tensor) else None


def sample_composition(energy, times=64, proposal=None, n_particles: int = 1000, *, kernel=None, n_moves: int = 5,
                       cess_target: float = 0.9, adaptive_times: bool = False, seed=0, **smc_options) -> SMCResult:
    """Sample a composition exactly: SMC through its levels, from the Gaussian at the top down to t_last.

    The final target is exp(-E(t_last, .)) with E = ``energy.energy`` and t_last = min(times);
    the weighted particles, ESS diagnostics and log Z are exact for it up to Monte Carlo error,
    whatever the intermediate levels (see :func:`composition_path`).

    Args:
        energy: a :class:`Product`, :class:`Mixture`, :class:`Tilted`, a model, or a callable
            f(t, x) -> (n,) (kT).
        times: the levels, or an integer number of levels (default 64, :func:`level_times` from 1
            down to the components' t_min).
        proposal: initial distribution (``sample(n, generator)``, normalised ``log_prob``);
            default :func:`top_level_gaussian` at max(times) (on the subspace of ``project`` when
            that is among the smc options). Normalised, so ``log_z`` is the log normaliser of the
            final target itself.
        n_particles: N.
        kernel, n_moves, seed, **smc_options: passed to :func:`boltzgen.smc.smc` (kernel default MALA).
        cess_target, adaptive_times: see :func:`composition_path`.
    Returns:
        :class:`~boltzgen.smc.SMCResult`: particles (N, d), log_weights (N,) float64, log_z (float),
        diagnostics (one SMCStep per step, ESS included).
    """
    path = composition_path(energy, times, cess_target=cess_target, adaptive_times=adaptive_times)
    if proposal is None:
        proposal = top_level_gaussian(energy, t=path.segments[0].start, project=smc_options.get("project"))
    return smc(path, proposal, n_particles, kernel=kernel, n_moves=n_moves, seed=seed, **smc_options)


# --- normalisers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LogNormaliserTable:
    """log Z(t) at a set of levels, linear in t between them: a callable t -> (n,) float64.

    Attributes:
        times: the levels, increasing (floats in [0, 1]).
        log_z: log Z at each level (log of the mean over runs of the SMC estimates of Z).
        standard_error: the standard error of log Z at each level over independent runs (nan
            with a single run).
    """

    times: tuple[float, ...]
    log_z: tuple[float, ...]
    standard_error: tuple[float, ...]

    def __post_init__(self):
        if not (len(self.times) == len(self.log_z) == len(self.standard_error)) or len(self.times) < 1:
            raise ValueError("times, log_z and standard_error must have the same positive length")
        if any(b <= a for a, b in zip(self.times, self.times[1:])):
            raise ValueError(f"times must be strictly increasing, got {self.times}")

    def __call__(self, t) -> torch.Tensor:
        """log Z at t (float, or (n,) tensor) -> (1,) or (n,) float64 on t's device (on the CPU for MPS,
        which has no float64); t must lie within the table's levels."""
        tt = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)
        device = tt.device
        tt = tt.cpu().to(torch.float64).reshape(-1)  # computed on the CPU in float64, returned on t's device
        lo, hi = self.times[0], self.times[-1]
        if (tt < lo - _T_TOLERANCE).any() or (tt > hi + _T_TOLERANCE).any():
            raise ValueError(f"t must lie within the table's levels [{lo:g}, {hi:g}], got values in "
                             f"[{float(tt.min()):g}, {float(tt.max()):g}]")
        grid = torch.tensor(self.times, dtype=torch.float64)
        values = torch.tensor(self.log_z, dtype=torch.float64)
        if grid.numel() == 1:
            out = values.expand(tt.numel()).clone()
        else:
            tt = tt.clamp(lo, hi)
            i = torch.searchsorted(grid, tt).clamp(1, grid.numel() - 1)
            t0, t1 = grid[i - 1], grid[i]
            s = (tt - t0) / (t1 - t0)
            out = (1 - s) * values[i - 1] + s * values[i]
        return out if device.type in ("cpu", "mps") else out.to(device)  # (MPS has no float64: stays on the CPU)

    log_normaliser = __call__


def estimate_log_normalisers(energy, times=64, proposal=None, n_particles: int = 1000, n_runs: int = 4, *,
                             kernel=None, n_moves: int = 5, seed: int = 0, **smc_options) -> LogNormaliserTable:
    """log Z(t) = log integral exp(-E(t, x)) dx at every level, by SMC through E's own levels.

    Each run is :func:`boltzgen.smc.smc` along ``diffusion_path(energy, times)`` from a normalised
    Gaussian proposal; the running log Z at each level's step estimates log Z(t) there (for an
    EnergyModel the first level, t = 1, is its Gaussian base and comes out exactly). Independent
    runs (seeds seed, seed + 1, ...) are combined as log of the mean Z, with standard errors.
    Works for any model (DSM-only ones included, whose learned f(t) is untrained).

    Args:
        energy: a model, a composition or a callable f(t, x) -> (n,) (kT).
        times: the levels (or an integer number of levels down to the components' t_min).
        proposal: default :func:`top_level_gaussian` at max(times).
        n_particles, n_runs: particles per run and number of independent runs (>= 1).
        kernel, n_moves, seed, **smc_options: passed to :func:`boltzgen.smc.smc`.
    Returns:
        :class:`LogNormaliserTable` on the levels (pass it to :class:`Mixture` as a log_normaliser).
    """
    n_runs = check_count(n_runs, "n_runs")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (run r uses seed + r), got {type(seed).__name__}")
    levels = _times(energy, times)
    fn = _public_energy(energy)
    path = diffusion_path(fn, levels)
    if proposal is None:
        proposal = top_level_gaussian(energy, t=levels[0], project=smc_options.get("project"))
    per_run = []
    for r in range(n_runs):
        result = smc(path, proposal, n_particles, kernel=kernel, n_moves=n_moves, seed=seed + r, **smc_options)
        by_level = {s.value: s.log_z for s in result.diagnostics if s.name == "t"}
        per_run.append([by_level[t] for t in levels])
    values = torch.tensor(per_run, dtype=torch.float64)  # (runs, levels)
    log_z = torch.logsumexp(values, 0) - math.log(n_runs)
    se = values.std(0) / math.sqrt(n_runs) if n_runs > 1 else torch.full((len(levels),), float("nan"), dtype=torch.float64)
    order = list(range(len(levels)))[::-1]  # increasing t
    return LogNormaliserTable(tuple(levels[i] for i in order), tuple(float(log_z[i]) for i in order),
                              tuple(float(se[i]) for i in order))


# --- closed forms for Gaussian mixtures ----------------------------------------------------------
def _check_mixture(m, name: str) -> GaussianMixture:
    if not isinstance(m, GaussianMixture):
        raise TypeError(f"{name} must be a boltzgen.targets.GaussianMixture, got {type(m).__name__}")
    return m


_TINY = torch.finfo(torch.float64).tiny


def _product_of_two(a: GaussianMixture, b: GaussianMixture) -> GaussianMixture:
    ca, cb = a.covariances, b.covariances  # (Ka, d, d), (Kb, d, d)
    ka, kb, d = a.n_components, b.n_components, a.dim
    # overlap of component pairs: N(mu_i; nu_j, S_i + L_j), log, (Ka, Kb)
    s = ca[:, None] + cb[None]  # (Ka, Kb, d, d)
    diff = a.means[:, None] - b.means[None]  # (Ka, Kb, d)
    chol = torch.linalg.cholesky(s)
    z = torch.linalg.solve_triangular(chol, diff[..., None], upper=False)[..., 0]
    log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_overlap = -0.5 * ((z**2).sum(-1) + log_det + d * math.log(2 * math.pi))
    # the product Gaussian of each pair: C = (S^-1 + L^-1)^-1, m = C (S^-1 mu + L^-1 nu)
    pa, pb = torch.linalg.inv(ca), torch.linalg.inv(cb)
    cov = torch.linalg.inv(pa[:, None] + pb[None])
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    mean = (cov @ ((pa @ a.means[..., None])[:, None] + (pb @ b.means[..., None])[None]))[..., 0]
    log_w = (torch.log(a.weights)[:, None] + torch.log(b.weights)[None] + log_overlap).reshape(-1)
    log_z = torch.logsumexp(log_w, 0)
    # weights that underflow are kept at the smallest positive double (GaussianMixture needs w > 0)
    weights = torch.exp(log_w - log_z).clamp_min(_TINY)
    return GaussianMixture(mean.reshape(ka * kb, d), covs=cov.reshape(ka * kb, d, d), weights=weights,
                           log_Z=a.log_Z + b.log_Z + float(log_z))


def gaussian_mixture_product(*mixtures: GaussianMixture) -> GaussianMixture:
    """The product exp(-u_1(x)) ... exp(-u_m(x)) of Gaussian mixtures, itself a Gaussian mixture.

    For two mixtures sum_i a_i N(mu_i, S_i) and sum_j b_j N(nu_j, L_j):

        p_a(x) p_b(x) = sum_ij a_i b_j N(mu_i; nu_j, S_i + L_j) N(x; m_ij, C_ij),
        C_ij = (S_i^-1 + L_j^-1)^-1,  m_ij = C_ij (S_i^-1 mu_i + L_j^-1 nu_j),

    so the product's normalised component weights are proportional to a_i b_j N(mu_i; nu_j,
    S_i + L_j) and its log normaliser is log sum_ij (the same), folded left to right for m > 2.

    Args:
        *mixtures: at least one :class:`~boltzgen.targets.GaussianMixture`, all in d dimensions
            (isotropic, diagonal or full covariances).
    Returns:
        A GaussianMixture with prod_k K_k components, component (i, j, ...) at index
        i K_2 K_3 ... + j K_3 ... + ... (row-major over the factors), whose ``reduced_energy`` equals
        sum_k u_k exactly: ``log_Z`` = sum_k log_Z_k + log integral prod_k p_k(x) dx, the log of
        integral exp(-sum_k u_k). Weights below the smallest positive double are set to it.
    """
    if len(mixtures) == 0:
        raise ValueError("mixtures: need at least one GaussianMixture, got none")
    ms = [_check_mixture(m, f"mixtures[{k}]") for k, m in enumerate(mixtures)]
    if len({m.dim for m in ms}) > 1:
        raise ValueError(f"mixtures must all have the same dimension, got {[m.dim for m in ms]}")
    out = ms[0]
    for m in ms[1:]:
        out = _product_of_two(out, m)
    return out


def gaussian_mixture_mixture(mixtures: Sequence[GaussianMixture], weights=None) -> GaussianMixture:
    """The mixture sum_k w_k p_k of normalised Gaussian mixtures, as one Gaussian mixture (log_Z = 0).

    Its components are those of the p_k, concatenated in order, with weights w_k a_ki; it is the
    density of :class:`Mixture` (components with exact normalisers), and, noised with
    ``.noised(schedule, t)``, that composition's density at level t.

    Args:
        mixtures: K >= 1 GaussianMixtures in d dimensions (their log_Z play no role: each p_k is
            normalised).
        weights: K positive mixture weights (normalised here); default equal.
    """
    if isinstance(mixtures, GaussianMixture) or not isinstance(mixtures, Sequence) or len(mixtures) == 0:
        raise ValueError("mixtures must be a non-empty sequence of GaussianMixture")
    ms = [_check_mixture(m, f"mixtures[{k}]") for k, m in enumerate(mixtures)]
    if len({m.dim for m in ms}) > 1:
        raise ValueError(f"mixtures must all have the same dimension, got {[m.dim for m in ms]}")
    k = len(ms)
    w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else as_tensor(weights, "weights", dtype=torch.float64).reshape(-1)
    if w.shape != (k,) or not torch.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weights must be {k} positive finite numbers, got {w.tolist()}")
    w = w / w.sum()
    return GaussianMixture(torch.cat([m.means for m in ms]), covs=torch.cat([m.covariances for m in ms]),
                           weights=torch.cat([wk * m.weights for wk, m in zip(w, ms)]), log_Z=0.0)


def smc_mode_weights(result: SMCResult, mixture: GaussianMixture) -> torch.Tensor:
    """Mode weights of weighted particles: sum_i W_i r_k(x_i), r the responsibilities of ``mixture``.

    For particles distributed as ``mixture`` this is an unbiased estimate of its weights
    (E_p[r_k] = w_k exactly, also for overlapping modes). Returns (K,) float64.
    """
    if not isinstance(result, SMCResult):
        raise TypeError(f"result must be an SMCResult, got {type(result).__name__}")
    _check_mixture(mixture, "mixture")
    resp = torch.softmax(mixture.component_log_probs(result.particles.detach().cpu()), dim=1)
    return W.weighted_mean(resp, result.log_weights.detach().cpu())
