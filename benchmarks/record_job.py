"""Turn the summary.json of a `boltzgen sample`/`run`/`free-energy` job into a benchmark record.

    python benchmarks/record_job.py OUT/summary.json --name aldp_sampling --record benchmarks/results/sampling.jsonl
        [--commit HEAD] [--note TEXT]

The record's command is the job's own command line (summary.json "command", as `boltzgen ...`),
its figures the summary's free energies with their errors over runs, ESS, lineages, log Z,
evaluations and seconds, and (where the summary has one) the reference it is compared with.
The date is the file's modification time; ``--commit`` names the code that ran the job when that
was not this checkout's HEAD.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from _record import make_record


def _command(summary: dict) -> str:
    """``boltzgen ARGS`` from the recorded argv (whatever path ran the entry point)."""
    parts = (summary.get("command") or "").split()
    return " ".join(["boltzgen", *parts[1:]]) if parts else "n/a"


def _rounded(figures: dict) -> dict:
    """Free energies and log Z (kT) to 3 decimals, fractions to 4: what a results table quotes."""
    def r(key, v):
        if not isinstance(v, float):
            return v
        return round(v, 4 if "fraction" in key else 1 if key == "seconds" else 3)

    return {k: r(k, v) for k, v in figures.items()}


def sample_figures(s: dict) -> dict:
    """Free energies (kT, with errors), log Z, ESS, lineages, evaluations and time of a sample job."""
    figures = {"system": s["system"], "runs": s["n_runs"], "particles_per_run": s["n_particles_per_run"],
               "mixing_moves": s["settings"]["mixing"]["moves"], "n_levels": s["settings"]["n_levels"]}
    for fe in s.get("free_energies", []):
        figures[f"delta_f_{fe['key']}_kT"] = s[f"delta_f_{fe['key']}_kT"]
        figures[f"delta_f_{fe['key']}_kT_err"] = s[f"delta_f_{fe['key']}_err_kT"]
    figures.update({"log_z": s["log_z"], "log_z_err": s["log_z_err"],
                    "one_step_bridge_ess_fraction": s["bridge_ess_fraction"],
                    "levels_ess_fraction": s["levels_ess_fraction"], "final_ess_fraction": s["ess_fraction"],
                    "lineages_fraction_mean": sum(s["lineages"]) / len(s["lineages"]) / s["n_particles_per_run"],
                    "lineages": ", ".join(map(str, s["lineages"])),
                    "target_evaluations": s["target_evaluations"], "model_evaluations": s["model_evaluations"],
                    "seconds": s["seconds"]})
    return _rounded(figures)


def free_energy_figures(s: dict) -> dict:
    """Both free-energy estimates (kT, with errors), the bridge ESS and the MBAR reference if any."""
    figures = {"from": s["from"], "to": s["to"], "runs": s["n_runs"], "particles_per_run": s["n_particles_per_run"],
               "delta_f_bridge_kT": s["delta_f_kT"], "delta_f_bridge_kT_err": s["delta_f_err_kT"],
               "delta_f_log_z_kT": s["delta_f_log_z_kT"], "delta_f_log_z_kT_err": s["delta_f_log_z_err_kT"],
               "bridge_final_ess_fraction": s["ess_fraction"], "bridge_lowest_ess_fraction": s["min_ess_fraction"],
               "target_evaluations": s["target_evaluations"], "model_evaluations": s["model_evaluations"],
               "seconds": s["seconds"]}
    ref = s.get("reference")
    if ref is not None:
        figures.update({"reference_kT": ref["delta_f_kT"], "reference_kT_err": ref["delta_f_err_kT"]})
    return _rounded(figures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", type=Path, help="a job's summary.json")
    parser.add_argument("--name", required=True, help="the record name (the table in docs/benchmarks.md)")
    parser.add_argument("--record", required=True, type=Path, metavar="FILE", help="the .jsonl file to append to")
    parser.add_argument("--commit", default=None, help="the code that ran the job (default: this checkout's HEAD)")
    parser.add_argument("--note", default="", help="caveats: what the figures mean, what was compared")
    parser.add_argument("--command", default=None, help="the job's command, for summaries that do not record it")
    args = parser.parse_args(argv)
    if not args.summary.is_file():
        print(f"record_job.py: error: summary {args.summary} is not a file", file=sys.stderr)
        return 2
    summary = json.loads(args.summary.read_text())
    figures = free_energy_figures(summary) if summary.get("job") == "free-energy" else sample_figures(summary)
    date = datetime.fromtimestamp(args.summary.stat().st_mtime, timezone.utc).replace(microsecond=0).isoformat()
    command = args.command or _command(summary)
    record = make_record(args.name, command, figures, args.note, date=date, commit=args.commit)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    with args.record.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(json.dumps(record["figures"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
