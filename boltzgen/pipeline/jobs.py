"""Job folders: independent runs written one folder each, a manifest, and resumption after a kill.

A job (``sample``, ``run``, ``free-energy``) writes into its folder::

    job.json            what the job is: its kind, system fingerprint, model, settings, seed, runs
    run-000/ ...        one complete folder per finished run (written atomically)
    run-002.checkpoint  the SMC state of the run in progress (deleted when it completes)
    summary.json        the reduce over the run folders (rewritten whenever a job completes)

The same command on the same folder resumes: the manifest must match (else a one-line refusal
naming what changed), complete runs are kept, the run in progress continues from its checkpoint,
and the results are those of an uninterrupted job bit for bit, because every run's seed comes
from one SeedSequence and the SMC engine resumes exactly.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.sample_runs import is_sample_run, write_json

MANIFEST = "job.json"


def run_seeds(seed: int, runs: int) -> list[int]:
    """Independent seeds for ``runs`` runs from one user seed (numpy SeedSequence spawning): run k's
    seed does not depend on how many runs there are or how they are spread."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(runs)]


def file_digest(path) -> str:
    """sha256 of a file's bytes (identifies a model file whatever its path)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class JobFolder:
    """The folder of one job and its manifest (a plain JSON-able dict)."""

    out: Path
    manifest: dict

    def run_dir(self, k: int) -> Path:
        """The folder of run k (run-000, run-001, ...)."""
        return self.out / f"run-{k:03d}"

    def checkpoint(self, k: int) -> Path:
        """The checkpoint file of run k while it is in progress."""
        return self.out / f"run-{k:03d}.checkpoint"

    def is_done(self, k: int) -> bool:
        """Whether run k's folder is complete."""
        return is_sample_run(self.run_dir(k))

    def run_dirs(self) -> list[Path]:
        """The complete run folders, in order."""
        return [self.run_dir(k) for k in range(self.manifest["runs"]) if self.is_done(k)]


def open_job(out, manifest: dict) -> JobFolder:
    """The job folder ``out`` for ``manifest``: new (created), or the same job to resume.

    Raises:
        ValueError: ``out`` holds files but no manifest (another kind of folder), or the manifest of
            another job (naming the entries that differ): nothing is overwritten.
    """
    out = Path(out)
    path = out / MANIFEST
    manifest = json.loads(json.dumps(manifest))  # plain types, as read back
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is damaged ({exc}): start the job in a new folder") from exc
        if found != manifest:
            changed = sorted(k for k in set(found) | set(manifest) if found.get(k) != manifest.get(k))
            raise ValueError(f"--out {out} holds another job (different {', '.join(changed)}): rerun it with the same "
                             "settings to resume, or choose a new folder")
        return JobFolder(out, manifest)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty: choose a new folder (samples are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)
    return JobFolder(out, manifest)
