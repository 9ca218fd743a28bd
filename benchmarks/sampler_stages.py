"""Where a run's error on a free energy comes from: the estimate after each stage of independent runs.

For one declared free energy of a molecule (default: its first, alanine dipeptide's dF(phi > 0 vs
phi < 0)), runs the generator's stages (initial draw, levels, bridge, mixing; boltzgen.sampling)
--runs times with the given settings and, at the end of each stage, reads the weighted estimate of
the state's population P from the particles. Printed per stage, over runs: the mean of P, its
relative spread (SD / mean: for equally weighted independent particles it would be
sqrt((1 - P) / (N P))), dF = -ln of the ratio of mean populations with its standard error, and how
many particles sit in the state and from how many t = 1 ancestors. At the levels' end the estimate
is of the model's own last level, not of the force field. Last: seconds per run and the cost to a
0.1 kT standard error, (per-run SD of dF)^2 x seconds / 0.1^2 (the force field is compiled before
the first run is timed).

This is how the sampler's defaults are chosen (docs/benchmarks.md: sampler_stages): each choice
(levels, torsion moves per level, resampling threshold) measured with the same seeds.

Run:  python benchmarks/sampler_stages.py [--system alanine-dipeptide] [--model alanine-dipeptide]
      [--runs 8] [--particles 1000] [--levels 100] [--level-torsions 4] [--resample-threshold 0.5]
      [--seed 1000] [--threads 2] [--record FILE] [--quick]
--quick: seconds, to check the script (figures meaningless). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np
import torch
from _arms import variance_log_se
from _record import append_record, command_line

from boltzgen import systems
from boltzgen.analysis import cv_values
from boltzgen.analysis.free_energy import mean_and_error
from boltzgen.models import load_model_file
from boltzgen.pipeline import fast_target
from boltzgen.sampling import MixingSettings, SampleSettings, run_stages
from boltzgen.smc.energy import CountedEnergy
from boltzgen.smc.engine import as_generator, empty_state, run


def stage_estimates(model_file, target, u, cvs, region, n_particles: int, settings: SampleSettings, seed: int) -> dict:
    """One run: {stage name: {"p", "n_in", "ancestors_in"}} read off the particles at each stage's end.

    ``u`` is the target's reduced energy on positions (n, n_atoms, 3) nm; p is the weighted population
    of ``region`` (a region of the molecule's ``cvs``), n_in the particles in it and ancestors_in
    their distinct t = 1 ancestors.
    """
    space = model_file.space
    ends = {}
    stages = run_stages(model_file, CountedEnergy(space.flat_energy(u)), CountedEnergy(model_file.model.energy),
                        target.topology, settings)
    run(empty_state(n_particles, model_file.model.data_mean.device), stages, as_generator(seed),
        on_step=lambda checkpoint: ends.__setitem__(stages[checkpoint.stage].name, checkpoint.state))
    out = {}
    for name, state in ends.items():
        x = space.to_positions(state.particles.x).detach().to(torch.float64).cpu()
        inside = region.contains(cv_values(x, target.topology, cvs))
        w = torch.softmax(state.log_weights.double(), 0).cpu().numpy()
        ancestors = state.origin.cpu().numpy()[inside]
        out[name] = {"p": float(w[inside].sum()), "n_in": int(inside.sum()), "ancestors_in": len(set(ancestors))}
    return out


def warm_up(u, target) -> None:
    """Compile the torch force field (energies, and energies with gradients) before the runs are timed."""
    x = torch.as_tensor(np.asarray(target.positions), dtype=torch.float64)[None].repeat(2, 1, 1).requires_grad_(True)
    u(x.detach())
    torch.autograd.grad(u(x).sum(), x)


def summarise(per_run: list[dict], seconds: list[float]) -> dict:
    """Per stage: mean P, relative SD over runs, dF with its s.e., particles and ancestors in the state;
    and the seconds per run with the cost to a 0.1 kT standard error of the final dF."""
    table = {}
    for name in per_run[0]:
        p = np.array([r[name]["p"] for r in per_run])
        mean, se = mean_and_error(p.tolist())
        relative_sd = se * math.sqrt(len(p)) / mean if se is not None and mean > 0 else None  # SD over runs / mean
        row = {"p": mean, "relative_sd": relative_sd, "p_per_run": p.tolist(),
               "n_in": float(np.mean([r[name]["n_in"] for r in per_run])),
               "ancestors_in": float(np.mean([r[name]["ancestors_in"] for r in per_run]))}
        if 0 < mean < 1:
            row["dF_kT"] = -math.log(mean / (1 - mean))
            row["dF_se_kT"] = None if se is None else se / (mean * (1 - mean))
        table[name] = row
    last = table[list(table)[-1]]
    per_run_sd = None if last.get("dF_se_kT") is None else last["dF_se_kT"] * math.sqrt(len(per_run))
    per_run_seconds = float(np.mean(seconds))
    cost = None if per_run_sd is None else per_run_sd**2 * per_run_seconds / 0.1**2
    log_se = variance_log_se(len(per_run))  # the cost is proportional to an estimated variance
    return {"stages": table, "seconds_per_run": per_run_seconds, "per_run_sd_kT": per_run_sd,
            "seconds_to_0.1": cost, "seconds_to_0.1_factor": None if log_se is None else math.exp(log_se)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = SampleSettings()
    parser.add_argument("--system", default="alanine-dipeptide")
    parser.add_argument("--model", default="alanine-dipeptide", help="a model file or a system's shipped model")
    parser.add_argument("--free-energy", default=None, help="the declared free energy's key (default: the first)")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--levels", type=int, default=d.n_levels)
    parser.add_argument("--level-torsions", type=int, default=d.level_torsions)
    parser.add_argument("--resample-threshold", type=float, default=d.resample_threshold)
    parser.add_argument("--mixing-moves", type=int, default=d.mixing.moves)
    parser.add_argument("--seed", type=int, default=1000, help="run r uses seed + r")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny runs that only check the script")
    parser.add_argument("--record", metavar="FILE", default=None, help="also append the figures as a result record")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.particles, args.levels, args.mixing_moves = 2, 16, 6, 4
    torch.set_num_threads(args.threads)
    settings = SampleSettings(n_levels=args.levels, level_torsions=args.level_torsions,
                              resample_threshold=args.resample_threshold,
                              mixing=replace(MixingSettings(), moves=args.mixing_moves))
    model_path = args.model if args.model.endswith(".pt") else systems.shipped_model(args.model)
    model_file = load_model_file(model_path)
    model_file.model.eval()
    cvs = systems.collective_variables(args.system)
    chosen = next((f for f in cvs.free_energies if args.free_energy in (None, f.key)), None)
    if chosen is None:
        raise SystemExit(f"--free-energy {args.free_energy!r}: {args.system} declares "
                         f"{', '.join(f.key for f in cvs.free_energies) or 'none'}")
    per_run, seconds = [], []
    with systems.load(args.system) as target:
        u = fast_target(target, compile=not args.quick).reduced_energy
        warm_up(u, target)
        for r in range(args.runs):
            start = time.perf_counter()
            per_run.append(stage_estimates(model_file, target, u, cvs, cvs.region(chosen.state), args.particles,
                                           settings, args.seed + r))
            seconds.append(time.perf_counter() - start)
    result = summarise(per_run, seconds)
    print(f"{args.system}: P({chosen.state}) after each stage, {args.runs} runs x {args.particles} particles; "
          f"{args.levels} levels, {args.level_torsions} torsion moves per level, resampling below ESS/N "
          f"{args.resample_threshold}, {args.mixing_moves} mixing rounds")
    for name, row in result["stages"].items():
        df = "" if row.get("dF_kT") is None else f"  dF {row['dF_kT']:.3f} +- {row['dF_se_kT']:.3f} kT"
        rel = "n/a" if row["relative_sd"] is None else f"{row['relative_sd']:.3f}"
        print(f"  {name:8s} P {row['p']:.4f}  relative SD {rel}{df}  in state {row['n_in']:.0f} particles "
              f"from {row['ancestors_in']:.0f} ancestors")
    cost, factor = result["seconds_to_0.1"], result["seconds_to_0.1_factor"]
    spread = "" if cost is None or factor is None else \
        f" (68 % range {cost / factor:.0f}-{cost * factor:.0f} s from {args.runs} runs)"
    print(f"  {result['seconds_per_run']:.1f} s per run; cost to a 0.1 kT standard error: "
          + ("n/a" if cost is None else f"{cost:.0f} s{spread}"))
    figures = {"runs": args.runs, "particles": args.particles, "levels": args.levels,
               "level_torsions": args.level_torsions, "resample_threshold": args.resample_threshold,
               "mixing_moves": args.mixing_moves, "seconds_per_run": round(result["seconds_per_run"], 1),
               "per_run_sd_kT": result["per_run_sd_kT"], "seconds_to_0.1": cost, "seconds_to_0.1_factor": factor}
    for name, row in result["stages"].items():
        figures[f"{name}_relative_sd"] = row["relative_sd"]
        if row.get("dF_kT") is not None:
            figures[f"{name}_dF_kT"], figures[f"{name}_dF_kT_err"] = row["dF_kT"], row["dF_se_kT"]
    if args.record:
        append_record(args.record, "sampler_stages", command_line("sampler_stages.py", argv), figures,
                      note="figures meaningless (--quick)" if args.quick else f"{args.system}, P({chosen.state})")
    print(json.dumps({"figures": figures, "stages": result["stages"]}))


if __name__ == "__main__":
    main()
