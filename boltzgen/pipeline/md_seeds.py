"""Several independent MD runs of one system, one folder per seed: ``boltzgen md --seeds 1-8``.

Run ``seed`` writes ``out/seed-<seed>`` and is exactly the run ``boltzgen md --seed <seed>`` makes
(:func:`boltzgen.md.run_md`), wherever it ran; the runs are tasks (:mod:`boltzgen.pipeline.tasks`)
and each resumes on its own after a kill.
"""
from __future__ import annotations

from pathlib import Path

from .tasks import Spread, SystemRef, built, run_tasks


def seed_folder(out, seed: int) -> Path:
    """The folder of the run with ``seed``: ``out/seed-<seed>``."""
    return Path(out) / f"seed-{seed}"


def md_task(ref: SystemRef, ns: float, out: str, seed: int, options: dict):
    """One MD run in a worker (the target is rebuilt once per worker); returns its MDResult."""
    from .. import md

    target = built(("target", ref), ref.load)
    return md.run_md(target, ns, out, seed, **options)


def md_seeds(target, ns: float, out, seeds, *, spread: Spread | None = None, progress=None, **options) -> list:
    """Independent MD runs of ``target`` with each of ``seeds`` into ``out/seed-<seed>``; their MDResults.

    Args:
        target: an OpenMMTarget, or a :class:`~boltzgen.pipeline.SystemRef` (needed to spread the runs).
        ns, options: as for :func:`boltzgen.md.run_md` (``platform``, ``bias``, ``timestep_fs``, ...).
        seeds: integers in [0, 2**31 - 2], e.g. ``range(1, 9)``.
        spread: local workers or a Ray cluster (default: one run after another in this process).
        progress: in this process only: called as ``progress(seed, MDProgress)``.
    """
    from .. import md

    spread = Spread() if spread is None else spread
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    if spread.in_process:
        loaded = isinstance(target, SystemRef)
        target = target.load() if loaded else target
        try:
            return [md.run_md(target, ns, seed_folder(out, s), s,
                              progress=None if progress is None else (lambda p, s=s: progress(s, p)), **options)
                    for s in seeds]
        finally:
            if loaded:
                target.close()
    if not isinstance(target, SystemRef):
        raise TypeError("MD runs spread over workers or Ray rebuild the target in each worker: pass "
                        "boltzgen.pipeline.SystemRef(name or YAML path, temperature), not an object")
    calls = [(target, ns, str(seed_folder(out, s)), s, options) for s in seeds]
    return run_tasks(md_task, calls, spread)
