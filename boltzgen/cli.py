"""The ``boltzgen`` command.

Each sub-command is a small function that parses its arguments, calls the library and shows
progress; library code itself never prints.
"""
from __future__ import annotations

import argparse
import sys

from .units import format_in_molar_units


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    class Parser(argparse.ArgumentParser):
        """Usage errors in one line, like every other error of the command (sub-commands inherit it)."""

        def error(self, message: str):
            self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    parser = Parser(
        prog="boltzgen",
        description="Boltzmann-generator sampling: diffusion EBMs (DSM + DiffCLF) corrected by SMC.",
    )
    parser.add_argument("--version", action="version", version=f"boltzgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Sub-commands register themselves here, one add_* function each.
    add_systems_command(sub)
    add_md_command(sub)
    add_analyze_command(sub)
    add_train_command(sub)
    add_sample_command(sub)
    add_run_command(sub)
    add_free_energy_command(sub)
    add_summarize_command(sub)
    add_tilt_command(sub)
    add_completion_command(sub)
    return parser


def _renamed(p, old: str, new: str, why: str) -> None:
    """A hidden flag ``old`` that stops with a one-line usage error naming ``new`` (without it, argparse would
    take ``old`` as an abbreviation of a longer flag, or only say "unrecognized arguments")."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{old} was renamed {new} ({why})")

    p.add_argument(old, action=Renamed, nargs="?", help=argparse.SUPPRESS)


def add_systems_command(sub) -> None:
    """``boltzgen systems``: list the named systems."""
    p = sub.add_parser("systems", help="list the named molecular systems",
                       description="List the named systems (folders under systems/ with one YAML per set-up).")
    p.set_defaults(func=_list_systems)


def _list_systems(args) -> int:
    from . import systems

    found = systems.specs()
    width = max((len(n) for n in found), default=0)
    for name, spec in sorted(found.items()):
        print(f"{name:<{width}}  {spec.description}")
    return 0


def add_md_command(sub) -> None:
    """``boltzgen md SYSTEM --ns N --out DIR``: resumable Langevin MD for reference/training data."""
    p = sub.add_parser(
        "md", help="run Langevin MD of a system (resumable)",
        description="Minimise, equilibrate and run Langevin MD at the system's temperature (or --temperature), "
                    "writing frames and energies in chunks to --out, and an energy/temperature log (md.log, CSV, "
                    "one row per saved frame). Run the same command again to resume or extend a run.")
    p.add_argument("system", help="a named system (see `boltzgen systems`) or the path of a system YAML")
    p.add_argument("--ns", type=float, required=True, help="production length in ns")
    p.add_argument("--out", required=True, help="output folder (resumed if it holds this run)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="several independent runs instead of one: seeds like 1-8, 1,3,5 or 1-4,9; run SEED goes to "
                        "OUT/seed-SEED and is the run --seed SEED makes (resumed on its own)")
    p.add_argument("--save-every", type=float, default=1.0, metavar="PS", help="ps between frames (default 1)")
    # 0.5 = md.DEFAULT_TIMESTEP_FS (not imported here: the parser stays free of OpenMM; a test ties them)
    p.add_argument("--timestep", type=float, default=0.5, metavar="FS",
                   help="time step in fs (default 0.5; 1 is twice as fast but biased alanine dipeptide's "
                        "dF(phi>0) by ~0.07 kT)")
    p.add_argument("--friction", type=float, default=1.0, metavar="PER_PS", help="Langevin friction, 1/ps")
    p.add_argument("--equilibration", type=float, default=100.0, metavar="PS", help="equilibration, ps (default 100)")
    p.add_argument("--chunk-frames", type=int, default=100, metavar="N", help="frames per chunk file (default 100)")
    p.add_argument("--platform", default=None,
                   help="OpenMM platform, e.g. CUDA (mixed precision) or CPU (default: the fastest, measured); CUDA, "
                        "HIP or OpenCL missing here: a notice, and the default instead")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="with --seeds: local worker processes, one run each at a time (default 1)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="with --seeds: spread the runs over an existing Ray cluster (auto or HOST:PORT); needs "
                        'pip install -e ".[cluster]"; on several machines --out must be on a shared file system')
    p.add_argument("--threads", type=int, default=None,
                   help="with --workers/--ray: torch threads, the total of the local workers (default: the cores "
                        "here) or per Ray task (default 1)")
    _add_temperature_option(p, config=False)
    b = p.add_argument_group(
        "metadynamics", "well-tempered metadynamics on backbone dihedrals: Gaussians are deposited for "
        "--deposition ps, then the bias is frozen and every production frame carries the log-weight +V/kT "
        "(boltzgen.md.load_log_weights; `boltzgen analyze` uses it)")
    b.add_argument("--bias", default=None, metavar="VARS",
                   help="bias these backbone dihedrals: phi, psi, phi,psi (one joint bias) or a sum of 1-D "
                        "biases such as phi1+phi2+phi3 (phiN: the N-th residue's; default: none)")
    b.add_argument("--bias-factor", type=float, default=None, metavar="GAMMA",
                   help="well-tempered bias factor gamma > 1 (default 6)")
    b.add_argument("--bias-height", type=float, default=None, metavar="KJ_PER_MOL",
                   help="initial Gaussian height, kJ/mol (default 1)")
    b.add_argument("--bias-width-deg", type=float, default=None, metavar="DEG",
                   help="Gaussian width, degrees (default 20.05, i.e. 0.35 rad)")
    _renamed(b, "--bias-width", "--bias-width-deg", "degrees, like every angle a user types: 0.35 rad is 20.05")
    b.add_argument("--bias-frequency", type=int, default=None, metavar="STEPS",
                   help="steps between Gaussians (default 500)")
    b.add_argument("--deposition", type=float, default=None, metavar="PS",
                   help="ps of deposition before the bias is frozen (default 1000)")
    p.set_defaults(func=_run_md)


def _run_md(args) -> int:
    import math
    import time

    from tqdm import tqdm

    from . import md, systems

    width_rad = None
    if args.bias_width_deg is not None:
        if not 0 < args.bias_width_deg < 180:
            raise ValueError(f"--bias-width-deg must be a width in degrees in (0, 180), got {args.bias_width_deg:g}")
        width_rad = math.radians(args.bias_width_deg)  # degrees at the boundary, radians inside
    options = {"bias_factor": ("--bias-factor", args.bias_factor),
               "height_kj_per_mol": ("--bias-height", args.bias_height),
               "width_rad": ("--bias-width-deg", width_rad),
               "frequency_steps": ("--bias-frequency", args.bias_frequency),
               "deposition_ps": ("--deposition", args.deposition)}
    given = {field: value for field, (_, value) in options.items() if value is not None}
    bias = None
    if args.bias is None and given:
        raise ValueError(f"{', '.join(options[f][0] for f in given)} only apply with --bias (e.g. --bias phi)")
    if args.bias is not None:
        try:
            bias = md.Metadynamics(args.bias, **given)
        except ValueError as exc:  # name the option, not the dataclass field
            raise ValueError(f"--bias and its options: {exc}") from exc
    if args.seeds is not None:
        return _run_md_seeds(args, bias)
    if args.workers != 1 or args.ray is not None or args.threads is not None:
        raise ValueError("--workers, --ray and --threads spread several runs: give --seeds too (e.g. --seeds 1-8)")
    platform, notice = md.md_platform(args.platform)
    if notice is not None:
        print(f"boltzgen md: {notice}", file=sys.stderr)
    target = systems.load(args.system, **({"platform": platform} if platform else {}), **_temperature(args))
    bars: dict = {}  # stage -> (tqdm bar, start time, ps done at start)

    def close_bars() -> None:
        for bar, _, _ in bars.values():
            bar.close()

    def show(p) -> None:
        if p.stage not in bars:
            close_bars()
            bar = tqdm(total=p.ps_total, initial=p.ps_done, unit="ps", desc=p.stage, dynamic_ncols=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} ps [{elapsed}<{remaining}{postfix}]")
            bars[p.stage] = (bar, time.perf_counter(), p.ps_done)
        bar, t0, ps0 = bars[p.stage]
        elapsed = time.perf_counter() - t0
        if elapsed > 0:
            bar.set_postfix_str(f"{(p.ps_done - ps0) / 1000 / (elapsed / 86400):.0f} ns/day", refresh=False)
        bar.update(p.ps_done - bar.n)

    try:
        result = md.run_md(target, args.ns, args.out, 0 if args.seed is None else args.seed,
                           timestep_fs=args.timestep, friction_per_ps=args.friction, save_every_ps=args.save_every,
                           chunk_frames=args.chunk_frames, equilibration_ps=args.equilibration,
                           platform=platform, bias=bias, progress=show)
    except KeyboardInterrupt:
        close_bars()
        print(f"interrupted; run the same command again to resume from the last complete chunk in {args.out}",
              file=sys.stderr)
        return 130
    finally:
        close_bars()
        target.close()
    if result.n_frames > result.frames_requested:
        print(f"{result.out_dir} already holds {result.n_frames} frames ({result.ps_done / 1000:g} ns), longer than "
              f"the {args.ns:g} ns asked; nothing was done")
        return 0
    if result.resumed and result.frames_written == 0:
        print(f"{result.out_dir} already holds this complete run: {result.n_frames} frames "
              f"({result.ps_done / 1000:g} ns, {result.platform} platform); nothing was done")
        return 0
    weights = "; frames carry metadynamics log-weights (boltzgen.md.load_log_weights)" if result.biased else ""
    print(f"{'resumed; ' if result.resumed else ''}{result.n_frames} frames ({result.ps_done / 1000:g} ns, "
          f"{result.platform} platform) in {result.out_dir}; load them with "
          f"boltzgen.md.load_trajectory({str(result.out_dir)!r}){weights}")
    return 0


def _run_md_seeds(args, bias) -> int:
    """``boltzgen md --seeds``: one run per seed in OUT/seed-SEED, in this process, over workers or on Ray."""
    from . import md
    from .pipeline import md_seeds
    from .pipeline.tasks import Spread, SystemRef, parse_seeds, share_compile_cache

    if args.seed is not None:
        raise ValueError("give either --seed (one run) or --seeds (several runs, a folder each), not both")
    seeds = parse_seeds(args.seeds)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    spread = Spread(workers=args.workers, ray=args.ray, threads=args.threads)
    platform, notice = md.md_platform(args.platform)
    if notice is not None:
        print(f"boltzgen md: {notice}", file=sys.stderr)
    if not spread.in_process:
        share_compile_cache()
    ref = SystemRef(args.system, _temperature(args).get("temperature"))
    options = dict(timestep_fs=args.timestep, friction_per_ps=args.friction, save_every_ps=args.save_every,
                   chunk_frames=args.chunk_frames, equilibration_ps=args.equilibration, platform=platform, bias=bias)
    print(f"{len(seeds)} MD runs of {args.system} (seeds {args.seeds}) into {args.out}/seed-*"
          + ("" if spread.in_process else f" on {f'Ray ({args.ray})' if args.ray else f'{args.workers} workers'}"),
          file=sys.stderr)
    try:
        results = md_seeds(ref, args.ns, args.out, seeds, spread=spread, **options)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume every run in {args.out}/seed-*", file=sys.stderr)
        return 130
    for seed, result in zip(seeds, results):
        weights = " (metadynamics log-weights)" if result.biased else ""
        print(f"seed {seed}: {result.n_frames} frames ({result.ps_done / 1000:g} ns, {result.platform} platform) "
              f"in {result.out_dir}{weights}")
    return 0


def add_analyze_command(sub) -> None:
    """``boltzgen analyze DIR [DIR ...] [--reference DIR ...]``: weighted basins, free energies, plots."""
    p = sub.add_parser(
        "analyze", help="basin populations, free energies and plots of MD or sample runs (vs a reference)",
        description="Read MD runs (`boltzgen md`, plain or biased) or sample runs (`boltzgen sample`), always "
                    "weighted, and print what the molecule's system YAML declares (systems/README.md): the "
                    "population of each basin and each free energy dF = -ln(P(state)/P(reference)) in kT (for "
                    "alanine dipeptide: its backbone basins, dF(phi>0 vs phi<0) and dF(0<=phi<2 rad vs the "
                    "rest)), then the weighted mean energy, ESS and, for amino acids, the fraction of L "
                    "configurations. Errors: with several DIRs (independent runs) the standard error over runs; "
                    "one MD DIR: from each figure's statistical inefficiency (pymbar; with the effective "
                    "sample size and a suggested burn-in, which is not dropped), or over --blocks contiguous "
                    "blocks; one sample DIR: none (particles of one run are correlated). With --reference: the "
                    "same figures for the reference runs, the free energy differences, energy W2 and bond "
                    "lengths against them (and, with phi and psi, the Ramachandran KL divergence and torus W2).")
    p.add_argument("run", metavar="DIR", nargs="+",
                   help="run folders (independent runs); a folder written by `boltzgen sample`/`run` stands for "
                        "its run-000, run-001, ... folders")
    p.add_argument("--reference", nargs="+", default=None, metavar="DIR",
                   help="reference run folders (e.g. biased MD) to compare with")
    p.add_argument("--blocks", type=int, default=None, metavar="N",
                   help="error bars of a single MD DIR over N contiguous blocks (default: from the statistical "
                        "inefficiency of each figure)")
    p.add_argument("--system", default=None, metavar="SYSTEM",
                   help="the named system or system YAML whose collective variables, basins and free energies to "
                        "report (default: the system each run recorded, when it is a named system)")
    p.add_argument("--basins", default=None, metavar="FILE",
                   help="YAML/JSON file of basins replacing those the molecule declares: 'basins_deg: {NAME: {CV: "
                        "[low, high]}}' in degrees, as in a system YAML; 'basins_rad:' the same in radians, as "
                        "--json writes it; or, without either key, NAME -> {phi: [low, high], psi: [low, high]} in "
                        "radians. Arcs are half-open and wrap through 180 deg when low > high")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures to this JSON file")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write ramachandran.png, phi_profile.png and energy_histogram.png to this folder")
    p.set_defaults(func=_analyze)


def _analyze(args) -> int:
    from . import systems
    from .analysis import load_basins
    from .analysis.report import analyze_runs, format_analysis

    if args.blocks is not None and args.blocks < 2:
        raise ValueError(f"--blocks must be at least 2 (error bars need two blocks), got {args.blocks}")
    basins = load_basins(args.basins) if args.basins else None
    try:
        cvs = systems.collective_variables(args.system) if args.system else None
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"--system {args.system}: {exc}") from exc
    runs = _expand_job_folders(args.run)
    reference = _expand_job_folders(args.reference) if args.reference else None
    report = analyze_runs(runs, reference, basins=basins, blocks=args.blocks, plot_dir=args.plots, cvs=cvs)
    if args.json:
        try:
            report.write_json(args.json)
        except OSError as exc:
            raise ValueError(f"--json {args.json} cannot be written ({exc.strerror or exc})") from exc
    print(format_analysis(report))
    if args.json:
        print(f"  figures: {args.json}")
    return 0


def _expand_job_folders(folders: list[str]) -> list[str]:
    """Each folder that ``sample``/``run``/``free-energy`` wrote (run-000, run-001, ... beside summary.json) is
    replaced by its run folders, saying so in one line on stderr; other folders are kept as they are."""
    from pathlib import Path

    from .io import md_runs, sample_runs

    expanded = []
    for folder in folders:
        path = Path(folder)
        inner = [] if sample_runs.looks_like_sample_run(path) or md_runs.is_md_folder(path) else sample_runs.run_folders(path)
        if not inner:
            expanded.append(folder)
            continue
        names = ", ".join(d.name for d in inner) if len(inner) <= 4 else f"{inner[0].name} ... {inner[-1].name}"
        print(f"boltzgen analyze: {folder} holds the runs of one job; analysing its {len(inner)} run folder"
              f"{'s' if len(inner) > 1 else ''} ({names})", file=sys.stderr)
        expanded += [str(d) for d in inner]
    return expanded


def _set_threads(threads, label: str = "--threads") -> None:
    import torch

    if threads < 1:
        raise ValueError(f"{label} must be at least 1, got {threads}")
    if threads != torch.get_num_threads():  # an explicit set, only when it changes something
        torch.set_num_threads(threads)


def available_devices() -> list[str]:
    """The torch devices this machine can compute on: cpu, then cuda:0 ... and mps / xpu:0 ... where present."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{k}" for k in range(xpu.device_count())]
    return found


