"""Configurations per second of the energy paths for alanine dipeptide (issue 3, item 5).

Compares, for the vacuum and the implicit-solvent (GBSAOBCForce) set-ups, at batch sizes 256 and
4096, energies only and energies + forces:

  (a) loop     a plain per-configuration OpenMM loop: one Reference-platform Context,
               setPositions + getState(energy[, forces]) per configuration;
  (b) pool     boltzgen.targets.OpenMMTarget with a pool of worker processes;
  (c) torch    the batched torch force field in float64 (TorchForceFieldTarget, torch.compile'd,
               chunks on --ff-threads threads; forces through torch.autograd.grad of
               reduced_energy): the headline figures;
      torch_1t the same on one thread;
      torch32  the same in float32 (dtype=torch.float32; results still returned as float64), an
               optional faster mode: its largest deviation from OpenMM on these configurations is
               printed and reported (``float32_max_abs_error``), since it is not float64-exact;
      eager    the same without torch.compile;
      autograd the reference path: one autograd graph of TorchForceField.forward.

Every figure is the best of --repeats timed runs, each of back-to-back calls covering at least
--min-configs configurations after one warm-up call. The methods take turns within each repeat,
so that they see the same spells of a shared machine (the best run is the least disturbed one;
on this virtual machine an idle core also takes a while to come back to speed). The machine load (/proc/loadavg) before and after is printed. Compilation time is
reported separately and not counted in the throughput.

Run:  python benchmarks/energy_throughput.py [--threads 1] [--ff-threads 2] [--workers 2] [--repeats 3]
The last line is one JSON object with all figures; ``vacuum_torch_vs_loop`` and
``implicit_torch_vs_pool`` are the configs/s ratios at batch 4096, energies and forces, of the
float64 torch force field (``torch_precision``); ``vacuum_torch32_vs_loop`` and
``implicit_torch32_vs_pool`` are the same ratios in float32.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import openmm
import openmm.unit as unit
import torch

from boltzgen import systems
from boltzgen.targets import TorchForceField, torch_target

SYSTEMS = {"vacuum": "alanine-dipeptide", "implicit": "alanine-dipeptide-implicit"}
MODES = ("energy", "energy_forces")


def load_average() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def timed_rate(run, n: int, min_configs: int = 32768) -> float:
    """Configurations per second of ``run()`` (which evaluates n configurations).

    After one warm-up call, ``run`` is called back to back often enough to cover at least
    ``min_configs`` configurations.
    """
    calls = max(1, min_configs // n)
    run()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return calls * n / (time.perf_counter() - start)


def openmm_loop(system: openmm.System):
    """(a): evaluate configurations one by one in a single Reference Context."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))

    def run(x: np.ndarray, forces: bool):
        energies = np.empty(len(x))
        f = np.empty_like(x) if forces else None
        for i, xi in enumerate(x):
            context.setPositions(xi)
            state = context.getState(getEnergy=True, getForces=forces)
            energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if forces:
                f[i] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return energies, f

    return run


def target_runner(target):
    """(b), (c): a target's reduced_energy, with forces through torch.autograd.grad."""

    def run(x: torch.Tensor, forces: bool):
        if not forces:
            return target.reduced_energy(x), None
        x = x.clone().requires_grad_(True)
        u = target.reduced_energy(x)
        (grad,) = torch.autograd.grad(u.sum(), x)
        return u, -grad

    return run


def pool_runner(target):
    """(b): the worker pool's own energy_and_forces (its autograd backward uses the same call)."""

    def run(x: torch.Tensor, forces: bool):
        return target.energy_and_forces(x) if forces else (target.reduced_energy(x), None)

    return run


