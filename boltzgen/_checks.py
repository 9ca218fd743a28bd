"""Input validation shared by the public API.

Every check raises a ValueError/TypeError that names the argument and what was expected, so a
user sees what to fix rather than a shape error from deep inside torch.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def as_tensor(x, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x`` as a floating torch tensor, or raise a TypeError naming ``name``.

    Tensors keep their dtype (unless ``dtype`` is given); arrays and (nested) lists go through
    numpy, so Python floats become float64 rather than torch's default float32.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # ragged lists, object arrays, strings, ...
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def check_flat(x, name: str, dim: int | None = None, allow_nan: bool = False) -> torch.Tensor:
    """Check a batch of flat vectors of shape (n, dim) and return it as a tensor."""
    t = as_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (n, {dim if dim is not None else 'd'}), got {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {tuple(t.shape)}")
    if not allow_nan and torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN values")
    return t


def check_positions(x, name: str, n_atoms: int | None = None) -> torch.Tensor:
    """Check molecular positions of shape (n, n_atoms, 3) in nm and return them as a tensor."""
    t = as_tensor(x, name)
    expected = f"(n, {n_atoms if n_atoms is not None else 'n_atoms'}, 3) in nm"
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
    if n_atoms is not None and t.shape[1] != n_atoms:
        raise ValueError(f"{name} has {t.shape[1]} atoms but the system has {n_atoms}; expected shape {expected}")
    # One sum first (no temporary): it is NaN whenever a position is NaN (or +inf meets -inf).
    if torch.isnan(t.sum()) and torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN positions")
    return t


def check_time(t, name: str, n: int | None, t_min: float, t_max: float = 1.0) -> torch.Tensor:
    """Check diffusion times: a scalar or shape (n,), all within [t_min, t_max].

    Returns a tensor of shape (n,) (a scalar is broadcast when ``n`` is given).
    """
    tt = as_tensor(t, name)
    if tt.ndim == 0 and n is not None:
        tt = tt.expand(n)
    if tt.ndim != 1 or (n is not None and tt.shape[0] != n):
        raise ValueError(f"{name} must be a scalar or have shape ({n if n is not None else 'n'},), got {tuple(tt.shape)}")
    if torch.isnan(tt).any():
        raise ValueError(f"{name} contains NaN values")
    tol = 1e-6
    if (tt < t_min - tol).any() or (tt > t_max + tol).any():
        raise ValueError(
            f"{name} must lie in [{t_min:g}, {t_max:g}], got values in [{tt.min().item():g}, {tt.max().item():g}]"
        )
    return tt


def check_positive(value: float, name: str) -> float:
    """Check a finite positive scalar."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def check_probability(value, name: str) -> float:
    """``value`` as a float in [0, 1], or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_count(value, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """Check an integer count (a Python or numpy integer, not a bool) >= ``minimum``; return it as int.

    ``allow_none`` lets None through (meaning "the default" to the caller).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else ("a non-negative integer" if minimum == 0
                                                          else f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_atom_indices(indices, name: str, n_atoms: int, what: str) -> torch.Tensor:
    """Rows of 4 atom indices (m, 4) into positions with ``n_atoms`` atoms, as int64.

    ``what`` says what a row is, for the error message (e.g. "atom indices per dihedral").
    """
    t = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer atom indices, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{name} must have shape (m, 4) (one row of four {what}), got {tuple(t.shape)}")
    t = t.to(torch.int64)
    if t.numel() and (t.min() < 0 or t.max() >= n_atoms):
        raise ValueError(f"{name} must be indices in [0, {n_atoms}) for positions with {n_atoms} atoms, "
                         f"got values in [{int(t.min())}, {int(t.max())}]")
    return t


def as_device(device) -> torch.device:
    """``device`` (a name like "cuda" or "cuda:1", or a torch.device) as a torch.device; None: torch's
    default device (where new tensors go: the CPU unless the user set another)."""
    if device is None:
        return torch.empty(0).device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a torch device such as cpu or cuda, got {device!r}") from None
