"""The package's jobs as plain calls, one module per job; the CLI only parses arguments, shows
progress and prints what these return.

* :mod:`.training`: ``train_model`` (``boltzgen train``): MD frames -> a model file;
* :mod:`.sample`: ``sample_model`` and ``run_named`` (``boltzgen sample``, ``boltzgen run``);
* :mod:`.free_energy`: ``free_energy_between`` (``boltzgen free-energy``);
* :mod:`.jobs`: job folders, manifests, run seeds and resumption after a kill;
* :mod:`.summary`: summary.json as a reduce over run folders (``summarize``);
* :mod:`.progress`: one progress bar per SMC run.

Data flows one way: system -> target -> MD frames -> trained model file -> SMC -> weighted
samples -> analysis.
"""
from .free_energy import FreeEnergyReport, free_energy_between
from .jobs import run_seeds
from .progress import RunProgress
from .sample import NamedRunResult, SampleReport, fast_target, run_named, sample_model, shipped_reference
from .summary import summarize
from .training import (COORDINATES, WEIGHTINGS, Frames, TrainReport, TrainSettings, load_frames, output_paths,
                       split_holdout, train_model)

__all__ = ["COORDINATES", "FreeEnergyReport", "Frames", "NamedRunResult", "RunProgress", "SampleReport",
           "TrainReport", "TrainSettings", "WEIGHTINGS", "fast_target", "free_energy_between", "load_frames",
           "output_paths", "run_named", "run_seeds", "sample_model", "shipped_reference", "split_holdout",
           "summarize", "train_model"]
