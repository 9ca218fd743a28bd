"""Model files: a trained energy model, its molecular space and where it came from, in one small file.

A model file is separate from the training checkpoint (no optimiser, no RNG, no history): the
config of the network (with its ``kind``), the EMA weights, the coordinate space (Cartesian
:class:`~boltzgen.coordinates.cartesian.MolecularSpace` or :class:`~boltzgen.coordinates.internal.InternalSpace`)
and metadata (system name, a fingerprint of the serialized OpenMM System, temperature, atom count
and names, chirality handling, package version). It holds only plain types and tensors, so it
loads with ``torch.load(weights_only=True)``: opening a model file never runs code from it.

A model is tied to a *molecule* (atom count and names), not to a force field: using it for
another force field or solvent model of the same molecule is recalibration (SMC reweights it to
the new target), which :func:`check_compatible` allows and reports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .coordinates.cartesian import MolecularSpace
from .coordinates.internal import InternalSpace
from .diffusion.networks import EnergyModel, model_from_config
from .targets.openmm import system_fingerprint

# The coordinate spaces a model file may hold: the ``kind`` of a space's config -> its class.
SPACE_KINDS = {"molecular": MolecularSpace, "internal": InternalSpace}


def space_from_config(config: dict):
    """Rebuild a coordinate space from its stored ``config``."""
    kind = config.get("kind", "molecular")
    if kind not in SPACE_KINDS:
        raise ValueError(f"unknown coordinate space kind {kind!r}; known kinds: {sorted(SPACE_KINDS)}")
    return SPACE_KINDS[kind].from_config(config)

_FORMAT = 1
CHIRALITY_FOLD = "fold"  # mirror-invariant model; D samples are reflected onto L (x -> -x)
CHIRALITY_KEPT = "kept"  # signed dihedrals carry chirality: nothing is folded


def model_metadata(target, chirality: str = CHIRALITY_FOLD, **extra) -> dict:
    """Metadata describing what a model was trained for, from an OpenMMTarget (plain types only)."""
    from . import __version__

    names = [atom.name for atom in target.topology.atoms()]
    return {"system": target.name, "system_fingerprint": system_fingerprint(target.system),
            "temperature_K": float(target.temperature), "n_atoms": int(target.n_atoms), "atom_names": names,
            "chirality": chirality, "boltzgen_version": __version__, **extra}


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: the model (eval mode), its space and its metadata."""

    model: EnergyModel
    space: object
    metadata: dict


def save_model_file(path, model: EnergyModel, space, metadata: dict) -> Path:
    """Write ``model`` (its current weights; pass the EMA model), ``space`` and ``metadata`` atomically."""
    if not isinstance(model, EnergyModel):
        raise TypeError(f"model must be a boltzgen EnergyModel, got {type(model).__name__}")
    if not isinstance(space, tuple(SPACE_KINDS.values())):
        raise TypeError(f"space must be a coordinate space ({', '.join(c.__name__ for c in SPACE_KINDS.values())}), "
                        f"got {type(space).__name__}")
    if space.dim != model.dim:
        raise ValueError(f"space has dimension {space.dim} but the model takes {model.dim}")
    path = Path(path)
    payload = {"format": _FORMAT, "kind": model.kind, "config": model.config, "space": space.config(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "metadata": dict(metadata)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_model_file(path, device=None) -> ModelFile:
    """Read a model file written by :func:`save_model_file` (``weights_only=True``), model in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # truncated, not a torch file, or holding objects other than plain data
        raise ValueError(f"{path} is not a readable boltzgen model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a boltzgen model file (format {_FORMAT}); is it a training checkpoint?")
    model = model_from_config(payload["config"])
    model.load_state_dict(payload["state_dict"])
    model = model.to(device) if device is not None else model
    return ModelFile(model.eval().requires_grad_(False), space_from_config(payload["space"]), payload["metadata"])


def check_compatible(model_file: ModelFile, target) -> bool:
    """Whether ``target`` is the Hamiltonian the model was trained for.

    Raises ValueError if it is another molecule (atom count or names differ). Returns True for the
    same System, False for another force field or solvent model of the same molecule
    (recalibration: allowed, the samplers correct the model toward the new target).
    """
    meta = model_file.metadata
    names = [atom.name for atom in target.topology.atoms()]
    if meta.get("n_atoms") != target.n_atoms or meta.get("atom_names") != names:
        raise ValueError(f"the model was trained for {meta.get('system')!r} ({meta.get('n_atoms')} atoms), not for "
                         f"{target.name!r} ({target.n_atoms} atoms): a model only applies to the molecule it was "
                         "trained on")
    return meta.get("system_fingerprint") == system_fingerprint(target.system)
