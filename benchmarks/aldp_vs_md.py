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
    first half of the snapshots (taken every 50 rounds) and averages the rest; 4,000 rounds by default,
    so that the dropped half is ~3 e-folding times of the kernel's phi relaxation (~650 rounds,
    benchmarks/kernel_reference.py; at 1,000 rounds the arm was 17 s.e. off, unrelaxed);
  * the Cartesian generator (the previous shipped model), at its own defaults (1,000 levels without
    torsion moves, resampling below ESS/N 0.1, 1,500 mixing rounds);
  * the internal-coordinate generator (the shipped model) at the defaults, and without its mixing
    stage.
--system picks the set-up (alanine-dipeptide, the default, or alanine-dipeptide-implicit: OBC implicit
solvent, whose shipped model is the vacuum one fine-tuned on implicit MD); --cartesian-model none leaves
the Cartesian arm out (it has no implicit-solvent model; recalibrating it costs most of the run).
Every arm is compared with the set-up's shipped reference (z = (dF - reference) / combined s.e.); a baseline
with |z| > 2 (e.g. MCMC alone not yet relaxed) gets no ratio: its cost to 0.1 kT is the cost of a
wrong answer. "Training included" adds each model's measured data generation and training time, read from its
provenance file (not re-measured here).

Evaluations: configurations at which the force field (target) or the model was evaluated; MD
evaluates one configuration per step, SMC and MCMC in batches (torch force field), so wall clock is
the fair comparison.

Run:  python benchmarks/aldp_vs_md.py [--quick] [--system alanine-dipeptide] [--runs 4] [--particles 2500] [--biased-runs 4]
      [--biased-ns 3] [--biased-timesteps 0.5,1] [--mcmc-rounds 4000] [--model FILE]
      [--cartesian-model FILE|none] [--threads 2] [--record FILE]
--quick: seconds per arm, to check the script (figures meaningless). The last line is one JSON
object with all figures; --record FILE also appends them as a result record (benchmarks/_record.py).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _arms import TARGET_SE_KT, print_table, record_figures, row
from _record import append_record, command_line

from boltzgen import md, systems
from boltzgen.analysis import phi_psi, run_figures
from boltzgen.analysis.free_energy import mean_and_error
from boltzgen.baselines import mcmc_alone
from boltzgen.models import load_model_file
from boltzgen.pipeline import fast_target, sample_model, shipped_reference
from boltzgen.sampling import MixingSettings, SampleSettings

EQUILIBRATION_PS = 100.0  # each biased run's equilibration under the frozen bias: simulated, so counted
CARTESIAN = systems.DEFAULT_SYSTEMS_DIR / "alanine-dipeptide" / "alanine-dipeptide-cartesian.model.pt"
SYSTEMS = ("alanine-dipeptide", "alanine-dipeptide-implicit")


def reference_of(system: str) -> dict:
    """The set-up's shipped reference (``<system>.reference.json``): dF(phi>0) and its s.e. in kT, and its source."""
    found = shipped_reference(system)
    if found is None:
        raise ValueError(f"system {system!r} ships no reference.json to compare with")
    return found


def _row(method: str, df, se, seconds, target_evals, model_evals=0, *, reference: dict, **extra) -> dict:
    value = (reference["delta_f_phi_positive_kT"], reference["delta_f_phi_positive_err_kT"])
    return row(method, df, se, value, seconds, target_evals, model_evals, **extra)