def _check_device(device: str, label: str = "--device") -> None:
    """Refuse a --device that torch does not know or that this machine lacks, in one line naming the flag
    (``label``: the flag, or "FILE: device" for a value from --config)."""
    import torch

    available = available_devices()
    listing = f"available: {', '.join(available)}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{label} {device}: not a torch device here; {listing}") from None
    kinds = {d.split(":")[0] for d in available}
    if parsed.type == "cuda" and "cuda" not in kinds:
        raise ValueError(f"{label} {device}: no CUDA device here; {listing}")
    if parsed.type not in kinds:
        raise ValueError(f"{label} {device}: not a device this machine can compute on; {listing}")
    if parsed.index is not None and parsed.type != "cpu" and f"{parsed.type}:{parsed.index}" not in available:
        raise ValueError(f"{label} {device}: no such {parsed.type} device here; {listing}")


# ---- options that --config may also set ----------------------------------------------------------
#: Flags that set one field of a settings dataclass: dest -> field path in its config section. The value
#: comes from the command line, else the config file's section, else the dataclass default.
SAMPLING_FLAGS = {"levels": ("n_levels",), "level_moves": ("level_moves",), "level_torsions": ("level_torsions",),
                  "bridge_moves": ("bridge", "moves"), "bridge_torsions": ("bridge", "torsions"),
                  "mixing_moves": ("mixing", "moves"), "torsion_moves": ("mixing", "torsions", "moves"),
                  "torsion_reflect": ("mixing", "torsions", "reflect"), "memory_budget": ("memory_budget",),
                  "tilt": ("tilt",)}
