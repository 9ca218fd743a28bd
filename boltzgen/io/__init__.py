"""Reading and writing the folders boltzgen produces, in one place.

* :mod:`boltzgen.io.md_runs`: MD run folders (:func:`boltzgen.md.run_md`): frames, energies and
  log-weights (converted to kT here), the run record;
* :mod:`boltzgen.io.sample_runs`: sample-run folders (``boltzgen sample``/``run``): weighted
  samples, energies, diagnostics, written atomically; and the JSON writer for summaries.

Neither reads the other's package (md writes, analysis reads; both import only this).
"""
from . import md_runs, sample_runs

__all__ = ["md_runs", "sample_runs"]
