"""Fit a sampling tilt for a trained internal-coordinate model and store it in a copy of its model file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cvs import atom_indices
from ..models import load_model_file, save_model_file
from ..sampling import SampleSettings, model_samples
from ..tilt import METADATA_KEY, balance_tilt, tilt_metadata


def dihedral_columns(space, topology, cvs) -> dict[str, int]:
    """{CV name: its column among the space's dihedrals} for the declared CVs that are coordinates of ``space``."""
    n_linear = space.dim - int(space.periodic.sum())
    columns = {}
    for name, atoms in atom_indices(cvs, topology).items():
        try:
            columns[name] = space.dihedral_index(*(int(a) for a in atoms)) - n_linear
        except ValueError:
            continue  # not a coordinate of this Z-matrix: that CV is left untilted
    return columns


def fit_sampling_tilt(target, model_path, out, cvs, *, samples: int = 5000, seed: int = 0, harmonics: int = 1,
                      settings: SampleSettings = SampleSettings()) -> dict:
    """Write ``out/model.pt``: the model file at ``model_path`` plus a tilt that balances the molecule's free energies.

    The tilt (:func:`boltzgen.tilt.balance_tilt`) is fitted on ``samples`` of the model's own weighted
    samples (its levels alone, :func:`boltzgen.sampling.model_samples`; no force field is evaluated), so
    it balances the model's view of each free energy, never a reference's. ``boltzgen sample --tilt 1``
    then applies it.

    Args:
        target: the system (its topology) the model samples.
        model_path: an internal-coordinate model file.
        out: a new or empty folder (as ``boltzgen train --out``); ``out/model.pt`` is written.
        cvs: the molecule's declaration (``boltzgen.systems.collective_variables(name)``).
        samples: own samples to fit on.
        seed: seeds the own samples.
        harmonics: Fourier harmonics of each side's step (1: a sine-like tilt; more: closer to a step).
        settings: the levels' settings (as the runs will use them).
    Returns:
        The metadata entry written (coefficients, the balanced dF per free energy, samples, seed).
    """
    out, model_path = Path(out), Path(model_path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out {out} must be a new or empty folder")
    model_file = load_model_file(model_path)
    space = model_file.space
    if not hasattr(space, "dihedral_index"):
        raise ValueError(f"{model_path} is not an internal-coordinate model: a sampling tilt acts on dihedral coordinates")
    columns = dihedral_columns(space, target.topology, cvs)
    if not columns:
        raise ValueError("none of the declared collective variables is a dihedral coordinate of this model")
    drawn = model_samples(model_file, target.topology, samples, settings, seed=seed)
    n_linear = model_file.model.n_linear
    tilt, balanced = balance_tilt(drawn.particles[:, n_linear:], drawn.log_weights, cvs, columns,
                                  model_file.model.n_periodic, harmonics)
    if not balanced:
        raise ValueError("no declared free energy is between two arcs of one dihedral coordinate of this model: "
                         "there is nothing for a balance tilt to balance")
    entry = tilt_metadata(tilt, balanced_delta_f_kT=balanced, samples=int(samples), seed=int(seed),
                          harmonics=int(harmonics), source=str(model_path))
    out.mkdir(parents=True, exist_ok=True)
    save_model_file(out / "model.pt", model_file.model, space, {**model_file.metadata, METADATA_KEY: entry})
    return entry


__all__ = ["dihedral_columns", "fit_sampling_tilt"]
