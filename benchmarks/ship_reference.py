"""Write a named system's shipped MD reference, ``<system>.reference.json``, from independent MD runs.

    python benchmarks/ship_reference.py SYSTEM DIR [DIR ...] --source TEXT --command TEXT [--note TEXT]
        [--record benchmarks/results/reference.jsonl] [--name reference_md_X] [--out FILE] [--replace]

The runs (``boltzgen md`` folders, plain or biased, each an independent run of SYSTEM) are reduced as
``boltzgen analyze DIR ...`` reduces them: every declared free energy from the ratio of the runs' mean
populations and every basin population, each with its standard error over the runs. The file also
keeps each run's own free energies (``per_run_delta_f_kT``), so that a later reader can judge the
spread, and says how it was made (``source``, ``command``, ``note``). ``boltzgen run SYSTEM`` prints its
figures beside these. With ``--record`` the same figures are appended as a result record
(benchmarks/_record.py; then ``python benchmarks/make_docs.py``).

Nothing is written unless every run is of SYSTEM and there are at least two; an existing reference is
kept unless ``--replace``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from _record import append_record

from boltzgen import systems
from boltzgen.analysis import run_figures
from boltzgen.io.md_runs import recorded_system
from boltzgen.pipeline.sample import reference_file

KEPT = ("populations", "energy_mean_kT", "energy_mean_err_kT", "n_frames", "n_frames_per_run", "error_method",
        "basins_rad")


def check_runs(system: str, dirs: list[str]) -> None:
    """ValueError unless there are >= 2 runs (errors are over runs) and each one recorded ``system``."""
    if len(dirs) < 2:
        raise ValueError(f"DIR: give at least two independent runs (errors are over runs), got {len(dirs)}")
    for d in dirs:
        found = recorded_system(d)
        if found != system:
            raise ValueError(f"DIR {d} is a run of {found!r}, not of {system!r}")


def per_run_delta_f(figures: dict) -> dict[str, list[float | None]]:
    """{free-energy key: each run's dF = -ln(P(state) / P(reference)) in kT (None where a side is empty)}."""
    out = {}
    for key in figures["free_energies"]:
        states, refs = figures["per_unit"][f"p_{key}"], figures["per_unit"][f"p_reference_{key}"]
        out[key] = [round(-math.log(p / r), 4) if p and r else None for p, r in zip(states, refs)]
    return out


def reference_dict(figures: dict, source: str, command: str, note: str) -> dict:
    """The reference file's content from :meth:`RunFigures.to_dict` of the runs."""
    ref = {"source": source, "command": command}
    ref.update({k: v for k, v in figures.items() if k.startswith(("delta_f_", "p_"))})
    ref.update({k: figures[k] for k in KEPT if k in figures})
    ref["per_run_delta_f_kT"] = per_run_delta_f(figures)
    ref["note"] = note
    return ref


def record_figures(ref: dict) -> dict:
    """Free energies (kT) with errors and per-run SD, and every population with its error, rounded."""
    def r(v, digits):
        return None if v is None else round(v, digits)

    out = {}
    for key, per_run in ref["per_run_delta_f_kT"].items():
        out[f"delta_f_{key}_kT"] = r(ref[f"delta_f_{key}_kT"], 3)  # None: no run had weight on one side
        out[f"delta_f_{key}_kT_err"] = r(ref[f"delta_f_{key}_err_kT"], 3)
        values = [v for v in per_run if v is not None]
        if len(values) >= 2:
            out[f"per_run_sd_{key}_kT"] = round(statistics.stdev(values), 3)
    for name, e in ref["populations"].items():
        out[f"P({name})"], out[f"P({name})_err"] = r(e["p"], 5), r(e["err"], 5)
    out["runs"] = len(ref["n_frames_per_run"])
    return out


def ship(system: str, dirs: list[str], source: str, command: str, note: str = "", replace: bool = False,
         out=None) -> dict:
    """Reduce the runs and write ``out`` (default :func:`reference_file`); returns the file's content."""
    check_runs(system, dirs)
    path = Path(out) if out is not None else reference_file(system)
    if path.exists() and not replace:
        raise ValueError(f"{path} exists: give --replace to overwrite it")
    figures = run_figures(dirs).to_dict()
    ref = reference_dict(figures, source, command, note)
    path.write_text(json.dumps(ref, indent=1) + "\n")
    return ref


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", help="a named system (see `boltzgen systems`)")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="independent `boltzgen md` runs of it")
    parser.add_argument("--source", required=True, help="the method, in words (printed by `boltzgen run`)")
    parser.add_argument("--command", required=True, help="the commands that made the runs and this reduction")
    parser.add_argument("--note", default="", help="the rule the runs followed, their cost, anything a reader needs")
    parser.add_argument("--record", metavar="FILE", default=None, help="also append a result record to FILE")
    parser.add_argument("--name", default=None, help="the record's name (default reference_md_<system>)")
    parser.add_argument("--out", default=None, help="write here instead of next to the system's YAML")
    parser.add_argument("--replace", action="store_true", help="overwrite an existing reference file")
    args = parser.parse_args(argv)
    if args.system not in systems.names():
        parser.error(f"SYSTEM must be a named system ({', '.join(systems.names())}), got {args.system!r}")
    try:
        ref = ship(args.system, args.dirs, args.source, args.command, args.note, args.replace, args.out)
    except ValueError as err:
        parser.error(str(err))
    figures = record_figures(ref)
    print(f"wrote {args.out or reference_file(args.system)}")
    print(json.dumps(figures))
    if args.record:
        append_record(args.record, args.name or f"reference_md_{args.system.replace('-', '_')}", args.command,
                      figures, args.note)
    return ref


if __name__ == "__main__":
    main()
