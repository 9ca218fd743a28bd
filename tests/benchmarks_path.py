"""Importing this puts benchmarks/ on sys.path so tests can call a benchmark's main()."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
