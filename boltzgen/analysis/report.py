"""``boltzgen analyze`` as a library call: figures of weighted runs, optionally against a reference.

    report = analyze_runs(["out/run-000", "out/run-001"], reference=["md/seed1", "md/seed2"], plot_dir="out")
    print(format_analysis(report))
    report.to_dict()      # what --json writes

Runs are MD folders (plain or biased) or SMC sample-run folders, always weighted. Every run counts
equally when runs are pooled (its weights are normalised first). The collective variables, basins
and free energies reported are those the molecule declares (:mod:`boltzgen.cvs`). Comparison figures
(reference given): the differences of the declared free energies, each with its error bar from
independent runs, the energy W2 (kT), and, for a molecule with CVs named phi and psi, the
Ramachandran KL divergence KL(reference || samples) on :data:`KL_BINS` x KL_BINS bins and the torus
(phi, psi) W2 (rad).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .compare import KL_BINS, energy_w2, ramachandran_kl, torus_w2
from .lineages import format_state_lineages, lineages_over_runs
from ..cvs import Region
from .runs import RunFigures, WeightedRun, load_run, ramachandran_pairs, run_figures


def _pooled_log_weights(runs: Sequence[WeightedRun]) -> np.ndarray:
    """Each run's log-weights normalised to total weight one, so every run counts equally."""
    parts = []
    for r in runs:
        lw = np.where(np.isfinite(r.log_weights), r.log_weights, -np.inf)
        parts.append(lw - np.logaddexp.reduce(lw))
    return np.concatenate(parts)


def _pooled(runs: Sequence[WeightedRun], attribute: str) -> np.ndarray | None:
    values = [getattr(r, attribute) for r in runs]
    return None if any(v is None for v in values) else np.concatenate(values)


@dataclass(frozen=True)
class Comparison:
    """Samples against a reference.

    Attributes:
        ramachandran_kl: KL(reference || samples) in nats on ``kl_bins`` x ``kl_bins`` bins of (phi, psi),
            None unless the molecule declares CVs named phi and psi.
        kl_bins: bins per angle.
        energy_w2_kT: W2 between the weighted reduced-energy distributions (kT), None without energies.
        torus_w2_rad: W2 on the (phi, psi) torus (rad), estimated from 1,000 resampled points (None
            without phi and psi).
        delta_f_phi_positive_diff_kT: samples minus reference, dF(phi>0 vs phi<0), with its
            error (the two errors added in quadrature), None where either is missing.
        bond_length_max_diff_nm: the largest difference of weighted mean bond lengths, None without bonds.
        delta_f_diff_kT: {key: {"diff": samples minus reference in kT, "err": the two errors in
            quadrature}} for every declared free energy (values None where either is missing).
    """

    ramachandran_kl: float | None
    kl_bins: int
    energy_w2_kT: float | None
    torus_w2_rad: float | None
    delta_f_phi_positive_diff_kT: float | None
    delta_f_phi_positive_diff_err_kT: float | None
    bond_length_max_diff_nm: float | None
    delta_f_diff_kT: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AnalysisReport:
    """Figures of runs (and of a reference), their comparison and the plots written."""

    figures: RunFigures
    reference: RunFigures | None
    comparison: Comparison | None
    plots: dict = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    weighting: str = ""
    temperature_K: float | None = None  # the runs' common temperature (None: unknown or mixed)
    # {free-energy key: per-run lineages carrying its rarer side} of sample runs that saved their lineages
    # (boltzgen.analysis.lineages.lineages_over_runs; None for other runs); {} when none did
    state_lineages: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = self.figures.to_dict()
        data["kinds"] = list(self.kinds)
        data["temperature_K"] = self.temperature_K
        data["state_lineages"] = self.state_lineages
        if self.reference is not None:
            data["reference"] = self.reference.to_dict()
        if self.comparison is not None:
            data["comparison"] = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                  for k, v in asdict(self.comparison).items()}
        data["plots"] = {k: str(v) for k, v in self.plots.items()}
        return data

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _weighted_bond_means(runs) -> np.ndarray | None:
    bonds = _pooled(runs, "bond_lengths")
    if bonds is None:
        return None
    w = np.exp(_pooled_log_weights(runs))
    return (w[:, None] * bonds).sum(0) / w.sum()


