"""Free energies between two states of one molecule: ``boltzgen free-energy``.

Each independent run samples A with the Boltzmann generator, carries the weighted samples to B
along an SMC bridge (:func:`boltzgen.switching.switch`), and samples B with the generator too (its
log Z gives the second estimate, log Z_A - log Z_B). Runs are written one folder each into a job
folder (:mod:`boltzgen.pipeline.jobs`), so a killed job resumes; the reference is MBAR on MD of both
states (given, or made here by metadynamics).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import md
from ..io import md_runs
from ..io.sample_runs import read_diagnostics, write_json, write_sample_run
from ..models import check_compatible, load_model_file
from .._checks import as_device
from .jobs import file_digest, open_job, run_seeds
from .progress import RunProgress
from .sample import _loaded, fast_target, run_job_tasks
from .summary import molar_units, versions
from .tasks import Spread, SystemRef, built, task_device


@dataclass(frozen=True)
class FreeEnergyReport:
    """What :func:`free_energy_between` wrote and measured (``summary`` is what summary.json holds)."""

    out: Path
    run_dirs: tuple[Path, ...]
    summary: dict


def _check_states(target_a, target_b) -> None:
    if target_a.n_atoms != target_b.n_atoms or ([a.name for a in target_a.topology.atoms()]
                                                != [a.name for a in target_b.topology.atoms()]):
        raise ValueError(f"--from {target_a.name} and --to {target_b.name} are not the same molecule "
                         "(atom counts or names differ)")


def _check_reference(md_from, md_to, reference_ns, target_a, target_b) -> None:
    """Refuse bad reference arguments before any sampling (a bad MD folder must not cost the sampling first)."""
    if (md_from is None) != (md_to is None):
        raise ValueError("give MD runs of both states (--md-from and --md-to) for the BAR reference, or neither")
    if md_from is not None and reference_ns is not None:
        raise ValueError("give either existing MD runs (--md-from/--md-to) or --reference-ns NS to make them, not both")
    if reference_ns is not None and not reference_ns > 0:
        raise ValueError(f"reference_ns must be a positive MD length in ns, got {reference_ns!r}")
    if md_from is None:
        return
    if len(md_from) != len(md_to) or not md_from:
        raise ValueError(f"give as many MD runs of B (--md-to) as of A (--md-from), got {len(md_to)} and {len(md_from)}")
    for d, target in [(d, target_a) for d in md_from] + [(d, target_b) for d in md_to]:
        md_runs.load_log_weights(d)
        n_atoms = md_runs.load_topology(d).n_atoms
        if n_atoms != target.n_atoms:
            raise ValueError(f"MD run {d} has {n_atoms} atoms, {target.name} has {target.n_atoms}: "
                             "not a run of this molecule")


def _md_reference(target_a, target_b, out: Path, runs: int, ns: float, seed: int):
    """``runs`` biased (phi metadynamics) MD runs of each state, for the MBAR reference (each resumes)."""
    dirs_a, dirs_b = [], []
    seeds = run_seeds(seed + 1, 2 * runs)  # every MD run its own seed
    for k in range(runs):
        for j, (target, dirs, label) in enumerate(((target_a, dirs_a, "from"), (target_b, dirs_b, "to"))):
            folder = out / f"md-{label}-{k:03d}"
            md.run_md(target, ns, folder, seeds[2 * k + j] % (2**31 - 2), bias=md.Metadynamics())
            dirs.append(folder)
    return dirs_a, dirs_b


def free_energy_task(job, k: int, ref_a: SystemRef, ref_b: SystemRef, model_path: str, particles: int, settings,
                     switch_settings, seeds, device: str, compile: bool, checkpoint_every: float,
                     threads: int | None) -> int:
    """Run k as a task in a worker: rebuild (once per worker) both targets, their force fields and the model."""
    target_a, target_b = built(("target", ref_a), ref_a.load), built(("target", ref_b), ref_b.load)
    fast_a = built(("fast", ref_a, device, compile), lambda: fast_target(target_a, compile, device, threads))
    fast_b = built(("fast", ref_b, device, compile), lambda: fast_target(target_b, compile, device, threads))
    model_file = built(("model", model_path, device), lambda: load_model_file(model_path, device=device))
    _one_run(k, job, model_file, fast_a, fast_b, target_a, target_b, particles, settings, switch_settings, seeds,
             device, False, checkpoint_every)
    return k


def _one_run(k: int, job, model_file, fast_a, fast_b, target_a, target_b, particles, settings, switch_settings,
             seeds, device, progress, checkpoint_every) -> None:
    """Run k: generator at A, the bridge to B, generator at B; written as one sample-run folder."""
    from .. import switching
    from ..sampling import sample_molecule
    from ..smc import evaluate
    from ..smc.energy import CountedEnergy

    runs = job.manifest["runs"]
    bar = RunProgress(f"run {k + 1}/{runs}: {target_a.name}", settings) if progress else None
    # the two generator runs keep checkpoints of their own (the bridge between them is short)
    saved = job.checkpoint(k)
    run_a = sample_molecule(model_file, target_a, particles, settings, seed=seeds[3 * k],
                            target_energy=fast_a.reduced_energy, progress=bar,
                            checkpoint=saved.with_suffix(".from.checkpoint"), checkpoint_every=checkpoint_every)
    # the bridge to B starts with the generator run's adapted step size
    adapted = replace(switch_settings, bridge=replace(switch_settings.bridge, step_size=run_a.step_size))
    sw = switching.switch(model_file.space, run_a.positions, run_a.log_weights, fast_a.reduced_energy,
                          fast_b.reduced_energy, adapted, topology=target_a.topology, seed=seeds[3 * k + 1],
                          device=device, progress=bar)
    if bar is not None:
        bar.close()
    bar = RunProgress(f"run {k + 1}/{runs}: {target_b.name}", settings) if progress else None
    run_b = sample_molecule(model_file, target_b, particles, settings, seed=seeds[3 * k + 2],
                            target_energy=fast_b.reduced_energy, progress=bar,
                            checkpoint=saved.with_suffix(".to.checkpoint"), checkpoint_every=checkpoint_every)
    if bar is not None:
        bar.close()
    space = model_file.space
    positions, _ = space.finish(space.to_positions(sw.result.particles).detach().to(torch.float64), target_b.topology)
    final = CountedEnergy(fast_b.reduced_energy)  # the bridged positions' energies, for the run folder
    energies = evaluate(final, positions, settings.chunk_size).cpu().numpy()
    record = {"delta_f_kT": sw.delta_f, "delta_f_log_z_kT": run_a.log_z - run_b.log_z,
              "log_z_from": run_a.log_z, "log_z_to": run_b.log_z, "ess_fraction": sw.result.ess_fraction,
              "min_ess_fraction": sw.min_ess_fraction, "bridge_steps": len(sw.result.diagnostics),
              "lineages": sw.result.n_lineages, "target_evaluations": sw.target_evaluations
              + run_a.target_evaluations + run_b.target_evaluations + final.count,
              "model_evaluations": run_a.model_evaluations + run_b.model_evaluations,
              "seconds": sw.seconds + run_a.seconds + run_b.seconds}
    diagnostics = {"run": "free-energy bridge", "from": target_a.name, "to": target_b.name,
                   "steps": [asdict(s) for s in sw.result.diagnostics], "totals": record,
                   "from_run": run_a.diagnostics()["totals"], "to_run": run_b.diagnostics()["totals"],
                   "model": job.manifest["model"]}
    write_sample_run(job.run_dir(k), positions.cpu().numpy(), sw.result.log_weights.detach().cpu().numpy(),
                     energies, target_b.topology, diagnostics)


def _reference(md_from, md_to, fast_a, fast_b) -> dict:
    from .. import switching

    ref = switching.bar_reference(md_from, md_to, fast_a.reduced_energy, fast_b.reduced_energy)
    return {"method": f"MBAR (pymbar; BAR for plain MD) on all frames of MD of both states, {len(md_from)} pair(s) "
                      "of runs",
            "delta_f_kT": ref.mean, "delta_f_err_kT": ref.standard_error if np.isfinite(ref.standard_error) else None,
            "md_from": [str(d) for d in md_from], "md_to": [str(d) for d in md_to]}


def free_energy_summary(run_dirs, manifest: dict, reference: dict | None) -> dict:
    """The summary of free-energy runs: both estimates with errors over runs, the bridges' ESS, costs."""
    from ..analysis.free_energy import mean_and_error

    per_run = [read_diagnostics(d)["totals"] for d in run_dirs]
    delta_f, delta_f_err = mean_and_error([r["delta_f_kT"] for r in per_run])
    log_z_df, log_z_df_err = mean_and_error([r["delta_f_log_z_kT"] for r in per_run])
    return {"from": manifest["from"], "to": manifest["to"], "n_runs": len(per_run),
            "n_particles_per_run": manifest["particles"], "delta_f_kT": delta_f, "delta_f_err_kT": delta_f_err,
            "delta_f_log_z_kT": log_z_df, "delta_f_log_z_err_kT": log_z_df_err,
            "ess_fraction": float(np.mean([r["ess_fraction"] for r in per_run])),
            "min_ess_fraction": float(min(r["min_ess_fraction"] for r in per_run)),
            "target_evaluations": int(sum(r["target_evaluations"] for r in per_run)),
            "model_evaluations": int(sum(r["model_evaluations"] for r in per_run)),
            "seconds": float(sum(r["seconds"] for r in per_run)), "reference": reference, "per_run": per_run,
            **{k: v for k, v in manifest.items() if k not in ("from", "to")}, **molar_units(manifest),
            "versions": versions(), "command": " ".join(sys.argv)}