TRAINING_FLAGS = {"dsm_steps": ("dsm_steps",), "clf_steps": ("clf_steps",), "hidden": ("hidden",),
                  "network_blocks": ("n_blocks",), "coordinates": ("coordinates",), "weighting": ("weighting",),
                  "tsm_weight": ("tsm_weight",), "energy_weight": ("energy_weight",), "seed": ("seed",),
                  "regression_frames": ("regression_frames",), "calibration_harmonics": ("calibration_harmonics",),
                  "calibration_samples": ("calibration_samples",), "learning_rate": ("learning_rate",),
                  "own_samples": ("own_samples",),
                  "own_weight": ("own_weight",), "own_every": ("own_every",), "own_pool": ("own_pool",)}
#: The config sections and the commands that read them (a shared file's key for another command is named).
SECTION_COMMANDS = {"sampling": "sample, run and free-energy", "switching": "free-energy", "training": "train"}


def _option(p, *flags, default, **kwargs):
    """Add a run option that --config may also set. It parses as None when not given, so the command line,
    then the config file, then ``default`` decide (:func:`_resolve_options`); its config key is its dest."""
    action = p.add_argument(*flags, default=None, **kwargs)
    options = p.get_default("run_options")
    if options is None:
        options = {}
        p.set_defaults(run_options=options)
    kind = bool if kwargs.get("action") == "store_true" else kwargs.get("type", str)
    options[action.dest] = (flags[0], default, kind)
    return action


def _add_config_option(p, sections: str) -> None:
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help=f"settings from a YAML file: run options by flag name (e.g. particles: 1000, no_compile: "
                        f"true) and {sections} mirroring the settings dataclasses field by field; flags given on "
                        "the command line override the file (see docs/cli.md)")


def _add_temperature_option(p, config: bool = True) -> None:
    kwargs = dict(type=float, metavar="K", help="temperature in K, which sets kT of the force field's Boltzmann "
                                                "distribution (default: the system's, 300 K for the named systems)")
    if config:
        _option(p, "--temperature", default=None, **kwargs)
    else:
        p.add_argument("--temperature", default=None, **kwargs)


def _resolve_options(args, sections: dict) -> dict:
    """Fill in the run options of ``args`` (the command line, else --config, else the default) and return the
    settings sections {name: dataclass} from --config (the given defaults where it has none).

    Afterwards ``args.labels`` names each run option for error messages: its flag, or "FILE: key" when
    its value came from the config file.
    """
    from .config import read_config

    specs = args.run_options
    config = None
    if args.config is not None:
        config = read_config(args.config, f"boltzgen {args.command}", sections,
                             {dest: kind for dest, (_, _, kind) in specs.items()}, SECTION_COMMANDS)
    args.labels, args.explicit = {}, set()  # explicit: given on the command line or in the config file
    for dest, (flag, default, _) in specs.items():
        args.labels[dest] = flag
        if getattr(args, dest) is None:
            if config is not None and dest in config.options:
                setattr(args, dest, config.options[dest])
                args.labels[dest] = f"{args.config}: {dest}"
                args.explicit.add(dest)
            else:
                setattr(args, dest, default)
        else:
            args.explicit.add(dest)
    return dict(config.sections) if config is not None else dict(sections)