def compare_runs(runs: Sequence[WeightedRun], reference: Sequence[WeightedRun], figures: RunFigures,
                 reference_figures: RunFigures, seed: int = 0) -> Comparison:
    """The comparison figures of pooled ``runs`` against pooled ``reference`` runs."""
    a, ra = _pooled(runs, "angles"), _pooled(reference, "angles")
    lw, rlw = _pooled_log_weights(runs), _pooled_log_weights(reference)
    e, re_ = _pooled(runs, "energies"), _pooled(reference, "energies")
    diffs = {}
    for key, df in figures.free_energies.items():
        rdf = reference_figures.free_energies.get(key)
        diff = diff_err = None
        if df is not None and rdf is not None:
            diff = df.mean - rdf.mean
            diff_err = math.hypot(df.standard_error, rdf.standard_error)
            diff_err = diff_err if math.isfinite(diff_err) else None
        diffs[key] = {"diff": diff, "err": diff_err}
    bonds, ref_bonds = _weighted_bond_means(runs), _weighted_bond_means(reference)
    bond_diff = None
    if bonds is not None and ref_bonds is not None and bonds.shape == ref_bonds.shape:
        bond_diff = float(np.abs(bonds - ref_bonds).max())
    torus = a is not None and ra is not None
    phi_positive = diffs.get("phi_positive", {})
    return Comparison(
        ramachandran_kl=ramachandran_kl(a, lw, ra, rlw, bins=KL_BINS) if torus else None, kl_bins=KL_BINS,
        energy_w2_kT=None if e is None or re_ is None else energy_w2(e, lw, re_, rlw),
        torus_w2_rad=torus_w2(a, lw, ra, rlw, seed=seed) if torus else None,
        delta_f_phi_positive_diff_kT=phi_positive.get("diff"),
        delta_f_phi_positive_diff_err_kT=phi_positive.get("err"),
        bond_length_max_diff_nm=bond_diff, delta_f_diff_kT=diffs)


def _profiles(cv: str, runs, reference, shipped: Mapping) -> dict:
    """The profiles of ``cv`` to draw: the runs', and the reference runs' or else a shipped one."""
    from .profiles import compute_profile

    bins = len(shipped[cv].edges) - 1 if cv in shipped else 36

    def of(rs):
        return compute_profile([r.cv_values[cv] for r in rs], [r.log_weights for r in rs], bins=bins)

    profiles = {"samples": of(runs)}
    if reference is not None and all(cv in r.cv_values for r in reference):
        profiles["reference"] = of(reference)
    elif cv in shipped:
        profiles["shipped reference"] = shipped[cv]
    return profiles


def _pair_basins(basins: Mapping, phi: str, psi: str) -> dict:
    """The basins that restrict only ``phi`` and ``psi``, as regions on the CVs "phi" and "psi" (to draw)."""
    rename = {phi: "phi", psi: "psi"}
    return {name: Region(name, tuple((rename[cv], low, high) for cv, low, high in b.arcs))
            for name, b in basins.items() if b.cvs and set(b.cvs) <= set(rename)}


def _plots(runs, reference, figures, plot_dir: Path, label: str, shipped_profiles=None) -> dict:
    """ramachandran.png (CVs phi and psi; ramachandran_phiN_psiN.png for every residue's pair), <cv>_profile.png
    for every dihedral CV, energy_histogram.png."""
    from .plots import plot_energy_histogram, plot_profiles, plot_ramachandran

    plot_dir.mkdir(parents=True, exist_ok=True)
    lw = _pooled_log_weights(runs)
    rlw = None if reference is None else _pooled_log_weights(reference)
    paths = {}
    for phi, psi in ramachandran_pairs(figures.cvs.names):
        key = "ramachandran" if (phi, psi) == ("phi", "psi") else f"ramachandran_{phi}_{psi}"
        paths[key] = plot_dir / f"{key}.png"
        angles = np.concatenate([r.angle_pair(phi, psi) for r in runs])
        fig = plot_ramachandran(angles, lw, basins=_pair_basins(figures.basins, phi, psi) or None,
                                title=f"{label}: {figures.n_frames} weighted samples"
                                      + ("" if key == "ramachandran" else f" ({phi}, {psi})"))
        fig.savefig(paths[key], dpi=120)
    for cv in figures.cvs.names:
        paths[f"{cv}_profile"] = plot_dir / f"{cv}_profile.png"
        fig = plot_profiles(_profiles(cv, runs, reference, shipped_profiles or {}), name=cv)
        fig.savefig(paths[f"{cv}_profile"], dpi=120)
    ref = None if reference is None else (None, rlw)
    e = _pooled(runs, "energies")
    if e is not None:
        re_ = None if reference is None else _pooled(reference, "energies")
        fig = plot_energy_histogram(e, lw, reference=None if re_ is None else (re_, ref[1]))
        paths["energy_histogram"] = plot_dir / "energy_histogram.png"
        fig.savefig(paths["energy_histogram"], dpi=120)
    return paths


