"""Cost-to-0.1-kT arithmetic shared by the molecule benchmarks (aldp_vs_md.py, tetrapeptide_vs_md.py).

Every arm of a benchmark is a row: its estimate of one free energy (kT), that estimate's standard
error over independent runs, its measured seconds and evaluations, and the cost to a 0.1 kT standard
error, extrapolated as cost * (se / 0.1)^2 (standard errors fall as 1 / sqrt(cost)). A baseline arm
(biased MD, MCMC alone) whose estimate is more than 2 combined standard errors off the reference gets
no ratio: its cost to 0.1 kT would be the cost of a wrong answer. It had no right answer after the
seconds it ran, though, so those seconds over a generator's cost to 0.1 kT bound the ratio from below.

A ratio is only as good as the two standard errors it is made of: each arm's cost to 0.1 kT is
proportional to its estimated variance, and a variance from k runs is uncertain by a factor
exp(sqrt(2 / (k - 1))) at one standard error (the delta method on ln s^2 for normal estimates), so
with 4 runs per arm a ratio is known to within x/÷ 3.2 only. :func:`ratio_factors` gives that factor.
"""
from __future__ import annotations

import math
import re

from boltzgen.analysis.free_energy import z_score

TARGET_SE_KT = 0.1


def extrapolated(cost: float, se: float | None) -> float | None:
    """Cost to reach TARGET_SE_KT when the standard error falls as 1 / sqrt(cost)."""
    if se is None or not math.isfinite(se) or se <= 0:
        return None
    return cost * (se / TARGET_SE_KT) ** 2


def row(method: str, value, se, reference: tuple[float, float], seconds: float, target_evals: int,
        model_evals: int = 0, **extra) -> dict:
    """One arm: ``value`` +- ``se`` (kT) against ``reference`` (value, se), with its costs."""
    evaluations = target_evals + model_evals
    return {"method": method, "dF_kT": value, "se_kT": se, "z_vs_reference": z_score(value, se, *reference),
            "seconds": seconds, "target_evaluations": int(target_evals), "model_evaluations": int(model_evals),
            "seconds_to_0.1": extrapolated(seconds, se), "evaluations_to_0.1": extrapolated(evaluations, se), **extra}


def is_baseline(method: str) -> bool:
    return method == "MCMC alone" or method.startswith("biased MD")


def sound(rows: list[dict], method: str) -> bool:
    """Whether ``method``'s estimate agrees with the reference (|z| <= 2)."""
    z = next(r["z_vs_reference"] for r in rows if r["method"] == method)
    return z is not None and abs(z) <= 2


def ratios(rows: list[dict]) -> dict:
    """seconds to 0.1 kT of each baseline / of each generator (> 1: the generator is faster); baselines
    off the reference by more than 2 combined standard errors are left out (see :func:`sound`)."""
    base = {r["method"]: r["seconds_to_0.1"] for r in rows if is_baseline(r["method"])}
    out = {}
    for r in rows:
        if r["method"] in base or not r["seconds_to_0.1"]:
            continue
        for name, b in base.items():
            if b and sound(rows, name):
                out[f"{name} / {r['method']}"] = b / r["seconds_to_0.1"]
                if r.get("training_seconds"):
                    out[f"{name} / {r['method']} (training included)"] = b / (r["seconds_to_0.1"]
                                                                              + r["training_seconds"])
    return out


def variance_log_se(runs) -> float | None:
    """Standard error of ln s^2 for a variance estimated from ``runs`` independent runs: sqrt(2 / (runs - 1))."""
    return math.sqrt(2.0 / (runs - 1)) if isinstance(runs, int) and runs > 1 else None


def ratio_factors(rows: list[dict]) -> dict:
    """For each ratio of :func:`ratios`: the multiplicative one-standard-error spread of the ratio,
    exp(sqrt(2 / (k_a - 1) + 2 / (k_b - 1))) for arms of k_a and k_b runs (each row's ``runs``);
    the ratio's 68 % range is ratio / factor to ratio * factor. None when an arm does not say its runs."""
    by_method = {r["method"]: r for r in rows}
    out = {}
    for name in ratios(rows):
        baseline, method = name.removesuffix(" (training included)").split(" / ", 1)
        se = [variance_log_se(by_method[m].get("runs")) for m in (baseline, method)]
        out[name] = None if None in se else math.exp(math.hypot(*se))
    return out