def _apply_flags(settings, args, flags: dict):
    """``settings`` with the fields of the flags given on the command line (not None) replaced."""
    from .config import with_field

    for dest, path in flags.items():
        value = getattr(args, dest)
        if value is not None:
            try:
                settings = with_field(settings, path, value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"--{dest.replace('_', '-')}: {exc}") from exc
    return settings


def _temperature(args) -> dict:
    """{"temperature": K} for ``systems.load`` when --temperature (or the config's temperature) is given, else {}."""
    import math

    t = args.temperature
    if t is None:
        return {}
    label = getattr(args, "labels", {}).get("temperature", "--temperature")
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{label} must be a positive temperature in K, got {t:g}")
    return {"temperature": float(t)}


def _add_spread_options(p, what: str = "run") -> None:
    """--workers and --ray: where the independent runs run (:mod:`boltzgen.pipeline.tasks`)."""
    _option(p, "--workers", type=int, default=1, metavar="N",
            help=f"local worker processes, one {what} each at a time (default 1: every {what} in this process); "
                 f"each worker gets max(1, --threads / N) torch threads; a {what}'s result does not depend on "
                 "where it ran")
    _option(p, "--ray", default=None, metavar="ADDRESS",
            help=f"spread the {what}s over an existing Ray cluster: auto (one started here by `ray start`) or "
                 "HOST:PORT; each task uses --threads threads (default 1). Needs Ray: "
                 'pip install -e ".[cluster]"; on several machines --out must be on a shared file system')


def _spread(args):
    """The Spread of --workers/--ray (with --threads as the total of local workers, per task on Ray)."""
    from .pipeline.tasks import Spread, share_compile_cache

    label = args.labels.get("workers", "--workers")
    if isinstance(args.workers, bool) or not isinstance(args.workers, int) or args.workers < 1:
        raise ValueError(f"{label} must be at least 1, got {args.workers}")
    threads = args.threads if "threads" in getattr(args, "explicit", set()) else None
    spread = Spread(workers=args.workers, ray=args.ray, threads=threads)
    share_compile_cache()  # before any compile or worker: all of them share torch's on-disk compile cache
    return spread


