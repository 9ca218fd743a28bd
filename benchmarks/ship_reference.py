"""Write a named system's shipped MD reference, ``<system>.reference.json``, from independent MD runs.

    python benchmarks/ship_reference.py SYSTEM [DIR ...] [--run-figures FILE ...] --source TEXT --command TEXT
        [--note TEXT] [--record benchmarks/results/reference.jsonl] [--name reference_md_X] [--out FILE] [--replace]
    python benchmarks/ship_reference.py SYSTEM DIR [DIR ...] --keep-runs FOLDER   (per-run figures only)

The runs (``boltzgen md`` folders, plain or biased, each an independent run of SYSTEM) are reduced as
``boltzgen analyze DIR ...`` reduces them: every declared free energy from the ratio of the runs' mean
populations and every basin population, each with its standard error over the runs. A reference that
takes more core-hours than one working session may be gathered run by run: ``--keep-runs FOLDER``
writes each run's own figures (``FOLDER/<run>.json``, a few kB) and nothing else, and ``--run-figures``
takes such files in place of run folders that are gone; the reduction over runs is the same. The file also
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
from boltzgen.analysis.free_energy import delta_f_over_runs, with_error
from boltzgen.io.md_runs import recorded_system
from boltzgen.pipeline.sample import reference_file

KEPT = ("populations", "energy_mean_kT", "energy_mean_err_kT", "n_frames", "n_frames_per_run", "error_method",
        "basins_rad")
RUN_FILE_KIND = "boltzgen per-run figures"
DECLARATION = ("collective_variables", "states_rad", "basins_rad", "free_energies")  # what runs must share


def check_runs(system: str, dirs: list[str], minimum: int = 2) -> None:
    """ValueError unless there are >= ``minimum`` runs (errors are over runs) and each one recorded ``system``."""
    if len(dirs) < minimum:
        raise ValueError(f"DIR: give at least {minimum} independent run(s) (errors are over runs), got {len(dirs)}")
    for d in dirs:
        found = recorded_system(d)
        if found != system:
            raise ValueError(f"DIR {d} is a run of {found!r}, not of {system!r}")


def run_file(system: str, directory: str) -> dict:
    """One run's own figures as a per-run file holds them: {kind, system, run, figures: RunFigures.to_dict()}."""
    check_runs(system, [directory], minimum=1)
    return {"kind": RUN_FILE_KIND, "system": system, "run": str(directory),
            "figures": run_figures([directory]).to_dict()}


