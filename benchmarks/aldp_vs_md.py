"""Cost to a 0.1 kT standard error on dF(phi > 0 vs phi < 0) of alanine dipeptide: every arm, one run.

Measured one after the other on the same cores, each arm as R independent runs whose spread gives
its standard error s_R; with R runs of cost c each, 0.1 kT takes R c (s_R / 0.1)^2 (standard errors
fall as 1 / sqrt(cost)):
  * biased MD: well-tempered metadynamics on phi (the reference method): --biased-runs runs of
    --biased-ns ns each (the 1 ns deposition counts), at md's default 0.5 fs step and, as "biased MD
    (1 fs)", at 1 fs: twice as fast per ns, but ~0.07 kT low (--biased-timesteps);
  * MCMC alone: the generator's mixing kernel (MALA + torsion moves, in the internal-coordinate
    model's space) started from the structure, no model (:func:`boltzgen.baselines.mcmc_alone`):
    --runs sets of --particles chains for --mcmc-rounds rounds; the rule, fixed in advance, drops the
    first half of the snapshots (taken every 50 rounds) and averages the rest;
  * the Cartesian generator (the previous shipped model), at its own defaults (1,000 levels, 1,500
    mixing rounds);
  * the internal-coordinate generator (the shipped model) at the defaults, and without its mixing
    stage.
Every arm is compared with the shipped reference (z = (dF - reference) / combined s.e.); a baseline
with |z| > 2 (e.g. MCMC alone not yet relaxed) gets no ratio: its cost to 0.1 kT is the cost of a
wrong answer. "Training included" adds each model's measured data generation and training time, read from its
provenance file (not re-measured here).

Evaluations: configurations at which the force field (target) or the model was evaluated; MD
evaluates one configuration per step, SMC and MCMC in batches (torch force field), so wall clock is
the fair comparison.

Run:  python benchmarks/aldp_vs_md.py [--quick] [--runs 4] [--particles 2500] [--biased-runs 4]
      [--biased-ns 3] [--biased-timesteps 0.5,1] [--mcmc-rounds 1000] [--threads 2] [--record FILE]
--quick: seconds per arm, to check the script (figures meaningless). The last line is one JSON
object with all figures; --record FILE also appends them as a result record (benchmarks/_record.py).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from _record import append_record, command_line
from boltzgen import md, systems
from boltzgen.analysis import phi_psi, run_figures
from boltzgen.analysis.free_energy import mean_and_error
from boltzgen.baselines import mcmc_alone
from boltzgen.models import load_model_file
from boltzgen.pipeline import fast_target, sample_model
from boltzgen.sampling import MixingSettings, SampleSettings

TARGET_SE_KT = 0.1
DATA_STEPS_PER_NS = 1_000_000  # the shipped models' training data was made at 1 fs (their provenance commands)
CARTESIAN = systems.DEFAULT_SYSTEMS_DIR / "alanine-dipeptide" / "alanine-dipeptide-cartesian.model.pt"
REFERENCE = json.loads((systems.DEFAULT_SYSTEMS_DIR / "alanine-dipeptide" / "alanine-dipeptide.reference.json").read_text())


def extrapolated(cost: float, se: float | None) -> float | None:
    """Cost to reach TARGET_SE_KT when the standard error falls as 1 / sqrt(cost)."""
    if se is None or not math.isfinite(se) or se <= 0:
        return None
    return cost * (se / TARGET_SE_KT) ** 2


def z_vs_reference(df, se, reference: dict) -> float | None:
    """(dF - reference) / combined standard error: |z| > 2 marks an arm whose estimate is off (e.g. not
    relaxed), whose cost to 0.1 kT is then the cost of a wrong answer."""
    if df is None or se is None:
        return None
    return (df - reference["delta_f_phi_positive_kT"]) / math.hypot(se, reference["delta_f_phi_positive_err_kT"])


def _row(method: str, df, se, seconds, target_evals, model_evals=0, **extra) -> dict:
    evaluations = target_evals + model_evals
    return {"method": method, "dF_kT": df, "se_kT": se, "z_vs_reference": z_vs_reference(df, se, REFERENCE),
            "seconds": seconds, "target_evaluations": int(target_evals),
            "model_evaluations": int(model_evals), "seconds_to_0.1": extrapolated(seconds, se),
            "evaluations_to_0.1": extrapolated(evaluations, se), **extra}


def _training_cost(model_path: Path) -> tuple[float | None, int | None]:
    """Seconds and evaluations of a model's data generation and training, from its provenance file."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        return None, None
    p = json.loads(path.read_text())
    data = [v for k, v in p.get("data_seconds_per_run", {}).items() if k.startswith("seed")]
    n_data_runs, ns_per_run = p.get("data_runs", 3), p.get("data_ns_per_run", 31)
    seconds = n_data_runs * float(np.mean(data)) + float(p["train_seconds"]) if data else None
    evaluations = n_data_runs * ns_per_run * DATA_STEPS_PER_NS + int(p["training_report"]["n_train"])
    return seconds, evaluations


