"""The exact kernel alone from both sides of the phi barrier: an MD-free reference for dF(phi > 0).

The generator's mixing kernel (MALA + torsion moves in the shipped model's internal coordinates,
exact Metropolis corrections, no model) samples exp(-u) exactly once relaxed, with no time-step
error. Two kinds of independent chain sets, seeded apart:
  * "poor": every chain starts from the structure (phi = psi = 180 degrees, phi < 0);
  * "rich": half the chains start from MD frames with phi > 0, half from frames with phi < 0
    (--frames: any MD run folder of the system that visits phi > 0).
Rule fixed in advance: snapshots every --block rounds, the first half of the snapshots dropped,
P(phi > 0) of a set = the mean over its kept snapshots, dF = -ln(P / (1 - P)) per set, mean and
standard error over the sets of each side; the two sides are pooled only if they agree within 2
combined standard errors. The relaxation time is read off 500-round block means of the traces: the
first block from which the poor and rich sides agree in every later block (Bonferroni bound at
family-wise 5 %, see relaxation_rounds).

Run:  python benchmarks/kernel_reference.py --frames DIR [--system alanine-dipeptide] [--chains 1000]
      [--rounds 2000] [--sets 4] [--threads 2] [--record FILE]
The last line is one JSON object with all figures; --record FILE appends them as a result record.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from statistics import NormalDist

import numpy as np
import torch

from _record import append_record, command_line
from boltzgen import systems
from boltzgen.analysis import phi_psi
from boltzgen.analysis.free_energy import mean_and_error
from boltzgen.baselines import mcmc_alone
from boltzgen.io.md_runs import load_trajectory
from boltzgen.models import load_model_file
from boltzgen.pipeline import fast_target
from boltzgen.sampling import MixingSettings


def phi_positive_trace(snapshots: np.ndarray, topology) -> np.ndarray:
    """(n_snapshots,) fraction of chains with phi > 0 in each snapshot."""
    return np.array([float((phi_psi(torch.from_numpy(s.astype(np.float64)), topology)[:, 0, 0] > 0).double().mean())
                     for s in snapshots])


def rich_start(frames: torch.Tensor, phi: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n starting positions: half drawn from the frames with phi > 0, half from those with phi < 0."""
    pos, neg = frames[phi > 0], frames[phi < 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("--frames must hold frames on both sides of phi = 0")
    i = torch.randint(len(pos), (n // 2,), generator=generator)
    j = torch.randint(len(neg), (n - n // 2,), generator=generator)
    return torch.cat([pos[i], neg[j]])


def relaxation_rounds(poor: np.ndarray, rich: np.ndarray, rounds: np.ndarray, block_rounds: int = 500,
                      family_error: float = 0.05) -> float | None:
    """Rounds after which the two sides agree for good, read off block means.

    poor, rich: (n_sets, n_snapshots) P(phi > 0) of each set at each snapshot; rounds: (n_snapshots,)
    the round of each snapshot. The snapshots are cut into consecutive blocks of block_rounds rounds;
    in each block every set's mean is taken, then each side's mean and standard error over its sets,
    and z = |poor - rich| / combined s.e. The answer is the start of the first block from which every
    later block, at least the last quarter of them, has z within the Bonferroni bound for those m
    blocks at family-wise error family_error (two-sided). Blocks, not single snapshots: one snapshot
    of a thousand chains fluctuates too much to stay within 2 s.e. of the other side sixty times over.
    None if no block qualifies (not relaxed within the run).
    """
    block = (np.asarray(rounds) - 1) // block_rounds
    starts = np.unique(block)
    z = [_block_z(poor[:, block == b].mean(axis=1), rich[:, block == b].mean(axis=1)) for b in starts]
    n = len(starts)
    for k in range(n - max(1, math.ceil(n / 4)) + 1):
        bound = NormalDist().inv_cdf(1 - family_error / (2 * (n - k)))
        if all(x <= bound for x in z[k:]):
            return float(starts[k] * block_rounds)
    return None


def _block_z(poor: np.ndarray, rich: np.ndarray) -> float:
    """|mean difference| / combined standard error of two sides' (n_sets,) block means (inf with one
    set on a side: no error bar, so no claim of agreement)."""
    (mean_poor, se_poor), (mean_rich, se_rich) = mean_and_error(poor), mean_and_error(rich)
    if se_poor is None or se_rich is None:
        return math.inf
    diff, se = abs(mean_poor - mean_rich), math.hypot(se_poor, se_rich)
    if se == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / se


def side_figures(estimates: dict) -> dict:
    """dF of each side (mean and s.e. over its sets; None where a set never or always had phi > 0), their
    difference, whether they agree within 2 combined s.e., and the pooled dF when they do."""
    out = {}
    for side, values in estimates.items():
        ok = all(math.isfinite(v) for v in values)
        mean, err = mean_and_error(values) if ok else (None, None)
        out[f"dF_{side}_kT"], out[f"dF_{side}_kT_err"] = mean, err
    if None in out.values():
        return {**out, "sides_agree": None}
    diff = out["dF_rich_kT"] - out["dF_poor_kT"]
    diff_err = math.hypot(out["dF_rich_kT_err"], out["dF_poor_kT_err"])
    out.update({"rich_minus_poor_kT": diff, "rich_minus_poor_kT_err": diff_err,
                "sides_agree": bool(abs(diff) <= 2 * diff_err)})
    if out["sides_agree"]:
        out["dF_pooled_kT"], out["dF_pooled_kT_err"] = mean_and_error(estimates["poor"] + estimates["rich"])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", required=True, help="an MD run folder of the system with frames on both sides")
    parser.add_argument("--system", default="alanine-dipeptide")
    parser.add_argument("--model", default=None, help="the model file whose coordinate space the kernel moves in "
                                                       "(default: the system's shipped model)")
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--sets", type=int, default=4, help="independent chain sets per side")
    parser.add_argument("--block", type=int, default=50, help="rounds between snapshots")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--no-compile", action="store_true", help="eager torch force field (for quick checks)")
    parser.add_argument("--record", metavar="FILE", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or str(systems.shipped_model(args.system.removesuffix("-implicit")))
    space = load_model_file(model).space
    mixing = MixingSettings(block=args.block)
    traces, estimates, seconds, evaluations = {"poor": [], "rich": []}, {"poor": [], "rich": []}, 0.0, 0
    with systems.load(args.system) as target:
        fast = fast_target(target, compile=not args.no_compile)
        frames = torch.from_numpy(load_trajectory(args.frames).xyz.astype(np.float64))
        phi = phi_psi(frames, target.topology)[:, 0, 0]
        generator = torch.Generator().manual_seed(args.seed)
        for side in ("poor", "rich"):
            for k in range(args.sets):
                start = rich_start(frames, phi, args.chains, generator) if side == "rich" else None
                began = time.perf_counter()
                run = mcmc_alone(space, target, args.chains, args.rounds, mixing=mixing, start=start,
                                 target_energy=fast.reduced_energy, seed=args.seed + 100 * (side == "rich") + k)
                seconds += time.perf_counter() - began
                evaluations += run.target_evaluations
                trace = phi_positive_trace(run.snapshots, target.topology)
                p = float(trace[len(trace) // 2:].mean())
                traces[side].append(trace)
                estimates[side].append(-math.log(p / (1 - p)) if 0 < p < 1 else math.inf)
                print(json.dumps({"side": side, "set": k, "p_phi_positive": round(p, 5),
                                  "dF_kT": round(estimates[side][-1], 4) if 0 < p < 1 else None,
                                  "trace": [round(x, 4) for x in trace]}), flush=True)
        rounds = np.asarray(run.rounds)
    figures = {"system": args.system, "chains": args.chains, "rounds": args.rounds, "sets_per_side": args.sets}
    figures.update(side_figures(estimates))
    figures.update({"relaxation_rounds": relaxation_rounds(np.array(traces["poor"]), np.array(traces["rich"]), rounds),
                    "seconds": round(seconds, 1), "target_evaluations": evaluations})
    print(json.dumps(figures))
    if args.record:
        append_record(args.record, "kernel_reference", command_line(__file__, argv), figures,
                      "The exact kernel alone (no model, no time step) from both sides of the phi barrier; "
                      "first half of the snapshots dropped (rule fixed in advance); errors over independent sets.")


if __name__ == "__main__":
    main()