def _add_sampling_options(p, particles: int, runs: int, run_range: bool = True) -> None:
    from .sampling import SampleSettings

    d = SampleSettings()
    _option(p, "--particles", type=int, default=particles, help=f"particles per run (default {particles})")
    _option(p, "--runs", type=int, default=runs, help=f"independent runs; error bars are over runs (default {runs})")
    p.add_argument("--levels", type=int, default=None,
                   help=f"reverse-diffusion levels of the model (default {d.n_levels}, unless the model file "
                        "recommends other sampler settings: the summary lists those that are not the defaults)")
    p.add_argument("--level-moves", type=int, default=None,
                   help=f"MALA moves per level (default {d.level_moves}, unless the model file recommends another)")
    p.add_argument("--level-torsions", type=int, default=None,
                   help=f"torsion moves on the model's energy after each level MALA move (default {d.level_torsions})")
    p.add_argument("--bridge-moves", type=int, default=None,
                   help=f"MALA moves per bridge step (default {d.bridge.moves})")
    p.add_argument("--bridge-torsions", type=int, default=None,
                   help=f"torsion moves after each bridge MALA move (default {d.bridge.torsions})")
    p.add_argument("--mixing-moves", type=int, default=None,
                   help=f"MALA moves per particle at the force field after the bridge (default {d.mixing.moves}; 0: none)")
    p.add_argument("--torsion-moves", type=int, default=None,
                   help=f"torsion moves after each mixing MALA move (default {d.mixing.torsions.moves}; 0: MALA only)")
    p.add_argument("--torsion-reflect", type=float, default=None,
                   help="probability that a torsion move reflects the dihedrals (theta -> -theta) instead of "
                        f"turning them by uniform angles (default {d.mixing.torsions.reflect})")
    p.add_argument("--memory-budget", type=_memory_size, default=None, metavar="SIZE",
                   help="memory one evaluation chunk may use, e.g. 8G or 500M: each run measures its peak per "
                        f"particle and evaluates budget/peak particles at a time (default: {d.chunk_size} particles)")
    p.add_argument("--tilt", type=float, default=None, metavar="FRACTION",
                   help="apply this fraction of the model file's sampling tilt: the run samples a target that "
                        "gives rare basins more mass and corrects its weights exactly at the end, so they keep "
                        "lineages (0 to 1; default: 1 when the model file carries a tilt, else 0)")
    _option(p, "--seed", type=int, default=0, help="random seed of the runs (default 0)")
    _option(p, "--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    _option(p, "--threads", type=int, default=2, help="torch threads (default 2)")
    _option(p, "--no-compile", action="store_true", default=False,
            help="run the torch force field eager (skips its 20-80 s compilation; slower on large batches)")
    _option(p, "--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
            help="save the run in progress at most this often, so a killed job resumes (default 30)")
    _add_spread_options(p)
    if run_range:
        _option(p, "--run-range", default=None, metavar="A:B",
                help="make only runs A to B-1 of the job's --runs (counted from 0: 0:2 makes run-000 and run-001), "
                     "with the seeds they have in the whole job; parts made in separate folders (or machines) and "
                     "copied into one are pooled by `boltzgen summarize`")
    _add_temperature_option(p)


def _memory_size(text: str) -> int:
    from .memory import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_defaults(model_path):
    """The SampleSettings the model file recommends (:func:`boltzgen.sampling.model_settings`): the base that
    --config and the flags override."""
    from .models import load_model_file
    from .sampling import model_settings

    return model_settings(load_model_file(model_path), f"--model {model_path}")


def _sample_settings(args, base):
    """Threads, device, run counts and the SampleSettings of `sample`, `run` and `free-energy` (``base``: from
    --config or the defaults; the flags given override it), all checked before any work."""
    from ._checks import check_count, check_probability

    _set_threads(args.threads, args.labels["threads"])
    _check_device(args.device, args.labels["device"])
    for name in ("particles", "runs"):
        if getattr(args, name) < 1:
            raise ValueError(f"{args.labels[name]} must be at least 1, got {getattr(args, name)}")
    if args.levels is not None:
        check_count(args.levels, "--levels")
    for flag in ("level_moves", "level_torsions", "bridge_moves", "bridge_torsions", "mixing_moves", "torsion_moves"):
        if getattr(args, flag) is not None:
            check_count(getattr(args, flag), "--" + flag.replace("_", "-"), minimum=0)
    if args.torsion_reflect is not None:
        check_probability(args.torsion_reflect, "--torsion-reflect")
    if args.tilt is not None:
        check_probability(args.tilt, "--tilt")
    return _apply_flags(base, args, SAMPLING_FLAGS)


def add_sample_command(sub) -> None:
    """``boltzgen sample SYSTEM --model MODEL --out DIR``: weighted Boltzmann samples by SMC."""
    p = sub.add_parser(
        "sample", help="sample a system's Boltzmann distribution with a trained model and SMC",
        description="Independent SMC runs: particles from the model's Gaussian through its reverse-diffusion "
                    "levels (exact weights, MALA moves), then a bridge to the force field's energy. Writes "
                    "DIR/run-000 ... (samples.trr + topology.pdb, log_weights.npy, energies.npy, "
                    "origins.npy, diagnostics.json) and DIR/summary.json. A model of the same molecule under "
                    "another force field works (recalibration) and says so.")
    p.add_argument("system", help="a named system (see `boltzgen systems`) or the path of a system YAML")
    p.add_argument("--model", required=True,
                   help="the folder `boltzgen train --out DIR` wrote (its model.pt), a model file, or a named system "
                        "whose shipped model to use (e.g. alanine-dipeptide)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new or empty folder, or the folder of this same job to resume it after a kill")
    _add_sampling_options(p, particles=2500, runs=4)
    _add_config_option(p, "the section sampling: (boltzgen.sampling.SampleSettings)")
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    from . import systems
    from .pipeline import sample_model

    from .cvs import atom_indices

    from .pipeline.tasks import SystemRef, parse_run_range

    model = systems.resolve_model(args.model)
    sections = _resolve_options(args, {"sampling": _model_defaults(model)})
    settings = _sample_settings(args, sections["sampling"])
    spread = _spread(args)
    run_range = parse_run_range(args.run_range, args.runs)
    cvs = systems.collective_variables(args.system)
    target = systems.load(args.system, **_temperature(args))
    try:
        atom_indices(cvs, target.topology)  # a CV naming an atom the molecule lacks fails now, not after sampling
        report = sample_model(target if spread.in_process else SystemRef(args.system, args.temperature), model,
                              args.out, particles=args.particles, runs=args.runs, compile=not args.no_compile,
                              checkpoint_every=args.checkpoint_every, settings=settings, seed=args.seed,
                              device=args.device, progress=True, cvs=cvs, spread=spread, run_range=run_range)
    finally:
        target.close()
    print(format_sample_summary(report.summary))
    print(f"samples: {report.out}/run-*  summary: {report.out}/summary.json")
    return 0


def format_sample_summary(summary: dict) -> str:
    """The table printed at the end of ``boltzgen sample`` and ``boltzgen run``."""
    def pm(value, err, digits=3):
        if value is None:
            return "n/a"
        return f"{value:.{digits}f}" + (f" +- {err:.{digits}f}" if err is not None else " (one run: no error bar)")

    lines = [f"{summary['system']}: {summary['n_runs']} runs x {summary['n_particles_per_run']} particles, "
             f"model {summary['model']}" + (" (recalibration: trained for "
                                            f"{summary['model_system']})" if summary["recalibration"] else "")]
    for fe in summary.get("free_energies", []):  # those the molecule declares
        key, label = fe["key"], f"dF({fe['state']} vs {fe['reference']})"
        value, err = summary[f"delta_f_{key}_kT"], summary[f"delta_f_{key}_err_kT"]
        lines.append(f"  {label:<23} {pm(value, err)} kT {format_in_molar_units(value, err, summary.get('temperature_K'))}"
                     .rstrip())
    lines += [f"  log Z                   {pm(summary['log_z'], summary['log_z_err'])}",
              f"  final ESS fraction      {summary['ess_fraction']:.3f}   one-step bridge ESS {summary['bridge_ess_fraction']:.4f}"
              f"   ESS at the model's last level {summary['levels_ess_fraction']:.3f}",
              f"  lineages from t = 1     {', '.join(str(n) for n in summary['lineages'])} (of {summary['n_particles_per_run']})",
              *([f"    after the levels      {', '.join(str(n) for n in levels)} (the rest are lost in the bridge)"]
                if None not in (levels := summary.get("levels_lineages", [None])) else []),
              *_state_lineage_lines(summary),
              *([f"  tilt                    {tilt:g} of the model's sampling tilt; ESS after its "
                 f"correction {summary['tilt_ess_fraction']:.3f}"] if (tilt := summary.get('tilt_applied', 0.0)) else []),
              f"  mixing at the force field  {summary['settings']['mixing']['moves']} MALA moves per particle, "
              f"torsion acceptance {summary['torsion_acceptance']:.3f}",
              *_changed_settings_lines(summary),
              f"  evaluations             target {summary['target_evaluations']:,}   model {summary['model_evaluations']:,}",
              f"  time                    {summary['seconds']:.0f} s"]
    return "\n".join(lines)


def _changed_settings_lines(summary: dict) -> list[str]:
    """A line naming the sampler settings that are not the defaults (from flags, --config or the model file's
    recommendation), so a table says how it was made; [] when all are."""
    from .sampling import settings_changes

    changes = {k: v for k, v in settings_changes(summary.get("settings", {})).items() if k != "tilt"}
    if not changes:
        return []
    return ["  settings (not default)  " + ", ".join(f"{k} {v}" for k, v in changes.items())]


def _state_lineage_lines(summary: dict) -> list[str]:
    """The summary's lines on the lineages carrying each declared free energy's rarer side."""
    from .analysis.lineages import format_state_lineages

    return format_state_lineages(summary.get("state_lineages") or {}, summary["n_runs"])


def _free_folder(stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ...: the first that is new, empty, or holds an unfinished job
    (job.json without summary.json), which the same command then resumes."""
    from pathlib import Path

    k, name = 1, stem
    while Path(name).exists() and any(Path(name).iterdir()) and not (
            (Path(name) / "job.json").is_file() and not (Path(name) / "summary.json").is_file()):
        k += 1
        name = f"{stem}-{k}"
    return name


def add_run_command(sub) -> None:
    """``boltzgen run SYSTEM``: the whole job on a named system with its shipped model."""
    p = sub.add_parser(
        "run", help="the whole job on a named system with its shipped model: sample, correct, analyse",
        description="Sample a named system with the model shipped for it (see `boltzgen systems`), correct "
                    "the samples exactly to the force field by SMC, and analyse them: a summary table, "
                    "DIR/summary.json and the plots.")
    p.add_argument("system", help="a named system that ships a model, e.g. alanine-dipeptide")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="a new or empty folder, or this job's folder to resume (default: ./boltzgen-SYSTEM, or -2, "
                        "-3, ... if that one holds a finished job; an unfinished one is resumed)")
    _add_sampling_options(p, particles=1000, runs=4)
    _add_config_option(p, "the section sampling: (boltzgen.sampling.SampleSettings)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from . import systems
    from .pipeline import run_named

    from .pipeline.tasks import parse_run_range

    sections = _resolve_options(args, {"sampling": _model_defaults(systems.shipped_model(args.system))})
    settings = _sample_settings(args, sections["sampling"])
    spread = _spread(args)
    run_range = parse_run_range(args.run_range, args.runs)
    temperature = _temperature(args).get("temperature")
    out = args.out or _free_folder(f"boltzgen-{args.system}")
    result = run_named(args.system, out, particles=args.particles, runs=args.runs, settings=settings,
                       seed=args.seed, device=args.device, progress=True, compile=not args.no_compile,
                       checkpoint_every=args.checkpoint_every, temperature=temperature, spread=spread,
                       run_range=run_range)
    print(format_sample_summary(result.sample.summary))
    print(result.analysis_text)
    print(f"summary: {result.sample.out}/summary.json")
    return 0


def add_free_energy_command(sub) -> None:
    """``boltzgen free-energy --from A --to B --out DIR``: F_B - F_A between two states of a molecule."""
    p = sub.add_parser(
        "free-energy", help="free energy between two states of a molecule (vacuum -> solvent, force field A -> B)",
        description="F_B - F_A in kT two ways, each with an error bar over independent runs: an SMC bridge "
                    "from the Boltzmann generator's weighted samples of A to B, and the difference of the "
                    "generator's log Z of each state. With --md-from/--md-to (boltzgen md folders) or "
                    "--reference-ns NS (made here: phi metadynamics of both states) BAR on MD is the check. Writes "
                    "DIR/run-000 ... (the bridge's weighted samples of B; diagnostics.json with the ESS "
                    "of every bridge step) and DIR/summary.json (delta_f_kT, delta_f_err_kT, ...).")
    p.add_argument("--from", dest="system_from", required=True, metavar="A",
                   help="state A: a named system or a system YAML")
    p.add_argument("--to", dest="system_to", required=True, metavar="B", help="state B: a named system or a system YAML")
    p.add_argument("--model", default=None,
                   help="a `boltzgen train` folder or model file, or a named system whose shipped model to use "
                        "(default: A's shipped model, else B's)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    p.add_argument("--md-from", nargs="+", default=None, metavar="DIR", help="MD runs of A for the BAR reference")
    p.add_argument("--md-to", nargs="+", default=None, metavar="DIR", help="MD runs of B (as many as of A)")
    _option(p, "--reference-ns", type=float, default=None, metavar="NS",
            help="make the BAR reference: NS ns of phi metadynamics per run and state (after 1 ns of deposition)")
    _add_sampling_options(p, particles=1000, runs=4, run_range=False)
    _add_config_option(p, "the sections sampling: (boltzgen.sampling.SampleSettings, the generator runs) and "
                          "switching: (boltzgen.switching.SwitchSettings, the bridge A -> B)")
    p.set_defaults(func=_free_energy)


def _free_energy(args) -> int:
    from . import systems
    from .pipeline import free_energy_between
    from .switching import SwitchSettings

    model = systems.resolve_model(args.model, (args.system_from, args.system_to))
    sections = _resolve_options(args, {"sampling": _model_defaults(model), "switching": SwitchSettings()})
    settings = _sample_settings(args, sections["sampling"])
    if args.reference_ns is not None and not args.reference_ns > 0:
        raise ValueError(f"{args.labels['reference_ns']} must be a positive length in ns, got {args.reference_ns}")
    from .pipeline.tasks import SystemRef

    spread = _spread(args)
    temperature = _temperature(args).get("temperature")
    # the job loads both states from these (and so does every worker when the runs are spread)
    report = free_energy_between(SystemRef(args.system_from, temperature), SystemRef(args.system_to, temperature),
                                 model, args.out, particles=args.particles, runs=args.runs, settings=settings,
                                 switch_settings=sections["switching"], seed=args.seed, device=args.device,
                                 md_from=args.md_from, md_to=args.md_to, reference_ns=args.reference_ns,
                                 progress=True, compile=not args.no_compile, checkpoint_every=args.checkpoint_every,
                                 spread=spread)
    print(format_free_energy_summary(report.summary))
    print(f"summary: {report.out}/summary.json")
    return 0


def format_free_energy_summary(summary: dict) -> str:
    """The table printed at the end of ``boltzgen free-energy``."""
    def in_molar(value, err):
        return format_in_molar_units(value, err, summary.get("temperature_K"))

    def pm(value, err):
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" +- {err:.3f}" if err is not None else " (one run: no error bar)")

    lines = [f"F({summary['to']}) - F({summary['from']}): {summary['n_runs']} runs x "
             f"{summary['n_particles_per_run']} particles, model {summary['model']}",
             f"  SMC bridge A -> B       {pm(summary['delta_f_kT'], summary['delta_f_err_kT'])} kT "
             f"{in_molar(summary['delta_f_kT'], summary['delta_f_err_kT'])}".rstrip(),
             f"  log Z_A - log Z_B       {pm(summary['delta_f_log_z_kT'], summary['delta_f_log_z_err_kT'])} kT "
             f"{in_molar(summary['delta_f_log_z_kT'], summary['delta_f_log_z_err_kT'])}".rstrip(),
             f"  bridge ESS              final {summary['ess_fraction']:.3f}, lowest {summary['min_ess_fraction']:.3f}"]
    ref = summary.get("reference")
    if ref is not None:
        lines.append(f"  reference               {pm(ref['delta_f_kT'], ref['delta_f_err_kT'])} kT "
                     f"{in_molar(ref['delta_f_kT'], ref['delta_f_err_kT'])} ({ref['method']})".replace("  (", " ("))
    lines += [f"  evaluations             target {summary['target_evaluations']:,}   model {summary['model_evaluations']:,}",
              f"  time                    {summary['seconds']:.0f} s"]
    return "\n".join(lines)


def add_summarize_command(sub) -> None:
    """``boltzgen summarize OUT``: summary.json as a reduce over a sampling job's run folders."""
    p = sub.add_parser(
        "summarize", help="write OUT/summary.json from the run folders in OUT (pool runs made by separate jobs)",
        description="Reduce the complete run folders (run-000, ...) of a `boltzgen sample`/`run` job folder into "
                    "OUT/summary.json. Runs of the same job made elsewhere (e.g. two halves on two machines, "
                    "copied into one folder with their job.json) are pooled like one job's.")
    p.add_argument("out", metavar="OUT", help="a job folder written by `boltzgen sample` or `boltzgen run`")
    p.set_defaults(func=_summarize)


def _summarize(args) -> int:
    from .pipeline import summarize

    print(format_sample_summary(summarize(args.out)))
    print(f"summary: {args.out}/summary.json")
    return 0


def add_tilt_command(sub) -> None:
    """``boltzgen tilt SYSTEM --model MODEL --out DIR``: a copy of a model file with a sampling tilt (DIR/model.pt)."""
    p = sub.add_parser(
        "tilt", help="write a copy of an internal-coordinate model file with a tilt that balances the declared "
                     "free energies (its runs then keep lineages in rare basins)",
        description="Draw the model's own samples (its levels alone: no force field), measure each declared "
                    "one-dihedral free energy on them, and store a tilt (the first --harmonics harmonics of each side's "
                    "step) that would bring both "
                    "sides of each to about equal mass. `boltzgen sample`/`run` with this file sample the tilted "
                    "target and correct every weight exactly at the end (--tilt 0 turns it off).")
    p.add_argument("system", help="a named system (see `boltzgen systems`) or the path of a system YAML")
    p.add_argument("--model", required=True, help="an internal-coordinate model file, a `boltzgen train` folder or a "
                                                  "named system whose shipped model to use")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder; the model file is DIR/model.pt")
    p.add_argument("--samples", type=int, default=5000, help="own samples to fit on (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the own samples (default 0)")
    p.add_argument("--harmonics", type=int, default=1,
                   help="Fourier harmonics of each side's step (default 1; more: closer to a step)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(func=_tilt)


def _tilt(args) -> int:
    from . import systems
    from ._checks import check_count
    from .pipeline import fit_sampling_tilt

    check_count(args.samples, "--samples")
    check_count(args.harmonics, "--harmonics")
    _set_threads(args.threads, "--threads")
    model = systems.resolve_model(args.model)
    cvs = systems.collective_variables(args.system)
    target = systems.load(args.system)
    try:
        entry = fit_sampling_tilt(target, model, args.out, cvs, samples=args.samples, seed=args.seed,
                                  harmonics=args.harmonics)
    finally:
        target.close()
    for key, delta_f in entry["balanced_delta_f_kT"].items():
        print(f"  {key:<23} the model's own dF {delta_f:.3f} kT, balanced by the tilt")
    print(f"model with a sampling tilt: {args.out}/model.pt")
    return 0


def add_train_command(sub) -> None:
    """``boltzgen train SYSTEM --data DIR [--data DIR ...] --out DIR``: a molecular diffusion EBM."""
    from .pipeline import TrainSettings
    from .systems import TRAINED_MODEL_FILE as MODEL_FILE

    d = TrainSettings()
    p = sub.add_parser(
        "train", help="train a diffusion energy model of a molecule on MD frames (resumable)",
        description="Train a diffusion energy model (internal coordinates, or rotation- and translation-invariant "
                    "Cartesian) on the frames of "
                    "`boltzgen md` runs (biased runs are reweighted by their log-weights): denoising score "
                    "matching (with target score matching on the force field's forces at low noise), then "
                    "DSM + DiffCLF, in one resumable run (rerun the same command after Ctrl-C). Writes "
                    f"DIR/{MODEL_FILE} (DSM + DiffCLF; `boltzgen sample --model DIR` takes it), DIR/model-dsm.pt "
                    "(the DSM-phase snapshot), DIR/model.ckpt (the checkpoint) and DIR/model.json (the report), "
                    "and prints the model's quality on held-out frames.")
    p.add_argument("system", help="a named system (see `boltzgen systems`) or the path of a system YAML")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="a `boltzgen md` folder (repeat)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help=f"output folder (created; rerun the same command to resume): {MODEL_FILE}, model-dsm.pt, "
                        "model.ckpt and model.json go inside it")
    p.add_argument("--holdout", action="append", default=None, metavar="DIR",
                   help="MD folder kept out of training for the quality report (repeat; default: the last "
                        f"{d.holdout_fraction:.0%}% of every --data run)")
    p.add_argument("--dsm-steps", type=int, default=None, help=f"DSM steps (default {d.dsm_steps})")
    p.add_argument("--clf-steps", type=int, default=None,
                   help=f"DSM + DiffCLF steps after them (default {d.clf_steps})")
    p.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                   help=f"peak learning rate of the DSM phase (default {d.learning_rate}; lower, e.g. "
                        f"{d.clf_learning_rate}, when fine-tuning with --init)")
    _option(p, "--init", default=None, metavar="MODEL",
            help="start from this model (a model file, a `boltzgen train` folder or a named system's shipped model) "
                 "instead of a fresh network: fine-tuning, e.g. a vacuum model on implicit-solvent frames; its "
                 "network, noise schedule and coordinate standardisation are kept")
    p.add_argument("--hidden", type=int, default=None, help=f"network width (default {d.hidden})")
    p.add_argument("--network-blocks", type=int, default=None, metavar="N",
                   help=f"residual blocks of the network (default {d.n_blocks})")
    _renamed(p, "--blocks", "--network-blocks", "`analyze --blocks` counts error blocks")
    p.add_argument("--coordinates", choices=("internal", "cartesian"), default=None,
                   help="internal: bonds, angles and dihedrals from the bond graph (keeps chirality); cartesian: "
                        f"centre-free positions with a pair-distance network (default {d.coordinates})")
    p.add_argument("--weighting", choices=("boltzmann", "biased"), default=None,
                   help="draw frames by their Boltzmann weights (default) or ignore the weights and learn the "
                        "biased distribution")
    p.add_argument("--tsm-weight", type=float, default=None,
                   help="weight of target score matching with the force field's forces at low noise (0: DSM + "
                        f"DiffCLF only; default {d.tsm_weight})")
    p.add_argument("--energy-weight", type=float, default=None,
                   help="weight of energy matching with the force field's energies at low noise, which fixes the "
                        f"basins' relative masses (0: off; default {d.energy_weight})")
    p.add_argument("--regression-frames", choices=("weighted", "drawn"), default=None,
                   help="frames that target score matching and energy matching fit: weighted (the DSM batch, drawn by "
                        "Boltzmann weight) or drawn (uniform over the frames as MD sampled them, so a rare basin that "
                        f"biased MD visited still counts; default {d.regression_frames})")
    p.add_argument("--calibration-harmonics", type=int, default=None, metavar="K",
                   help="after training, tilt the model by a K-harmonic Fourier series of each rotatable dihedral, "
                        "fitted by maximum likelihood on the training frames (with their Boltzmann weights), fixing "
                        f"the masses of basins the scores cannot see (0: off; default {d.calibration_harmonics}); "
                        "with --init and no steps it calibrates an existing model on --data")
    p.add_argument("--calibration-samples", type=int, default=None, metavar="N",
                   help="estimate the calibration's normaliser on N of the model's own samples at t_min (the "
                        "sampler's levels, two rounds) instead of the training frames, so mass the model puts where "
                        "no frame is counts too and its own dihedral marginals match the data's (0: on the frames; "
                        f"default {d.calibration_samples}; needs --calibration-harmonics)")
    p.add_argument("--own-samples", type=int, default=None, metavar="N",
                   help="after training, score N of the model's own samples (the sampler's levels) against the force "
                        "field: the one-step bridge ESS a run will see, and the share of samples it rates 20 kT "
                        f"worse than typical, which held-out frames cannot show; about a minute for 1,000 samples of a "
                        f"42-atom molecule on one thread (0: skip; default {d.own_samples})")
    p.add_argument("--own-weight", type=float, default=None, metavar="W",
                   help="weight of the reverse direction: the variance of E - u on the model's own samples (the "
                        "sampler's levels, redrawn every --own-every steps), which moves mass off where the force "
                        f"field rates them far worse than typical, e.g. clashes (0: off; default {d.own_weight})")
    p.add_argument("--own-every", type=int, default=None, metavar="STEPS",
                   help=f"steps between fresh pools of the model's own samples (default {d.own_every})")
    p.add_argument("--own-pool", type=int, default=None, metavar="N",
                   help=f"own samples per pool (default {d.own_pool})")
    _option(p, "--baseline", action="store_true", default=False,
            help="also train a DSM-only model for the same number of steps and compare")
    p.add_argument("--seed", type=int, default=None, help=f"random seed (default {d.seed})")
    _option(p, "--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    _option(p, "--threads", type=int, default=1,
            help="torch threads (default 1: the network is small, and extra threads cost more than they gain on a "
                 "shared 2-core machine)")
    _add_temperature_option(p)
    _add_config_option(p, "the section training: (boltzgen.pipeline.TrainSettings)")
    p.set_defaults(func=_train)


def _train_model_path(out: str):
    """DIR/model.pt for ``train --out DIR``: --out is a folder for every command."""
    from pathlib import Path

    from .systems import TRAINED_MODEL_FILE as MODEL_FILE

    path = Path(out)
    if path.suffix == ".pt":
        raise ValueError(f"--out {out}: train writes a folder ({MODEL_FILE}, model-dsm.pt, model.ckpt and model.json "
                         f"go inside it), not a .pt file; give a folder, e.g. --out {path.with_suffix('')}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; give a folder for the model files")
    return path / MODEL_FILE


def _train(args) -> int:
    from . import systems
    from .pipeline import TrainSettings, output_paths, train_model

    model_path = _train_model_path(args.out)
    sections = _resolve_options(args, {"training": TrainSettings()})
    _set_threads(args.threads, args.labels["threads"])
    _check_device(args.device, args.labels["device"])
    settings = _apply_flags(sections["training"], args, TRAINING_FLAGS)
    settings.training_config()  # validate the step counts before any data is read
    init = None if args.init is None else systems.resolve_model(args.init, flag="--init")
    target = systems.load(args.system, **_temperature(args))
    try:
        report = train_model(target, args.data, model_path, settings, holdout_dirs=args.holdout,
                             baseline=args.baseline, device=args.device, progress=True, init=init,
                             cvs=systems.collective_variables(args.system))
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from {output_paths(model_path)['checkpoint']}",
              file=sys.stderr)
        return 130
    finally:
        target.close()
    print(format_train_report(report))
    return 0