def free_energy_between(target_a, target_b, model_path, out, *, particles: int = 1000, runs: int = 4,
                        settings=None, switch_settings=None, seed: int = 0, device: str | torch.device | None = None,
                        md_from=None, md_to=None, reference_ns: float | None = None, progress: bool = False,
                        compile: bool = True, checkpoint_every: float = 30.0,
                        spread: Spread | None = None) -> FreeEnergyReport:
    """F_B - F_A (kT) between two states of one molecule, two ways, with error bars over runs.

    Writes ``out/job.json``, ``out/run-000`` ... (the bridge's weighted samples of B as sample-run
    folders, whose diagnostics.json hold the bridge steps) and ``out/summary.json`` (``delta_f_kT``,
    ``delta_f_err_kT``, the log Z estimate, ESS along the bridge, evaluations, seconds, and the MBAR
    reference when MD runs of both states are given (``md_from``/``md_to``) or made (``reference_ns``
    ns each)). The same call on the same folder resumes a killed job with identical results.

    Args:
        target_a, target_b: OpenMM targets of the same molecule (A: ``--from``, B: ``--to``), or
            :class:`~boltzgen.pipeline.SystemRef` s (needed to spread the runs, see ``spread``).
        model_path: a model file of that molecule (for either state, or another force field).
        out: a new (or empty) folder, or this job's folder to resume.
        particles, runs: N per run and independent runs (error bars need >= 2).
        settings: :class:`boltzgen.sampling.SampleSettings` of the generator runs (None: those the model
            file recommends, :func:`boltzgen.sampling.model_settings`).
        switch_settings: :class:`boltzgen.switching.SwitchSettings` of the bridge.
        seed: seeds everything (runs, bridges and MD are independent).
        md_from, md_to: MD run folders of A and of B for the reference (or neither).
        reference_ns: instead, make ``runs`` metadynamics runs of this length (ns) of each state.
        device, progress, compile, checkpoint_every, spread: as for :func:`boltzgen.pipeline.sample_model`
            (the runs are spread; the MD of ``reference_ns`` runs in this process).
    """
    from .. import switching
    switch_settings = switching.SwitchSettings() if switch_settings is None else switch_settings
    spread = Spread() if spread is None else spread
    device = as_device(device)
    if not spread.in_process and not (isinstance(target_a, SystemRef) and isinstance(target_b, SystemRef)):
        raise TypeError("runs spread over workers or Ray rebuild the targets in each worker: pass "
                        "boltzgen.pipeline.SystemRef(name or YAML path, temperature) for both states, not objects")
    refs = (target_a, target_b)
    target_a, loaded_a = _loaded(target_a)
    try:
        target_b, loaded_b = _loaded(target_b)
        try:
            return _free_energy(target_a, target_b, refs, model_path, out, particles, runs, settings,
                                switch_settings, seed, device, md_from, md_to, reference_ns, progress, compile,
                                checkpoint_every, spread)
        finally:
            if loaded_b:
                target_b.close()
    finally:
        if loaded_a:
            target_a.close()


