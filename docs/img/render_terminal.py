"""Render captured terminal text as a PNG (the screenshots in docs/img/ are made with this).

    python docs/img/render_terminal.py LOG OUT.png --command "boltzgen sample ..." --pick "run 2/4   8%"

LOG is what the command wrote to the terminal (stdout + stderr, progress bars as carriage-return
frames). The image shows the command and the progress frame that starts with --pick, as the
terminal showed it at that moment; with --final it shows the lines printed after the bar instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.figure import Figure


def frames(text: str) -> list[str]:
    """Every line and every carriage-return frame of a terminal log, in order, without blank ones."""
    return [f.rstrip() for line in text.split("\n") for f in line.split("\r") if f.strip()]


def render(lines: list[str], out: Path) -> None:
    width_chars = max(len(line) for line in lines) + 2
    fig = Figure(figsize=(0.085 * width_chars, 0.19 * len(lines) + 0.3), facecolor="#1e1e1e")
    for k, line in enumerate(lines):
        fig.text(0.01, 1 - (k + 0.8) / (len(lines) + 0.6), line, family="DejaVu Sans Mono", fontsize=9,
                 color="#7ec699" if line.startswith("$") else "#e6e6e6", va="baseline")
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--command", required=True)
    p.add_argument("--pick", default=None, help="the progress frame to show (its first characters)")
    p.add_argument("--final", action="store_true", help="show the lines printed after the progress bars")
    args = p.parse_args(argv)
    all_frames = frames(args.log.read_text(encoding="utf-8", errors="replace"))
    if args.final:
        bars = [k for k, f in enumerate(all_frames) if f.lstrip().startswith("run ")]
        shown = all_frames[max(bars) + 1:] if bars else all_frames  # a command without a bar: all it printed
    else:
        shown = [next(f for f in all_frames if f.startswith(args.pick))]
    render([f"$ {args.command}", *shown], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
