"""Cost to reach a standard error of 0.1 kT on dF(phi > 0 vs phi < 0) of alanine dipeptide: boltzgen vs MD.

Measured in one run, on the same cores, one after the other:
  * boltzgen: --runs independent SMC runs of the shipped model (``boltzgen sample`` defaults);
    the standard error over runs, s_R, with R runs of cost c each, reaches 0.1 kT after
    R (s_R / 0.1)^2 runs (standard errors fall as 1 / sqrt(cost)). "Training included" adds
    the shipped model's measured data generation (3 biased MD runs of 30 ns) and training time,
    read from systems/alanine-dipeptide/alanine-dipeptide.model.json (not re-measured here).
  * plain MD: one run of --plain-ns ns; error over 10 contiguous blocks; extrapolated the same way.
    If the run never leaves phi < 0, dF is not estimable and only a lower bound is printed.
  * biased MD (well-tempered metadynamics on phi, the project's reference method): --biased-runs
    runs of --biased-ns ns each (plus the 1 ns deposition each, which counts); error over runs.

Target-energy evaluations: configurations at which the force field was evaluated (one per MD
step; for SMC every particle at every bridge step, move and check). SMC evaluates them in large
batches (torch force field), MD one at a time (OpenMM), so wall clock is the fair comparison.

Run:  python benchmarks/aldp_vs_md.py [--quick] [--runs 4] [--particles 2500] [--plain-ns 10]
      [--biased-runs 4] [--biased-ns 3] [--threads 2]
--quick: a few seconds per method, to check the script (figures meaningless). The last line is
one JSON object with all figures. --record FILE also appends them as a result record (one JSON line,
benchmarks/_record.py) that benchmarks/make_docs.py renders into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _record import append_record, command_line
from boltzgen import md, systems
from boltzgen.analysis import run_figures
from boltzgen.pipeline import sample_model
from boltzgen.sampling import SampleSettings

TARGET_SE_KT = 0.1
STEPS_PER_NS = 1_000_000  # 1 fs time step, one force evaluation per step


def extrapolated(cost: float, se: float | None) -> float | None:
    """Cost to reach TARGET_SE_KT when the standard error falls as 1 / sqrt(cost)."""
    if se is None or not math.isfinite(se) or se <= 0:
        return None
    return cost * (se / TARGET_SE_KT) ** 2


def dF_error(figures) -> tuple[float | None, float | None]:
    e = figures.delta_f_phi_positive
    return (None, None) if e is None else (e.mean, e.standard_error)


def bench_boltzgen(args, work: Path) -> dict:
    settings = SampleSettings(n_levels=args.levels)
    with systems.load("alanine-dipeptide") as target:
        start = time.perf_counter()
        report = sample_model(target, systems.shipped_model("alanine-dipeptide"), work / "smc",
                              particles=args.particles, runs=args.runs, settings=settings, seed=args.seed,
                              compile=not args.quick)
        seconds = time.perf_counter() - start
    s = report.summary
    df, se = s["delta_f_phi_positive_kT"], s["delta_f_phi_positive_err_kT"]
    provenance = json.loads(systems.shipped_model("alanine-dipeptide").with_suffix(".json").read_text())
    data_runs = [v for k, v in provenance["data_seconds_per_run"].items() if k.startswith("seed")]
    training_seconds = 3 * float(np.mean(data_runs)) + float(provenance["train_seconds"])
    training_evaluations = 3 * 31 * STEPS_PER_NS + int(provenance["training_report"]["n_train"])  # MD steps + TSM forces
    return {"method": "boltzgen", "dF_kT": df, "se_kT": se, "seconds": seconds,
            "target_evaluations": s["target_evaluations"], "runs": args.runs, "particles": args.particles,
            "seconds_to_0.1": extrapolated(seconds, se),
            "evaluations_to_0.1": extrapolated(s["target_evaluations"], se),
            "training_seconds": training_seconds, "training_evaluations": training_evaluations,
            "bridge_ess_fraction": s["bridge_ess_fraction"], "ess_fraction": s["ess_fraction"]}


def bench_md(args, work: Path, biased: bool) -> dict:
    runs = args.biased_runs if biased else 1
    ns = args.biased_ns if biased else args.plain_ns
    bias = md.Metadynamics(("phi",), deposition_ps=args.deposition_ps) if biased else None
    dirs, seconds = [], 0.0
    with systems.load("alanine-dipeptide") as target:
        for k in range(runs):
            out = work / f"{'biased' if biased else 'plain'}-{k}"
            start = time.perf_counter()
            md.run_md(target, ns, out, seed=args.seed + 1 + k, chunk_frames=500, bias=bias)
            seconds += time.perf_counter() - start
            dirs.append(out)
    figures = run_figures([str(d) for d in dirs], blocks=10)
    df, se = dF_error(figures)
    ns_total = runs * (ns + (args.deposition_ps / 1000 if biased else 0.0))
    evaluations = int(ns_total * STEPS_PER_NS)
    return {"method": "biased MD" if biased else "plain MD", "dF_kT": df, "se_kT": se, "seconds": seconds,
            "target_evaluations": evaluations, "runs": runs, "ns": ns_total,
            "phi_transitions": list(figures.phi_transitions_per_run),
            "seconds_to_0.1": extrapolated(seconds, se), "evaluations_to_0.1": extrapolated(evaluations, se),
            "note": figures.note}


def fmt(v, spec: str) -> str:
    width = int(spec.split(".")[0].rstrip("fg") or 0)
    return "n/a".rjust(width) if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs that only check the script")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--particles", type=int, default=2500)
    parser.add_argument("--levels", type=int, default=SampleSettings().n_levels)
    parser.add_argument("--plain-ns", type=float, default=10.0)
    parser.add_argument("--biased-runs", type=int, default=4)
    parser.add_argument("--biased-ns", type=float, default=3.0)
    parser.add_argument("--deposition-ps", type=float, default=1000.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", metavar="FILE", default=None,
                        help="also append the figures as one JSON line to FILE (benchmarks/_record.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.particles, args.levels = 2, 64, 20
        args.plain_ns, args.biased_runs, args.biased_ns, args.deposition_ps = 0.02, 2, 0.02, 20.0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [bench_boltzgen(args, work), bench_md(args, work, biased=False), bench_md(args, work, biased=True)]
    print(f"cost to a standard error of {TARGET_SE_KT} kT on dF(phi>0 vs phi<0), {args.threads} torch threads "
          f"(MD: OpenMM, one core)")
    print(f"{'method':<28} {'dF kT':>8} {'se kT':>7} {'measured s':>11} {'s to 0.1':>10} {'evals to 0.1':>13}")
    for r in rows:
        print(f"{r['method']:<28} {fmt(r['dF_kT'], '8.3f')} {fmt(r['se_kT'], '7.3f')} {r['seconds']:11.0f} "
              f"{fmt(r['seconds_to_0.1'], '10.0f')} {fmt(r['evaluations_to_0.1'], '13.3g')}")
    b = rows[0]
    if b["seconds_to_0.1"] is not None:
        incl_s = b["seconds_to_0.1"] + b["training_seconds"]
        incl_e = b["evaluations_to_0.1"] + b["training_evaluations"]
        print(f"{'boltzgen, training included':<28} {'':>8} {'':>7} {'':>11} {incl_s:10.0f} {incl_e:13.3g}")
        b["seconds_to_0.1_training_included"], b["evaluations_to_0.1_training_included"] = incl_s, incl_e
        for r in rows[1:]:
            if r["seconds_to_0.1"] is not None:
                print(f"  {r['method']} / boltzgen wall clock: {r['seconds_to_0.1'] / b['seconds_to_0.1']:.2f} "
                      f"(training excluded), {r['seconds_to_0.1'] / incl_s:.2f} (included)")
            else:
                print(f"  {r['method']}: not estimable in {r['seconds']:.0f} s ({r.get('note')})")
    print(json.dumps({"target_se_kT": TARGET_SE_KT, "quick": args.quick, "threads": args.threads, "rows": rows}))
    if args.record:
        append_record(args.record, "aldp_vs_md", command_line(__file__, argv), record_figures(rows),
                      "--quick: checks the script, figures meaningless" if args.quick else "")


def record_figures(rows: list[dict]) -> dict:
    """The figures of a --record line: per method dF, its standard error, cost to 0.1 kT."""
    figures = {}
    for r in rows:
        key = r["method"].replace(" ", "_").replace("MD", "md")
        figures[f"{key}_dF_kT"], figures[f"{key}_dF_kT_err"] = r["dF_kT"], r["se_kT"]
        figures[f"{key}_seconds"] = r["seconds"]
        figures[f"{key}_seconds_to_0.1"] = r["seconds_to_0.1"]
        figures[f"{key}_evaluations_to_0.1"] = r["evaluations_to_0.1"]
    b = rows[0]
    figures["boltzgen_seconds_to_0.1_training_included"] = b.get("seconds_to_0.1_training_included")
    figures["boltzgen_bridge_ess_fraction"] = b["bridge_ess_fraction"]
    biased = next(r for r in rows if r["method"] == "biased MD")
    if b["seconds_to_0.1"] and biased["seconds_to_0.1"]:
        figures["biased_md_speedup"] = b["seconds_to_0.1"] / biased["seconds_to_0.1"]
    return figures


if __name__ == "__main__":
    main()
