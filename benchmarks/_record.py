"""Benchmark result records: one JSON object per line in ``benchmarks/results/*.jsonl``.

Every benchmark script that takes ``--record FILE`` appends one record per run with
:func:`append_record`; ``benchmarks/make_docs.py`` renders all committed records into
``docs/benchmarks.md``, so the figures the documentation quotes are the figures that were run.

A record (keys in this order; all present, ``null`` where unknown)::

    {"name": "smc_gmm",                      # groups records into one table (usually the script)
     "date": "2026-12-05T10:31:07+00:00",    # when the run ended (ISO 8601, UTC)
     "command": "python benchmarks/smc_gmm.py --dim 8 ...",   # what was run, from the repository root
     "machine": "x86_64, 2 cores, ...",      # where (CPU model, cores, Python, torch; GPU if present)
     "commit": "1303960a1b2c",               # git HEAD of the checkout ("+dirty" with local changes)
     "figures": {"logz_error": -0.024, "logz_error_err": 0.009, ...},
     "note": "..."}                          # free text: caveats, what the figures mean

``figures`` is a flat dict of numbers, strings, booleans or null. A key ``k_err`` is the standard
error of ``k``: make_docs.py prints them together as ``k = value ± error``. Historical records
(figures measured by earlier sessions and transcribed from the README, not re-run) carry
``"historical": true`` as an extra key and say so in their note.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("name", "date", "command", "machine", "commit", "figures", "note")


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's HEAD (12 hex digits), with "+dirty" if tracked files differ from it; None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, Python and torch versions (and the GPU, if torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return ", ".join(parts)


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/<script> ARGS`` as run, without the ``--record FILE`` option."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--record":
            skip = True
        elif not a.startswith("--record="):
            kept.append(a)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *map(shlex.quote, kept)])


def _plain(value):
    """A JSON-safe figure: floats that are not finite become None, numpy scalars become Python ones."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"figures must be numbers, strings, booleans or None, got {type(value).__name__}: {value!r}")


def make_record(name: str, command: str, figures: dict, note: str = "", *, date: str | None = None,
                machine_text: str | None = None, commit: str | None = None) -> dict:
    """A record (see the module docstring); date, machine and commit are read here unless given."""
    if not name or not isinstance(name, str):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(figures, dict) or not figures:
        raise ValueError("figures must be a non-empty dict of name -> number/string")
    return {"name": name,
            "date": date or datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "command": command,
            "machine": machine_text or machine(),
            "commit": commit if commit is not None else git_commit(),
            "figures": {str(k): _plain(v) for k, v in figures.items()},
            "note": note}


def append_record(path, name: str, command: str, figures: dict, note: str = "") -> dict:
    """Append one record as a JSON line to ``path`` (created with its folder if missing); returns it."""
    record = make_record(name, command, figures, note)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


def read_records(path) -> list[dict]:
    """The records of one .jsonl file, in file order (blank lines skipped; bad lines raise ValueError)."""
    records = []
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{k}: not a JSON line ({e})") from None
        missing = [key for key in KEYS if key not in record]
        if missing:
            raise ValueError(f"{path}:{k}: record lacks {', '.join(missing)}")
        if not isinstance(record["figures"], dict):
            raise ValueError(f"{path}:{k}: figures must be a JSON object")
        records.append(record)
    return records