def analyze_runs(run_dirs: Sequence, reference: Sequence | None = None, *, basins=None, blocks: int | None = None,
                 plot_dir=None, label: str | None = None, cvs=None,
                 shipped_profiles: Mapping | None = None) -> AnalysisReport:
    """Figures of the runs in ``run_dirs`` (MD or sample runs), optionally against ``reference`` runs.

    Args:
        run_dirs: folders of independent runs (error bars over runs; one MD run: from its statistical
            inefficiency, or over blocks).
        reference: folders of reference runs (e.g. biased MD), or None.
        basins: name -> Basin (on phi, psi) or Region, replacing the basins the molecule declares.
        blocks: None: a single MD run's error bars from its statistical inefficiency (pymbar); k >= 2:
            over k contiguous blocks instead.
        plot_dir: where to write the plots: ramachandran.png (CVs phi and psi), <cv>_profile.png for
            every CV and energy_histogram.png (None: no plots).
        label: title of the plots (default: the number of runs).
        cvs: the :class:`~boltzgen.cvs.MoleculeCVs` to report (e.g.
            ``systems.collective_variables(name)``); None: those of the system each run recorded.
        shipped_profiles: CV name -> :class:`~boltzgen.analysis.profiles.Profile` of a shipped
            reference, drawn in the profile plots when no reference runs are given.
    """
    runs = [load_run(d, cvs) for d in run_dirs]
    figures = run_figures(runs, basins=basins, blocks=blocks)
    ref_runs = [load_run(d, cvs) for d in reference] if reference else None
    ref_figures = run_figures(ref_runs, basins=basins, blocks=blocks) if ref_runs else None
    comparison = compare_runs(runs, ref_runs, figures, ref_figures) if ref_runs else None
    plots = {}
    if plot_dir is not None:
        label = label or (str(run_dirs[0]) if len(runs) == 1 else f"{len(runs)} runs")
        plots = _plots(runs, ref_runs, figures, Path(plot_dir), label, shipped_profiles)
    temperatures = {r.temperature_K for r in runs}
    temperature = temperatures.pop() if len(temperatures) == 1 else None
    return AnalysisReport(figures, ref_figures, comparison, plots, tuple(r.kind for r in runs), _weighting(runs),
                          temperature, lineages_over_runs(runs))


def _weighting(runs) -> str:
    kinds = {"samples" if r.kind == "samples" else "biased" if r.biased else "plain" for r in runs}
    words = {"samples": "SMC weights", "biased": "metadynamics log-weights", "plain": "equal weights (plain MD)"}
    return "weighted by " + " and ".join(words[k] for k in sorted(kinds))


def _estimate(e) -> str:
    if e is None:
        return "not estimable"
    err = f"{e.standard_error:.3f}" if math.isfinite(e.standard_error) else "n/a (one SMC run)"
    return f"{e.mean:.3f} +- {err}"


def format_population(p: float | None, err: float | None) -> str:
    """A population and its standard error with the same decimals: three, or more below 0.01 so that the
    value keeps two significant digits and the error one (at most eight); ``"n/a"`` for a missing value,
    no error part for a missing error. E.g. 0.351 +- 0.011, 0.00150 +- 0.00002."""
    if p is None or not math.isfinite(p):
        return "n/a"
    digits = 3
    if 0 < abs(p) < 0.01:
        digits = 1 - math.floor(math.log10(abs(p)))
        if err is not None and math.isfinite(err) and err > 0:
            digits = max(digits, -math.floor(math.log10(err)))
        digits = min(digits, 8)
    if err is None or not math.isfinite(err):
        return f"{p:.{digits}f}"
    return f"{p:.{digits}f} +- {err:.{digits}f}"


def _population(e) -> str:
    if e is None:
        return "not estimable"
    if not math.isfinite(e.standard_error):
        return f"{format_population(e.mean, None)} +- n/a (one SMC run)"
    return format_population(e.mean, e.standard_error)


