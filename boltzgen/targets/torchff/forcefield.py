"""The batched torch force field: the sum of the terms read from an OpenMM System."""
from __future__ import annotations

import os
import types
import warnings
from concurrent.futures import ThreadPoolExecutor

import openmm
import torch
from torch import nn

from ..._checks import check_count, check_positions
from .reader import read_terms
from .terms import scatter


class CompileNotice(UserWarning):
    """Emitted once per force field and kind of call (energies; energies + gradients) when
    torch.compile starts compiling: the call then takes 20-80 s instead of milliseconds.
    Silence it with ``warnings.filterwarnings("ignore", category=CompileNotice)``."""


# A chunk holds about this many (atom pair x configuration) entries: big enough to amortise
# torch's per-operation overhead, small enough that a chunk's temporaries stay in cache and that
# memory stays bounded for any batch size (measured on alanine dipeptide: 256 configurations).
PAIR_BUDGET = 2**16
# On a GPU a chunk must fill the device instead: 2**22 entries (16,384 configurations of alanine
# dipeptide; eager float64 temporaries of a chunk stay below ~2 GB, see docs/scaling.md).
GPU_PAIR_BUDGET = 2**22


def _own_code(method):
    """``method`` bound to a private copy of its code object.

    torch.compile keeps its compiled graphs on the code object and stops compiling after 8 per
    code object; a private copy gives every force field its own cache instead of one per process.
    """
    f = method.__func__
    copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(copy, method.__self__)


def compile_options(device: torch.device) -> tuple[bool, dict]:
    """(dynamic, options) of torch.compile for the fast path on ``device``.

    CPU: static shapes (every chunk padded to one shape), one OpenMP thread per kernel (OpenMP
    threads waiting on a busy sibling core made kernels ~100x slower here) and the C++ wrapper,
    which releases the GIL so chunks run in Python threads. GPU: a dynamic batch size, so that a
    call is not padded to a whole (large) GPU chunk, and inductor's defaults (Triton kernels: the
    pair terms' dozens of elementwise float64 operations fuse into a few kernels, which is where a
    GPU loses most of its time eager).
    """
    if device.type == "cpu":
        return False, {"cpp.threads": 1, "cpp_wrapper": True}
    return True, {}


