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
    return parser


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
