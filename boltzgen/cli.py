"""The ``boltzgen`` command.

Each sub-command is a small function that parses its arguments, calls the library and shows
progress; library code itself never prints.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boltzgen",
        description="Boltzmann-generator sampling: diffusion EBMs (DSM + DiffCLF) corrected by SMC.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Sub-commands register themselves here, one add_* function each.
    add_systems_command(sub)
    add_md_command(sub)
    add_analyze_command(sub)
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
    p.set_defaults(func=_run_md)


def _run_md(args) -> int:
    import time

    from tqdm import tqdm

    from . import md, systems

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
                           platform=args.platform, progress=show)
    except KeyboardInterrupt:
        close_bars()
        print(f"interrupted; run the same command again to resume from the last complete chunk in {args.out}",
              file=sys.stderr)
        return 130
    finally:
        close_bars()
        target.close()
    print(f"{'resumed; ' if result.resumed else ''}{result.n_frames} frames ({result.ps_done / 1000:g} ns, "
          f"{result.platform} platform) in {result.out_dir}; load them with "
          f"boltzgen.md.load_trajectory({str(result.out_dir)!r})")
    return 0


def add_analyze_command(sub) -> None:
    """``boltzgen analyze DIR``: backbone basins (and a Ramachandran plot) of an MD run's frames."""
    p = sub.add_parser(
        "analyze", help="basin populations and a Ramachandran plot of an MD run",
        description="Compute the backbone (phi, psi) of the frames that `boltzgen md` wrote to DIR (the first "
                    "residue with both angles), print the population of each alanine-dipeptide basin with an "
                    "error from block averages (MD frames are correlated), the fraction of L configurations, "
                    "and optionally save a Ramachandran plot.")
    p.add_argument("run", metavar="DIR", help="a folder written by `boltzgen md`")
    p.add_argument("--blocks", type=int, default=5, help="contiguous blocks for the error bars (default 5)")
    p.add_argument("--plot", default=None, metavar="PNG", help="save the Ramachandran plot to this file")
    p.add_argument("--bins", type=int, default=60, help="bins per angle of the plot (default 60)")
    p.set_defaults(func=_analyze)


def _analyze(args) -> int:
    import numpy as np
    import torch

    from .analysis import ALANINE_DIPEPTIDE_BASINS, basin_probabilities, phi_psi, with_error
    from .coordinates import is_l_amino_acid
    from .md import load_trajectory

    if args.blocks < 2:
        raise ValueError(f"--blocks must be at least 2 (error bars need two blocks), got {args.blocks}")
    traj = load_trajectory(args.run)
    x = torch.from_numpy(traj.xyz.astype(np.float64))
    if len(x) < args.blocks:
        raise ValueError(f"{args.run} holds {len(x)} frames, fewer than --blocks {args.blocks}")
    angles = phi_psi(x, traj.topology)[:, 0]
    blocks = [basin_probabilities(a, ALANINE_DIPEPTIDE_BASINS) for a in torch.tensor_split(angles, args.blocks)]
    total = basin_probabilities(angles, ALANINE_DIPEPTIDE_BASINS)
    l_fraction = float(is_l_amino_acid(x, traj.topology).double().mean())  # before printing: it may refuse
    print(f"{len(x)} frames from {args.run}; errors: standard error over {args.blocks} contiguous blocks")
    for name, p in total.items():
        print(f"  {name:<14} {p:6.3f} +- {with_error([b[name] for b in blocks]).standard_error:.3f}")
    print(f"  L configurations: {l_fraction:.3f}")
    if args.plot:
        from .analysis.plots import plot_ramachandran

        fig = plot_ramachandran(angles, bins=args.bins, basins=ALANINE_DIPEPTIDE_BASINS,
                                title=f"{args.run}: {len(x)} MD frames")
        fig.savefig(args.plot, dpi=120)
        print(f"  Ramachandran plot: {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        # Bad input from the user: one clear line, no traceback.
        print(f"boltzgen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