def _available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default_chunk_size(n_atoms: int, device: torch.device | None = None) -> int:
    n_pairs = max(n_atoms * (n_atoms - 1) // 2, 1)
    budget = PAIR_BUDGET if device is None or device.type == "cpu" else GPU_PAIR_BUDGET
    return 1 << max(4, (budget // n_pairs).bit_length() - 1)  # a power of two, at least 16


def default_device() -> torch.device:
    """torch's default device (where new tensors go when none is named; the CPU unless the user set another)."""
    return torch.empty(0).device


class TorchForceField(nn.Module):
    """Energies and forces of an ``openmm.System`` for a whole batch of configurations at once.

    Supports HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce,
    GBSAOBCForce and the CustomGBForce of OpenMM's Amber OBC1 / OBC2 models (customgbforces'
    GBSAOBC1Force / GBSAOBC2Force, e.g. from a prmtop with implicitSolvent=OBC1; any dielectrics,
    salt, with or without ACE), all without cutoff; CMMotionRemover is ignored (it adds no
    energy). Other CustomGBForces (HCT, GBn, GBn2, custom) are refused. Pairwise terms are
    evaluated for all atom pairs at once (dense pair lists), which suits small molecules.

    Two paths:
      * ``forward(x)``: energies as one differentiable torch graph (autograd gives forces, also
        higher derivatives); the reference, and simplest to compose.
      * ``energy(x)`` / ``energy_and_gradient(x)``: the fast path. The batch is cut into chunks
        of ``chunk_size`` configurations (bounded memory for any batch size) and gradients are
        analytic. With ``compile=True`` each chunk runs through ``torch.compile``: fused C++
        kernels, 5-10x faster than eager for alanine dipeptide, which release the GIL, so
        ``threads`` Python threads evaluate chunks side by side. The first call of each kind
        (energies, energies + gradients) compiles for 20-80 s and needs a C++ compiler (a
        :class:`CompileNotice` warning says so when it starts); if that fails the force field
        warns and stays eager. Compiled on the CPU, the last chunk is padded so that
        every chunk has one shape: a call costs at least one full chunk (on a GPU the compiled
        kernels take any batch size and nothing is padded).

    Args:
        system: the openmm.System to evaluate.
        dtype: torch.float64 (default; agrees with OpenMM's Reference platform) or torch.float32.
        chunk_size: configurations per chunk of the fast path (default: from the pair count).
        compile: compile the fast path with torch.compile.
        threads: threads evaluating compiled chunks at once (default None: one per CPU core this
            process may use; independent of torch.set_num_threads). Each kernel itself is
            single-threaded: a chunk of a small molecule is too little work to split, while whole
            chunks on separate cores scale (1.4-2x on 2 cores). On a GPU chunks run one after
            another on the device's stream (threads are not used).
        device: where the parameters live and every evaluation runs (default: torch's default
            device, the CPU unless set otherwise), e.g. "cuda". Positions on another device are
            moved there and the results moved back to the positions' device, so for no transfers
            at all keep the positions on this device. Compilation is per device: fused C++ on
            the CPU, Triton kernels on a GPU; the default chunk is larger on a GPU.

    Raises:
        UnsupportedForceError (a ValueError): a force or setting that is not supported; the
            message names the force class (and the nonbonded method).
    """

    def __init__(self, system: openmm.System, dtype: torch.dtype = torch.float64,
                 chunk_size: int | None = None, compile: bool = False, threads: int | None = None,
                 device: str | torch.device | None = None):
        super().__init__()
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        chunk_size = check_count(chunk_size, "chunk_size", allow_none=True)
        threads = check_count(threads, "threads", allow_none=True)
        named = read_terms(system)
        self.names = [name for name, _ in named]
        self.terms = nn.ModuleList(term for _, term in named)
        self.n_atoms = system.getNumParticles()
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else default_device()
        self.chunk_size = chunk_size or _default_chunk_size(self.n_atoms, self.device)
        self.to(device=self.device, dtype=dtype)
        self.compiled = bool(compile)
        self.threads = threads
        self._kernel = self._compiled_kernel() if compile else self._evaluate
        self._warm: set[bool] = set()  # the gradient flags whose kernel has been compiled
        self._pool: ThreadPoolExecutor | None = None  # kept: new threads start on fresh memory pages
        self._pool_pid = os.getpid()

    def _compiled_kernel(self):
        dynamic, options = compile_options(self.device)
        return torch.compile(_own_code(self._evaluate), dynamic=dynamic, options=options)

    @property
    def _on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def _executor(self) -> ThreadPoolExecutor:
        """The thread pool, kept between calls (their memory arenas stay warm); one per process,
        since a forked child inherits the pool object but not its threads."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads or _available_cores(), thread_name_prefix="torchff")
            self._pool_pid = os.getpid()
        return self._pool

    def __getstate__(self):
        # Threads and compiled kernels do not pickle or copy: a copy builds its own.
        state = super().__getstate__().copy()
        state["_pool"], state["_kernel"], state["_warm"] = None, None, set()
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._kernel = self._compiled_kernel() if self.compiled else self._evaluate

    def _coordinates(self, x: torch.Tensor) -> torch.Tensor:
        # (n, n_atoms, 3) -> (3, n_atoms, n) on the force field's device: the batch becomes the
        # contiguous last axis.
        return x.to(device=self.device, dtype=self.dtype).permute(2, 1, 0).contiguous()

    def _evaluate(self, X: torch.Tensor, gradient: bool):
        """All terms on coordinates X (3, n_atoms, n) nm: energies (n,) kJ/mol and, if ``gradient``,
        the gradient (n, n_atoms, 3) kJ/mol/nm (else None).

        Non-finite energies become +inf and their rows of the gradient zero (as do non-finite
        gradient entries). X comes in already transposed: inside torch.compile a transposition
        would be fused into every load and make them strided, which costs more than the copy.
        """
        energy = torch.zeros(X.shape[-1], dtype=X.dtype, device=X.device)
        pieces = []
        for term in self.terms:
            e, p = term(X, gradient)
            energy = energy + e
            pieces += p or []
        finite = torch.isfinite(energy)
        energy = torch.where(finite, energy, torch.inf)
        if not gradient:
            return energy, None
        grad = scatter(X, pieces).permute(2, 1, 0)
        grad = torch.where(finite[:, None, None] & torch.isfinite(grad), grad, 0.0)
        return energy, grad.contiguous()  # transposing here, fused, is cheaper than a copy outside

    def _run(self, X: torch.Tensor, gradient: bool):
        """The fast-path kernel on X (3, n_atoms, n), falling back to eager (with a warning) if compilation fails."""
        try:
            return self._kernel(X, gradient)
        except Exception as exc:  # compiler missing or broken: torch raises many kinds
            if self._kernel == self._evaluate:  # bound methods: equal, never identical
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); the torch force field runs eager",
                          RuntimeWarning, stacklevel=3)
            self._kernel, self.compiled = self._evaluate, False
            return self._evaluate(X, gradient)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Potential energies (n,) in kJ/mol of positions x (n, n_atoms, 3) in nm.

        One autograd graph for the whole batch (differentiable to any order). Non-finite
        energies (overlapping atoms) come back as +inf.
        """
        x = check_positions(x, "x", self.n_atoms)
        return self._evaluate(self._coordinates(x), gradient=False)[0].to(x.device)

    def energy_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Energy (n,) in kJ/mol of each force, keyed like ``'NonbondedForce[2]'`` (the System's force index)."""
        x = check_positions(x, "x", self.n_atoms)
        X = self._coordinates(x)
        return {name: term(X)[0].to(x.device) for name, term in zip(self.names, self.terms)}

    def _chunk(self, x: torch.Tensor, start: int, gradient: bool, energy: torch.Tensor, grad) -> None:
        """Evaluate x[start:start + chunk_size] (n, n_atoms, 3) into energy and grad, in place.

        Small per-chunk tensors rather than whole-batch temporaries: large allocations are fresh
        pages from the kernel on every call, which cost ~20% of the fast path's time.
        """
        chunk = x[start:start + self.chunk_size]
        m = chunk.shape[0]
        if m < self.chunk_size and self.compiled and self._on_cpu:  # pad with copies of a real configuration:
            # one compiled shape (on a GPU the kernels take any batch size)
            chunk = torch.cat((chunk, chunk[:1].expand(self.chunk_size - m, -1, -1)))
        e, g = self._run(self._coordinates(chunk), gradient)
        energy[start:start + m] = e[:m]
        if gradient:
            grad[start:start + m] = g[:m]

    def _chunks(self, x: torch.Tensor, gradient: bool):
        """The fast path over the batch, one chunk of ``chunk_size`` configurations at a time.

        Compiled kernels release the GIL: once a kernel is compiled (the first chunk of the first
        call compiles it, in this thread), ``threads`` threads share the remaining chunks (on the
        CPU; on a GPU the chunks queue on the device). The results live on the force field's
        device.
        """
        n = x.shape[0]
        energy = torch.empty(n, dtype=self.dtype, device=self.device)
        grad = torch.empty((n, self.n_atoms, 3), dtype=self.dtype, device=self.device) if gradient else None
        starts = list(range(0, n, self.chunk_size))
        if gradient not in self._warm and starts:
            if self.compiled and self._kernel != self._evaluate:
                kind = "energies and gradients" if gradient else "energies"
                warnings.warn(CompileNotice(
                    f"torch force field ({self.n_atoms} atoms): compiling its kernel for {kind} with "
                    "torch.compile on this first call; this takes about 20-80 s, once per system, kind of call "
                    "and process (less when torch finds its on-disk cache). compile=False skips it (eager "
                    "torch is several times slower on large batches)"), stacklevel=4)
            self._chunk(x, starts.pop(0), gradient, energy, grad)
            self._warm.add(gradient)
        threads = min(self.threads or _available_cores(), len(starts)) if self.compiled and self._on_cpu else 1
        inference = torch.is_inference_mode_enabled()

        def work(share: list[int]) -> None:
            # Grad and inference modes are per thread: the workers take the caller's.
            with torch.inference_mode(inference), torch.no_grad():
                for start in share:
                    self._chunk(x, start, gradient, energy, grad)

        if threads <= 1:
            work(starts)
        else:
            shares = [starts[t::threads] for t in range(threads)]
            list(self._executor().map(work, shares))  # list() re-raises a worker's exception
        return energy, grad

    @torch.no_grad()
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energies (n,) in kJ/mol of x (n, n_atoms, 3) in nm by the fast path (not differentiable).

        Non-finite energies (overlapping atoms) come back as +inf.
        """
        x = check_positions(x, "x", self.n_atoms)
        return self._chunks(x, gradient=False)[0].to(x.device)

    @torch.no_grad()
    def energy_and_gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (n,) in kJ/mol and their gradient (n, n_atoms, 3) in kJ/mol/nm (forces = -gradient).

        Fast path, analytic gradients, not differentiable itself. Rows with non-finite energy
        get energy +inf and a zero gradient.
        """
        x = check_positions(x, "x", self.n_atoms)
        energy, grad = self._chunks(x, gradient=True)
        return energy.to(x.device), grad.to(x.device)
