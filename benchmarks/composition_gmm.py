"""Composing trained EBMs: the product and the mixture of two 2-D Gaussian-mixture EBMs, sampled by SMC.

Two different 4-mode Gaussian mixtures a and b in 2-D, whose modes sit near each other pairwise
(so their product has several modes with non-trivial weights), are each learned by an EnergyMLP
trained with DSM alone and with DSM + DiffCLF (same network, data, seed and number of steps:
DSM pre-training, then the same number of steps of DSM or DSM + lambda CLF). For each training:

* product: Product(model_a, model_b) at every level, sampled by SMC from the Gaussian at t = 1 to
  t_min (boltzgen.diffusion.composition.sample_composition). SMC is exact for the product of the
  *learned* densities, so what remains is the models' error: the product's mode weights against
  the closed form (gaussian_mixture_product of the noised a and b at t_min), and log Z: SMC's
  log Z of the product minus the models' learned log-normalisers f_a(t_min) + f_b(t_min),
  against the exact log of the overlap integral of p_a p_b.
* mixture: Mixture([model_a, model_b], weights) with the models' learned normalisers f(t) (which
  DSM never trains) and, for comparison, with normalisers estimated by SMC through each model's
  levels (estimate_log_normalisers); mode weights against gaussian_mixture_mixture.
* normaliser: |f(t_min) - log Z(t_min)| per model, log Z by SMC (the identifiability check).

Error bars: --runs independent SMC runs (seeds); the mode weights are averaged over runs and
their standard error is printed beside each error.

    python benchmarks/composition_gmm.py                 # full (about 13 min on one thread)
    python benchmarks/composition_gmm.py --quick         # seconds; checks the script, figures meaningless

Prints a table and, as the last line, one JSON object with at least dsm_weight_error,
diffclf_weight_error (product mode weights, max abs error), logz_error (DiffCLF product, learned
normalisers), dsm_logz_error, and seconds. --record FILE also appends them as a result record
(one JSON line, benchmarks/_record.py) that benchmarks/make_docs.py renders into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from _record import append_record, command_line
from boltzgen.diffusion.composition import (Mixture, Product, estimate_log_normalisers, gaussian_mixture_mixture,
                                            gaussian_mixture_product, level_times, sample_composition,
                                            smc_mode_weights)
from boltzgen.diffusion.evaluation import mode_weights_from_energy
from boltzgen.diffusion.networks import EnergyMLP
from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.diffusion.training import TrainingConfig, train
from boltzgen.smc import MALA
from boltzgen.targets import GaussianMixture

MIXTURE_WEIGHTS = (0.6, 0.4)


def make_mixtures(std_a: float, std_b: float) -> tuple[GaussianMixture, GaussianMixture]:
    """a: modes on the corners of a square of side 4; b: the same corners shifted by up to 0.6, wider.

    The product's four main modes get weights ~ a_i b_i N(offset_i; 0, (std_a^2 + std_b^2) I).
    """
    corners = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    offsets = torch.tensor([[-0.2, 0.1], [0.4, -0.3], [0.1, 0.5], [-0.5, -0.3]], dtype=torch.float64)
    a = GaussianMixture(corners, stds=std_a, weights=[0.4, 0.3, 0.2, 0.1])
    b = GaussianMixture(corners + offsets, stds=std_b, weights=[0.15, 0.25, 0.35, 0.25])
    return a, b


def train_model(mixture, clf_weight, args, seed):
    generator = torch.Generator().manual_seed(seed)
    data = mixture.sample(args.n_data, generator).float()
    torch.manual_seed(seed)  # same initial network for DSM and DiffCLF
    model = EnergyMLP(2, VPSchedule(), data.mean(0), float(data.var(0).mean()), hidden=args.hidden,
                      n_blocks=args.blocks)
    config = TrainingConfig(dsm_steps=args.pretrain_steps, clf_steps=args.steps, batch_size=args.batch_size,
                            clf_batch_size=args.batch_size, clf_weight=clf_weight, clf_levels=args.clf_levels,
                            clf_window=args.clf_window, ema_decay=args.ema_decay, seed=seed)
    result = train(model, data, config)
    return result.model.requires_grad_(False), result.seconds


def smc_runs(energy, reference, args, times, seed):
    """--runs independent SMC runs of ``energy``: mean mode weights, their standard error, log Z."""
    weights, log_zs, ess, min_cess = [], [], [], []
    for r in range(args.runs):
        res = sample_composition(energy, times, n_particles=args.particles, kernel=MALA(step_size=0.05),
                                 n_moves=args.moves, seed=seed + r)
        weights.append(smc_mode_weights(res, reference))
        log_zs.append(res.log_z)
        ess.append(res.ess_fraction)
        min_cess.append(min(s.conditional_ess_fraction for s in res.diagnostics))
    w = torch.stack(weights)
    se = w.std(0) / math.sqrt(args.runs) if args.runs > 1 else torch.full_like(w[0], float("nan"))
    z = torch.tensor(log_zs, dtype=torch.float64)
    return {
        "weights": w.mean(0), "weights_se": se,
        "weight_error": float((w.mean(0) - reference.weights).abs().max()),
        "weight_error_se": float(se[(w.mean(0) - reference.weights).abs().argmax()]),
        "log_z": float(z.mean()), "log_z_se": float(z.std() / math.sqrt(args.runs)) if args.runs > 1 else float("nan"),
        "ess_fraction": sum(ess) / len(ess), "min_cess_fraction": min(min_cess),
    }


def evaluate(name, models, refs, args, seed) -> dict:
    s = VPSchedule()
    t_min = s.t_min
    times = level_times(args.levels, t_min)
    ma, mb = models
    a_min, b_min = refs
    product_ref = gaussian_mixture_product(a_min, b_min)  # log_Z = log integral p_a p_b (both normalised)
    mixture_ref = gaussian_mixture_mixture([a_min, b_min], MIXTURE_WEIGHTS)
    learned_f = [float(m.log_normaliser(t_min)) for m in models]
    tables = [estimate_log_normalisers(m, times, n_particles=args.particles, n_runs=args.runs,
                                       kernel=MALA(step_size=0.05), n_moves=args.moves, seed=seed + 100 * k)
              for k, m in enumerate(models)]
    estimated_f = [float(tb(t_min)) for tb in tables]

    out = {"name": name, "learned_log_normaliser": learned_f, "estimated_log_normaliser": estimated_f,
           "normaliser_error": max(abs(f - g) for f, g in zip(learned_f, estimated_f)),
           "normaliser_se": max(tb.standard_error[0] for tb in tables)}

    product = smc_runs(Product(ma, mb), product_ref, args, times, seed + 1000)
    product["logz_error"] = product["log_z"] - sum(learned_f) - product_ref.log_Z
    product["logz_error_estimated"] = product["log_z"] - sum(estimated_f) - product_ref.log_Z
    with torch.no_grad():
        is_weights = mode_weights_from_energy(lambda x: ma.energy(t_min, x) + mb.energy(t_min, x), product_ref,
                                              n_samples=args.is_samples, generator=torch.Generator().manual_seed(seed))
    product["is_weight_error"] = float((is_weights - product_ref.weights).abs().max())
    out["product"] = product

    learned = smc_runs(Mixture([ma, mb], MIXTURE_WEIGHTS), mixture_ref, args, times, seed + 2000)
    estimated = smc_runs(Mixture([ma, mb], MIXTURE_WEIGHTS, log_normalisers=tables), mixture_ref, args, times,
                         seed + 3000)
    out["mixture_learned"], out["mixture_estimated"] = learned, estimated
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny training and SMC: checks the script (figures meaningless)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std-a", type=float, default=0.5, help="component standard deviation of mixture a")
    p.add_argument("--std-b", type=float, default=0.6, help="component standard deviation of mixture b")
    p.add_argument("--n-data", type=int, default=20000)
    p.add_argument("--pretrain-steps", type=int, default=3000, help="DSM pre-training steps (both trainings)")
    p.add_argument("--steps", type=int, default=3000, help="fine-tuning steps (DSM, or DSM + CLF)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--clf-weight", type=float, default=4.0)
    p.add_argument("--clf-levels", type=int, default=4)
    p.add_argument("--clf-window", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--particles", type=int, default=2000, help="SMC particles per run")
    p.add_argument("--runs", type=int, default=8, help="independent SMC runs per estimate")
    p.add_argument("--levels", type=int, default=64, help="diffusion levels of the SMC path")
    p.add_argument("--moves", type=int, default=5, help="MALA moves per SMC step")
    p.add_argument("--is-samples", type=int, default=20000, help="importance samples per mode (cross-check)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--record", metavar="FILE", default=None,
                   help="also append the figures as one JSON line to FILE (benchmarks/_record.py)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_data, args.pretrain_steps, args.steps, args.batch_size = 2000, 30, 30, 64
        args.hidden, args.blocks, args.particles, args.runs, args.levels, args.moves = 16, 1, 128, 2, 12, 2
        args.is_samples = 500
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    s = VPSchedule()
    a, b = make_mixtures(args.std_a, args.std_b)
    refs = (a.noised(s, s.t_min), b.noised(s, s.t_min))
    product_ref = gaussian_mixture_product(*refs)
    mixture_ref = gaussian_mixture_mixture(list(refs), MIXTURE_WEIGHTS)
    main_modes = torch.argsort(product_ref.weights, descending=True)[:4]

    results = []
    for name, clf_weight in (("DSM", 0.0), ("DSM+DiffCLF", args.clf_weight)):
        trained = [train_model(m, clf_weight, args, args.seed + 10 * k) for k, m in enumerate((a, b))]
        models = [m for m, _ in trained]
        res = evaluate(name, models, refs, args, args.seed)
        res["train_seconds"] = sum(sec for _, sec in trained)
        results.append(res)

    print(f"a: weights {a.weights.tolist()}, std {args.std_a}; b: weights {[round(w, 3) for w in b.weights.tolist()]}, "
          f"std {args.std_b}; product: log Z {product_ref.log_Z:.4f}, main weights "
          + ", ".join(f"{float(product_ref.weights[i]):.4f}" for i in main_modes)
          + f"; mixture {MIXTURE_WEIGHTS}")
    print(f"SMC: {args.runs} runs x {args.particles} particles, {args.levels} levels, {args.moves} MALA moves per step")
    print(f"{'training':<12} {'train s':>8} {'prod max|dw|':>14} {'(IS)':>7} {'prod logZ err':>14} {'(est. f)':>9} "
          f"{'mix max|dw| f':>14} {'(est. f)':>9} {'|f - logZ|':>10} {'ESS/N':>6} {'minCESS':>7}")
    for r in results:
        pr, ml, me = r["product"], r["mixture_learned"], r["mixture_estimated"]
        print(f"{r['name']:<12} {r['train_seconds']:8.1f} {pr['weight_error']:8.4f}+-{pr['weight_error_se']:.3f} "
              f"{pr['is_weight_error']:7.4f} {pr['logz_error']:+8.4f}+-{pr['log_z_se']:.3f} {pr['logz_error_estimated']:+9.4f} "
              f"{ml['weight_error']:8.4f}+-{ml['weight_error_se']:.3f} {me['weight_error']:9.4f} {r['normaliser_error']:10.4f} "
              f"{pr['ess_fraction']:6.3f} {pr['min_cess_fraction']:7.3f}")
    for r in results:
        print(f"{r['name']:<12} product weights (main modes): "
              + ", ".join(f"{float(r['product']['weights'][i]):.4f}" for i in main_modes)
              + " | exact " + ", ".join(f"{float(product_ref.weights[i]):.4f}" for i in main_modes))
    dsm, clf = results
    summary = {
        "dsm_weight_error": round(dsm["product"]["weight_error"], 5),
        "diffclf_weight_error": round(clf["product"]["weight_error"], 5),
        "dsm_weight_error_se": round(dsm["product"]["weight_error_se"], 5),
        "diffclf_weight_error_se": round(clf["product"]["weight_error_se"], 5),
        "dsm_is_weight_error": round(dsm["product"]["is_weight_error"], 5),
        "diffclf_is_weight_error": round(clf["product"]["is_weight_error"], 5),
        "logz_error": round(abs(clf["product"]["logz_error"]), 5),
        "logz_error_se": round(clf["product"]["log_z_se"], 5),
        "dsm_logz_error": round(abs(dsm["product"]["logz_error"]), 5),
        "diffclf_logz_error_estimated_normalisers": round(abs(clf["product"]["logz_error_estimated"]), 5),
        "dsm_logz_error_estimated_normalisers": round(abs(dsm["product"]["logz_error_estimated"]), 5),
        "diffclf_mixture_weight_error": round(clf["mixture_learned"]["weight_error"], 5),
        "dsm_mixture_weight_error": round(dsm["mixture_learned"]["weight_error"], 5),
        "diffclf_mixture_weight_error_estimated_normalisers": round(clf["mixture_estimated"]["weight_error"], 5),
        "dsm_mixture_weight_error_estimated_normalisers": round(dsm["mixture_estimated"]["weight_error"], 5),
        "diffclf_mixture_log_z": round(clf["mixture_learned"]["log_z"], 5),
        "dsm_mixture_log_z": round(dsm["mixture_learned"]["log_z"], 5),
        "diffclf_normaliser_error": round(clf["normaliser_error"], 5),
        "dsm_normaliser_error": round(dsm["normaliser_error"], 5),
        "product_exact_log_z": round(product_ref.log_Z, 6),
        "product_ess_fraction": round(clf["product"]["ess_fraction"], 4),
        "quick": args.quick, "seed": args.seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    if args.record:
        figures = {k[: -len("_se")] + "_err" if k.endswith("_se") else k: v for k, v in summary.items()}
        append_record(args.record, "composition_gmm", command_line(__file__, argv), figures,
                      "--quick: checks the script, figures meaningless" if args.quick else "")


if __name__ == "__main__":
    main()