def _training_cost(model_path: Path) -> tuple[float | None, int | None]:
    """Seconds and evaluations of a model's data generation and training, from its provenance file."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        return None, None
    p = json.loads(path.read_text())
    data = [v for k, v in p.get("data_seconds_per_run", {}).items() if k.startswith("seed")]
    if not data:  # e.g. a fine-tune, whose data and parent model's cost the file does not itemise
        return None, None
    n_data_runs, ns_per_run = p.get("data_runs", 3), p.get("data_ns_per_run", 31)
    seconds = n_data_runs * float(np.mean(data)) + float(p["train_seconds"])
    steps_per_ns = 1e6 / p.get("data_timestep_fs", 1.0)  # the data's time step (1 fs, md's default then)
    evaluations = round(n_data_runs * ns_per_run * steps_per_ns) + int(p["training_report"]["n_train"])
    return seconds, evaluations


def bench_generator(label: str, model_path: Path, settings, args, work: Path) -> dict:
    with systems.load(args.system) as target:
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
                training_evaluations=training_evaluations, reference=args.reference)


def bench_mcmc(model_path: Path, args) -> dict:
    space = load_model_file(model_path).space
    estimates, seconds, evaluations = [], 0.0, 0
    with systems.load(args.system) as target:
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
                rounds=args.mcmc_rounds, per_run_dF_kT=[e if math.isfinite(e) else None for e in estimates],
                reference=args.reference)


def bench_biased_md(args, work: Path, timestep_fs: float) -> dict:
    bias = md.Metadynamics(("phi",), deposition_ps=args.deposition_ps)
    dirs, seconds = [], 0.0
    with systems.load(args.system) as target:
        for k in range(args.biased_runs):
            out = work / f"biased-{timestep_fs:g}fs-{k}"
            start = time.perf_counter()
            md.run_md(target, args.biased_ns, out, seed=args.seed + 1 + k, chunk_frames=500, bias=bias,
                      timestep_fs=timestep_fs, equilibration_ps=EQUILIBRATION_PS)
            seconds += time.perf_counter() - start
            dirs.append(out)
    figures = run_figures([str(d) for d in dirs])
    e = figures.delta_f_phi_positive  # None when no frame reached phi > 0 (too short to estimate)
    ns_total = args.biased_runs * (args.biased_ns + (args.deposition_ps + EQUILIBRATION_PS) / 1000)
    label = "biased MD" if timestep_fs == md.DEFAULT_TIMESTEP_FS else f"biased MD ({timestep_fs:g} fs)"
    return _row(label, None if e is None else e.mean, None if e is None else e.standard_error, seconds,
                round(ns_total * 1e6 / timestep_fs), runs=args.biased_runs, ns=ns_total, timestep_fs=timestep_fs,
                reference=args.reference)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs that only check the script")
    parser.add_argument("--system", default=SYSTEMS[0], choices=SYSTEMS, help="the set-up (default %(default)s)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--particles", type=int, default=2500, help="particles per SMC run and chains per MCMC set")
    parser.add_argument("--mcmc-rounds", type=int, default=4000)
    parser.add_argument("--biased-runs", type=int, default=4)
    parser.add_argument("--biased-ns", type=float, default=3.0)
    parser.add_argument("--deposition-ps", type=float, default=1000.0)
    parser.add_argument("--biased-timesteps", default="0.5,1", help="biased MD arms, one per time step in fs")
    parser.add_argument("--model", default=None, help="the internal-coordinate model (default: the system's shipped one)")
    parser.add_argument("--cartesian-model", default=str(CARTESIAN),
                        help="the Cartesian model to compare, or none to leave that arm out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", metavar="FILE", default=None,
                        help="also append the figures as one JSON line to FILE (benchmarks/_record.py)")
    args = parser.parse_args(argv)
    args.model = args.model or str(systems.shipped_model(args.system))
    args.reference = reference_of(args.system)
    # the Cartesian model keeps the settings it was measured with: no level torsions, resampling at 0.1
    defaults = SampleSettings()
    cartesian_defaults = SampleSettings(n_levels=1000, level_torsions=0, resample_threshold=0.1,
                                        mixing=MixingSettings(moves=1500))
    if args.quick:
        args.runs, args.particles, args.mcmc_rounds = 2, 32, 100
        args.biased_runs, args.biased_ns, args.deposition_ps = 2, 0.02, 20.0
        defaults = replace(defaults, n_levels=10, mixing=replace(defaults.mixing, moves=min(defaults.mixing.moves, 20)))
        cartesian_defaults = replace(cartesian_defaults, n_levels=10, mixing=MixingSettings(moves=20))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = [float(v) for v in args.biased_timesteps.split(",")]
        if len(set(steps)) != len(steps):
            parser.error(f"--biased-timesteps must not repeat a step, got {args.biased_timesteps}")
        cartesian = [] if args.cartesian_model.lower() == "none" else [
            bench_generator("Cartesian generator", Path(args.cartesian_model), cartesian_defaults, args, work)]
        rows = [*(bench_biased_md(args, work, dt) for dt in steps), bench_mcmc(Path(args.model), args), *cartesian,
                bench_generator("IC generator", Path(args.model), defaults, args, work),
                bench_generator("IC generator, no mixing", Path(args.model),
                                replace(defaults, mixing=replace(defaults.mixing, moves=0)), args, work)]
    found = print_table(rows, [
        (f"{args.system}: cost to a standard error of {TARGET_SE_KT} kT on dF(phi>0 vs phi<0), {args.threads} torch threads "
        f"(MD: OpenMM, one core); {args.runs} runs x {args.particles} particles per sampler"),
        (f"reference: {args.reference['delta_f_phi_positive_kT']:.3f} +- "
         f"{args.reference['delta_f_phi_positive_err_kT']:.3f} kT ({args.reference['source']}); "
         "z = (dF - reference) / combined s.e.")])
    print(json.dumps({"target_se_kT": TARGET_SE_KT, "quick": args.quick, "system": args.system, "threads": args.threads,
                      "rows": rows, "ratios": found}))
    if args.record:
        figures = record_figures(rows, found)
        if args.system != SYSTEMS[0]:
            figures = {"system": args.system, **figures}
        append_record(args.record, "aldp_vs_md", command_line(__file__, argv), figures,
                      "--quick: checks the script, figures meaningless" if args.quick else "")


if __name__ == "__main__":
    main()
