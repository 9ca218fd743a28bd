"""The package's jobs as plain calls, one module per job; the CLI only parses arguments, shows
progress and prints what these return.

* :mod:`.training`: ``train_model`` (``boltzgen train``): MD frames -> a model file;
* :mod:`.sample`: ``sample_model`` and ``run_named`` (``boltzgen sample``, ``boltzgen run``);
* :mod:`.free_energy`: ``free_energy_between`` (``boltzgen free-energy``);
* :mod:`.tilting`: ``fit_sampling_tilt``: a model file plus a tilt that balances the declared free energies;
* :mod:`.md_seeds`: ``md_seeds`` (``boltzgen md --seeds``): independent MD runs, a folder per seed;
* :mod:`.jobs`: job folders, manifests, run seeds and resumption after a kill;
* :mod:`.tasks`: independent runs as tasks, in this process, over local workers or on Ray;
* :mod:`.summary`: summary.json as a reduce over run folders (``summarize``);
* :mod:`.progress`: one progress bar per SMC run.

Data flows one way: system -> target -> MD frames -> trained model file -> SMC -> weighted
samples -> analysis.
"""
from .free_energy import FreeEnergyReport, free_energy_between
from .jobs import run_seeds
from .md_seeds import md_seeds
from .progress import RunProgress
from .sample import NamedRunResult, SampleReport, fast_target, run_named, sample_model, shipped_reference
from .summary import summarize
from .tasks import Spread, SystemRef, run_tasks
from .tilting import fit_sampling_tilt
from .training import (COORDINATES, WEIGHTINGS, Frames, TrainReport, TrainSettings, load_frames, output_paths,
                       split_holdout, train_model)

__all__ = ["COORDINATES", "FreeEnergyReport", "Frames", "NamedRunResult", "RunProgress", "SampleReport", "Spread",
           "SystemRef", "TrainReport", "TrainSettings", "WEIGHTINGS", "fast_target", "free_energy_between",
           "fit_sampling_tilt", "load_frames", "md_seeds", "output_paths", "run_named", "run_seeds", "run_tasks",
           "sample_model", "shipped_reference", "split_holdout", "summarize", "train_model"]
