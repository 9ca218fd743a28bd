"""F(GB charges off) - F(vacuum): what separates this package's solvation free energy from FEAT's "ALDP-S".

boltzgen's solvation free energy is F(GB) - F(vacuum), the whole implicit-solvent force switched on.
FEAT (He et al., arXiv:2504.11516, Table 1) scales the solute charges inside the CustomGBForce of
openmmtools' ``AlanineDipeptideImplicit`` (ff96 + OBC1, 300 K) by lambda, so its lambda = 0 end
keeps OBC1's nonpolar (surface-area) term and is not vacuum. The offset between the two
conventions is F(lambda = 0) - F(vacuum); this script estimates it by EXP on weighted vacuum MD
frames (the nonpolar term is smooth and small, so EXP converges), one estimate per run and the
standard error over runs. Then F(lambda = 0) - F(lambda = 1) = offset - (F(GB) - F(vacuum)).

Run:  python benchmarks/gb_nonpolar_offset.py --md DIR [DIR ...] [--vacuum alanine-dipeptide-ff96]
      [--implicit alanine-dipeptide-ff96-implicit] [--stride 5] [--quick]
--md: ``boltzgen md`` folders of the vacuum system (plain or biased; several for an error bar).
--quick: a few ps of MD made here, to check the script (figures meaningless). The last line is
one JSON object with offset_kT, offset_err_kT, per_run_kT, seconds.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm

from boltzgen import md, systems
from boltzgen.analysis.free_energy import delta_f_exp, mean_and_error
from boltzgen.targets.openmm import OpenMMTarget


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--md", nargs="+", default=None, metavar="DIR", help="MD runs of the vacuum system")
    p.add_argument("--vacuum", default="alanine-dipeptide-ff96")
    p.add_argument("--implicit", default="alanine-dipeptide-ff96-implicit")
    p.add_argument("--stride", type=int, default=5, help="use every STRIDE-th frame")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.md is None and not args.quick:
        p.error("give --md DIR [DIR ...] (vacuum MD runs), or --quick")
    if args.stride < 1:
        p.error(f"--stride must be >= 1, got {args.stride}")
    return args


def charges_off(target) -> OpenMMTarget:
    """``target`` with the charges of its CustomGBForce set to 0 (the nonpolar term stays)."""
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(target.system))
    gb = [f for f in system.getForces() if isinstance(f, openmm.CustomGBForce)]
    if len(gb) != 1 or gb[0].getPerParticleParameterName(0) != "charge":
        raise ValueError(f"{target.name}: expected one CustomGBForce whose first parameter is the charge "
                         f"(OpenMM's prmtop OBC1), found {len(gb)} CustomGBForce(s)")
    for i in range(gb[0].getNumParticles()):
        params = list(gb[0].getParticleParameters(i))
        gb[0].setParticleParameters(i, [0.0, *params[1:]])
    return OpenMMTarget(system, target.topology, target.positions, target.temperature, name=f"{target.name}-charges-off")


def main(argv=None) -> dict:
    args = parse(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="boltzgen-gb-offset-") as work, \
            systems.load(args.vacuum) as vacuum, systems.load(args.implicit) as implicit:
        dirs = args.md
        if args.quick:
            dirs = []
            for k in range(2):
                dirs.append(Path(work) / f"md-{k}")
                md.run_md(vacuum, 0.002, dirs[-1], seed=k + 1, save_every_ps=0.25, chunk_frames=8, equilibration_ps=1.0)
        per_run = []
        with charges_off(implicit) as off:
            for d in dirs:
                x = md.load_trajectory(d).xyz.astype(np.float64)[::args.stride]
                log_w = md.load_log_weights(d)[::args.stride]
                u_vac, u_off = vacuum.reduced_energy(x), off.reduced_energy(x)
                per_run.append(delta_f_exp(u_vac, u_off, log_w).mean)
                print(f"  {d}: F(charges off) - F(vacuum) = {per_run[-1]:.4f} kT ({len(x)} frames)", flush=True)
    offset, err = mean_and_error(per_run)
    result = {"vacuum": args.vacuum, "implicit": args.implicit, "offset_kT": offset, "offset_err_kT": err,
              "per_run_kT": per_run, "seconds": time.perf_counter() - start, "quick": args.quick}
    err_text = "" if err is None else f" +- {err:.4f}"
    print(f"F({args.implicit} with GB charges 0) - F({args.vacuum}) = {offset:.4f}{err_text} kT over {len(per_run)} run(s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