def autograd_runner(forcefield: TorchForceField):
    """The reference path: one autograd graph over the whole batch."""

    def run(x: torch.Tensor, forces: bool):
        if not forces:
            with torch.no_grad():
                return forcefield(x), None
        x = x.clone().requires_grad_(True)
        energy = forcefield(x)
        (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy, -grad

    return run


def float32_error(loop, target32, x: np.ndarray) -> dict:
    """Largest |E - E_OpenMM| (kJ/mol) and |F - F_OpenMM| (kJ/mol/nm) of the float32 target on x."""
    energy_ref, forces_ref = loop(x, True)
    u, forces = target32.energy_and_forces(torch.from_numpy(x))
    kT = target32.kT  # the target works in kT; OpenMM in kJ/mol
    return {"energy_kj_mol": float(np.abs(u.numpy() * kT - energy_ref).max()),
            "forces_kj_mol_nm": float(np.abs(forces.numpy() * kT - forces_ref).max()),
            "max_abs_forces_kj_mol_nm": float(np.abs(forces_ref).max())}


def configurations(target, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return target.positions[None] + 0.015 * rng.standard_normal((n, *target.positions.shape))


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    ff_threads = args.ff_threads or len(os.sched_getaffinity(0))  # the force field's default
    results: dict = {"threads": args.threads, "ff_threads": ff_threads, "workers": args.workers,
                     "repeats": args.repeats, "min_configs": args.min_configs,
                     "load_before": load_average(), "cpus": os.cpu_count(), "torch": torch.__version__,
                     "openmm": openmm.__version__, "configs_per_s": {}, "compile_s": {},
                     "float32_max_abs_error": {}}
    for label, name in SYSTEMS.items():
        reference = systems.load(name)
        pool = systems.load(name, n_workers=args.workers)
        fast = torch_target(reference, compile=True, threads=ff_threads)
        fast_1t = torch_target(reference, compile=True, threads=1)
        fast32 = torch_target(reference, compile=True, dtype=torch.float32, threads=ff_threads)
        eager = torch_target(reference, compile=False)
        x_warm = torch.from_numpy(configurations(reference, 8, seed=0))
        pool.energy_and_forces(x_warm)  # start the workers
        start = time.perf_counter()
        for forces in (False, True):  # compile both kernels before timing
            target_runner(fast)(x_warm, forces)
            target_runner(fast_1t)(x_warm, forces)
        results["compile_s"][label] = round(time.perf_counter() - start, 1)
        for forces in (False, True):
            target_runner(fast32)(x_warm, forces)
        loop = openmm_loop(reference.system)
        results["float32_max_abs_error"][label] = float32_error(loop, fast32, configurations(reference, 256, seed=1))
        runners = {
            "loop": (loop, True),
            "pool": (pool_runner(pool), False),
            "torch": (target_runner(fast), False),
            "torch_1t": (target_runner(fast_1t), False),
            "torch32": (target_runner(fast32), False),
            "eager": (target_runner(eager), False),
            "autograd": (autograd_runner(eager.forcefield), False),
        }
        rates = results["configs_per_s"][label] = {}
        for batch in args.batches:
            x_np = configurations(reference, batch, seed=batch)
            x = torch.from_numpy(x_np)
            # Methods take turns within each repeat, so that all see the same spells of a
            # shared machine; the best of the repeats is kept for each.
            samples = {method: {mode: [] for mode in MODES} for method in runners}
            for _ in range(args.repeats):
                for method, (run, wants_numpy) in runners.items():
                    data = x_np if wants_numpy else x
                    for mode in MODES:
                        samples[method][mode].append(
                            timed_rate(lambda: run(data, mode == "energy_forces"), batch, args.min_configs))
            rates[str(batch)] = {method: {mode: round(max(v)) for mode, v in by_mode.items()}
                                 for method, by_mode in samples.items()}
        pool.close()
    results["load_after"] = load_average()
    return results


def ratios(results: dict) -> dict:
    """Ratios of configs/s: every method against the loop, and torch against the pool."""
    out = {}
    for label, by_batch in results["configs_per_s"].items():
        for batch, by_method in by_batch.items():
            for method, by_mode in by_method.items():
                for mode, rate in by_mode.items():
                    out[f"{label}_{batch}_{method}_vs_loop_{mode}"] = round(rate / by_method["loop"][mode], 2)
            for method in ("torch", "torch32"):
                for mode in MODES:
                    out[f"{label}_{batch}_{method}_vs_pool_{mode}"] = round(
                        by_method[method][mode] / by_method["pool"][mode], 2)
    return out


def table(results: dict, r: dict) -> str:
    lines = [f"threads={results['threads']} ff_threads={results['ff_threads']} workers={results['workers']} "
             f"repeats={results['repeats']} "
             f"load before={results['load_before']} after={results['load_after']}",
             f"compile seconds (not counted): {results['compile_s']}",
             "torch = float64 (headline); torch32 = float32, largest deviation from OpenMM: "
             + "; ".join(f"{label} |dE| {e['energy_kj_mol']:.1e} kJ/mol, |dF| {e['forces_kj_mol_nm']:.1e} kJ/mol/nm"
                         f" (|F| up to {e['max_abs_forces_kj_mol_nm']:.0f})"
                         for label, e in results["float32_max_abs_error"].items()),
             f"{'system':9} {'batch':>5} {'method':9} {'E conf/s':>11} {'E+F conf/s':>11} {'E x loop':>9} {'E+F x loop':>10}"]
    for label, by_batch in results["configs_per_s"].items():
        for batch, by_method in by_batch.items():
            for method, by_mode in by_method.items():
                lines.append(
                    f"{label:9} {batch:>5} {method:9} {by_mode['energy']:>11,} {by_mode['energy_forces']:>11,} "
                    f"{r[f'{label}_{batch}_{method}_vs_loop_energy']:>9.2f} "
                    f"{r[f'{label}_{batch}_{method}_vs_loop_energy_forces']:>10.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a 2-core machine shared with other jobs, "
                             "2 threads made small torch operations several times slower)")
    parser.add_argument("--ff-threads", type=int, default=None,
                        help="threads of the compiled torch force field ('torch', 'torch32'; default: "
                             "one per available core, as the force field's own default)")
    parser.add_argument("--workers", type=int, default=2, help="OpenMMTarget pool workers (default 2)")
    parser.add_argument("--min-configs", type=int, default=32768,
                        help="configurations per timed run (back-to-back calls; default 32768)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best is kept")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    args = parser.parse_args()
    results = measure(args)
    r = ratios(results)
    print(table(results, r))
    biggest = str(max(args.batches))
    summary = {
        "torch_precision": "float64",
        "vacuum_torch_vs_loop": r[f"vacuum_{biggest}_torch_vs_loop_energy_forces"],
        "implicit_torch_vs_pool": r[f"implicit_{biggest}_torch_vs_pool_energy_forces"],
        "vacuum_torch_vs_loop_energy": r[f"vacuum_{biggest}_torch_vs_loop_energy"],
        "implicit_torch_vs_pool_energy": r[f"implicit_{biggest}_torch_vs_pool_energy"],
        "implicit_torch_vs_loop": r[f"implicit_{biggest}_torch_vs_loop_energy_forces"],
        "vacuum_torch_vs_pool": r[f"vacuum_{biggest}_torch_vs_pool_energy_forces"],
        "vacuum_torch_1thread_vs_loop": r[f"vacuum_{biggest}_torch_1t_vs_loop_energy_forces"],
        "vacuum_torch32_vs_loop": r[f"vacuum_{biggest}_torch32_vs_loop_energy_forces"],
        "implicit_torch32_vs_pool": r[f"implicit_{biggest}_torch32_vs_pool_energy_forces"],
        "float32_max_abs_error": results["float32_max_abs_error"],
    }
    print(json.dumps({**summary, **results, "ratios": r}))


if __name__ == "__main__":
    main()