def lower_bounds(rows: list[dict]) -> dict:
    """For each baseline that missed the reference (see :func:`sound`) and each generator: the baseline's
    measured seconds / the generator's seconds to 0.1 kT. The baseline had no right answer after its
    measured seconds (at its set size), so its time to 0.1 kT is longer and the true ratio is at least this."""
    missed = {r["method"]: r["seconds"] for r in rows if is_baseline(r["method"]) and not sound(rows, r["method"])}
    return {f"{name} / {r['method']}": seconds / r["seconds_to_0.1"]
            for r in rows if not is_baseline(r["method"]) and r["seconds_to_0.1"]
            for name, seconds in missed.items()}


def fmt(v, spec: str) -> str:
    width = int(spec.split(".")[0].rstrip("fg") or 0)
    return "n/a".rjust(width) if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_table(rows: list[dict], header: list[str]) -> dict:
    """Print the rows, the ratios and why a baseline has none (with the lower bounds it gives instead);
    returns the ratios and, keyed "... (lower bound)", the lower bounds."""
    for line in header:
        print(line)
    print(f"{'method':<26} {'dF kT':>7} {'se kT':>6} {'z':>5} {'measured s':>10} {'s to 0.1':>9} {'evals to 0.1':>12} "
          f"{'+training s':>11} {'1-step ESS':>10}  lineages")
    for r in rows:
        incl = None if r["seconds_to_0.1"] is None or not r.get("training_seconds") else \
            r["seconds_to_0.1"] + r["training_seconds"]
        print(f"{r['method']:<26} {fmt(r['dF_kT'], '7.3f')} {fmt(r['se_kT'], '6.3f')} {fmt(r['z_vs_reference'], '5.1f')} "
              f"{r['seconds']:10.0f} "
              f"{fmt(r['seconds_to_0.1'], '9.0f')} {fmt(r['evaluations_to_0.1'], '12.3g')} {fmt(incl, '11.0f')} "
              f"{fmt(r.get('bridge_ess_fraction'), '10.3f')}  {r.get('lineages', '')}")
    found, factors = ratios(rows), ratio_factors(rows)
    for name, value in found.items():
        spread = "" if factors[name] is None else \
            f", 68 % range {value / factors[name]:.2f}-{value * factors[name]:.2f} (x/÷ {factors[name]:.1f}: runs per arm)"
        print(f"  {name}: {value:.2f}  (seconds to 0.1 kT; > 1: the generator is faster{spread})")
    for r in rows:
        if is_baseline(r["method"]) and not sound(rows, r["method"]):
            why = ("it has no estimate with an error bar" if r["z_vs_reference"] is None else
                   f"its estimate is not within 2 s.e. of the reference (z = {fmt(r['z_vs_reference'], '.1f')}), "
                   "so its cost to 0.1 kT is the cost of a wrong answer")
            print(f"  {r['method']}: no ratio: {why}; it had no right answer after its {r['seconds']:.0f} s, so:")
    bounds = lower_bounds(rows)
    for name, value in bounds.items():
        print(f"  {name}: at least {value:.2f}  (its measured seconds / the generator's seconds to 0.1 kT)")
    return {**found, **{f"{name} (x/÷ at 1 s.e.)": f for name, f in factors.items() if f is not None},
            **{f"{name} (lower bound)": value for name, value in bounds.items()}}


def record_figures(rows: list[dict], found_ratios: dict) -> dict:
    """The figures of a --record line: per method dF, its standard error, cost to 0.1 kT; the ratios."""
    figures = {}
    for r in rows:
        key = re.sub(r"[^a-z0-9]+", "_", r["method"].lower()).strip("_")  # "biased MD (1 fs)" -> biased_md_1_fs
        figures[f"{key}_dF_kT"], figures[f"{key}_dF_kT_err"] = r["dF_kT"], r["se_kT"]
        figures[f"{key}_z_vs_reference"] = r["z_vs_reference"]
        figures[f"{key}_seconds"] = r["seconds"]
        figures[f"{key}_seconds_to_0.1"] = r["seconds_to_0.1"]
        figures[f"{key}_evaluations_to_0.1"] = r["evaluations_to_0.1"]
        if "bridge_ess_fraction" in r:
            figures[f"{key}_bridge_ess_fraction"] = r["bridge_ess_fraction"]
        if "state_lineages" in r:  # the effective lineages carrying the rare state, over runs
            figures[f"{key}_state_lineages_mean"] = sum(r["state_lineages"]) / len(r["state_lineages"])
            figures[f"{key}_state_lineages_min"] = min(r["state_lineages"])
    for name, value in found_ratios.items():
        figures["ratio " + name] = value
    return figures
