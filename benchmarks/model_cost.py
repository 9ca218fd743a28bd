"""Energy + gradient time of a molecular energy model against the torch force field, per 1,000 particles.

SMC spends its time on energies and gradients of the model (every learned level) and of the
physical target (the bridge), so their relative cost decides where effort pays. Both are timed on
the same centre-free alanine-dipeptide configurations (the shipped structure plus 0.01 nm noise),
best of --repeats back-to-back calls after a warm-up (compilation of the force field excluded).

Run:  python benchmarks/model_cost.py [--model MODEL.pt] [--particles 1000 4096] [--threads 1] [--device cpu]
Without --model an untrained MolecularEnergy of the default size is timed (the cost does not
depend on the weights). The last line is one JSON object with all figures.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from boltzgen import systems
from boltzgen.diffusion.networks import MolecularEnergy
from boltzgen.diffusion.schedule import LogSNRSchedule
from boltzgen.models import load_model_file
from boltzgen.pipeline import TrainSettings
from boltzgen.coordinates.cartesian import MolecularSpace
from boltzgen.targets import fast_target


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model file (default: an untrained default-size model)")
    parser.add_argument("--particles", type=int, nargs="+", default=[1000, 4096])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    target = systems.load("alanine-dipeptide")
    fast = fast_target(target)
    x0 = torch.as_tensor(target.positions, dtype=torch.float64)
    if args.model:
        loaded = load_model_file(args.model, device=args.device)
        model, space = loaded.model, loaded.space
    else:
        d = TrainSettings()
        space = MolecularSpace(target.n_atoms, 0.17)
        model = MolecularEnergy(target.n_atoms, LogSNRSchedule(), 1.0, hidden=d.hidden, n_blocks=d.n_blocks).to(args.device)
    figures = {"threads": args.threads, "device": args.device, "model_parameters": sum(p.numel() for p in model.parameters())}
    print(f"{'particles':>9} {'model ms':>9} {'force field ms':>15} {'ratio':>6}   (energy + gradient, per call)")
    for n in args.particles:
        x = x0 + 0.01 * torch.randn(n, *x0.shape, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        y = space.to_flat(x).to(args.device, torch.float32)
        t_model = best_seconds(lambda: model.score(model.schedule.t_min, y), args.repeats)

        def force_field():
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(fast.reduced_energy(xg).sum(), xg)

        t_ff = best_seconds(force_field, args.repeats)
        figures[f"model_ms_{n}"] = 1000 * t_model
        figures[f"forcefield_ms_{n}"] = 1000 * t_ff
        figures[f"model_ms_per_1000_at_{n}"] = 1e6 * t_model / n
        figures[f"forcefield_ms_per_1000_at_{n}"] = 1e6 * t_ff / n
        print(f"{n:>9} {1000 * t_model:9.1f} {1000 * t_ff:15.1f} {t_model / t_ff:6.1f}")
    target.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