def format_train_report(report) -> str:
    """The quality table printed at the end of ``boltzgen train``."""
    settings = report.settings
    if settings.dsm_steps + settings.clf_steps == 0:  # an --init model scored (and calibrated) as it is
        rows = [("model", report.quality)]
    elif settings.clf_steps == 0:  # no DiffCLF phase: the final model is the DSM model
        rows = [("DSM only", report.quality)]
    else:
        rows = [("DSM + DiffCLF", report.quality), ("DSM phase snapshot", report.dsm_quality)]
    if report.uncalibrated_quality is not None:
        rows[0] = (f"{rows[0][0]}, calibrated", report.quality)
        rows.insert(1, ("before calibration", report.uncalibrated_quality))
    if report.baseline_quality is not None:
        rows.append(("DSM only, same steps", report.baseline_quality))
    q = report.quality
    lines = [f"trained on {report.n_train} frames in {report.seconds / 60:.1f} min; quality on {report.n_holdout} "
             f"held-out frames ({report.holdout}; weighted ESS {q.data_ess:.0f}):",
             f"  {'model':<22} {'std(u-E) kT':>12} {'mean kT':>9} {'corr':>6} {'IS ESS':>7} {'dF(phi>0) kT':>13}"]
    for name, m in rows:
        lines.append(f"  {name:<22} {m.std_kT:12.2f} {m.mean_kT:9.2f} {m.correlation:6.3f} "
                     f"{m.importance_ess_fraction:7.3f} {m.delta_f_phi_positive_model_kT:13.2f}")
    lines.append(f"  {'data (held-out)':<22} {'':>12} {'':>9} {'':>6} {'':>7} {q.delta_f_phi_positive_data_kT:13.2f}")
    if len(q.residue_delta_f_data_kT) > 1:  # dF(phi>0) above is the first residue's: give each residue's
        lines.append("  dF(phi_i>0) kT by residue, data: " + ", ".join(f"{v:.2f}" for v in q.residue_delta_f_data_kT))
        lines += [f"    {name}: " + ", ".join(f"{v:.2f}" for v in m.residue_delta_f_model_kT) for name, m in rows]
    if q.score_errors:
        lines.append("  relative score error at t_min by coordinate kind: "
                     + ", ".join(f"{kind} {value:.3f}" for kind, value in q.score_errors.items()))
    own = report.own_sample_quality
    if own is not None:
        spread = own.delta_quantiles_kT
        lines.append(f"  the model's own {own.n_samples} samples at t_min (the sampler's levels): one-step bridge ESS "
                     f"{own.one_step_ess_fraction:.3f}; u-E about its median: 25-75 % {spread['25%']:+.1f}..."
                     f"{spread['75%']:+.1f} kT, {own.far_fraction:.1%} over +20 kT (mass the force field rejects)")
    if report.own_populations:
        lines.append("  where those samples put their mass: " + ", ".join(
            f"P({key}) {p:.3f}" for key, p in report.own_populations.items())
            + " (SMC lowers what the model overstates; a state it starves gets few lineages)")
    lines.append(f"  model energy+gradient: {report.energy_ms_per_1000:.1f} ms per 1,000 particles")
    lines.append(f"model: {report.model_path}  DSM snapshot: {report.dsm_model_path}  report: {report.report_path}")
    return "\n".join(lines)


