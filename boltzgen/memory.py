"""Memory of SMC evaluations: the peak per particle, and chunk sizes from a memory budget.

SMC evaluates its particles in chunks (``SampleSettings.chunk_size``); one chunk's energies,
gradients and autograd graph are alive at a time, so the peak memory of a run is about a fixed part
(model, force field, the particles' state) plus ``chunk_size`` times the peak per particle of the
heaviest evaluation: the bridge's energy exp(-(1 - lam) E_theta(t_min) - lam u) with its gradient,
which holds the network's graph and the force field's temporaries at once.

:func:`bytes_per_particle` measures that peak on a small probe (two batch sizes; the slope is the
per-particle part). On a GPU it reads the CUDA allocator's peak; on the CPU it counts the storages
torch allocates and frees (a dispatch mode: exact for eager torch, deterministic). The probe runs
the torch force field eager: compiled kernels fuse temporaries away and need less, so the figure is
an upper bound for them. A CPU figure estimates a GPU's (the same tensors; the GPU allocator rounds
blocks to 512 bytes). :func:`chunk_for_budget` turns a budget in bytes into a chunk size;
``SampleSettings.memory_budget`` does so for every run. Figures for the shipped systems:
docs/scaling.md.
"""
from __future__ import annotations

import copy
import weakref

import numpy as np
import torch

from ._checks import check_count


class _PeakStorage(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the bytes of the storages torch ops allocate while active, and their peak.

    A storage is counted once, from the op that created it until it is freed (a weakref finaliser
    on its Python object, which torch keeps alive as long as the storage lives). Only ops of this
    thread are seen.
    """

    def __init__(self):
        super().__init__()
        self.live: dict = {}
        self.now = 0
        self.peak = 0

    def _free(self, key) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = (storage.data_ptr(), id(storage))
                if storage.data_ptr() and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def peak_bytes(fn, device) -> int:
    """Peak bytes torch allocates while ``fn()`` runs, above what was allocated before (CUDA: the
    allocator's peak; otherwise the storages counted by a dispatch mode, see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with _PeakStorage() as tracker:
        fn()
    return int(tracker.peak)


def bytes_per_particle(model_file, target, device=None, sizes: tuple[int, int] = (32, 64)) -> float:
    """Peak bytes per particle of one SMC evaluation (the bridge's energy and gradient, model and
    force field together) of ``model_file``'s model toward ``target`` on ``device``.

    Args:
        model_file: a loaded model file (its model is moved to ``device`` for the probe, if needed).
        target: the OpenMM target (its System builds an eager torch force field for the probe).
        device: where to measure (default: the model's device).
        sizes: the two probe batch sizes; the result is the slope between their peaks.
    """
    from .smc import evaluate_with_grad
    from .targets.torchff import torch_target

    model = model_file.model
    device = model.data_mean.device if device is None else torch.device(device)
    if model.data_mean.device != device:  # probe a copy: the caller's model stays where it is
        model = copy.deepcopy(model).to(device)
    space = model_file.space
    ff = torch_target(target, compile=False, device=device)
    u = space.flat_energy(ff.reduced_energy)
    t_min = float(model.schedule.t_min)

    def bridge(y):  # halfway along the bridge: both energies and their graph alive
        return 0.5 * model.energy(t_min, y) + 0.5 * u(y)

    reference = torch.as_tensor(np.asarray(target.positions), dtype=torch.float64, device=device)[None]
    generator = torch.Generator(device=device).manual_seed(0)
    peaks = []
    for n in sizes:
        x = reference + 0.002 * torch.randn((n, *reference.shape[1:]), generator=generator, dtype=torch.float64,
                                            device=device)
        y = space.to_flat(x).to(model.data_mean.dtype)
        peaks.append(peak_bytes(lambda: evaluate_with_grad(bridge, y), device))
    return max((peaks[1] - peaks[0]) / (sizes[1] - sizes[0]), peaks[1] / sizes[1] / 2, 1.0)


def chunk_for_budget(budget: int, per_particle: float, n_particles: int | None = None) -> int:
    """Particles per evaluation chunk that fit ``budget`` bytes at ``per_particle`` bytes each (at
    least 1; at most ``n_particles`` when given)."""
    budget = check_count(budget, "memory budget (bytes)")
    if not per_particle > 0:
        raise ValueError(f"per_particle must be a positive number of bytes, got {per_particle!r}")
    chunk = max(1, int(budget // per_particle))
    return min(chunk, n_particles) if n_particles is not None else chunk


def parse_bytes(text) -> int:
    """A memory size: bytes, or with a suffix K, M, G, T (powers of 1024; KB/MB/GB/TB/KiB/... too),
    e.g. ``4G``, ``512M``, ``1.5GB``, ``2000000``."""
    s = str(text).strip().upper().replace("IB", "").replace("B", "")
    factor = 1
    if s and s[-1] in "KMGT":
        factor = 1024 ** ("KMGT".index(s[-1]) + 1)
        s = s[:-1]
    try:
        value = float(s) * factor
    except ValueError:
        raise ValueError(f"a memory size must be bytes or a number with K, M, G or T (e.g. 4G), got {text!r}") \
            from None
    if not (np.isfinite(value) and value >= 1):
        raise ValueError(f"a memory size must be at least 1 byte, got {text!r}")
    return int(value)
