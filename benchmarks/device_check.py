"""One short check of a machine with an accelerator (runs on the CPU too): throughput and agreement.

    python benchmarks/device_check.py                 # cuda when torch sees a GPU, else cpu
    python benchmarks/device_check.py --device cpu --quick

Four figures, each on --device:

1. training: steps per second of the internal-coordinate model (``InternalEnergy``, default size,
   256 wide, 3 blocks) on random data of alanine dipeptide's dimensions (41 bonds and angles, 19
   dihedrals), DSM steps and DSM + DiffCLF steps (4 levels), batch --batch;
2. levels: SMC particles per second through the shipped model's reverse-diffusion levels
   (particle-levels per second, MALA moves included), --particles particles;
3. force field: configurations per second of the torch force field's energy + forces (eager, and
   compiled unless --no-compile; the compile time is reported), against OpenMM's fastest platform
   here (CUDA where present), which loops over configurations, for vacuum and OBC2 implicit solvent;
4. agreement: dF(phi > 0 vs phi < 0) of --runs independent SMC runs on the device and, with the
   same seeds, on the CPU; the difference is reported in units of its standard error (|z| < 3
   agrees). The two devices draw different random numbers from the same seeds, so the runs are
   independent estimates, not copies. Skipped (one set of runs) when the device is the CPU.

It prints a table and, last, one JSON line with every figure (a part that fails reports its error
and the others still run). Default settings are meant to finish in about 5 minutes on a GPU machine
(most of it the CPU side of part 4 and, on a cold compile cache, compiling the force field);
--quick is for a 2-core CPU (under a minute).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, count: int, device, repeats: int = 3) -> float:
    """count / best seconds of fn() after one warm-up call."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return count / best


def training_rates(device, steps: int, batch: int) -> dict:
    """Steps per second of InternalEnergy training on random alanine-dipeptide-sized data."""
    from boltzgen.diffusion.internal import InternalEnergy
    from boltzgen.diffusion.losses import combined_loss
    from boltzgen.diffusion.schedule import LogSNRSchedule

    n_linear, n_periodic = 41, 19  # alanine dipeptide: 21 bonds, 20 angles, 19 dihedrals
    generator = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(4096, n_linear, generator=generator),
                      (2 * torch.rand(4096, n_periodic, generator=generator) - 1) * math.pi], 1)
    model = InternalEnergy(n_linear, n_periodic, LogSNRSchedule(13.5, -10.0)).fit(data).to(device)
    data = data.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    noise = torch.Generator(device=device).manual_seed(1)
    out = {}
    for label, clf_weight in (("dsm", 0.0), ("dsm_diffclf", 1.0)):
        def run(n=steps):
            for _ in range(n):
                index = torch.randint(len(data), (batch,), device=device, generator=noise)
                loss, _ = combined_loss(model, data[index], noise, clf_weight=clf_weight, n_levels=4)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        out[f"train_{label}_steps_per_s"] = _rate(run, steps, device, repeats=2)
    out["train_batch"] = batch
    return out


def levels_rate(device, particles: int, levels: int) -> dict:
    """Particle-levels per second of SMC through the shipped model's levels (2 MALA moves per level)."""
    from boltzgen import systems
    from boltzgen.models import load_model_file
    from boltzgen.smc.denoising import denoising_smc

    model_file = load_model_file(systems.shipped_model("alanine-dipeptide"), device=device)
    space = model_file.space

    def run():
        denoising_smc(model_file.model, particles, project=space.projection, n_levels=levels, n_moves=2,
                      chunk_size=None, seed=0)

    return {"levels_particles": particles, "levels": levels,
            "levels_particle_levels_per_s": _rate(run, particles * levels, device, repeats=1)}


def forcefield_rates(device, configurations: int, compile: bool) -> dict:
    """Configurations per second of energy + forces: torch force field (eager, compiled) and OpenMM."""
    from boltzgen import _openmm_eval, md, systems
    from boltzgen.targets import torch_target

    out = {}
    platforms = md.available_platforms()
    openmm_platform = next(p for p in ("CUDA", "OpenCL", "CPU", "Reference") if p in platforms)
    out["openmm_platform"] = openmm_platform
    for label, name in (("vacuum", "alanine-dipeptide"), ("obc2", "alanine-dipeptide-implicit")):
        with systems.load(name, platform="Reference") as target:
            rng = np.random.default_rng(0)
            x = target.positions[None] + 0.01 * rng.standard_normal((configurations, target.n_atoms, 3))
            xt = torch.as_tensor(x, device=device)
            eager = torch_target(target, compile=False, device=device)
            out[f"ff_{label}_eager_per_s"] = _rate(lambda: eager.energy_and_forces(xt), configurations, device)
            if compile:
                compiled = torch_target(target, compile=True, device=device)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    compiled.energy_and_forces(xt)
                    _sync(device)
                    out[f"ff_{label}_compile_s"] = time.perf_counter() - start
                    out[f"ff_{label}_compiled_per_s"] = _rate(lambda: compiled.energy_and_forces(xt),
                                                              configurations, device)
                out[f"ff_{label}_compiled"] = compiled.forcefield.compiled  # False: compilation failed, eager
                e_c, _ = compiled.energy_and_forces(xt)
                e_e, _ = eager.energy_and_forces(xt)
                out[f"ff_{label}_compiled_max_diff_kT"] = float((e_c - e_e).abs().max())
            import openmm

            evaluator = _openmm_eval.ContextEvaluator(openmm.XmlSerializer.serialize(target.system), openmm_platform)
            n_openmm = min(configurations, 2000)
            out[f"openmm_{label}_per_s"] = _rate(lambda: evaluator.evaluate(x[:n_openmm], True), n_openmm, device,
                                                 repeats=2)
            e_openmm, _ = evaluator.evaluate(x[:8], False)
            e_torch, _ = eager.energy_and_forces(xt[:8])
            out[f"ff_{label}_vs_openmm_max_diff_kJ_per_mol"] = float(np.abs(e_torch.cpu().numpy() * target.kT
                                                                            - e_openmm).max())
    return out


