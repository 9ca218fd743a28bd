"""Energy + gradient time of the internal-coordinate map of alanine dipeptide, ms per 1,000 configurations.

Samplers in internal coordinates evaluate ``InternalSpace.flat_energy(u)(z) = u(x(z)) - ln|det J|(z)``
and its gradient with respect to z for a batch of configurations thousands of times, so the cost
of z -> x (NeRF, :meth:`InternalSpace.to_positions`) and of ln|det J| adds to that of the force
field. Timed here, each as energy + gradient (one backward pass) for a batch of z:

* ``to_positions``: x(z) and the gradient of a fixed random linear function of x (the backward
  pass of the map alone, as the force field's gradient would drive it);
* ``log_det``: ln|det J|(z) and its gradient;
* ``flat_energy``: the whole target in z with the shipped torch force field
  (``torch_target(..., compile=True)``, float64 arithmetic whatever the dtype of z);
* ``forcefield``: the force field alone on the same positions, for scale.

Configurations: the shipped structure plus 0.01 nm Gaussian noise; the space is fitted to them.
Each figure is the best of --repeats back-to-back calls after a warm-up (the force field's one-off
compilation excluded), scaled to ms per 1,000 configurations.

Run:  python benchmarks/internal_coordinates_cost.py [--batch 1000] [--threads 1] [--repeats 20]
      [--dtypes float64 float32] [--record FILE]
The last line printed is one JSON object with all figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # time this checkout's boltzgen, not an installed one
import boltzgen  # noqa: E402
from boltzgen import systems  # noqa: E402
from boltzgen.coordinates.internal import InternalSpace  # noqa: E402
from boltzgen.targets import torch_target  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after two warm-up calls, in seconds."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gradient_timers(space: InternalSpace, reduced_energy, z: torch.Tensor) -> dict:
    """Callables that each evaluate one quantity of z and its gradient with respect to z."""
    weights = torch.randn((z.shape[0], space.n_atoms, 3), generator=torch.Generator().manual_seed(1),
                          dtype=z.dtype)
    energy = space.flat_energy(reduced_energy)
    x = space.to_positions(z).detach().to(torch.float64)

    def grad_of(f, at):
        at = at.detach().requires_grad_(True)
        return torch.autograd.grad(f(at).sum(), at)[0]

    return {
        "to_positions": lambda: grad_of(lambda v: (space.to_positions(v) * weights).sum((1, 2)), z),
        "log_det": lambda: grad_of(space.log_det_jacobian, z),
        "flat_energy": lambda: grad_of(energy, z),
        "forcefield": lambda: grad_of(reduced_energy, x),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000, help="configurations per call (default 1000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float64", "float32"])
    parser.add_argument("--record", default=None, help="append a JSON-lines record to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    target = systems.load("alanine-dipeptide")
    fast = torch_target(target, compile=True, threads=args.threads)
    x0 = torch.as_tensor(target.positions, dtype=torch.float64)
    noise = torch.randn((args.batch, *x0.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x0 + 0.01 * noise
    space = InternalSpace.fit(target, x)
    z64 = space.to_flat(x)

    print(f"boltzgen from {Path(boltzgen.__file__).parent}, torch {torch.__version__}")
    figures = {"batch": args.batch, "threads": args.threads}
    per_1000 = 1e6 / args.batch  # seconds per call -> ms per 1,000 configurations
    print(f"{'dtype':>8} {'to_positions':>13} {'log_det':>8} {'flat_energy':>12} {'forcefield':>11}"
          f"   (energy + gradient, ms per 1,000 configurations)")
    for name in args.dtypes:
        timers = gradient_timers(space, fast.reduced_energy, z64.to(DTYPES[name]))
        row = {key: per_1000 * best_seconds(fn, args.repeats) for key, fn in timers.items()}
        figures.update({f"{key}_ms_{name}": value for key, value in row.items()})
        print(f"{name:>8} {row['to_positions']:13.2f} {row['log_det']:8.3f} {row['flat_energy']:12.2f} "
              f"{row['forcefield']:11.2f}")
    target.close()
    if args.record:
        from _record import append_record, command_line

        append_record(args.record, "internal_coordinates_cost", command_line(__file__, argv), figures,
                      "best of --repeats calls; energy + gradient w.r.t. z; force field compiled, float64")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