def bench_generator(label: str, model_path: Path, settings, args, work: Path) -> dict:
    with systems.load("alanine-dipeptide") as target:
        start = time.perf_counter()
        report = sample_model(target, model_path, work / label.replace(" ", "-"), particles=args.particles,
                              runs=args.runs, settings=settings, seed=args.seed, compile=not args.quick)
        seconds = time.perf_counter() - start
    s = report.summary
    training_seconds, training_evaluations = _training_cost(model_path)
    return _row(label, s["delta_f_phi_positive_kT"], s["delta_f_phi_positive_err_kT"], seconds,
                s["target_evaluations"], s["model_evaluations"], runs=args.runs, particles=args.particles,
                bridge_ess_fraction=s["bridge_ess_fraction"], ess_before_mixing=s["ess_fraction"],
                lineages=s["lineages"], training_seconds=training_seconds,
                training_evaluations=training_evaluations)


def bench_mcmc(model_path: Path, args) -> dict:
    space = load_model_file(model_path).space
    estimates, seconds, evaluations = [], 0.0, 0
    with systems.load("alanine-dipeptide") as target:
        fast = fast_target(target, compile=not args.quick)
        for k in range(args.runs):
            chains = mcmc_alone(space, target, args.particles, args.mcmc_rounds, mixing=MixingSettings(),
                                target_energy=fast.reduced_energy, seed=args.seed + 1000 + k)
            x = torch.from_numpy(chains.kept().reshape(-1, target.n_atoms, 3)).to(torch.float64)
            p = float((phi_psi(x, target.topology)[:, 0, 0] > 0).double().mean())
            estimates.append(-math.log(p / (1 - p)) if 0 < p < 1 else math.inf)
            seconds += chains.seconds
            evaluations += chains.target_evaluations
    # a set whose chains never reached phi > 0 has no finite estimate: then the arm is not estimable
    df, se = mean_and_error(estimates) if all(math.isfinite(e) for e in estimates) else (None, None)
    return _row("MCMC alone", df, se, seconds, evaluations, runs=args.runs, chains=args.particles,
                rounds=args.mcmc_rounds, per_run_dF_kT=[e if math.isfinite(e) else None for e in estimates])


def bench_biased_md(args, work: Path, timestep_fs: float) -> dict:
    bias = md.Metadynamics(("phi",), deposition_ps=args.deposition_ps)
    dirs, seconds = [], 0.0
    with systems.load("alanine-dipeptide") as target:
        for k in range(args.biased_runs):
            out = work / f"biased-{timestep_fs:g}fs-{k}"
            start = time.perf_counter()
            md.run_md(target, args.biased_ns, out, seed=args.seed + 1 + k, chunk_frames=500, bias=bias,
                      timestep_fs=timestep_fs)
            seconds += time.perf_counter() - start
            dirs.append(out)
    figures = run_figures([str(d) for d in dirs])
    e = figures.delta_f_phi_positive  # None when no frame reached phi > 0 (too short to estimate)
    ns_total = args.biased_runs * (args.biased_ns + args.deposition_ps / 1000)
    label = "biased MD" if timestep_fs == md.DEFAULT_TIMESTEP_FS else f"biased MD ({timestep_fs:g} fs)"
    return _row(label, None if e is None else e.mean, None if e is None else e.standard_error, seconds,
                round(ns_total * 1e6 / timestep_fs), runs=args.biased_runs, ns=ns_total, timestep_fs=timestep_fs)


def _is_baseline(method: str) -> bool:
    return method == "MCMC alone" or method.startswith("biased MD")


def fmt(v, spec: str) -> str:
    width = int(spec.split(".")[0].rstrip("fg") or 0)
    return "n/a".rjust(width) if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _sound(rows: list[dict], method: str) -> bool:
    """Whether ``method``'s estimate agrees with the reference (|z| <= 2): a baseline that does not is
    left out of the ratios (its cost to 0.1 kT is the cost of a wrong answer)."""
    z = next(r["z_vs_reference"] for r in rows if r["method"] == method)
    return z is not None and abs(z) <= 2


