"""Sampling a molecule with a trained model: ``boltzgen sample`` and ``boltzgen run``.

``runs`` independent SMC runs (:func:`boltzgen.sampling.sample_molecule`) write one folder each
into a job folder (:mod:`boltzgen.pipeline.jobs`), so a killed job resumes where it stopped; the
summary is a reduce over the run folders (:mod:`boltzgen.pipeline.summary`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models import check_compatible, load_model_file
from .jobs import file_digest, open_job, run_seeds
from .progress import RunProgress
from .summary import sample_summary


def fast_target(target, compile: bool):
    """The torch force field of ``target`` where it applies, chosen once at the edge.

    A fallback to the OpenMM target (forces the torch force field lacks) warns, and the warning is
    never hidden: the user must know they are on the slow path. Only compile notices are quiet.
    """
    import warnings

    from ..targets import fast_target as choose
    from ..targets.torchff.forcefield import CompileNotice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileNotice)
        return choose(target, compile=compile)


@dataclass(frozen=True)
class SampleReport:
    """What :func:`sample_model` wrote and measured (``summary`` is what summary.json holds)."""

    out: Path
    run_dirs: tuple[Path, ...]
    summary: dict


def sample_manifest(target, model_path, model_file, *, particles: int, runs: int, settings, seed: int,
                    device) -> dict:
    """What identifies a sampling job: the system, the model (by content), the settings and seeds."""
    from ..targets.openmm import system_fingerprint

    return {"job": "sample", "system": target.name, "system_fingerprint": system_fingerprint(target.system),
            "temperature_K": float(target.temperature), "model": str(model_path),
            "model_sha256": file_digest(model_path), "model_system": model_file.metadata.get("system"),
            "recalibration": not check_compatible(model_file, target), "particles": int(particles), "runs": int(runs),
            "seed": int(seed), "device": str(device), "settings": asdict(settings)}


def sample_model(target, model_path, out, *, particles: int = 2500, runs: int = 4, settings=None,
                 seed: int = 0, device: str | torch.device = "cpu", progress: bool = False,
                 compile: bool = True, cvs=None, checkpoint_every: float = 30.0) -> SampleReport:
    """``runs`` independent SMC runs of a trained model toward ``target``'s Boltzmann distribution.

    Writes ``out/job.json``, ``out/run-000`` ... (see :mod:`boltzgen.io.sample_runs`), the pooled
    trajectory and weight table of all runs (``pooled.trr``/``pooled.pdb``/``pooled.colvar``, see
    :mod:`boltzgen.io.export`) and ``out/summary.json``. The same call on the same folder resumes a killed job (complete runs are
    kept, the run in progress continues from its checkpoint) and ends with exactly the results of an
    uninterrupted job; a call with other settings is refused. A model of the same molecule under
    another force field or solvent is corrected to ``target`` (recalibration, reported as
    ``summary["recalibration"]``).

    Args:
        target: the OpenMMTarget to sample (the torch force field is used where it applies).
        model_path: a model file written by ``boltzgen train``.
        out: a new (or empty) folder, or the folder of this same job to resume.
        particles, runs: N per run and the number of independent runs (error bars need >= 2).
        settings: :class:`boltzgen.sampling.SampleSettings` (default settings when None).
        seed: the runs' seeds are spawned from it.
        device: where the model, the force field and the particles live.
        progress: one progress bar per run (stderr).
        compile: compile the torch force field (faster on large batches; False skips the
            20-80 s compilation, e.g. for small tests).
        cvs: the collective variables, basins and free energies the summary reports
            (``systems.collective_variables(name)``); None: those of the named system ``target.name``.
        checkpoint_every: seconds between saves of the run in progress (0: after every SMC step).
    """
    from ..io.export import export_pooled
    from ..io.sample_runs import write_json, write_sample_run
    from ..sampling import SampleSettings, sample_molecule
    from ..systems import recorded_collective_variables

    settings = SampleSettings() if settings is None else settings
    model_file = load_model_file(model_path, device=device)
    manifest = sample_manifest(target, model_path, model_file, particles=particles, runs=runs, settings=settings,
                               seed=seed, device=device)
    job = open_job(out, manifest)
    fast = fast_target(target, compile)
    for k, run_seed in enumerate(run_seeds(seed, runs)):
        if job.is_done(k):
            continue
        bar = RunProgress(f"run {k + 1}/{runs}", settings) if progress else None
        result = sample_molecule(model_file, target, particles, settings, seed=run_seed,
                                 target_energy=fast.reduced_energy, progress=bar, checkpoint=job.checkpoint(k),
                                 checkpoint_every=checkpoint_every)
        if bar is not None:
            bar.close()
        diagnostics = {**result.diagnostics(), "seed": run_seed, "model": str(model_path), "system": target.name}
        write_sample_run(job.run_dir(k), result.positions, result.log_weights, result.energies, target.topology,
                         diagnostics)
    dirs = job.run_dirs()
    summary = sample_summary(dirs, manifest, cvs)
    export_pooled(job.out, float(target.temperature), cvs if cvs is not None else recorded_collective_variables(target.name))
    write_json(job.out / "summary.json", summary)
    return SampleReport(job.out, tuple(dirs), summary)


@dataclass(frozen=True)
class NamedRunResult:
    """What :func:`run_named` did: the sample runs, their analysis (plots), the printed table."""

    sample: SampleReport
    analysis: object
    analysis_text: str
    reference: dict | None


def shipped_reference(name: str) -> dict | None:
    """The reference figures shipped next to a named system (``<name>.reference.json``), or None."""
    from .. import systems

    spec = systems.specs()[name]
    path = spec.path.with_name(f"{name}.reference.json")
    return json.loads(path.read_text()) if path.is_file() else None


def run_named(name: str, out, *, particles: int = 1000, runs: int = 4, settings=None, seed: int = 0,
              device: str | torch.device = "cpu", progress: bool = False, compile: bool = True,
              checkpoint_every: float = 30.0, temperature: float | None = None) -> NamedRunResult:
    """The whole job on a named system with the model shipped for it: sample, correct, analyse.

    Writes the sample runs and ``summary.json`` (:func:`sample_model`) and the plots to ``out``;
    the summary also holds the shipped reference figures when there are some and the run is at the
    system's own temperature (``temperature``: in K, None for the system's). Resumes like
    :func:`sample_model`.
    """
    from .. import systems
    from ..analysis.report import analyze_runs, format_analysis
    from ..io.sample_runs import write_json

    model = systems.shipped_model(name)
    target = systems.load(name, **({} if temperature is None else {"temperature": temperature}))
    own_temperature = float(systems.spec(name).options.get("temperature", 300.0))
    try:
        report = sample_model(target, model, out, particles=particles, runs=runs, settings=settings, seed=seed,
                              device=device, progress=progress, compile=compile, checkpoint_every=checkpoint_every)
    finally:
        target.close()
    analysis = analyze_runs([str(d) for d in report.run_dirs], plot_dir=report.out, label=name)
    reference = shipped_reference(name)
    text = format_analysis(analysis)
    if reference is not None and temperature is not None and temperature != own_temperature:
        text += (f"\n  no shipped reference at {temperature:g} K (the reference of {name} is at "
                 f"{own_temperature:g} K)")
        reference = None
    if reference is not None:
        text += (f"\n  reference ({reference['source']}): dF(phi>0 vs phi<0) = "
                 f"{reference['delta_f_phi_positive_kT']:.3f} +- {reference['delta_f_phi_positive_err_kT']:.3f} kT")
        summary = {**report.summary, "reference": reference}
        write_json(report.out / "summary.json", summary)
        report = SampleReport(report.out, report.run_dirs, summary)
    return NamedRunResult(report, analysis, text, reference)
