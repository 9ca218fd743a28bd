"""SMC from a standard Gaussian to a Gaussian mixture with unequal weights and known log Z.

Two paths, each repeated over independent seeds:
  geometric  exp(-(1 - lam) |x|^2/2 - lam u(x)), lam: 0 -> 1 with adaptive steps;
  noised     a model-like path: the exact noised marginals p_t of the mixture (VP schedule),
             t = 1 -> t_min with adaptive levels (or --levels fixed ones), then a geometric bridge
             to u (a perfect diffusion EBM would give exactly this path).
The mixture: --modes means at distance --radius from the origin in random directions, widths
from --std-min to --std-max, weights proportional to 1, 2, ..., K, and log Z = 1.7.

Prints one table row per run, a summary per path, and as the last line one JSON object:
  logz_error     mean over repeats of (log Z estimate - exact log Z)      [geometric path]
  logz_std       standard deviation of the log Z estimates over repeats
  weight_error   largest |mean over repeats of a recovered mode weight - true weight|
  ess_fraction   mean final ESS / N
  seconds        mean wall time of one SMC run
plus the same figures for the noised path under "noised", and per-run mode-weight errors.

    python benchmarks/smc_gmm.py --dim 8 --modes 4 --particles 2000 --seed 0 --repeats 10

--record FILE also appends the figures as a result record (one JSON line, benchmarks/_record.py)
that benchmarks/make_docs.py renders into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from _record import append_record, command_line
from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.smc import HMC, MALA, GaussianProposal, diffusion_path, geometric_path, smc
from boltzgen.targets import GaussianMixture

LOG_Z = 1.7


def make_mixture(dim: int, modes: int, radius: float, std_min: float, std_max: float, seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(modes, dim, generator=g, dtype=torch.float64)
    means = radius * directions / directions.norm(dim=1, keepdim=True)
    stds = torch.linspace(std_min, std_max, modes, dtype=torch.float64)
    return GaussianMixture(means, stds=stds, weights=torch.arange(1.0, modes + 1), log_Z=LOG_Z)


def make_paths(gmm: GaussianMixture, cess: float, levels: int) -> dict:
    schedule = VPSchedule()
    times = (1.0, schedule.t_min) if levels == 0 else schedule.levels(levels)
    return {
        "geometric": geometric_path(lambda x: 0.5 * (x**2).sum(1), gmm.reduced_energy, cess_target=cess),
        "noised": diffusion_path(lambda t, x: -gmm.noised_log_prob(schedule, t, x), times, gmm.reduced_energy,
                                 cess_target=cess, adaptive_times=levels == 0),
    }


def run_once(path, gmm, args, seed: int) -> dict:
    kernel = MALA(step_size=0.05) if args.kernel == "mala" else HMC(step_size=0.05, n_leapfrog=5)
    start = time.perf_counter()
    r = smc(path, GaussianProposal(args.dim), args.particles, kernel=kernel, n_moves=args.moves, seed=seed)
    seconds = time.perf_counter() - start
    # E_p[responsibility_k] = w_k exactly, so overlapping modes add no labelling error
    weights = r.expectation(torch.softmax(gmm.component_log_probs(r.particles), dim=1))
    return {
        "logz_error": r.log_z - gmm.log_Z,
        "weights": weights,
        "ess_fraction": r.ess_fraction,
        "steps": len(r.diagnostics),
        "resamplings": sum(s.resampled for s in r.diagnostics),
        "ancestors": r.diagnostics[-1].n_ancestors,
        "min_ess": min(s.ess_fraction for s in r.diagnostics),
        "seconds": seconds,
    }


def summarise(runs: list[dict], gmm: GaussianMixture) -> dict:
    errors = [r["logz_error"] for r in runs]
    weights = torch.stack([r["weights"] for r in runs])
    return {
        "logz_error": statistics.fmean(errors),
        "logz_std": statistics.stdev(errors) if len(errors) > 1 else float("nan"),
        "logz_std_error": statistics.stdev(errors) / math.sqrt(len(errors)) if len(errors) > 1 else float("nan"),
        "weight_error": float((weights.mean(0) - gmm.weights).abs().max()),
        "weight_error_per_run": statistics.fmean(float((w - gmm.weights).abs().max()) for w in weights),
        "ess_fraction": statistics.fmean(r["ess_fraction"] for r in runs),
        "steps": statistics.fmean(r["steps"] for r in runs),
        "seconds": statistics.fmean(r["seconds"] for r in runs),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--modes", type=int, default=4)
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="seeds the mixture; run r uses seed 1000 * seed + r")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--moves", type=int, default=10, help="MCMC moves per SMC step")
    p.add_argument("--kernel", choices=["mala", "hmc"], default="mala")
    p.add_argument("--cess", type=float, default=0.9, help="conditional ESS fraction per adaptive step")
    p.add_argument("--levels", type=int, default=0, help="fixed diffusion levels for the noised path (0: adaptive)")
    p.add_argument("--radius", type=float, default=3.0)
    p.add_argument("--std-min", type=float, default=0.5)
    p.add_argument("--std-max", type=float, default=0.5)
    p.add_argument("--record", metavar="FILE", default=None,
                   help="also append the figures as one JSON line to FILE (benchmarks/_record.py)")
    args = p.parse_args(argv)

    gmm = make_mixture(args.dim, args.modes, args.radius, args.std_min, args.std_max, args.seed)
    print(f"mixture: d={args.dim}, K={args.modes}, weights={[round(w, 3) for w in gmm.weights.tolist()]}, "
          f"radius={args.radius}, stds={args.std_min}..{args.std_max}, log Z={LOG_Z}; N={args.particles}, "
          f"{args.kernel} x{args.moves}/step, CESS target {args.cess}, {args.repeats} repeats")
    header = f"{'path':<10} {'run':>3} {'logZ err':>9} {'max|dw|':>8} {'ESS/N':>6} {'minESS':>6} {'steps':>5} {'resamp':>6} {'anc':>5} {'sec':>6}"
    print(header)
    summaries = {}
    for name, path in make_paths(gmm, args.cess, args.levels).items():
        runs = []
        for r in range(args.repeats):
            out = run_once(path, gmm, args, seed=1000 * args.seed + r)
            runs.append(out)
            dw = float((out["weights"] - gmm.weights).abs().max())
            print(f"{name:<10} {r:>3} {out['logz_error']:>+9.4f} {dw:>8.4f} {out['ess_fraction']:>6.3f} "
                  f"{out['min_ess']:>6.3f} {out['steps']:>5} {out['resamplings']:>6} {out['ancestors']:>5} {out['seconds']:>6.2f}")
        summaries[name] = summarise(runs, gmm)
    print()
    print(f"{'path':<10} {'logZ err (mean +- se)':>22} {'sd':>7} {'w err':>7} {'w err/run':>9} {'ESS/N':>6} {'steps':>6} {'sec/run':>8}")
    for name, s in summaries.items():
        print(f"{name:<10} {s['logz_error']:>+12.4f} +- {s['logz_std_error']:<6.4f} {s['logz_std']:>7.4f} {s['weight_error']:>7.4f} "
              f"{s['weight_error_per_run']:>9.4f} {s['ess_fraction']:>6.3f} {s['steps']:>6.1f} {s['seconds']:>8.2f}")
    main_path = summaries["geometric"]
    result = {k: main_path[k] for k in ("logz_error", "logz_std", "weight_error", "ess_fraction", "seconds")}
    result.update(path="geometric", noised=summaries["noised"], geometric=main_path,
                  config={k: v for k, v in vars(args).items() if k != "record"})
    print(json.dumps(result))
    if args.record:
        figures = {}
        for name, summary in summaries.items():
            prefix = "" if name == "geometric" else f"{name}_"
            figures.update({f"{prefix}logz_error": summary["logz_error"], f"{prefix}logz_error_err": summary["logz_std_error"],
                            f"{prefix}logz_std": summary["logz_std"], f"{prefix}weight_error": summary["weight_error"],
                            f"{prefix}ess_fraction": summary["ess_fraction"], f"{prefix}seconds": summary["seconds"]})
        append_record(args.record, "smc_gmm", command_line(__file__, argv), figures,
                      "geometric path unprefixed, noised path prefixed; seconds per SMC run")


if __name__ == "__main__":
    main()
