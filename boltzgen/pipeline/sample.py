"""Sampling a molecule with a trained model: ``boltzgen sample`` and ``boltzgen run``.

``runs`` independent SMC runs (:func:`boltzgen.sampling.sample_molecule`) write one folder each
into a job folder (:mod:`boltzgen.pipeline.jobs`), so a killed job resumes where it stopped; the
summary is a reduce over the run folders (:mod:`boltzgen.pipeline.summary`). The runs are tasks
(:mod:`boltzgen.pipeline.tasks`): in this process, over local workers or on a Ray cluster, with the
same result for every run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import as_device
from ..analysis.free_energy import z_score
from ..models import check_compatible, load_model_file
from ..io.sample_runs import read_diagnostics
from ..units import format_in_molar_units
from .jobs import file_digest, open_job, run_seeds
from .progress import RunProgress
from .summary import sample_summary
from .tasks import Spread, SystemRef, built, run_tasks, task_device


def fast_target(target, compile: bool, device=None, threads: int | None = None):
    """The torch force field of ``target`` where it applies, chosen once at the edge, on ``device``
    (default: torch's default device) so that it lives where the particles do.

    A fallback to the OpenMM target (forces the torch force field lacks) warns, and the warning is
    never hidden: the user must know they are on the slow path (on a GPU, the OpenMM target also
    copies every batch to the host and back). Only compile notices are quiet.
    """
    import warnings

    from ..targets import fast_target as choose
    from ..targets.torchff.forcefield import CompileNotice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileNotice)
        return choose(target, compile=compile, device=as_device(device), threads=threads)


@dataclass(frozen=True)
class SampleReport:
    """What :func:`sample_model` wrote and measured (``summary`` is what summary.json holds)."""

    out: Path
    run_dirs: tuple[Path, ...]
    summary: dict


def sample_manifest(target, model_path, model_file, *, particles: int, runs: int, settings, seed: int,
                    device) -> dict:
    """What identifies a sampling job: the system, the model (by content), the settings and seeds."""
    from ..sampling import settings_record
    from ..targets.openmm import system_fingerprint

    return {"job": "sample", "system": target.name, "system_fingerprint": system_fingerprint(target.system),
            "temperature_K": float(target.temperature), "model": str(model_path),
            "model_sha256": file_digest(model_path), "model_system": model_file.metadata.get("system"),
            "recalibration": not check_compatible(model_file, target), "particles": int(particles), "runs": int(runs),
            "seed": int(seed), "device": str(device), "settings": settings_record(settings, model_file)}


def _loaded(target) -> tuple:
    """(the OpenMM target, whether this call loaded it) for a target or a :class:`SystemRef`."""
    if isinstance(target, SystemRef):
        return target.load(), True
    if isinstance(target, (str, bytes)):
        raise TypeError("target must be an OpenMMTarget or a boltzgen.pipeline.SystemRef(name or YAML path, "
                        f"temperature), got the string {target!r}")
    return target, False


def sample_run(job, k: int, run_seed: int, target, fast, model_file, model_path, particles: int, settings,
               progress: bool, checkpoint_every: float) -> int:
    """Run k of a sampling job (seed ``run_seed``), written as ``job.run_dir(k)``; returns k."""
    from ..io.sample_runs import write_sample_run
    from ..sampling import sample_molecule

    runs = job.manifest["runs"]
    bar = RunProgress(f"run {k + 1}/{runs}", settings) if progress else None
    result = sample_molecule(model_file, target, particles, settings, seed=run_seed,
                             target_energy=fast.reduced_energy, progress=bar, checkpoint=job.checkpoint(k),
                             checkpoint_every=checkpoint_every)
    if bar is not None:
        bar.close()
    diagnostics = {**result.diagnostics(), "seed": run_seed, "model": str(model_path), "system": target.name}
    write_sample_run(job.run_dir(k), result.positions, result.log_weights, result.energies, target.topology,
                     diagnostics, origins=result.origins)
    return k


def sample_task(job, k: int, run_seed: int, ref: SystemRef, model_path: str, particles: int, settings,
                device: str, compile: bool, checkpoint_every: float, threads: int | None) -> int:
    """One run as a task in a worker: rebuild (once per worker) the target, its force field and the model."""
    target = built(("target", ref), ref.load)
    fast = built(("fast", ref, device, compile), lambda: fast_target(target, compile, device, threads))
    model_file = built(("model", model_path, device), lambda: load_model_file(model_path, device=device))
    return sample_run(job, k, run_seed, target, fast, model_file, model_path, particles, settings, False,
                      checkpoint_every)


def check_written(job, runs) -> None:
    """Refuse to summarise when a run that a task finished is not in the job folder (Ray on several
    machines writing to a folder that is not shared)."""
    missing = [job.run_dir(k).name for k in runs if not job.is_done(k)]
    if missing:
        raise ValueError(f"the tasks of {', '.join(missing)} finished but their folders are not in {job.out}: with Ray "
                         "on several machines --out must be a folder every node sees (a shared file system)")


def run_job_tasks(task, calls: list, job, todo: list, spread: Spread, gpus: float, progress: bool) -> None:
    """Run the job's runs ``todo`` as tasks of other processes (``run_tasks``), one bar over whole runs
    (their own steps are not seen here), then check that every run folder is in the job folder."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"{len(todo)} runs", unit="run", leave=False)
    try:
        run_tasks(task, calls, spread, on_done=None if bar is None else (lambda i: bar.update(1)), gpus=gpus)
    finally:
        if bar is not None:
            bar.close()
    check_written(job, todo)


def sample_model(target, model_path, out, *, particles: int = 2500, runs: int = 4, settings=None,
                 seed: int = 0, device: str | torch.device | None = None, progress: bool = False,
                 compile: bool = True, cvs=None, checkpoint_every: float = 30.0, spread: Spread | None = None,
                 run_range: range | None = None) -> SampleReport:
    """``runs`` independent SMC runs of a trained model toward ``target``'s Boltzmann distribution.

    Writes ``out/job.json``, ``out/run-000`` ... (see :mod:`boltzgen.io.sample_runs`), the pooled
    trajectory and weight table of all runs (``pooled.trr``/``pooled.pdb``/``pooled.colvar``, see
    :mod:`boltzgen.io.export`) and ``out/summary.json``. The same call on the same folder resumes a killed job (complete runs are
    kept, the run in progress continues from its checkpoint) and ends with exactly the results of an
    uninterrupted job; a call with other settings is refused. A model of the same molecule under
    another force field or solvent is corrected to ``target`` (recalibration, reported as
    ``summary["recalibration"]``).

    Args:
        target: the OpenMMTarget to sample (the torch force field is used where it applies), or a
            :class:`~boltzgen.pipeline.SystemRef` (needed to spread runs over workers or Ray, which
            rebuild the target from it).
        model_path: a model file written by ``boltzgen train``.
        out: a new (or empty) folder, or the folder of this same job to resume.
        particles, runs: N per run and the number of independent runs (error bars need >= 2).
        settings: :class:`boltzgen.sampling.SampleSettings` (None: those the model file recommends,
            :func:`boltzgen.sampling.model_settings`, which are the defaults for most models).
        seed: the runs' seeds are spawned from it (run k's seed does not depend on ``runs``,
            ``run_range`` or ``spread``).
        device: where the model, the force field and the particles live (default: torch's default
            device, the CPU unless set otherwise).
        progress: one progress bar per run (stderr); one bar over runs when they are spread.
        compile: compile the torch force field (faster on large batches; False skips the
            20-80 s compilation, e.g. for small tests).
        cvs: the collective variables, basins and free energies the summary reports
            (``systems.collective_variables(name)``); None: those of the named system ``target.name``.
        checkpoint_every: seconds between saves of the run in progress (0: after every SMC step).
        spread: :class:`~boltzgen.pipeline.tasks.Spread`: local worker processes or a Ray cluster
            (default: every run in this process).
        run_range: only these runs of the job (e.g. ``range(2, 4)`` for run-002 and run-003; default
            all), so that parts of one job can run on separate machines and be pooled by
            :func:`~boltzgen.pipeline.summarize`; the summary covers the complete runs in ``out``.
    """
    from ..io.export import export_pooled
    from ..io.sample_runs import write_json
    from ..sampling import model_settings
    from ..systems import recorded_collective_variables
    from ..tilt import run_tilt

    spread = Spread() if spread is None else spread
    device = as_device(device)
    run_range = range(runs) if run_range is None else run_range
    if not spread.in_process and not isinstance(target, SystemRef):
        raise TypeError("runs spread over workers or Ray rebuild the target in each worker: pass "
                        "boltzgen.pipeline.SystemRef(name or YAML path, temperature) as the target, not an object")
    if run_range and not (0 <= run_range.start and run_range.stop <= runs and run_range.step == 1):
        raise ValueError(f"run_range must be a range of consecutive runs within 0..{runs - 1}, got {run_range}")
    ref = target if isinstance(target, SystemRef) else None
    target, loaded = _loaded(target)
    try:
        model_file = load_model_file(model_path, device=device)
        settings = model_settings(model_file, str(model_path)) if settings is None else settings
        run_tilt(model_file, settings.tilt)  # refuses a tilt the model file cannot take, before any file
        manifest = sample_manifest(target, model_path, model_file, particles=particles, runs=runs,
                                   settings=settings, seed=seed, device=device)
        job = open_job(out, manifest)
        seeds = run_seeds(seed, runs)
        todo = [k for k in run_range if not job.is_done(k)]
        if spread.in_process:
            fast = fast_target(target, compile, device)
            for k in todo:
                sample_run(job, k, seeds[k], target, fast, model_file, model_path, particles, settings, progress,
                           checkpoint_every)
        else:
            where, gpus = task_device(device, spread)
            calls = [(job, k, seeds[k], ref, str(model_path), particles, settings, where, compile,
                      checkpoint_every, spread.threads_per_task()) for k in todo]
            run_job_tasks(sample_task, calls, job, todo, spread, gpus, progress)
        dirs = job.run_dirs()
        summary = sample_summary(dirs, manifest, cvs)
        export_pooled(job.out, float(target.temperature),
                      cvs if cvs is not None else recorded_collective_variables(target.name))
        write_json(job.out / "summary.json", summary)
        return SampleReport(job.out, tuple(dirs), summary)
    finally:
        if loaded:
            target.close()


@dataclass(frozen=True)
class NamedRunResult:
    """What :func:`run_named` did: the sample runs, their analysis (plots), the printed table."""

    sample: SampleReport
    analysis: object
    analysis_text: str
    reference: dict | None


def reference_file(name: str) -> Path:
    """Where a named system's reference figures live: ``<name>.reference.json`` next to its YAML."""
    from .. import systems

    return systems.specs()[name].path.with_name(f"{name}.reference.json")


def shipped_reference(name: str) -> dict | None:
    """The reference figures shipped next to a named system (:func:`reference_file`), or None."""
    path = reference_file(name)
    return json.loads(path.read_text()) if path.is_file() else None


def _compared(value, err, reference, reference_err) -> dict:
    """One figure beside its reference: the four numbers and their z (None where one is missing)."""
    return {"sample": value, "sample_err": err, "reference": reference, "reference_err": reference_err,
            "z": z_score(value, err, reference, reference_err)}


def reference_comparison(summary: dict, reference: dict) -> dict[str, dict]:
    """Every declared free energy and every population that a sample summary and a reference both give.

    Args:
        summary: a sample job's summary: ``free_energies`` (the molecule's declaration, a list of
            {"key", "state", "reference"}), ``delta_f_<key>_kT`` / ``delta_f_<key>_err_kT`` (kT) and
            ``populations`` ({state: {"p", "err"}}).
        reference: a shipped reference's figures under the same keys (e.g. ``<system>.reference.json``).

    Returns:
        {"free_energies": {key: figure} (kT), "populations": {state: figure}}, each in the summary's order,
        a figure being {"sample", "sample_err", "reference", "reference_err", "z"}: z = (sample - reference)
        / the combined standard error, None where a value or an error is missing (e.g. one run, or no
        weight on one side) or both errors are zero. What the reference does not give is left out.
    """
    free_energies = {}
    for declared in summary.get("free_energies", []):
        key = declared["key"]
        if reference.get(f"delta_f_{key}_kT") is not None:
            free_energies[key] = _compared(summary.get(f"delta_f_{key}_kT"), summary.get(f"delta_f_{key}_err_kT"),
                                           reference[f"delta_f_{key}_kT"], reference.get(f"delta_f_{key}_err_kT"))
    shipped = reference.get("populations", {})
    populations = {state: _compared(pop.get("p"), pop.get("err"), shipped[state]["p"], shipped[state].get("err"))
                   for state, pop in summary.get("populations", {}).items()
                   if shipped.get(state, {}).get("p") is not None}
    return {"free_energies": free_energies, "populations": populations}


def format_reference_comparison(comparison: dict, summary: dict, source: str, temperature: float) -> list[str]:
    """The printed lines of a :func:`reference_comparison`: a header naming the reference's ``source``,
    then one line per free energy (labelled as the summary declares it; the reference's value also in molar
    units at ``temperature`` in K) and per population. No lines when nothing was compared."""
    from ..analysis.report import format_population

    if not (comparison["free_energies"] or comparison["populations"]):
        return []

    def energy(value, err) -> str:
        if value is None:
            return "n/a (no weight on one side)"
        return f"{value:.3f} kT (one run: no error bar)" if err is None else f"{value:.3f} +- {err:.3f} kT"

    def z(c) -> str:
        return "" if c["z"] is None else f"  z = {c['z']:+.2f}"

    declared = {f["key"]: f for f in summary.get("free_energies", [])}
    lines = [f"  reference ({source}), beside these samples:"]
    for key, c in comparison["free_energies"].items():
        label = f"dF({declared[key]['state']} vs {declared[key]['reference']})"
        lines.append(f"    {label}: samples {energy(c['sample'], c['sample_err'])}; reference "
                     f"{energy(c['reference'], c['reference_err'])} "
                     f"{format_in_molar_units(c['reference'], c['reference_err'], temperature)}{z(c)}")
    for state, c in comparison["populations"].items():
        lines.append(f"    P({state}): samples {format_population(c['sample'], c['sample_err'])}; reference "
                     f"{format_population(c['reference'], c['reference_err'])}{z(c)}")
    return lines


def _diagnostics_plot(report: SampleReport, name: str) -> Path:
    """``smc_diagnostics.png`` in the job folder: ESS, lineages and acceptance of every run, per step."""
    from ..smc.plots import plot_run_diagnostics

    path = Path(report.out) / "smc_diagnostics.png"
    fig = plot_run_diagnostics([read_diagnostics(d) for d in report.run_dirs],
                               title=f"{name}: {len(report.run_dirs)} runs")
    fig.savefig(path, dpi=110)
    return path


def run_named(name: str, out, *, particles: int = 1000, runs: int = 4, settings=None, seed: int = 0,
              device: str | torch.device | None = None, progress: bool = False, compile: bool = True,
              checkpoint_every: float = 30.0, temperature: float | None = None, spread: Spread | None = None,
              run_range: range | None = None) -> NamedRunResult:
    """The whole job on a named system with the model shipped for it: sample, correct, analyse.

    Writes the sample runs and ``summary.json`` (:func:`sample_model`) and the plots to ``out``;
    the summary also holds the shipped reference figures when there are some and the run is at the
    system's own temperature (``temperature``: in K, None for the system's). Resumes like
    :func:`sample_model`; ``spread`` and ``run_range`` as there.
    """
    from .. import systems
    from ..analysis.profiles import Profile
    from ..analysis.report import analyze_runs, format_analysis
    from ..io.sample_runs import write_json

    model = systems.shipped_model(name)
    own_temperature = float(systems.spec(name).options.get("temperature", 300.0))
    report = sample_model(SystemRef(name, temperature), model, out, particles=particles, runs=runs, settings=settings,
                          seed=seed, device=device, progress=progress, compile=compile,
                          checkpoint_every=checkpoint_every, spread=spread, run_range=run_range)
    reference = shipped_reference(name)
    at_own_temperature = temperature is None or temperature == own_temperature
    shipped = (reference or {}).get("profiles", {}) if at_own_temperature else {}
    analysis = analyze_runs([str(d) for d in report.run_dirs], plot_dir=report.out, label=name,
                            shipped_profiles={cv: Profile.from_dict(p) for cv, p in shipped.items()})
    diagnostics_plot = _diagnostics_plot(report, name)
    text = format_analysis(analysis) + f"\n  smc diagnostics: {diagnostics_plot}"
    if reference is not None and not at_own_temperature:
        text += (f"\n  no shipped reference at {temperature:g} K (the reference of {name} is at "
                 f"{own_temperature:g} K)")
        reference = None
    if reference is not None:
        comparison = reference_comparison(report.summary, reference)
        lines = format_reference_comparison(comparison, report.summary, reference["source"], own_temperature)
        text += "".join("\n" + line for line in lines)
        summary = {**report.summary, "reference": reference, "reference_comparison": comparison}
        write_json(report.out / "summary.json", summary)
        report = SampleReport(report.out, report.run_dirs, summary)
    return NamedRunResult(report, analysis, text, reference)
