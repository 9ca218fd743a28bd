"""The ``boltzgen`` command.

Each sub-command is a small function that parses its arguments, calls the library and shows
progress; library code itself never prints.
"""
from __future__ import annotations

import argparse
import sys


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
    return parser


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
        description="Minimise, equilibrate and run Langevin MD at the system's temperature, writing frames "
                    "and energies in chunks to --out. Run the same command again to resume or extend a run.")
    p.add_argument("system", help="a named system (see `boltzgen systems`) or the path of a system YAML")
    p.add_argument("--ns", type=float, required=True, help="production length in ns")
    p.add_argument("--out", required=True, help="output folder (resumed if it holds this run)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--save-every", type=float, default=1.0, metavar="PS", help="ps between frames (default 1)")
    p.add_argument("--timestep", type=float, default=1.0, metavar="FS", help="time step in fs (default 1)")
    p.add_argument("--friction", type=float, default=1.0, metavar="PER_PS", help="Langevin friction, 1/ps")
    p.add_argument("--equilibration", type=float, default=100.0, metavar="PS", help="equilibration, ps (default 100)")
    p.add_argument("--chunk-frames", type=int, default=100, metavar="N", help="frames per chunk file (default 100)")
    p.add_argument("--platform", default=None, help="OpenMM platform (default: the fastest, measured)")
    b = p.add_argument_group(
        "metadynamics", "well-tempered metadynamics on backbone dihedrals: Gaussians are deposited for "
        "--deposition ps, then the bias is frozen and every production frame carries the log-weight +V/kT "
        "(boltzgen.md.load_log_weights; `boltzgen analyze` uses it)")
    b.add_argument("--bias", default=None, metavar="VARS",
                   help="bias these dihedrals: phi, psi or phi,psi (default: none)")
    b.add_argument("--bias-factor", type=float, default=None, metavar="GAMMA",
                   help="well-tempered bias factor gamma > 1 (default 6)")
    b.add_argument("--bias-height", type=float, default=None, metavar="KJ_PER_MOL",
                   help="initial Gaussian height, kJ/mol (default 1)")
    b.add_argument("--bias-width", type=float, default=None, metavar="RAD",
                   help="Gaussian width, radians (default 0.35)")
    b.add_argument("--bias-frequency", type=int, default=None, metavar="STEPS",
                   help="steps between Gaussians (default 500)")
    b.add_argument("--deposition", type=float, default=None, metavar="PS",
                   help="ps of deposition before the bias is frozen (default 1000)")
    p.set_defaults(func=_run_md)