def read_run_file(path, system: str) -> dict:
    """The figures of a per-run file (see :func:`run_file`); ValueError unless it is one, of ``system``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--run-figures {path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("kind") != RUN_FILE_KIND or not {"system", "figures"} <= set(data):
        raise ValueError(f"--run-figures {path}: not a per-run figures file (write one with --keep-runs)")
    if data["system"] != system:
        raise ValueError(f"--run-figures {path} is a run of {data['system']!r}, not of {system!r}")
    return data["figures"]


def combine_runs(per_run: list[dict]) -> dict:
    """Reduce single-run figures (``RunFigures.to_dict()`` of one run each) over the runs.

    The same reduction as ``run_figures`` of several runs: every declared free energy from the ratio of
    the runs' mean populations (:func:`delta_f_over_runs`), every population and the mean energy as the
    mean over runs with its standard error. Returns the keys a reference file takes (plus ``per_unit``,
    one value per run). ValueError unless there are >= 2 runs, each one run, all with one declaration.
    """
    if len(per_run) < 2:
        raise ValueError(f"give at least two independent runs (errors are over runs), got {len(per_run)}")
    first = per_run[0]
    for figures in per_run:
        if any(key not in figures for key in ("n_error_units", "runs", "per_unit", "n_frames", *DECLARATION)):
            raise ValueError(f"per-run figures must be RunFigures.to_dict() of one run, got keys {sorted(figures)}")
        if figures["n_error_units"] != 1 or len(figures["runs"]) != 1:
            raise ValueError(f"per-run figures must each be of one run, got {figures['runs']}")
        if any(figures[key] != first[key] for key in DECLARATION):
            raise ValueError(f"{figures['runs'][0]} declares other collective variables, states, basins or free "
                             f"energies than {first['runs'][0]}")
    runs = [str(Path(f["runs"][0]).resolve()) for f in per_run]
    if len(set(runs)) != len(runs):
        raise ValueError(f"a run is given twice (as a folder or a per-run file): {sorted(runs)}")
    per_unit = {key: [f["per_unit"][key][0] for f in per_run] for key in first["per_unit"]}

    def estimate(key):
        values = per_unit.get(key)
        if values is None or any(v is None for v in values):
            return None, None
        e = with_error(values)
        return e.mean, e.standard_error

    out, notes = {}, []
    for key in first["free_energies"]:
        try:
            e = delta_f_over_runs(per_unit[f"p_{key}"], per_unit[f"p_reference_{key}"])
            out[f"delta_f_{key}_kT"], out[f"delta_f_{key}_err_kT"] = e.mean, e.standard_error
        except ValueError:  # as run_figures: no run holds weight on one side, so dF is unbounded
            out[f"delta_f_{key}_kT"] = out[f"delta_f_{key}_err_kT"] = None
            notes.append(f"delta_f_{key}: no run holds weighted frames on one side")
        out[f"p_{key}"], out[f"p_{key}_err"] = estimate(f"p_{key}")
    populations = {name: estimate(f"p[{name}]") for name in first["basins_rad"]}
    out["populations"] = {name: {"p": p, "err": err} for name, (p, err) in populations.items()}
    out["energy_mean_kT"], out["energy_mean_err_kT"] = estimate("energy_mean")
    out["n_frames_per_run"] = [f["n_frames"] for f in per_run]
    out["n_frames"] = sum(out["n_frames_per_run"])
    out["error_method"] = (f"standard error over {len(per_run)} independent runs (figures: mean over runs; free "
                           "energies: -ln of the ratio of mean populations)")
    out.update(basins_rad=first["basins_rad"], free_energies=first["free_energies"], per_unit=per_unit,
               runs=[f["runs"][0] for f in per_run], note="; ".join(notes) or None)
    return out


def per_run_delta_f(figures: dict) -> dict[str, list[float | None]]:
    """{free-energy key: each run's dF = -ln(P(state) / P(reference)) in kT (None where a side is empty)}."""
    out = {}
    for key in figures["free_energies"]:
        states, refs = figures["per_unit"][f"p_{key}"], figures["per_unit"][f"p_reference_{key}"]
        out[key] = [round(-math.log(p / r), 4) if p and r else None for p, r in zip(states, refs)]
    return out


def reference_dict(figures: dict, source: str, command: str, note: str) -> dict:
    """The reference file's content from :func:`combine_runs` (or :meth:`RunFigures.to_dict` of several runs)."""
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
         out=None, run_figure_files=()) -> dict:
    """Reduce the runs (folders ``dirs`` and per-run figure files) and write ``out`` (default
    :func:`reference_file`); returns the file's content."""
    check_runs(system, dirs, minimum=0)
    earlier = [read_run_file(f, system) for f in run_figure_files]
    if len(dirs) + len(earlier) < 2:
        raise ValueError(f"DIR: give at least two independent runs (errors are over runs), got {len(dirs) + len(earlier)}")
    path = Path(out) if out is not None else reference_file(system)
    if path.exists() and not replace:
        raise ValueError(f"{path} exists: give --replace to overwrite it")
    figures = combine_runs(earlier + [run_figures([d]).to_dict() for d in dirs])
    ref = reference_dict(figures, source, command, note)
    path.write_text(json.dumps(ref, indent=1) + "\n")
    return ref


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", help="a named system (see `boltzgen systems`)")
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="independent `boltzgen md` runs of it")
    parser.add_argument("--run-figures", action="append", default=[], metavar="FILE",
                        help="a per-run figures file written earlier by --keep-runs, taken as one more run (repeat)")
    parser.add_argument("--keep-runs", metavar="FOLDER", default=None,
                        help="only write each DIR's own figures to FOLDER/<run>.json (no reference file)")
    parser.add_argument("--source", help="the method, in words (printed by `boltzgen run`; required to ship)")
    parser.add_argument("--command", help="the commands that made the runs and this reduction (required to ship)")
    parser.add_argument("--note", default="", help="the rule the runs followed, their cost, anything a reader needs")
    parser.add_argument("--record", metavar="FILE", default=None, help="also append a result record to FILE")
    parser.add_argument("--name", default=None, help="the record's name (default reference_md_<system>)")
    parser.add_argument("--out", default=None, help="write here instead of next to the system's YAML")
    parser.add_argument("--replace", action="store_true", help="overwrite an existing reference file (or kept per-run files)")
    args = parser.parse_args(argv)
    if args.system not in systems.names():
        parser.error(f"SYSTEM must be a named system ({', '.join(systems.names())}), got {args.system!r}")
    if args.keep_runs is not None:
        return keep_runs(parser, args)
    if args.source is None or args.command is None:
        parser.error("--source and --command are required to ship a reference (or give --keep-runs FOLDER)")
    try:
        ref = ship(args.system, args.dirs, args.source, args.command, args.note, args.replace, args.out,
                   args.run_figures)
    except ValueError as err:
        parser.error(str(err))
    figures = record_figures(ref)
    print(f"wrote {args.out or reference_file(args.system)}")
    print(json.dumps(figures))
    if args.record:
        append_record(args.record, args.name or f"reference_md_{args.system.replace('-', '_')}", args.command,
                      figures, args.note)
    return ref


def keep_runs(parser, args) -> dict:
    """--keep-runs: every DIR's per-run figures file in the folder (all checked before any is written)."""
    folder = Path(args.keep_runs)
    try:
        check_runs(args.system, args.dirs, minimum=1)
        files = {folder / f"{Path(d).resolve().name}.json": run_file(args.system, d) for d in args.dirs}
    except ValueError as err:
        parser.error(str(err))
    if len(files) != len(args.dirs):
        parser.error("DIR: two runs share a folder name (per-run files are named after it)")
    existing = [str(path) for path in files if path.exists()]
    if existing and not args.replace:
        parser.error(f"--keep-runs: {', '.join(existing)} exist (a kept run of the same name): give --replace to "
                     "overwrite them")
    folder.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {path}")
    return {str(p): d for p, d in files.items()}


if __name__ == "__main__":
    main()
