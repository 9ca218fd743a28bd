"""Peak memory per particle of SMC evaluations: model, torch force field, and the bridge (both at once).

For each system the default-size models of both kinds (Cartesian pair-distance network and internal
coordinates, 256 wide, 3 blocks; untrained: memory does not depend on the weights) are probed with
:func:`boltzgen.memory.bytes_per_particle` (the peak of energy + gradient at 32 and 64 particles;
the slope is the per-particle part), the model and the eager force field alone as well. The peak of
a run is about ``chunk_size`` times the bridge figure (plus the model, the force field and the
particles' state, which are small).

On a machine without a GPU the figures are measured on the CPU by counting torch's storages; a GPU
holds the same tensors (its allocator rounds blocks to 512 bytes), so they estimate its memory too.
On a GPU (--device cuda) they are the CUDA allocator's peaks.

Run:  python benchmarks/memory.py [--device cpu] [--systems alanine-dipeptide ...]
The last line is one JSON object with all figures.
"""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

from boltzgen import systems
from boltzgen.diffusion.schedule import LogSNRSchedule
from boltzgen.memory import bytes_per_particle, peak_bytes
from boltzgen.models import ModelFile
from boltzgen.pipeline import TrainSettings
from boltzgen.pipeline.training import Frames, _space_and_model
from boltzgen.smc import evaluate_with_grad
from boltzgen.targets import torch_target

SYSTEMS = ["alanine-dipeptide", "alanine-dipeptide-implicit", "alanine-tetrapeptide", "alanine-tetrapeptide-implicit"]


def _model(target, coordinates: str, device) -> ModelFile:
    rng = np.random.default_rng(0)
    x = target.positions[None] + 0.01 * rng.standard_normal((64, target.n_atoms, 3))
    frames = Frames(x, np.zeros(len(x)), ("probe",))
    settings = TrainSettings(coordinates=coordinates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        space, _, model = _space_and_model(settings, target, frames, LogSNRSchedule(settings.log_snr_max,
                                                                                    settings.log_snr_min))
    return ModelFile(model.to(device).eval().requires_grad_(False), space, {})


def _slope(fn_of_n, device, sizes=(32, 64)) -> float:
    peaks = [peak_bytes(lambda n=n: fn_of_n(n), device) for n in sizes]
    return (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--systems", nargs="+", default=SYSTEMS)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"{'system':<30} {'atoms':>5} {'model':<9} {'model':>8} {'ff':>8} {'bridge':>8} {'MB/1000':>8} "
          f"{'B/atom':>7}   (kB per particle, energy + gradient)")
    for name in args.systems:
        with systems.load(name, platform="Reference") as target:
            ff = torch_target(target, compile=False, device=device)
            x0 = torch.as_tensor(target.positions, dtype=torch.float64, device=device)[None]

            def ff_only(n):
                return ff.forcefield.energy_and_gradient(x0.expand(n, -1, -1).contiguous())

            per_ff = _slope(ff_only, device)
            for coordinates in ("cartesian", "internal"):
                model_file = _model(target, coordinates, device)
                model, space = model_file.model, model_file.space
                t_min = float(model.schedule.t_min)
                y0 = space.to_flat(x0).to(model.data_mean.dtype)

                def model_only(n):
                    return evaluate_with_grad(lambda y: model.energy(t_min, y), y0.expand(n, -1).contiguous())

                per_model = _slope(model_only, device)
                per_bridge = bytes_per_particle(model_file, target, device)
                row = {"system": name, "n_atoms": target.n_atoms, "coordinates": coordinates,
                       "model_bytes_per_particle": per_model, "forcefield_bytes_per_particle": per_ff,
                       "bridge_bytes_per_particle": per_bridge, "mb_per_1000_particles": per_bridge * 1000 / 2**20,
                       "bytes_per_atom_per_particle": per_bridge / target.n_atoms, "device": str(device),
                       "measured": "cuda allocator" if device.type == "cuda" else "storages counted on the CPU"}
                rows.append(row)
                print(f"{name:<30} {target.n_atoms:>5} {coordinates:<9} {per_model / 1e3:8.1f} {per_ff / 1e3:8.1f} "
                      f"{per_bridge / 1e3:8.1f} {row['mb_per_1000_particles']:8.1f} "
                      f"{row['bytes_per_atom_per_particle']:7.0f}")
    print(json.dumps({"device": str(device), "rows": rows}))


if __name__ == "__main__":
    main()
