"""Free energy between two states of alanine dipeptide (default: vacuum -> OBC implicit solvent) against BAR on MD.

boltzgen's two estimates (:func:`boltzgen.pipeline.free_energy_between`): the SMC bridge from the
generator's weighted samples of A to B, and the difference of the generator's log Z of each
state; each with an error over --runs independent runs. The reference is BAR (pymbar) on biased
MD of both states: given with --md-from/--md-to (``boltzgen md`` folders, paired run by run), or
made here with --reference-ns (phi metadynamics, --runs runs per state, 1 ns of deposition each).

Run:  python benchmarks/solvation_aldp.py [--from alanine-dipeptide] [--to alanine-dipeptide-implicit]
      [--particles 1000] [--runs 4] (--md-from DIR... --md-to DIR... | --reference-ns 5) [--quick]
--quick: seconds, to check the script (figures meaningless). The last line is one JSON object with
delta_f_kT, delta_f_err_kT, delta_f_log_z_kT, reference_kT, reference_err_kT, ess_fraction, seconds.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from boltzgen import systems
from boltzgen.pipeline import free_energy_between
from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="system_from", default="alanine-dipeptide")
    p.add_argument("--to", dest="system_to", default="alanine-dipeptide-implicit")
    p.add_argument("--model", default=None, help="model file or named system (default: --from's shipped model, else --to's)")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--md-from", nargs="+", default=None)
    p.add_argument("--md-to", nargs="+", default=None)
    p.add_argument("--reference-ns", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    return p.parse_args(argv)


def tiny_md(target, work, label: str, runs: int) -> list[Path]:
    """``runs`` runs of 2 ps of plain MD (--quick only)."""
    from boltzgen import md

    dirs = []
    for k in range(runs):
        folder = Path(work) / f"md-{label}-{k}"
        md.run_md(target, 0.002, folder, seed=k + 1, save_every_ps=0.25, chunk_frames=4, equilibration_ps=1.0)
        dirs.append(folder)
    return dirs


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    settings = SampleSettings()
    particles, runs, reference_ns = args.particles, args.runs, args.reference_ns
    if args.quick:
        settings = SampleSettings(n_levels=6, level_moves=1, bridge=BridgeSettings(moves=1), mixing=MixingSettings(moves=2))
        particles, runs = 12, 2
        reference_ns = None if args.md_from else 0.002
    model = systems.resolve_model(args.model, (args.system_from, args.system_to))
    md_from, md_to = args.md_from, args.md_to
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="boltzgen-solvation-") as work, \
            systems.load(args.system_from) as a, systems.load(args.system_to) as b:
        if args.quick and md_from is None:  # a tiny MD reference, made here
            md_from, md_to = tiny_md(a, work, "from", runs), tiny_md(b, work, "to", runs)
            reference_ns = None
        report = free_energy_between(a, b, model, Path(work) / "fe", particles=particles, runs=runs,
                                     settings=settings, seed=args.seed, md_from=md_from, md_to=md_to,
                                     reference_ns=reference_ns, compile=not args.quick)
    s, ref = report.summary, report.summary["reference"] or {}
    result = {"from": args.system_from, "to": args.system_to, "n_runs": runs, "n_particles_per_run": particles,
              "delta_f_kT": s["delta_f_kT"], "delta_f_err_kT": s["delta_f_err_kT"],
              "delta_f_log_z_kT": s["delta_f_log_z_kT"], "delta_f_log_z_err_kT": s["delta_f_log_z_err_kT"],
              "reference_kT": ref.get("delta_f_kT"), "reference_err_kT": ref.get("delta_f_err_kT"),
              "reference_method": ref.get("method"), "ess_fraction": s["ess_fraction"],
              "min_ess_fraction": s["min_ess_fraction"], "target_evaluations": s["target_evaluations"],
              "seconds": time.perf_counter() - start, "quick": args.quick}

    def pm(v, e):
        return "n/a" if v is None else f"{v:8.3f}" + (f" +- {e:.3f}" if e is not None else "")

    print(f"F({args.system_to}) - F({args.system_from}), kT ({runs} runs x {particles} particles)")
    print(f"  SMC bridge          {pm(result['delta_f_kT'], result['delta_f_err_kT'])}")
    print(f"  log Z difference    {pm(result['delta_f_log_z_kT'], result['delta_f_log_z_err_kT'])}")
    print(f"  BAR on MD           {pm(result['reference_kT'], result['reference_err_kT'])}")
    print(f"  bridge ESS/N        final {result['ess_fraction']:.3f}, lowest {result['min_ess_fraction']:.3f}")
    print(f"  seconds             {result['seconds']:.0f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
