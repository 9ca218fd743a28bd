"""The force field's view of a model's own samples at t_min, over independent seeds: the reverse direction.

Held-out MD frames show how well a model fits where the data are; SMC's bridge meets the model
where *it* puts mass. This runs the model's levels alone with the sampler's defaults
(:func:`boltzgen.sampling.model_samples`, no force field inside) and scores the weighted particles
(:func:`boltzgen.analysis.model_quality.own_sample_quality`): the one-step bridge ESS of a run, the
spread of u - E, the share of samples the force field rates more than 20 kT worse than typical, and
the model's own population of every declared state (e.g. P(phi_i > 0)) beside the shipped
reference's where there is one: SMC lowers a basin's mass that the model overstates, but it finds
few lineages for one that the model starves. Each figure is the mean over ``--seeds`` with its
standard error over them, and the one-step ESS of every seed is printed too: the ESS of heavy-tailed
weights jumps between seeds (for one tetrapeptide model seeds 1-3 gave 0.042 +- 0.002 and four other
seeds 0.017 +- 0.005), so a few seeds understate its spread; the default is six.

Run:  python benchmarks/own_samples.py SYSTEM [--model MODEL] [--samples 1000] [--seeds 1 2 3 4 5 6]
          [--threads 1] [--record FILE] [--name own_samples] [--note TEXT]
The last line is one JSON object with all figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _record import append_record, command_line

from boltzgen import systems
from boltzgen.analysis.model_quality import own_sample_quality
from boltzgen.analysis.runs import state_populations
from boltzgen.models import load_model_file
from boltzgen.pipeline.sample import shipped_reference
from boltzgen.sampling import model_samples


def mean_and_error(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error over independent seeds (None with one seed)."""
    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None
    return statistics.fmean(values), error


def measure(system: str, model: str | None, samples: int, seeds: list[int]) -> dict:
    """The figures of :func:`own_sample_quality` per seed, reduced over the seeds (mean, standard error)."""
    model_path = systems.resolve_model(model, fallbacks=(system,))
    loaded = load_model_file(model_path)
    start = time.perf_counter()
    per_seed, populations = [], []
    cvs = systems.collective_variables(system)
    with systems.load(system) as target:
        for seed in seeds:
            drawn = model_samples(loaded, target.topology, samples, seed=seed)
            per_seed.append(own_sample_quality(loaded.model, loaded.space, drawn.positions,
                                               target.reduced_energy(drawn.positions), drawn.log_weights))
            populations.append(state_populations(drawn.positions, target.topology, cvs, drawn.log_weights))
    figures = {"system": system, "model": str(model_path), "samples_per_seed": samples, "seeds": len(seeds)}
    series = {"one_step_ess_fraction": [q.one_step_ess_fraction for q in per_seed],
              "far_fraction": [q.far_fraction for q in per_seed],
              "delta_iqr_kT": [q.delta_quantiles_kT["75%"] - q.delta_quantiles_kT["25%"] for q in per_seed]}
    for key, values in series.items():
        figures[key], figures[f"{key}_err"] = mean_and_error(values)
    figures["one_step_ess_per_seed"] = ", ".join(f"{v:.4f}" for v in series["one_step_ess_fraction"])
    reference = shipped_reference(system) or {}
    for fe in cvs.free_energies:
        values = [p[fe.key] for p in populations]
        figures[f"own_p_{fe.key}"], figures[f"own_p_{fe.key}_err"] = mean_and_error(values)
        figures[f"own_p_{fe.key}_per_seed"] = ", ".join(f"{v:.4f}" for v in values)
        if f"p_{fe.key}" in reference:
            figures[f"reference_p_{fe.key}"] = reference[f"p_{fe.key}"]
    figures["seconds"] = time.perf_counter() - start
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", help="a named system (see `boltzgen systems`)")
    parser.add_argument("--model", default=None, help="a model file or folder (default: the system's shipped model)")
    parser.add_argument("--samples", type=int, default=1000, help="samples per seed (default 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6],
                        help="independent seeds (default 1-6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--record", metavar="FILE", default=None, help="append a result record to FILE")
    parser.add_argument("--name", default="own_samples", help="the record's name (default own_samples)")
    parser.add_argument("--note", default="", help="the record's note")
    args = parser.parse_args(argv)
    if args.system not in systems.names():
        parser.error(f"SYSTEM must be a named system ({', '.join(systems.names())}), got {args.system!r}")
    if args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct (errors are over independent seeds), got {args.seeds}")
    torch.set_num_threads(args.threads)
    try:
        figures = measure(args.system, args.model, args.samples, args.seeds)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps(rounded))
    if args.record:
        append_record(args.record, args.name, command_line("own_samples.py", argv), rounded, args.note)
    return figures


if __name__ == "__main__":
    main()
