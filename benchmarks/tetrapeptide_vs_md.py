"""Cost to a 0.1 kT standard error on the rarest phi-sign state of alanine tetrapeptide: every arm, one run.

Alanine tetrapeptide (ACE-(ALA)3-NME) has three slow phi; its eight phi-sign states ("---" ... "+++",
the signs of phi1, phi2, phi3) are declared in alanine-tetrapeptide.molecule.yaml. The figure of merit is
F(s) = -ln P(s) of the rarest state s holding at least 1 % of the reference's mass, with its standard
error over independent runs (delta method: se(P) / P); each arm also reports every residue's
dF(phi_i > 0 vs phi_i < 0). Arms, measured one after the other on the same cores:
  * biased MD: well-tempered metadynamics on the three phi, a sum of 1-D biases (the reference
    method, `boltzgen md alanine-tetrapeptide --bias phi1+phi2+phi3`): --biased-runs runs of
    --biased-ns ns each (the deposition counts), at md's default 0.5 fs step;
  * MCMC alone: the mixing kernel (MALA + torsion moves) from the structure, no model, in the
    model's coordinate space (without --model: Cartesian): --runs sets of --particles chains for
    --mcmc-rounds rounds; the first half of the snapshots is dropped (rule fixed in advance);
  * the generator (--model, internal coordinates) at the sampler defaults, and without its mixing
    stage; left out, and said so, without --model.
--system picks the set-up (alanine-tetrapeptide in vacuum, the default, or alanine-tetrapeptide-implicit).
The reference is the system's shipped <system>.reference.json when there is one, else the biased MD
arm itself (its z is then 0 by construction, and the table says so). See benchmarks/_arms.py for the
cost arithmetic and when a baseline gets no ratio.

Run:  python benchmarks/tetrapeptide_vs_md.py [--quick] [--system NAME] [--model FILE] [--runs 4]
      [--particles 1000] [--biased-runs 4] [--biased-ns 10] [--mcmc-rounds 2000] [--threads 2] [--record FILE]
--quick: seconds per arm, to check the script (figures meaningless). The last line is one JSON object
with all figures; --record FILE also appends them as a result record (benchmarks/_record.py).
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
from boltzgen.analysis import cv_values, load_run, run_figures
from boltzgen.analysis.lineages import FEW_LINEAGES, effective_lineages
from boltzgen.analysis.free_energy import mean_and_error
from boltzgen.baselines import mcmc_alone
from boltzgen.coordinates.cartesian import MolecularSpace
from boltzgen.models import load_model_file
from boltzgen.pipeline import fast_target, sample_model
from boltzgen.pipeline.sample import reference_file
from boltzgen.sampling import MixingSettings, SampleSettings

SYSTEMS = ("alanine-tetrapeptide", "alanine-tetrapeptide-implicit")
STATES = ("---", "--+", "-+-", "-++", "+--", "+-+", "++-", "+++")
RESIDUES = ("phi1_positive", "phi2_positive", "phi3_positive")
MIN_MASS = 0.01


def state_free_energy(p: float | None, p_se: float | None) -> tuple[float | None, float | None]:
    """F = -ln P (kT) and its standard error se(P) / P; (None, None) without an estimate."""
    if p is None or not p > 0:
        return None, None
    return -math.log(p), None if p_se is None else p_se / p


def empty_units(values) -> int:
    """How many runs (or chain sets) have none of a state's mass: with any, F's delta-method s.e. is unreliable
    (one non-empty run of k gives se(P) / P = 1 exactly, whatever the state's true spread)."""
    return sum(1 for v in values if not v > 0)


def figures_of_runs(dirs: list[Path]) -> dict:
    """{state: (P, se)} for the eight states, {residue free energy: (dF, se)} and {"empty": {state: runs
    without the state}} of MD or sample run folders."""
    f = run_figures([str(d) for d in dirs])
    out = {s: (f.populations[s].mean, f.populations[s].standard_error) for s in STATES}
    out["empty"] = {s: empty_units(f.per_unit[f"p[{s}]"]) for s in STATES}
    for key in RESIDUES:
        e = f.free_energies.get(key)
        out[key] = (None, None) if e is None else (e.mean, e.standard_error)
    return out


def figures_of_sets(per_set: list[dict[str, float]]) -> dict:
    """The same from per-set populations {state: P} of independent chain sets: mean and s.e. over sets;
    a residue's dF is -ln of the ratio of its mean populations (as for runs), with s.e. se(q) / (q (1 - q))."""
    out = {s: mean_and_error([p[s] for p in per_set]) for s in STATES}
    out["empty"] = {s: empty_units([p[s] for p in per_set]) for s in STATES}
    for i, key in enumerate(RESIDUES):
        q, q_se = mean_and_error([sum(p[s] for s in STATES if s[i] == "+") for p in per_set])
        out[key] = ((-math.log(q / (1 - q)), None if q_se is None else q_se / (q * (1 - q))) if 0 < q < 1
                    else (None, None))
    return out


def reference_figures(system: str, biased: dict) -> tuple[dict, str]:
    """The reference's {state: (P, se)} and {residue: (dF, se)}, and where it comes from."""
    path = reference_file(system)
    if path.is_file():
        ref = json.loads(path.read_text())
        out = {s: (ref["populations"][s]["p"], ref["populations"][s]["err"]) for s in STATES}
        out.update({k: (ref[f"delta_f_{k}_kT"], ref[f"delta_f_{k}_err_kT"]) for k in RESIDUES})
        return out, ref.get("source", str(path))
    return biased, "the biased MD arm itself (no shipped reference yet): its z is 0 by construction"


def rarest_state(reference: dict) -> str:
    """The state of least reference population among those holding at least MIN_MASS."""
    held = [s for s in STATES if reference[s][0] is not None and reference[s][0] >= MIN_MASS]
    return min(held, key=lambda s: reference[s][0])


def arm(method: str, figures: dict, state: str, reference: dict, seconds: float, target_evals: int,
        model_evals: int = 0, **extra) -> dict:
    value, se = state_free_energy(*figures[state])
    ref_value, ref_se = state_free_energy(*reference[state])
    residues = {f"delta_f_{k}_kT": figures[k][0] for k in RESIDUES}
    residues.update({f"delta_f_{k}_err_kT": figures[k][1] for k in RESIDUES})
    return row(method, value, se, (ref_value, ref_se or 0.0), seconds, target_evals, model_evals,
               populations={s: figures[s][0] for s in STATES}, empty_runs=figures["empty"][state], **residues, **extra)


def run_biased_md(args, work: Path) -> tuple[dict, float, int]:
    bias = md.Metadynamics("phi1+phi2+phi3", deposition_ps=args.deposition_ps)
    equilibration_ns = 0.001 if args.quick else 0.1
    dirs, seconds = [], 0.0
    with systems.load(args.system) as target:
        for k in range(args.biased_runs):
            out = work / f"biased-{k}"
            start = time.perf_counter()
            md.run_md(target, args.biased_ns, out, seed=args.seed + 1 + k, chunk_frames=500, bias=bias,
                      equilibration_ps=1000 * equilibration_ns)
            seconds += time.perf_counter() - start
            dirs.append(out)
    steps = round(args.biased_runs * (args.biased_ns + args.deposition_ps / 1000 + equilibration_ns) * 1e6
                  / md.DEFAULT_TIMESTEP_FS)
    return figures_of_runs(dirs), seconds, steps


def run_mcmc(space, args) -> tuple[dict, float, int]:
    per_set, seconds, evaluations = [], 0.0, 0
    with systems.load(args.system) as target:
        fast = fast_target(target, compile=not args.quick)
        cvs = systems.collective_variables(args.system)
        regions = {r.name: r for r in cvs.basins}
        for k in range(args.runs):
            chains = mcmc_alone(space, target, args.particles, args.mcmc_rounds, mixing=MixingSettings(),
                                target_energy=fast.reduced_energy, seed=args.seed + 1000 + k)
            x = torch.from_numpy(chains.kept().reshape(-1, target.n_atoms, 3)).to(torch.float64)
            values = cv_values(x, target.topology, cvs)
            per_set.append({s: float(regions[s].contains(values).mean()) for s in STATES})
            seconds += chains.seconds
            evaluations += chains.target_evaluations
    return figures_of_sets(per_set), seconds, evaluations


def run_generator(model: Path, settings, args, work: Path, label: str) -> tuple[dict, float, dict, list[Path]]:
    with systems.load(args.system) as target:
        start = time.perf_counter()
        report = sample_model(target, model, work / label.replace(" ", "-").replace(",", ""), particles=args.particles,
                              runs=args.runs, settings=settings, seed=args.seed, compile=not args.quick)
        seconds = time.perf_counter() - start
    return figures_of_runs(list(report.run_dirs)), seconds, report.summary, list(report.run_dirs)


def lineages_in_state(dirs: list[Path], state: str) -> list[float]:
    """Per run, the effective lineages carrying the declared basin ``state`` (boltzgen.analysis.lineages):
    below about ten, a run's estimate of the state rests on a few draws and runs are skewed."""
    out = []
    for run in map(load_run, dirs):
        basin = next(b for b in run.cvs.basins if b.name == state)
        out.append(round(effective_lineages(run.origins, run.log_weights, basin.contains(run.cv_values)), 2))
    return out


def generator_settings(levels: int | None, level_moves: int | None) -> SampleSettings:
    """The generator arms' SampleSettings: the defaults, with the levels and moves per level given (None: default)."""
    settings = SampleSettings()
    if levels is not None:
        settings = replace(settings, n_levels=levels)
    if level_moves is not None:
        settings = replace(settings, level_moves=level_moves)
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs that only check the script")
    parser.add_argument("--system", choices=SYSTEMS, default=SYSTEMS[0], help="vacuum (default) or OBC implicit")
    parser.add_argument("--model", default=None, help="an internal-coordinate model of alanine-tetrapeptide "
                                                      "(without it the generator arms are left out)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--particles", type=int, default=1000, help="particles per SMC run and chains per MCMC set")
    parser.add_argument("--mcmc-rounds", type=int, default=2000)
    parser.add_argument("--biased-runs", type=int, default=4)
    parser.add_argument("--biased-ns", type=float, default=10.0)
    parser.add_argument("--deposition-ps", type=float, default=1000.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, default=None,
                        help=f"generator arms: reverse-diffusion levels (default {SampleSettings().n_levels})")
    parser.add_argument("--level-moves", type=int, default=None,
                        help=f"generator arms: MALA moves per level (default {SampleSettings().level_moves})")
    parser.add_argument("--record", metavar="FILE", default=None,
                        help="also append the figures as one JSON line to FILE (benchmarks/_record.py)")
    args = parser.parse_args(argv)
    defaults = generator_settings(args.levels, args.level_moves)
    if args.quick:
        args.runs, args.particles, args.mcmc_rounds = 2, 16, 40
        args.biased_runs, args.biased_ns, args.deposition_ps = 2, 0.01, 5.0
        defaults = replace(defaults, n_levels=args.levels or 8,
                           mixing=replace(defaults.mixing, moves=min(defaults.mixing.moves, 10)))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        biased, biased_seconds, biased_steps = run_biased_md(args, work)
        reference, source = reference_figures(args.system, biased)
        state = rarest_state(reference)
        rows = [arm("biased MD", biased, state, reference, biased_seconds, biased_steps, runs=args.biased_runs,
                    ns=args.biased_runs * (args.biased_ns + args.deposition_ps / 1000))]
        if args.model:
            space = load_model_file(args.model).space
        else:
            with systems.load(args.system) as target:
                space = MolecularSpace.fit(torch.as_tensor(np.asarray(target.positions))[None])
        mcmc, seconds, evaluations = run_mcmc(space, args)
        rows.append(arm("MCMC alone", mcmc, state, reference, seconds, evaluations, runs=args.runs,
                        chains=args.particles, rounds=args.mcmc_rounds))
        for label, settings in (("generator", defaults),
                                ("generator, no mixing", replace(defaults, mixing=replace(defaults.mixing, moves=0)))):
            if not args.model:
                break
            figures, seconds, s, dirs = run_generator(Path(args.model), settings, args, work, label)
            rows.append(arm(label, figures, state, reference, seconds, s["target_evaluations"], s["model_evaluations"],
                            runs=args.runs, particles=args.particles, bridge_ess_fraction=s["bridge_ess_fraction"],
                            lineages=s["lineages"], tilt=s["tilt_applied"],
                            state_lineages=lineages_in_state(dirs, state)))
    found = print_table(rows, [
        f"cost to a standard error of {TARGET_SE_KT} kT on F({state}) = -ln P({state}), the rarest phi-sign state "
        f"with >= {MIN_MASS:.0%} of the mass; {args.threads} torch threads (MD: OpenMM, one core)",
        f"reference: {source}; z = (F - reference) / combined s.e.",
        *([] if args.model else ["generator arms left out: no --model given"])])
    for r in rows:
        if r["empty_runs"]:
            print(f"  {r['method']}: {r['empty_runs']} of {r['runs']} runs have no mass in {state}: its s.e. (and cost "
                  "to 0.1 kT) from the delta method is unreliable; more particles or runs are needed")
    for r in rows:
        if "state_lineages" in r:
            print(f"  {r['method']}: effective lineages carrying {state} per run {r['state_lineages']}"
                  f"{' (tilt applied)' if r['tilt'] else ''}; below {FEW_LINEAGES:g}, per-run estimates are skewed "
                  "and a few runs' error bar may be too small")
    for r in rows:
        print(f"  {r['method']}: " + ", ".join(
            f"dF(phi{i}>0) {_pm(r[f'delta_f_phi{i}_positive_kT'], r[f'delta_f_phi{i}_positive_err_kT'])}"
            for i in (1, 2, 3)))
    print(json.dumps({"system": args.system, "target_se_kT": TARGET_SE_KT, "quick": args.quick, "state": state,
                      "reference": source,
                      "rows": rows, "ratios": found}))
    if args.record:
        append_record(args.record, "tetrapeptide_vs_md", command_line(__file__, argv),
                      {"system": args.system, "state": state, "generator_levels": defaults.n_levels,
                       "generator_level_moves": defaults.level_moves, **record_figures(rows, found)},
                      "--quick: checks the script, figures meaningless" if args.quick else "")


def _pm(value, se) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + ("" if se is None else f" +- {se:.3f}")


if __name__ == "__main__":
    main()