def _ratios(rows: list[dict]) -> dict:
    """seconds to 0.1 kT of each baseline / of each generator (> 1: the generator is faster); baselines
    off the reference by more than 2 combined standard errors are left out (see :func:`_sound`)."""
    base = {r["method"]: r["seconds_to_0.1"] for r in rows if _is_baseline(r["method"])}
    out = {}
    for r in rows:
        if r["method"] in base or not r["seconds_to_0.1"]:
            continue
        for name, b in base.items():
            if b and _sound(rows, name):
                out[f"{name} / {r['method']}"] = b / r["seconds_to_0.1"]
                if r.get("training_seconds"):
                    out[f"{name} / {r['method']} (training included)"] = b / (r["seconds_to_0.1"]
                                                                              + r["training_seconds"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs that only check the script")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--particles", type=int, default=2500, help="particles per SMC run and chains per MCMC set")
    parser.add_argument("--mcmc-rounds", type=int, default=1000)
    parser.add_argument("--biased-runs", type=int, default=4)
    parser.add_argument("--biased-ns", type=float, default=3.0)
    parser.add_argument("--deposition-ps", type=float, default=1000.0)
    parser.add_argument("--biased-timesteps", default="0.5,1", help="biased MD arms, one per time step in fs")
    parser.add_argument("--model", default=str(systems.shipped_model("alanine-dipeptide")),
                        help="the internal-coordinate model (default: the shipped one)")
    parser.add_argument("--cartesian-model", default=str(CARTESIAN), help="the Cartesian model to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", metavar="FILE", default=None,
                        help="also append the figures as one JSON line to FILE (benchmarks/_record.py)")
    args = parser.parse_args(argv)
    defaults, cartesian_defaults = SampleSettings(), SampleSettings(n_levels=1000, mixing=MixingSettings(moves=1500))
    if args.quick:
        args.runs, args.particles, args.mcmc_rounds = 2, 32, 100
        args.biased_runs, args.biased_ns, args.deposition_ps = 2, 0.02, 20.0
        defaults = replace(defaults, n_levels=10, mixing=replace(defaults.mixing, moves=min(defaults.mixing.moves, 20)))
        cartesian_defaults = SampleSettings(n_levels=10, mixing=MixingSettings(moves=20))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = [float(v) for v in args.biased_timesteps.split(",")]
        rows = [*(bench_biased_md(args, work, dt) for dt in steps), bench_mcmc(Path(args.model), args),
                bench_generator("Cartesian generator", Path(args.cartesian_model), cartesian_defaults, args, work),
                bench_generator("IC generator", Path(args.model), defaults, args, work),
                bench_generator("IC generator, no mixing", Path(args.model),
                                replace(defaults, mixing=replace(defaults.mixing, moves=0)), args, work)]
    print(f"cost to a standard error of {TARGET_SE_KT} kT on dF(phi>0 vs phi<0), {args.threads} torch threads "
          f"(MD: OpenMM, one core); {args.runs} runs x {args.particles} particles per sampler")
    print(f"reference: {REFERENCE['delta_f_phi_positive_kT']:.3f} +- {REFERENCE['delta_f_phi_positive_err_kT']:.3f} kT "
          f"({REFERENCE['source']}); z = (dF - reference) / combined s.e.")
    print(f"{'method':<26} {'dF kT':>7} {'se kT':>6} {'z':>5} {'measured s':>10} {'s to 0.1':>9} {'evals to 0.1':>12} "
          f"{'+training s':>11} {'1-step ESS':>10}  lineages")
    for r in rows:
        incl = None if r["seconds_to_0.1"] is None or not r.get("training_seconds") else \
            r["seconds_to_0.1"] + r["training_seconds"]
        print(f"{r['method']:<26} {fmt(r['dF_kT'], '7.3f')} {fmt(r['se_kT'], '6.3f')} {fmt(r['z_vs_reference'], '5.1f')} "
              f"{r['seconds']:10.0f} "
              f"{fmt(r['seconds_to_0.1'], '9.0f')} {fmt(r['evaluations_to_0.1'], '12.3g')} {fmt(incl, '11.0f')} "
              f"{fmt(r.get('bridge_ess_fraction'), '10.3f')}  {r.get('lineages', '')}")
    ratios = _ratios(rows)
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}  (seconds to 0.1 kT; > 1: the generator is faster)")
    for r in rows:
        if _is_baseline(r["method"]) and not _sound(rows, r["method"]):
            print(f"  {r['method']}: no ratio: its estimate is not within 2 s.e. of the reference (z = "
                  f"{fmt(r['z_vs_reference'], '.1f')}), so its cost to 0.1 kT is the cost of a wrong answer")
    print(json.dumps({"target_se_kT": TARGET_SE_KT, "quick": args.quick, "threads": args.threads, "rows": rows,
                      "ratios": ratios}))
    if args.record:
        append_record(args.record, "aldp_vs_md", command_line(__file__, argv), record_figures(rows, ratios),
                      "--quick: checks the script, figures meaningless" if args.quick else "")


def record_figures(rows: list[dict], ratios: dict) -> dict:
    """The figures of a --record line: per method dF, its standard error, cost to 0.1 kT; the ratios."""
    figures = {}
    for r in rows:
        key = re.sub(r"[^a-z0-9]+", "_", r["method"].lower()).strip("_")  # "biased MD (1 fs)" -> biased_md_1_fs
        figures[f"{key}_dF_kT"], figures[f"{key}_dF_kT_err"] = r["dF_kT"], r["se_kT"]
        figures[f"{key}_z_vs_reference"] = r["z_vs_reference"]
        figures[f"{key}_seconds"] = r["seconds"]
        figures[f"{key}_seconds_to_0.1"] = r["seconds_to_0.1"]
        figures[f"{key}_evaluations_to_0.1"] = r["evaluations_to_0.1"]
        if "bridge_ess_fraction" in r:
            figures[f"{key}_bridge_ess_fraction"] = r["bridge_ess_fraction"]
    for name, value in ratios.items():
        figures["ratio " + name] = value
    return figures


if __name__ == "__main__":
    main()
