"""Independent runs as tasks: in this process, in local worker processes, or on a Ray cluster.

A job's runs (``sample``, ``run``, ``free-energy``, ``md --seeds``) do not talk to each other: run k
needs only its seed (from :func:`boltzgen.pipeline.run_seeds`, as in one process), the system and the
model. So each run is one *task*, and :func:`run_tasks` spreads the tasks

* in this process, one after another (``workers=1``, no Ray: the default, exactly as before);
* over ``workers`` local processes (``concurrent.futures.ProcessPoolExecutor``, "spawn" context);
* over an existing Ray cluster (``ray="auto"`` for one started by ``ray start``, or its address).

A task writes its own run folder atomically (:func:`boltzgen.io.sample_runs.write_sample_run`) and
the job's summary is the usual reduce over the run folders, so where a run ran changes nothing in
its result: run k is bit for bit the same whether it ran alone, beside others or on another machine
(given the same torch threads per run, the device and the versions; tests/test_tasks.py checks it).

Workers rebuild what they need from plain values: OpenMM objects and compiled kernels do not pickle,
so a task carries a :class:`SystemRef` (a named system or YAML path, and the temperature) and the
model file's path, never a target. A worker keeps what it built (target, torch force field, model)
for its next task, so a force field is compiled once per worker, and all workers share torch's
on-disk compile cache (:func:`compile_cache_dir`), so usually only the first one compiles at all.

Threads: each local worker gets ``max(1, threads // workers)`` torch threads (``threads``: the total,
``--threads``); each Ray task gets ``threads`` threads and reserves as many CPUs of the cluster.
With Ray on several machines the job folder must be on a file system every node sees.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

RAY_INSTALL = 'pip install -e ".[cluster]" (or pip install "ray>=2.9")'


@dataclass(frozen=True)
class SystemRef:
    """What a worker needs to rebuild a target: a named system or the path of a system YAML, and the
    temperature in K (None: the system's own)."""

    system: str
    temperature: float | None = None

    def load(self):
        """The OpenMMTarget (:func:`boltzgen.systems.load`)."""
        from .. import systems

        return systems.load(self.system, **({} if self.temperature is None else {"temperature": self.temperature}))


@dataclass(frozen=True)
class Spread:
    """How a job's runs are spread.

    Attributes:
        workers: local worker processes (1: every run in this process, one after another).
        ray: the address of an existing Ray cluster ("auto": the one ``ray start`` started on this
            machine; ignored when this process is already connected to one), or None.
        threads: torch threads: the total over local workers (each gets ``max(1, threads // workers)``),
            or per task on Ray (and the CPUs each task reserves); None: the CPU cores this process may
            use for local workers, 1 per Ray task.
    """

    workers: int = 1
    ray: str | None = None
    threads: int | None = None

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")
        if self.ray is not None and self.workers != 1:
            raise ValueError("give either --workers N (local processes) or --ray ADDRESS (a Ray cluster), not both")
        if self.ray is not None and not str(self.ray).strip():
            raise ValueError("--ray needs an address: auto (a cluster started by `ray start` here) or HOST:PORT")
        if self.ray is not None:
            _ray()  # not installed: say so now, before any work

    @property
    def in_process(self) -> bool:
        """Whether the runs run in this process (no workers, no Ray)."""
        return self.workers == 1 and self.ray is None

    def threads_per_task(self) -> int:
        """torch threads of each task (see the class docstring)."""
        if self.ray is not None:
            return self.threads or 1
        total = self.threads or _available_cores()
        return max(1, total // self.workers)


def task_device(device, spread: Spread) -> tuple[str, float]:
    """(the device a task names, the GPUs a Ray task reserves): on Ray a CUDA task reserves one GPU and
    sees it as ``cuda`` (Ray renumbers the GPUs it hands out); otherwise ``device`` as it is."""
    import torch

    device = torch.device(device)
    if spread.ray is not None and device.type == "cuda":
        return "cuda", 1.0
    return str(device), 0.0


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compile_cache_dir() -> Path:
    """The folder of torch's on-disk compile cache that every worker shares.

    ``TORCHINDUCTOR_CACHE_DIR`` when it is set; else ``$XDG_CACHE_HOME/boltzgen/torchinductor``
    (``~/.cache/boltzgen/torchinductor``). torch's own default, ``$TMPDIR/torchinductor_$USER``, is lost
    whenever /tmp is cleaned and differs between processes with different ``TMPDIR`` (Ray workers).
    """
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given:
        return Path(given)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "boltzgen" / "torchinductor"


def share_compile_cache() -> Path:
    """Point torch's compile cache (``TORCHINDUCTOR_CACHE_DIR``) at :func:`compile_cache_dir` in this
    process, unless the user set it; processes started afterwards inherit it."""
    folder = compile_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


# ---- the worker side ---------------------------------------------------------------------------------
_BUILT: dict = {}  # what this worker built for earlier tasks: key -> object (kept for the next task)


def built(key, make: Callable):
    """``make()`` once per worker process and key (targets, force fields, model files)."""
    if key not in _BUILT:
        _BUILT[key] = make()
    return _BUILT[key]


def _call(function, threads: int, environment: dict, args: tuple):
    """Run one task in a worker: the shared environment and thread count first, then ``function(*args)``."""
    import torch

    os.environ.update(environment)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return function(*args)


# ---- the driver side ---------------------------------------------------------------------------------
def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def run_tasks(function: Callable, calls: Sequence[tuple], spread: Spread = Spread(), *,
              on_done: Callable[[int], None] | None = None, gpus: float = 0.0) -> list:
    """``[function(*args) for args in calls]``, spread as ``spread`` says; results in the order of ``calls``.

    ``function`` must be a module-level function (workers import it) whose arguments pickle. In this
    process the calls run in order, with the caller's threads; elsewhere each worker first sets the
    shared compile cache and its threads. ``on_done(i)`` is called in this process as call i finishes.
    A task's exception is raised here (the remaining local tasks are cancelled). ``gpus``: GPUs each
    Ray task reserves (Ray hides the GPUs from tasks that reserve none; local workers all see them).
    """
    calls = list(calls)
    if spread.in_process or not calls:
        results = []
        for i, args in enumerate(calls):
            results.append(function(*args))
            if on_done is not None:
                on_done(i)
        return results
    environment = {"TORCHINDUCTOR_CACHE_DIR": str(share_compile_cache())}
    threads = spread.threads_per_task()
    if spread.ray is not None:
        return _run_on_ray(function, calls, spread.ray, threads, environment, on_done, gpus)
    return _run_in_processes(function, calls, spread.workers, threads, environment, on_done)


def _run_in_processes(function, calls, workers, threads, environment, on_done) -> list:
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # never fork a process that runs torch and OpenMM threads
    results: list = [None] * len(calls)
    with ProcessPoolExecutor(max_workers=min(workers, len(calls)), mp_context=context) as pool:
        futures = {pool.submit(_call, function, threads, environment, args): i for i, args in enumerate(calls)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    results[futures[future]] = future.result()  # re-raises a task's exception
                    if on_done is not None:
                        on_done(futures[future])
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return results


def _run_on_ray(function, calls, address, threads, environment, on_done, gpus) -> list:
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    remote = ray.remote(_call).options(num_cpus=threads, num_gpus=gpus, runtime_env={"env_vars": environment})
    refs = [remote.remote(function, threads, environment, args) for args in calls]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(calls)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = ray.get(ref)
                if on_done is not None:
                    on_done(index[ref])
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return results


def parse_run_range(text: str | None, runs: int) -> range:
    """``A:B`` -> range(A, B) of 0-based run indices (run-00A ... run-0(B-1)); None: every run.

    Either end may be left out (``:2``, ``2:``), as in a Python slice; the range must lie in [0, runs].
    """
    if text is None:
        return range(runs)
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ValueError(f"--run-range must be A:B (runs A to B-1, counted from 0), got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else runs
    except ValueError:
        raise ValueError(f"--run-range must be A:B with whole numbers (runs A to B-1, counted from 0), got {text!r}") \
            from None
    if not 0 <= start < stop <= runs:
        raise ValueError(f"--run-range {text}: need 0 <= A < B <= {runs} (the job's --runs)")
    return range(start, stop)


def parse_seeds(text: str) -> list[int]:
    """``1-8``, ``1,3,5`` or ``1-4,9`` -> the MD seeds [1, 2, ..., 8] etc. (each in [0, 2**31 - 2], no repeats)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                seeds += range(low, high + 1)
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"--seeds must be seeds and ranges like 1-8 or 1,3,5 or 1-4,9, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text} names a seed twice")
    bad = [s for s in seeds if not 0 <= s <= 2**31 - 2]
    if bad:
        raise ValueError(f"--seeds {text}: every seed must lie in [0, 2**31 - 2], got {bad[0]}")
    return seeds
