"""Mode weights of diffusion EBMs trained with DSM alone vs DSM + DiffCLF, on Gaussian mixtures.

DSM only sees scores, so across well-separated modes it cannot tell how much mass each mode
holds ("mode blindness"); the DiffCLF loss classifies noise levels and fixes the relative mass.
Both models share the network, the data, the seed and the number of steps: DSM pre-training,
then the same number of fine-tuning steps with DSM only or with DSM + lambda CLF.

    python benchmarks/gmm_mode_weights.py --weights 0.667,0.333 --dim 8 --seed 0
    python benchmarks/gmm_mode_weights.py --modes 40 --dim 2 --seed 0       # many modes

Prints a table and, as the last line, one JSON object with dsm_weight_error,
diffclf_weight_error (largest absolute error of a mode weight implied by exp(-E_theta(t_min, .))),
dsm_r2, diffclf_r2 (R^2 of -E_theta(t, .) against log p_t, mean over the t grid), seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from boltzgen.diffusion.evaluation import energy_r2, mode_weights_from_energy, mode_weights_from_samples
from boltzgen.diffusion.networks import EnergyMLP
from boltzgen.diffusion.sampling import sample_sde
from boltzgen.diffusion.schedule import VPSchedule
from boltzgen.diffusion.training import TrainingConfig, train
from boltzgen.targets import GaussianMixture

R2_TIMES = (0.001, 0.05, 0.1, 0.2, 0.4)


def make_mixture(args, generator: torch.Generator) -> GaussianMixture:
    """Two equal-shape modes at +-separation/2 along a random direction, or K random modes in a box."""
    if args.modes == 2:
        u = torch.randn(args.dim, generator=generator, dtype=torch.float64)
        u = u / u.norm()
        means = torch.stack([0.5 * args.separation * u, -0.5 * args.separation * u])
        weights = args.weights or [0.667, 0.333]
    else:
        means = (2 * torch.rand(args.modes, args.dim, generator=generator, dtype=torch.float64) - 1) * args.box
        weights = args.weights or (1 + 2 * torch.rand(args.modes, generator=generator, dtype=torch.float64)).tolist()
    if len(weights) != args.modes:
        raise SystemExit(f"--weights needs {args.modes} numbers, got {len(weights)}")
    return GaussianMixture(means, stds=args.std, weights=weights)


def evaluate(name, model, mixture, schedule, args, generator) -> dict:
    t_min = schedule.t_min
    noised_min = mixture.noised(schedule, t_min)
    with torch.no_grad():
        energy_weights = mode_weights_from_energy(lambda x: model.energy(t_min, x), noised_min,
                                                  n_samples=args.is_samples, generator=generator)
    r2 = {t: energy_r2(lambda x, t=t: model.energy(t, x), lambda x, t=t: mixture.noised_log_prob(schedule, t, x),
                       mixture.noised(schedule, t).sample(args.eval_samples, generator)) for t in R2_TIMES}
    samples = sample_sde(model, args.sde_samples, n_steps=args.sde_steps, generator=generator)
    sample_weights = mode_weights_from_samples(samples, noised_min)
    true = mixture.weights
    return {
        "name": name,
        "energy_weights": energy_weights,
        "weight_error": float((energy_weights - true).abs().max()),
        "sample_weights": sample_weights,
        "sample_weight_error": float((sample_weights - true).abs().max()),
        "r2": r2,
        "r2_mean": sum(r2.values()) / len(r2),
        "log_normaliser_t_min": float(model.log_normaliser(t_min)),
    }


def plot(path, results, models, mixture, schedule):
    """Learned vs true energies along the line through the two heaviest modes, DSM beside DiffCLF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = torch.argsort(mixture.weights, descending=True)[:2]
    a, b = mixture.means[top[0]], mixture.means[top[1]]
    s = torch.linspace(-0.5, 1.5, 400, dtype=torch.float64)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, res, model in zip(axes, results, models):
        for t, colour in ((schedule.t_min, "C0"), (0.2, "C1"), (0.4, "C2")):
            alpha = schedule.alpha(torch.tensor(t)).item()
            x = alpha * (a[None] + s[:, None] * (b - a)[None])
            true = -mixture.noised_log_prob(schedule, t, x)
            with torch.no_grad():
                learned = model.energy(t, x.float()).double()
            # energies are defined up to a constant: align both curves at mode 1, so the depth of
            # mode 2 relative to mode 1 (the log mode-weight ratio) can be compared by eye
            at_mode_1 = torch.argmin((s - 0.0).abs())
            learned = learned - learned[at_mode_1] + true[at_mode_1]
            ax.plot(s, true - true.min(), color=colour, lw=2, alpha=0.4, label=f"true, t={t:g}")
            ax.plot(s, learned - true.min(), color=colour, ls="--", label=f"learned, t={t:g}")
        ax.set_title(f"{res['name']}: mode weight error {res['weight_error']:.3f}")
        ax.set_xlabel("position along the line mode 1 -> mode 2")
        ax.set_ylim(-1, 12)
    axes[0].set_ylabel("energy (kT), aligned at mode 1")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=lambda s: [float(w) for w in s.split(",")], default=None,
                   help="comma-separated mode weights (default 0.667,0.333 for 2 modes, random for more)")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--modes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--separation", type=float, default=4.0, help="distance between the two modes")
    p.add_argument("--box", type=float, default=10.0, help="half-width of the box for --modes > 2")
    p.add_argument("--std", type=float, default=0.5, help="component standard deviation")
    p.add_argument("--n-data", type=int, default=20000)
    p.add_argument("--pretrain-steps", type=int, default=3000, help="DSM pre-training steps (both models)")
    p.add_argument("--steps", type=int, default=3000, help="fine-tuning steps (DSM, or DSM + CLF)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--clf-batch-size", type=int, default=256)
    p.add_argument("--clf-weight", type=float, default=4.0)
    p.add_argument("--clf-levels", type=int, default=4)
    p.add_argument("--clf-window", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--is-samples", type=int, default=20000)
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--sde-samples", type=int, default=4000)
    p.add_argument("--sde-steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these small networks gain nothing from intra-op threads, "
                        "and on a busy 2-core machine extra threads made training ~10x slower)")
    p.add_argument("--plot", default=None, help="save the learned-vs-true energy figure here (PNG)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    mixture = make_mixture(args, generator)
    data = mixture.sample(args.n_data, generator).float()
    schedule = VPSchedule()
    results, models = [], []
    for name, clf_weight in (("DSM", 0.0), ("DSM+DiffCLF", args.clf_weight)):
        torch.manual_seed(args.seed)  # same initial network for both
        model = EnergyMLP(args.dim, schedule, data.mean(0), float(data.var(0).mean()), hidden=args.hidden, n_blocks=args.blocks)
        config = TrainingConfig(dsm_steps=args.pretrain_steps, clf_steps=args.steps, batch_size=args.batch_size,
                                clf_batch_size=args.clf_batch_size, clf_weight=clf_weight, clf_levels=args.clf_levels,
                                clf_window=args.clf_window, ema_decay=args.ema_decay, seed=args.seed)
        trained = train(model, data, config)
        res = evaluate(name, trained.model, mixture, schedule, args, torch.Generator().manual_seed(args.seed + 1))
        res["train_seconds"] = trained.seconds
        results.append(res)
        models.append(trained.model)

    true = mixture.weights
    print(f"Gaussian mixture: {args.modes} modes in d={args.dim}, std {args.std}, true weights "
          + (", ".join(f"{w:.3f}" for w in true[:6].tolist()) + (" ..." if args.modes > 6 else "")))
    print(f"{'model':<12} {'train s':>8} {'max|dw| energy':>15} {'max|dw| SDE':>12} "
          + " ".join(f"R2(t={t:g})".rjust(11) for t in R2_TIMES))
    for r in results:
        print(f"{r['name']:<12} {r['train_seconds']:8.1f} {r['weight_error']:15.4f} {r['sample_weight_error']:12.4f} "
              + " ".join(f"{r['r2'][t]:11.4f}" for t in R2_TIMES))
    if args.modes <= 6:
        for r in results:
            print(f"{r['name']:<12} weights from energy: " + ", ".join(f"{w:.4f}" for w in r["energy_weights"].tolist())
                  + " | from SDE samples: " + ", ".join(f"{w:.4f}" for w in r["sample_weights"].tolist()))
    if args.plot:
        plot(args.plot, results, models, mixture, schedule)
        print(f"figure written to {args.plot}")
    dsm, clf = results
    print(json.dumps({
        "dsm_weight_error": round(dsm["weight_error"], 5),
        "diffclf_weight_error": round(clf["weight_error"], 5),
        "dsm_r2": round(dsm["r2_mean"], 5),
        "diffclf_r2": round(clf["r2_mean"], 5),
        "dsm_sample_weight_error": round(dsm["sample_weight_error"], 5),
        "diffclf_sample_weight_error": round(clf["sample_weight_error"], 5),
        "dsm_r2_by_t": {str(t): round(v, 5) for t, v in dsm["r2"].items()},
        "diffclf_r2_by_t": {str(t): round(v, 5) for t, v in clf["r2"].items()},
        "dim": args.dim, "modes": args.modes, "seed": args.seed,
        "seconds": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