def _free_energy(target_a, target_b, refs, model_path, out, particles, runs, settings, switch_settings, seed, device,
                 md_from, md_to, reference_ns, progress, compile, checkpoint_every, spread) -> FreeEnergyReport:
    from ..sampling import model_settings, settings_record
    from ..targets.openmm import system_fingerprint
    from ..tilt import run_tilt

    _check_states(target_a, target_b)
    _check_reference(md_from, md_to, reference_ns, target_a, target_b)
    model_file = load_model_file(model_path, device=device)
    settings = model_settings(model_file, str(model_path)) if settings is None else settings
    for target in (target_a, target_b):
        check_compatible(model_file, target)
    run_tilt(model_file, settings.tilt)  # refuses a tilt the model file cannot take, before any file
    manifest = {"job": "free-energy", "from": target_a.name, "to": target_b.name,
                "from_fingerprint": system_fingerprint(target_a.system),
                "to_fingerprint": system_fingerprint(target_b.system), "temperature_K": float(target_a.temperature),
                "model": str(model_path),
                "model_sha256": file_digest(model_path), "model_system": model_file.metadata.get("system"),
                "particles": int(particles), "runs": int(runs), "seed": int(seed), "device": str(device),
                "settings": settings_record(settings, model_file), "switch_settings": asdict(switch_settings),
                "reference_ns": reference_ns, "md_from": None if md_from is None else [str(d) for d in md_from],
                "md_to": None if md_to is None else [str(d) for d in md_to]}
    job = open_job(out, manifest)
    fast_a, fast_b = fast_target(target_a, compile, device), fast_target(target_b, compile, device)
    seeds = run_seeds(seed, 3 * runs)
    start = time.perf_counter()
    todo = [k for k in range(runs) if not job.is_done(k)]
    if spread.in_process:
        for k in todo:
            _one_run(k, job, model_file, fast_a, fast_b, target_a, target_b, particles, settings, switch_settings,
                     seeds, device, progress, checkpoint_every)
    else:
        where, gpus = task_device(device, spread)
        calls = [(job, k, refs[0], refs[1], str(model_path), particles, settings, switch_settings, seeds, where,
                  compile, checkpoint_every, spread.threads_per_task()) for k in todo]
        run_job_tasks(free_energy_task, calls, job, todo, spread, gpus, progress)
    if reference_ns is not None:
        md_from, md_to = _md_reference(target_a, target_b, job.out, runs, reference_ns, seed)
    reference = None if md_from is None else _reference(md_from, md_to, fast_a, fast_b)
    dirs = job.run_dirs()
    summary = {**free_energy_summary(dirs, manifest, reference), "wall_seconds": time.perf_counter() - start}
    write_json(job.out / "summary.json", summary)
    return FreeEnergyReport(job.out, tuple(dirs), summary)