def _run_md(args) -> int:
    import time

    from tqdm import tqdm

    from . import md, systems

    options = {"bias_factor": ("--bias-factor", args.bias_factor),
               "height_kj_per_mol": ("--bias-height", args.bias_height),
               "width_rad": ("--bias-width", args.bias_width),
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
    target = systems.load(args.system, **({"platform": args.platform} if args.platform else {}))
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
        result = md.run_md(target, args.ns, args.out, args.seed, timestep_fs=args.timestep,
                           friction_per_ps=args.friction, save_every_ps=args.save_every,
                           chunk_frames=args.chunk_frames, equilibration_ps=args.equilibration,
                           platform=args.platform, bias=bias, progress=show)
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


def add_analyze_command(sub) -> None:
    """``boltzgen analyze DIR [DIR ...]``: weighted backbone basins, dF(phi>0 vs phi<0) and a Ramachandran plot."""
    p = sub.add_parser(
        "analyze", help="basin populations, dF(phi>0 vs phi<0) and a Ramachandran plot of MD runs",
        description="Compute the backbone (phi, psi) of the frames that `boltzgen md` wrote to each DIR (the first "
                    "residue with both angles), weighted by the run's log-weights (metadynamics runs; plain MD "
                    "has equal weights), and print the population of each alanine-dipeptide basin, "
                    "dF(phi>0 vs phi<0) = -ln(P(phi>0)/P(phi<0)) in kT, the Kish ESS of the weights and the "
                    "fraction of L configurations. Errors: with several DIRs (independent runs) the standard "
                    "error over runs; with one DIR over contiguous blocks (MD frames are correlated).")
    p.add_argument("run", metavar="DIR", nargs="+", help="folders written by `boltzgen md` (independent runs)")
    p.add_argument("--blocks", type=int, default=5,
                   help="contiguous blocks for the error bars of a single DIR (default 5)")
    p.add_argument("--basins", default=None, metavar="FILE",
                   help="YAML/JSON file of basins, name -> {phi: [low, high], psi: [low, high]} in radians "
                        "(default: the alanine-dipeptide basins)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures to this JSON file")
    p.add_argument("--plot", default=None, metavar="PNG", help="save the (weighted) Ramachandran plot to this file")
    p.add_argument("--bins", type=int, default=60, help="bins per angle of the plot (default 60)")
    p.set_defaults(func=_analyze)


def _analyze(args) -> int:
    import numpy as np

    from .analysis import load_basins, load_run, run_figures

    if args.blocks < 2:
        raise ValueError(f"--blocks must be at least 2 (error bars need two blocks), got {args.blocks}")
    basins = load_basins(args.basins) if args.basins else None
    runs = [load_run(d) for d in args.run]
    figures = run_figures(runs, basins=basins, blocks=args.blocks)  # everything before printing: it may refuse
    weighted = any(r.biased for r in runs)
    where = args.run[0] if len(runs) == 1 else f"{len(runs)} runs"
    weighting = "weighted by metadynamics log-weights" if weighted else "equal weights"
    print(f"{figures.n_frames} frames from {where} ({weighting}, "
          f"Kish ESS {figures.ess:.0f}); errors: {figures.error_method}")
    for name, e in figures.populations.items():
        print(f"  {name:<14} {e.mean:6.3f} +- {e.standard_error:.3f}")
    df = figures.delta_f_phi_positive
    if df is not None:
        print(f"  dF(phi>0 vs phi<0) = {df.mean:.3f} +- {df.standard_error:.3f} kT "
              f"(P(phi>0) = {figures.p_phi_positive.mean:.4f} +- {figures.p_phi_positive.standard_error:.4f})")
    else:
        print(f"  dF(phi>0 vs phi<0): not estimable: "
              f"{next(n for n in figures.note.split('; ') if n.startswith('delta_f_phi_positive'))}")
    print(f"  phi transitions per run: {', '.join(str(n) for n in figures.phi_transitions_per_run)}")
    print(f"  L configurations: {figures.l_fraction:.3f}")
    if args.json:
        try:
            figures.write_json(args.json)
        except OSError as exc:
            raise ValueError(f"--json {args.json} cannot be written ({exc.strerror or exc})") from exc
        print(f"  figures: {args.json}")
    if args.plot:
        import torch

        from .analysis.plots import plot_ramachandran

        # every run counts equally: normalise its weights before pooling
        angles = np.concatenate([r.angles for r in runs])
        log_w = np.concatenate([r.log_weights - float(torch.logsumexp(torch.from_numpy(r.log_weights), 0))
                                for r in runs])
        fig = plot_ramachandran(angles, log_w if weighted else None, bins=args.bins,
                                basins=figures.basins, title=f"{where}: {figures.n_frames} MD frames")
        fig.savefig(args.plot, dpi=120)
        print(f"  Ramachandran plot: {args.plot}")
    return 0


def add_train_command(sub) -> None:
    """``boltzgen train SYSTEM --data DIR [--data DIR ...] --out MODEL``: a molecular diffusion EBM."""
    from .pipeline import TrainSettings

    d = TrainSettings()
    p = sub.add_parser(
        "train", help="train a diffusion energy model of a molecule on MD frames (resumable)",
        description="Train a rotation- and translation-invariant diffusion energy model on the frames of "
                    "`boltzgen md` runs (biased runs are reweighted by their log-weights): denoising score "
                    "matching (with target score matching on the force field's forces at low noise), then "
                    "DSM + DiffCLF, in one resumable run (rerun the same command after Ctrl-C). Writes MODEL "
                    "(DSM + DiffCLF), MODEL-dsm (the DSM-phase snapshot), a .ckpt checkpoint and a .json "
                    "report, and prints the model's quality on held-out frames.")
    p.add_argument("system", help="a named system (see `boltzgen systems`) or the path of a system YAML")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="a `boltzgen md` folder (repeat)")
    p.add_argument("--out", required=True, metavar="MODEL", help="model file to write, e.g. model.pt")
    p.add_argument("--holdout", action="append", default=None, metavar="DIR",
                   help="MD folder kept out of training for the quality report (repeat; default: the last "
                        f"{d.holdout_fraction:.0%}% of every --data run)")
    p.add_argument("--dsm-steps", type=int, default=d.dsm_steps, help=f"DSM steps (default {d.dsm_steps})")
    p.add_argument("--clf-steps", type=int, default=d.clf_steps,
                   help=f"DSM + DiffCLF steps after them (default {d.clf_steps})")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"network width (default {d.hidden})")
    p.add_argument("--blocks", type=int, default=d.n_blocks, help=f"residual blocks (default {d.n_blocks})")
    p.add_argument("--weighting", choices=("boltzmann", "biased"), default=d.weighting,
                   help="draw frames by their Boltzmann weights (default) or ignore the weights and learn the "
                        "biased distribution")
    p.add_argument("--tsm-weight", type=float, default=d.tsm_weight,
                   help="weight of target score matching with the force field's forces at low noise (0: DSM + "
                        f"DiffCLF only; default {d.tsm_weight})")
    p.add_argument("--baseline", action="store_true",
                   help="also train a DSM-only model for the same number of steps and compare")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the network is small, and extra threads cost more than they "
                        "gain on a shared 2-core machine)")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from dataclasses import replace

    import torch

    from . import systems
    from .pipeline import TrainSettings, output_paths, train_model

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        if args.threads != torch.get_num_threads():  # an explicit set, only when it changes something
            torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available here")
    settings = replace(TrainSettings(), dsm_steps=args.dsm_steps, clf_steps=args.clf_steps, hidden=args.hidden,
                       n_blocks=args.blocks, weighting=args.weighting, tsm_weight=args.tsm_weight, seed=args.seed)
    settings.training_config()  # validate the step counts before any data is read
    target = systems.load(args.system)
    try:
        report = train_model(target, args.data, args.out, settings, holdout_dirs=args.holdout,
                             baseline=args.baseline, device=args.device, progress=True)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from {output_paths(args.out)['checkpoint']}",
              file=sys.stderr)
        return 130
    finally:
        target.close()
    print(format_train_report(report))
    return 0


def format_train_report(report) -> str:
    """The quality table printed at the end of ``boltzgen train``."""
    if report.settings.clf_steps == 0:  # no DiffCLF phase: the final model is the DSM model
        rows = [("DSM only", report.quality)]
    else:
        rows = [("DSM + DiffCLF", report.quality), ("DSM phase snapshot", report.dsm_quality)]
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
    lines.append(f"  model energy+gradient: {report.energy_ms_per_1000:.1f} ms per 1,000 particles")
    lines.append(f"model: {report.model_path}  DSM snapshot: {report.dsm_model_path}  report: {report.report_path}")
    return "\n".join(lines)


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