def agreement(device, runs: int, particles: int, levels: int, mixing: int, seed: int) -> dict:
    """dF(phi > 0) of ``runs`` SMC runs on the device and with the same seeds on the CPU (the CPU runs
    spread over local workers, one per run, sharing the cores)."""
    from boltzgen.pipeline import Spread, SystemRef, sample_model
    from boltzgen.pipeline.tasks import _available_cores
    from boltzgen.sampling import MixingSettings, SampleSettings
    from boltzgen import systems

    settings = SampleSettings(n_levels=levels, mixing=MixingSettings(moves=mixing), chunk_size=max(1000, particles))
    model = systems.shipped_model("alanine-dipeptide")
    out = {"agreement_runs": runs, "agreement_particles": particles, "agreement_levels": levels,
           "agreement_mixing_moves": mixing}
    devices = [device] if device.type == "cpu" else [device, torch.device("cpu")]
    for d in devices:
        label = "device" if d == device else "cpu"
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            cores = _available_cores()
            spread = Spread(workers=min(runs, cores), threads=cores) if d != device and cores > 2 else None
            report = sample_model(SystemRef("alanine-dipeptide"), model, f"{folder}/job", particles=particles,
                                  runs=runs, settings=settings, seed=seed, device=d, compile=False, spread=spread)
            out[f"df_{label}_kT"] = report.summary["delta_f_phi_positive_kT"]
            out[f"df_{label}_err_kT"] = report.summary["delta_f_phi_positive_err_kT"]
            out[f"df_{label}_seconds"] = time.perf_counter() - start
    if len(devices) == 2:
        diff = out["df_device_kT"] - out["df_cpu_kT"]
        err = math.hypot(out["df_device_err_kT"] or math.nan, out["df_cpu_err_kT"] or math.nan)
        out["df_z"] = diff / err if err > 0 else math.nan
        out["df_agree"] = bool(abs(out["df_z"]) < 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small settings for a 2-core CPU")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the compiled force field (and its compile time)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("training", "levels", "forcefield", "agreement"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from boltzgen.pipeline.tasks import share_compile_cache

    share_compile_cache()  # compile times below are those of this cache (cold on a fresh machine)
    device = torch.device(args.device)
    quick = args.quick
    sizes = dict(steps=5 if quick else 50, batch=256 if quick else 1024, particles=256 if quick else 8192,
                 levels=20 if quick else 100, configurations=512 if quick else 65536,
                 runs=4, run_particles=100 if quick else 1000, run_levels=40 if quick else 100,
                 mixing=40 if quick else 200)
    figures = {"device": str(device), "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                      else "cpu"), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "quick": quick}
    timings = {}
    parts = [("training", lambda: training_rates(device, sizes["steps"], sizes["batch"])),
             ("levels", lambda: levels_rate(device, sizes["particles"], sizes["levels"])),
             ("forcefield", lambda: forcefield_rates(device, sizes["configurations"], not args.no_compile)),
             ("agreement", lambda: agreement(device, sizes["runs"], sizes["run_particles"], sizes["run_levels"],
                                             sizes["mixing"], seed=0))]
    for name, part in parts:
        if name in args.skip:
            continue
        start = time.perf_counter()
        try:
            figures.update(part())
        except Exception as exc:  # report and go on: one failing part must not hide the others
            figures[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
        timings[f"{name}_seconds"] = time.perf_counter() - start
    figures.update(timings)
    print(f"device check on {figures['device']} ({figures['device_name']}), torch {figures['torch']}, "
          f"{figures['threads']} threads{', quick settings' if quick else ''}")
    for key, value in figures.items():
        if key in ("device", "device_name", "torch", "threads", "quick"):
            continue
        text = f"{value:,.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<40} {text}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