def _correlation_lines(f) -> list[str]:
    """Effective samples (n / g) of the headline figures and the suggested burn-in of one MD run."""
    if not f.statistical_inefficiency:
        return []
    labels = {f"delta_f_{x.key}": f"dF({x.state} vs {x.reference})" for x in f.cvs.free_energies}
    labels["energy_mean"] = "<u>"
    shown = [f"{label} {f.n_frames / f.statistical_inefficiency[key]:.0f}" for key, label in labels.items()
             if key in f.statistical_inefficiency]
    lines = []
    if shown:
        lines.append(f"  effective samples n/g of {f.n_frames} frames: {', '.join(shown)}")
    if f.burn_in_frames is not None:
        lines.append(f"  suggested burn-in: the first {f.burn_in_frames} frames (pymbar detect_equilibration on u; "
                     "not dropped)")
    return lines


def format_analysis(report: AnalysisReport) -> str:
    """The table ``boltzgen analyze`` prints."""
    f = report.figures
    where = f.runs[0] if len(f.runs) == 1 else f"{len(f.runs)} runs"
    kinds = "SMC samples" if set(report.kinds) == {"samples"} else "MD frames" if set(report.kinds) == {"md"} else "frames"
    lines = [f"{f.n_frames} {kinds} from {where} ({report.weighting}; Kish ESS {f.ess:.0f}); errors: {f.error_method}"]
    width = max([26] + [len(f"dF({x.state} vs {x.reference}) kT") for x in f.cvs.free_energies]
                + [len(f"P({name})") for name in f.populations])
    header = f"  {'':<{width}} {'samples':>22}"
    r = report.reference
    if r is not None:
        header += f" {'reference':>22}"
    lines.append(header)

    def row(name, mine, theirs=None):
        line = f"  {name:<{width}} {mine:>22}"
        if r is not None:
            line += f" {theirs:>22}"
        lines.append(line)

    if f.cvs.is_empty:
        lines.append("  no collective variables declared for this molecule: energies and ESS only")
    else:
        lines.append("  collective variables: " + "; ".join(f"{d.name} = dihedral [{', '.join(map(str, d.atoms))}]"
                                                              for d in f.cvs.dihedrals))
    for name, e in f.populations.items():
        row(f"P({name})", _population(e), _population(r.populations.get(name)) if r is not None else None)
    for fe in f.cvs.free_energies:
        row(f"dF({fe.state} vs {fe.reference}) kT", _estimate(f.free_energies[fe.key]),
            _estimate(r.free_energies.get(fe.key)) if r else None)
    if report.temperature_K is not None and f.cvs.free_energies:
        from ..units import kt_in_kcal_per_mol, kt_in_kj_per_mol

        kelvin = report.temperature_K
        lines.append(f"  (free energies in kT; at {kelvin:g} K, 1 kT = {kt_in_kj_per_mol(kelvin):.4f} kJ/mol = "
                     f"{kt_in_kcal_per_mol(kelvin):.4f} kcal/mol)")
    if f.energy is not None:
        row("<u> kT", _estimate(f.energy), _estimate(r.energy) if r else None)
    if f.l_fraction is not None:
        row("L configurations", f"{f.l_fraction:.3f}", f"{r.l_fraction:.3f}" if r and r.l_fraction is not None else "n/a")
    t = f.cvs.transitions
    if f.transitions_per_run and t is not None and set(report.kinds) == {"md"}:
        lines.append(f"  {t.cv} transitions per run: {', '.join(str(n) for n in f.transitions_per_run)}")
    lines += _correlation_lines(f)
    lines += format_state_lineages(report.state_lineages, len(f.runs))
    c = report.comparison
    if c is not None:
        def signed(d):
            if d["diff"] is None:
                return "n/a"
            return f"{d['diff']:+.3f}" + (f" +- {d['err']:.3f}" if d["err"] is not None else "")

        parts = [f"dF({fe.state} vs {fe.reference}) {signed(c.delta_f_diff_kT[fe.key])} kT" for fe in f.cvs.free_energies]
        if c.ramachandran_kl is not None:
            parts.append(f"Ramachandran KL {c.ramachandran_kl:.3f} ({c.kl_bins}x{c.kl_bins} bins)")
        if c.torus_w2_rad is not None:
            parts.append(f"torus W2 {c.torus_w2_rad:.3f} rad")
        if c.energy_w2_kT is not None:
            parts.append(f"energy W2 {c.energy_w2_kT:.3f} kT")
        if c.bond_length_max_diff_nm is not None:
            parts.append(f"bond lengths max |diff| {c.bond_length_max_diff_nm * 1000:.2f} pm")
        lines.append("  samples - reference: " + "; ".join(parts))
    if f.note:
        lines.append(f"  note: {f.note}")
    for name, path in report.plots.items():
        lines.append(f"  {name.replace('_', ' ')}: {path}")
    return "\n".join(lines)