def add_completion_command(sub) -> None:
    """``boltzgen completion bash|zsh``: a shell completion script generated from this parser."""
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for the sub-commands and their flags, generated from the "
                    "command's own argument parser. Bash: eval \"$(boltzgen completion bash)\" in ~/.bashrc; zsh: "
                    "eval \"$(boltzgen completion zsh)\" in ~/.zshrc.")
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
    p.set_defaults(func=_completion)


def _completion(args) -> int:
    print(completion_script(build_parser(), args.shell), end="")
    return 0


def _commands(parser: argparse.ArgumentParser) -> dict:
    """{name: sub-parser} of a parser with sub-commands (argparse keeps them in its actions)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _visible_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings of ``parser`` that --help shows (hidden renamed flags are left out)."""
    return [flag for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            for flag in a.option_strings]


def completion_script(parser: argparse.ArgumentParser, shell: str = "bash") -> str:
    """A bash (or zsh, through bashcompinit) completion script for ``parser``: its sub-commands, their flags,
    the fixed choices of a flag's value or a positional argument, and file names otherwise."""
    if shell not in ("bash", "zsh"):
        raise ValueError(f"shell must be bash or zsh, got {shell!r}")
    commands = _commands(parser)
    top = " ".join([*commands, *_visible_flags(parser)])
    values, flags, positionals = [], [], []
    for name, sub in commands.items():
        flags.append(f'            {name}) words="{" ".join(_visible_flags(sub))}" ;;')
        for a in sub._actions:
            if a.choices and a.option_strings and a.help != argparse.SUPPRESS:
                choices = " ".join(map(str, a.choices))
                values += [f'        "{name} {flag}") words="{choices}" ;;' for flag in a.option_strings]
            elif a.choices and not a.option_strings:
                positionals.append(f'            {name}) words="{" ".join(map(str, a.choices))}" ;;')
    script = f"""# {shell} completion for boltzgen, generated from its argument parser by `boltzgen completion {shell}`
_boltzgen() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" words="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{top}" -- "$cur"))
        return 0
    fi
    case "$cmd $prev" in
{chr(10).join(values)}
    esac
    if [[ -z "$words" && "$cur" == -* ]]; then
        case "$cmd" in
{chr(10).join(flags)}
        esac
    elif [[ -z "$words" ]]; then
        case "$cmd" in
{chr(10).join(positionals)}
        esac
    fi
    if [[ -n "$words" ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
    return 0
}}
complete -o filenames -o bashdefault -F _boltzgen boltzgen
"""
    if shell == "zsh":
        script = "#compdef boltzgen\nautoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # Bad input from the user: one clear line (messages that span lines are joined), no traceback.
        print(f"boltzgen {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
