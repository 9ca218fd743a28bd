"""Weighted MD runs (plain or metadynamics) and sample runs, and the figures computed from them.

    runs = [load_run(d) for d in ("meta-phi-seed1", "meta-phi-seed2", "meta-phi-seed3")]
    figures = run_figures(runs)                 # populations, declared free energies, ESS, errors
    print(figures.free_energies["phi_positive"])  # Estimate in kT
    json.dump(figures.to_dict(), fh)            # what `boltzgen analyze --json` writes

Which collective variables (CVs), basins and free energies are reported is a fact about the molecule,
declared in its system YAML (:mod:`boltzgen.cvs`): :func:`load_run` takes the declaration of the
system the run recorded (a named system), or the one it is given. A molecule that declares none gets
the figures every run has: frames, ESS and the weighted mean energy.

Every run is weighted: a metadynamics run's frames carry log-weights +V/kT
(:func:`boltzgen.md.load_log_weights`), a plain MD run's are zero. Weights are self-normalised
within each run (every run of its own bias). Error bars: with several runs (independent seeds),
each figure is the mean of the per-run figures and its error the standard error over runs (the
headline whenever there are several runs); with one MD run, the figure is that of the whole run and
its error comes from the statistical inefficiency g of the figure's per-frame influence series
(pymbar, :mod:`boltzgen.analysis.timeseries`): SE = sqrt(g var / n), n / g effective samples, and a
burn-in is suggested (pymbar's ``detect_equilibration`` on u) but never dropped; or, when asked
(``blocks=k``), the standard error over k contiguous blocks. Angles in radians, free energies in kT,
float64.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._checks import check_count
from ..cvs import MoleculeCVs, Region, atom_indices
from ..smc.weights import clean_log_weights, ess, normalized_log_weights
from .free_energy import Basin, Estimate, delta_f_over_runs, with_error
from .timeseries import CorrelatedError, correlated_error, suggested_burn_in


@dataclass(frozen=True, eq=False)
class WeightedRun:
    """The weighted frames of one MD run folder or sample-run folder, reduced to what analysis needs.

    Attributes:
        path: the run folder.
        log_weights: (n,) float64 log-weights toward the Boltzmann distribution (zeros for plain MD).
        biased: whether the run was biased (metadynamics).
        cv_values: {CV name: (n,) float64 radians in (-pi, pi]} for every declared CV.
        cvs: the declaration the CVs come from (empty: none declared or known).
        is_l: (n,) bool, whether every alpha carbon has the L configuration, or None (no alpha carbon).
        energies: (n,) float64 reduced physical energies u (kT) of the frames, or None.
        kind: "md" (a :func:`boltzgen.md.run_md` folder) or "samples" (a
            :mod:`boltzgen.samples` folder of SMC particles: never split into blocks, its
            particles are correlated through resampling).
        bond_lengths: (n, n_bonds) float64 bond lengths in nm (topology order), or None.
        system: the system the run recorded, or None.
        note: why the run has no CVs (the system's declaration is unknown or does not fit), or None.
        temperature_K: the temperature the run (or its job) recorded, in K, or None.
        origins: (n,) int64 index of each sample's lineage (its initial ancestor at t = 1) for a sample
            run that saved them, else None (:mod:`boltzgen.analysis.lineages`).
    """

    path: str
    log_weights: np.ndarray
    biased: bool = False
    cv_values: Mapping[str, np.ndarray] = field(default_factory=dict)
    cvs: MoleculeCVs = MoleculeCVs()
    is_l: np.ndarray | None = None
    energies: np.ndarray | None = None
    kind: str = "md"
    bond_lengths: np.ndarray | None = None
    system: str | None = None
    note: str | None = None
    temperature_K: float | None = None
    origins: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(np.asarray(self.log_weights).shape[0])

    @property
    def angles(self) -> np.ndarray | None:
        """(n, 2) float64 (phi, psi) in radians when the molecule declares CVs named phi and psi, else None."""
        if "phi" in self.cv_values and "psi" in self.cv_values:
            return np.stack([self.cv_values["phi"], self.cv_values["psi"]], axis=1)
        return None

    def angle_pair(self, phi: str, psi: str) -> np.ndarray:
        """(n, 2) float64 the CVs ``phi`` and ``psi`` (e.g. "phi2", "psi2") in radians, stacked."""
        return np.stack([self.cv_values[phi], self.cv_values[psi]], axis=1)

    def __getitem__(self, index) -> "WeightedRun":
        """The frames ``index`` (an index array or slice) of this run, as a run of their own."""
        pick = (lambda a: None if a is None else np.asarray(a)[index])
        return WeightedRun(self.path, np.asarray(self.log_weights)[index], self.biased,
                           {k: v[index] for k, v in self.cv_values.items()}, self.cvs, pick(self.is_l),
                           pick(self.energies), self.kind, pick(self.bond_lengths), self.system, self.note,
                           self.temperature_K, pick(self.origins))


def ramachandran_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The (phi, psi) CV name pairs among ``names`` that a Ramachandran plot takes: ("phi", "psi") and
    every ("phiN", "psiN") with both declared, in the order of ``names``' phi."""
    pairs = []
    for name in names:
        if name.startswith("phi") and (name == "phi" or name[3:].isdigit()) and "psi" + name[3:] in names:
            pairs.append((name, "psi" + name[3:]))
    return pairs


def _bond_lengths(traj) -> np.ndarray | None:
    import mdtraj

    pairs = np.array([[b[0].index, b[1].index] for b in traj.topology.bonds], dtype=np.int64)
    return mdtraj.compute_distances(traj, pairs).astype(np.float64) if len(pairs) else None


def cv_values(x, topology, cvs: MoleculeCVs) -> dict[str, np.ndarray]:
    """Every CV of ``cvs`` on positions ``x`` (n, n_atoms, 3) nm: {name: (n,) float64 radians in (-pi, pi]}."""
    from .dihedrals import dihedrals

    if cvs.is_empty:
        return {}
    idx = atom_indices(cvs, topology)
    values = dihedrals(x, np.stack([idx[name] for name in cvs.names])).numpy()
    return {name: values[:, k] for k, name in enumerate(cvs.names)}


def state_populations(x, topology, cvs: MoleculeCVs, log_weights=None) -> dict[str, float]:
    """The weighted population of the state of every free energy ``cvs`` declares, for one set of samples.

    For a model's own samples (:func:`boltzgen.sampling.model_samples`) this is where the model puts
    its mass, to set beside the reference's populations: SMC can lower a basin's mass that a
    proposal overstates, but it cannot find lineages for a basin that the proposal starves.

    Args:
        x: (n, n_atoms, 3) positions in nm.
        topology: the molecule's topology (mdtraj or OpenMM).
        cvs: the molecule's declaration (e.g. :func:`boltzgen.systems.collective_variables`).
        log_weights: (n,) log-weights of the samples (any offset), or None for equal weights.

    Returns:
        {free-energy key: P(state)}, e.g. {"phi1_positive": 0.37, ...}; empty when none is declared.
    """
    n = int(np.shape(x)[0])
    lw = np.zeros(n) if log_weights is None else np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.shape != (n,):
        raise ValueError(f"log_weights must have shape ({n},), one per sample, got {lw.shape}")
    run = WeightedRun("samples", lw, cv_values=cv_values(x, topology, cvs), cvs=cvs, kind="samples")
    figures = _unit_figures(run, cvs, {})
    return {fe.key: figures[f"p_{fe.key}"] for fe in cvs.free_energies}


def _run_cvs(system: str | None, given: MoleculeCVs | None, topology, path) -> tuple[MoleculeCVs, str | None]:
    """The declaration to use for a run: ``given``, else that of the recorded system; with a note when none."""
    from .. import systems

    if given is not None:
        try:
            atom_indices(given, topology)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc} (the collective variables{f' of {given.source}' if given.source else ''} "
                             "do not fit this run's molecule)") from exc
        return given, None
    found = systems.recorded_collective_variables(system)
    if found is None:
        which = f"system {system!r} is no named system" if system else "the run records no system"
        return MoleculeCVs(), (f"{path}: {which}, so its collective variables are unknown (name the system: "
                               "`boltzgen analyze --system NAME_OR_YAML`)")
    try:
        atom_indices(found, topology)
    except ValueError as exc:
        return MoleculeCVs(), f"{path}: the collective variables of system {system!r} do not fit this run ({exc})"
    return found, None


def load_run(out_dir, cvs: MoleculeCVs | None = None) -> WeightedRun:
    """Read an MD run folder (:func:`boltzgen.md.run_md`) or a sample-run folder (:mod:`boltzgen.samples`).

    Args:
        out_dir: the folder.
        cvs: the collective variables to evaluate (e.g. ``boltzgen.systems.collective_variables(name)``);
            None takes those of the system the run recorded, when it is a named system (else the run
            has no CVs and its ``note`` says why).
    Returns:
        a :class:`WeightedRun`.
    Raises:
        ValueError: naming a missing or damaged file, or (``cvs`` given) a CV atom the molecule lacks.
    """
    from ..coordinates import is_l_amino_acid
    from ..io.md_runs import load_energies, load_log_weights, load_trajectory, recorded_system, recorded_temperature
    from ..io.sample_runs import job_temperature, load_sample_run, looks_like_sample_run

    if looks_like_sample_run(out_dir):  # a damaged one too: its error names the damaged file
        run = load_sample_run(out_dir)
        traj, log_weights, energies, kind = run.trajectory, run.log_weights, run.energies, "samples"
        origins = run.origins
        system = run.diagnostics.get("system") or run.diagnostics.get("to")
        temperature = job_temperature(out_dir)
    else:
        traj, log_weights, kind = load_trajectory(out_dir), load_log_weights(out_dir), "md"
        energies, system = load_energies(out_dir), recorded_system(out_dir)
        temperature, origins = recorded_temperature(out_dir), None
    x = torch.from_numpy(traj.xyz.astype(np.float64))
    declared, note = _run_cvs(system, cvs, traj.topology, out_dir)
    try:
        is_l = is_l_amino_acid(x, traj.topology).numpy()
    except ValueError:  # no alpha carbon: chirality of amino acids does not apply
        is_l = None
    return WeightedRun(path=str(out_dir), log_weights=log_weights,
                       biased=kind == "md" and bool(np.any(log_weights != 0)),
                       cv_values=cv_values(x, traj.topology, declared), cvs=declared, is_l=is_l, energies=energies,
                       kind=kind, bond_lengths=_bond_lengths(traj), system=system, note=note,
                       temperature_K=temperature, origins=origins)


def transitions(values, cores) -> int:
    """Number of transitions between two cores of a CV along a trajectory.

    A transition is a frame in one core after the last frame in a core was in the other; frames
    outside both cores do not count (no recrossing noise).

    Args:
        values: (n,) CV values in radians, in time order.
        cores: two (low, high) closed intervals in radians (e.g. ``TransitionCores.cores`` without names).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must have shape (n,) in radians, got {values.shape}")
    (low0, high0), (low1, high1) = cores
    core = np.zeros(len(values), dtype=np.int8)
    core[(values >= low0) & (values <= high0)] = -1
    core[(values >= low1) & (values <= high1)] = 1
    visited = core[core != 0]
    return int(np.count_nonzero(visited[1:] != visited[:-1]))


def load_basins(path) -> dict[str, Basin | Region]:
    """Basins from a YAML or JSON file, in degrees or radians as its keys say.

    Three forms (each basin maps CV names to an arc [low, high), which wraps through 180 deg / pi when
    low > high; a CV a basin does not name is the whole circle):

    * ``basins_deg:`` degrees, exactly as a system YAML declares its basins (any declared CV)::

          basins_deg:
            alpha_R: {phi: [-180, 0], psi: [-100, 0]}
            phi>0:   {phi: [0, 180]}

    * ``basins_rad:`` radians, as ``boltzgen analyze --json`` writes them (any declared CV);
    * a bare mapping name -> {phi: [low, high], psi: [low, high]} in radians (phi and psi only).

    They replace the basins a molecule declares (their CVs must be declared by it).
    """
    import yaml  # JSON is YAML too

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"basins file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"basins file {p} cannot be read as YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if isinstance(data, Mapping) and set(data) & {"basins_deg", "basins_rad"}:
        return _unit_basins(data, p)
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"basins file {p} must hold basins_deg: {{name: {{cv: [low, high]}}}} in degrees, "
                         "basins_rad: (the same in radians) or name -> {phi: [low, high], psi: [low, high]} in radians")
    basins = {}
    for name, arcs in data.items():
        if not isinstance(arcs, Mapping) or not set(arcs) <= {"phi", "psi"}:
            raise ValueError(f"basins file {p}: basin {name!r} must be {{phi: [low, high], psi: [low, high]}} "
                             f"in radians (or give basins_deg: in degrees), got {arcs!r}")
        try:
            basins[str(name)] = Basin(str(name), phi_range=tuple(arcs.get("phi", (-math.pi, math.pi))),
                                      psi_range=tuple(arcs.get("psi", (-math.pi, math.pi))))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"basins file {p}: basin {name!r}: {exc}") from exc
    return basins


def _unit_basins(data: Mapping, p: Path) -> dict[str, Region]:
    """Regions from the ``basins_deg`` (degrees) or ``basins_rad`` (radians) key of a basins file."""
    if len(data) != 1:
        raise ValueError(f"basins file {p} must hold one key, basins_deg (degrees) or basins_rad (radians), "
                         f"got {', '.join(map(str, data))}")
    (key, basins), = data.items()
    to_rad = math.radians if key == "basins_deg" else float
    unit = "degrees" if key == "basins_deg" else "radians"
    if not isinstance(basins, Mapping) or not basins:
        raise ValueError(f"basins file {p}: {key} must map basin names to {{cv: [low, high]}} in {unit}")
    regions = {}
    for name, arcs in basins.items():
        if not isinstance(arcs, Mapping):
            raise ValueError(f"basins file {p}: {key} {name!r} must be {{cv: [low, high]}} in {unit}, got {arcs!r}")
        try:
            parsed = tuple((str(cv), to_rad(float(low)), to_rad(float(high))) for cv, (low, high) in arcs.items())
            regions[str(name)] = Region(str(name), parsed)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"basins file {p}: {key} {name!r}: arcs must be [low, high] in {unit} ({exc})") from exc
    return regions


def _as_region(name: str, basin) -> Region:
    """A :class:`~boltzgen.cvs.Region` from a Region or a (phi, psi) :class:`Basin`."""
    if isinstance(basin, Region):
        return basin
    if isinstance(basin, Basin):
        return Region(name, (("phi", *basin.phi_range), ("psi", *basin.psi_range)))
    raise TypeError(f"basins must map names to Basin or Region objects, got {type(basin).__name__}")


@dataclass(frozen=True)
class RunFigures:
    """The figures of one or several weighted runs (see the module docstring for the errors).

    Attributes:
        runs: the run folders.
        n_frames: frames of all runs together; n_frames_per_run: of each.
        ess: Kish effective sample size of the weights, summed over runs; ess_per_run: of each.
        error_method: how the errors were computed, in words.
        n_error_units: the number of runs (several runs), of blocks (one run, ``blocks=k``), or 1 (one run,
            statistical inefficiency).
        cvs: the declaration the figures follow (empty: no CVs).
        populations: {basin name: Estimate of its weighted population}.
        free_energies: {key: Estimate of dF = F(state) - F(reference) in kT, or None when a run or block
            has no weighted frame on one side (``note`` says which)}, one per declared free energy.
        state_populations: {key: Estimate of P(state)} for every declared free energy.
        energy: Estimate of the weighted mean reduced energy <u> in kT, or None without energies.
        l_fraction: weighted fraction of L configurations (mean over runs), or None (no alpha carbon).
        transitions_per_run: transitions between the declared cores per run, or None (none declared).
        per_unit: {name: tuple of per-run (several runs) or per-block (one run) values} for every figure
            (the whole run's value alone with the statistical-inefficiency method).
        basins: {name: Region} of the populations.
        note: why a free energy or the CVs are missing, or None.
        statistical_inefficiency: {figure: g >= 1 of its influence series} (one MD run without blocks;
            else empty); the figure's Estimate.n is its effective sample size n / g, rounded.
        burn_in_frames: the burn-in pymbar's detect_equilibration suggests on u (one MD run without
            blocks; reported, not dropped), or None.
    """

    runs: tuple[str, ...]
    n_frames: int
    n_frames_per_run: tuple[int, ...]
    ess: float
    ess_per_run: tuple[float, ...]
    error_method: str
    n_error_units: int
    cvs: MoleculeCVs
    populations: dict[str, Estimate]
    free_energies: dict[str, Estimate | None]
    state_populations: dict[str, Estimate]
    energy: Estimate | None
    l_fraction: float | None
    transitions_per_run: tuple[int, ...] | None
    per_unit: dict[str, tuple]
    basins: dict[str, Region]
    note: str | None = None
    statistical_inefficiency: dict[str, float] = field(default_factory=dict)
    burn_in_frames: int | None = None

    # the figures alanine dipeptide's declaration gives, under the names they always had
    @property
    def delta_f_phi_positive(self) -> Estimate | None:
        """dF(phi > 0 vs phi < 0) in kT (the free energy declared as ``phi_positive``), or None."""
        return self.free_energies.get("phi_positive")

    @property
    def delta_f_phi_0_to_2(self) -> Estimate | None:
        """dF(0 <= phi < 2 rad vs the rest) in kT (declared as ``phi_0_to_2``), or None."""
        return self.free_energies.get("phi_0_to_2")

    @property
    def p_phi_positive(self) -> Estimate | None:
        """P(phi > 0) (the state of the free energy ``phi_positive``), or None."""
        return self.state_populations.get("phi_positive")

    @property
    def phi_transitions_per_run(self) -> tuple[int, ...] | None:
        """Transitions per run when the declared cores are on phi, else None."""
        t = self.cvs.transitions
        return self.transitions_per_run if t is not None and t.cv == "phi" else None

    def summary_figures(self) -> dict:
        """The figures a sample job's summary.json holds: every declared free energy as
        ``delta_f_<key>_kT`` / ``delta_f_<key>_err_kT`` (None where missing: no error bar from one run),
        the basin populations and the declaration."""
        def num(v):
            return float(v) if v is not None and math.isfinite(v) else None

        out = {}
        for key, e in self.free_energies.items():
            out[f"delta_f_{key}_kT"] = None if e is None else num(e.mean)
            out[f"delta_f_{key}_err_kT"] = None if e is None else num(e.standard_error)
        out["populations"] = {name: {"p": num(e.mean), "err": num(e.standard_error)}
                              for name, e in self.populations.items()}
        out["free_energies"] = [{"key": f.key, "state": f.state, "reference": f.reference}
                                for f in self.cvs.free_energies]
        out["collective_variables"] = {d.name: list(d.atoms) for d in self.cvs.dihedrals}
        return out

    def to_dict(self) -> dict:
        """The figures as JSON-ready Python values (NaN/inf and missing values become None)."""

        def num(v):
            return float(v) if v is not None and math.isfinite(v) else None

        def est(e, key, unit=""):
            return {f"{key}{unit}": num(e.mean) if e else None,
                    f"{key}_err{unit}": num(e.standard_error) if e else None}

        data = {}
        for key, e in self.free_energies.items():
            data.update(est(e, f"delta_f_{key}", "_kT"))
        for key, e in self.state_populations.items():
            data.update(est(e, f"p_{key}"))
        data.update({
            "populations": {name: {"p": num(e.mean), "err": num(e.standard_error)}
                            for name, e in self.populations.items()},
            **est(self.energy, "energy_mean", "_kT"),
            "n_frames": self.n_frames,
            "n_frames_per_run": list(self.n_frames_per_run),
            "ess_kish": num(self.ess),
            "ess_kish_per_run": [num(v) for v in self.ess_per_run],
            "error_method": self.error_method,
            "n_error_units": self.n_error_units,
            "statistical_inefficiency": {k: num(g) for k, g in self.statistical_inefficiency.items()},
            "suggested_burn_in_frames": self.burn_in_frames,
            "l_fraction": num(self.l_fraction),
        })
        t = self.cvs.transitions
        if t is not None and self.transitions_per_run is not None:
            data[f"{t.cv}_transitions_per_run"] = list(self.transitions_per_run)
            data[f"{t.cv}_transition_cores_rad"] = {name: [low, high] for name, low, high in t.cores}
        declared = self.cvs.to_dict()
        data.update({
            "per_unit": {k: [num(v) if v is not None else None for v in vals] for k, vals in self.per_unit.items()},
            "basins_rad": {name: b.arcs_rad(self.cvs.names) for name, b in self.basins.items()},
            "collective_variables": declared["collective_variables"],
            "states_rad": declared["states_rad"],
            "free_energies": declared["free_energies"],
            "collective_variables_source": declared["source"],
            "runs": list(self.runs),
            "note": self.note,
        })
        return data

    def write_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` (indented JSON)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _log_probability(mask: np.ndarray, lw: np.ndarray) -> float:
    """log of the weighted fraction of samples in ``mask`` (-inf when it holds none); ``lw`` normalised."""
    inside = lw[mask]
    return float(torch.logsumexp(torch.from_numpy(inside), 0)) if inside.size else -math.inf


def _unit_figures(run: WeightedRun, cvs: MoleculeCVs, basins: dict[str, Region]) -> dict:
    """Every figure of one run or block (None for a free energy one side of which is empty)."""
    lw = normalized_log_weights(clean_log_weights(torch.from_numpy(np.asarray(run.log_weights, np.float64)),
                                                  "log_weights")).numpy()
    for name, v in run.cv_values.items():
        bad = ~np.isfinite(v) & np.isfinite(lw)
        if bad.any():
            raise ValueError(f"{run.path}: CV {name} is NaN or infinite at {int(bad.sum())} frames with non-zero "
                             f"weight (first: frame {int(np.flatnonzero(bad)[0])})")
    figures = {f"p[{name}]": math.exp(_log_probability(b.contains(run.cv_values), lw)) for name, b in basins.items()}
    for fe in cvs.free_energies:
        log_p_state = _log_probability(cvs.region(fe.state).contains(run.cv_values), lw)
        log_p_reference = _log_probability(cvs.region(fe.reference).contains(run.cv_values), lw)
        figures[f"p_{fe.key}"] = math.exp(log_p_state)
        figures[f"p_reference_{fe.key}"] = math.exp(log_p_reference)
        both = log_p_state > -math.inf and log_p_reference > -math.inf
        figures[f"delta_f_{fe.key}"] = log_p_reference - log_p_state if both else None
    if run.energies is not None:
        keep = np.isfinite(lw) & np.isfinite(run.energies)
        w = np.exp(lw[keep])
        figures["energy_mean"] = float((w * run.energies[keep]).sum() / w.sum()) if w.sum() > 0 else None
    if run.is_l is not None:
        w = np.exp(run.log_weights - np.logaddexp.reduce(run.log_weights))
        figures["l_fraction"] = min(1.0, float((w * run.is_l).sum()))
    return figures


def _influence_series(run: WeightedRun, cvs: MoleculeCVs, basins: dict[str, Region], whole: dict) -> dict:
    """{figure: (n,) float64 influence series in time order} for every figure of ``whole`` (the run's
    :func:`_unit_figures`) that has an error: to first order figure(run) - figure(truth) = mean(z)
    (:mod:`boltzgen.analysis.timeseries`). Weights are scaled to mean 1; zero-weight frames give 0."""
    lw = normalized_log_weights(clean_log_weights(torch.from_numpy(np.asarray(run.log_weights, np.float64)),
                                                  "log_weights")).numpy()
    w = np.exp(lw) * run.n_frames

    def centred(mask, p):  # z of a weighted fraction p of the frames in ``mask``
        return w * (mask.astype(np.float64) - p)

    series = {f"p[{name}]": centred(b.contains(run.cv_values), whole[f"p[{name}]"]) for name, b in basins.items()}
    for fe in cvs.free_energies:
        state = cvs.region(fe.state).contains(run.cv_values)
        series[f"p_{fe.key}"] = centred(state, whole[f"p_{fe.key}"])
        if whole.get(f"delta_f_{fe.key}") is not None:  # dF = ln P(reference) - ln P(state)
            reference = cvs.region(fe.reference).contains(run.cv_values)
            p_state, p_reference = whole[f"p_{fe.key}"], float(np.mean(w * reference))
            series[f"delta_f_{fe.key}"] = (centred(reference, p_reference) / p_reference
                                           - centred(state, p_state) / p_state)
    if whole.get("energy_mean") is not None:
        keep = np.isfinite(lw) & np.isfinite(run.energies)
        w_keep = np.where(keep, w, 0.0)
        u = np.where(keep, run.energies, 0.0)
        series["energy_mean"] = w_keep * (u - whole["energy_mean"]) / w_keep.mean()
    return series


def _correlated_errors(run: WeightedRun, cvs: MoleculeCVs, basins: dict[str, Region],
                       whole: dict) -> dict[str, CorrelatedError]:
    """{figure: its standard error and statistical inefficiency} of one MD run (time-ordered frames)."""
    if run.n_frames < 2:
        raise ValueError(f"{run.path} holds {run.n_frames} frame: an error bar from one run needs at least 2")
    return {key: correlated_error(z) for key, z in _influence_series(run, cvs, basins, whole).items()}


def _burn_in(run: WeightedRun) -> int | None:
    """The burn-in pymbar suggests on the run's reduced energies (None without finite energies)."""
    u = run.energies
    if u is None or run.n_frames < 3 or not np.isfinite(u).all():
        return None
    return suggested_burn_in(u)


def _common_cvs(runs: Sequence[WeightedRun]) -> MoleculeCVs:
    first = runs[0]
    for r in runs[1:]:
        if r.cvs != first.cvs:
            raise ValueError(f"runs {first.path} and {r.path} declare different collective variables "
                             f"({', '.join(first.cvs.names) or 'none'} from {first.cvs.source}; "
                             f"{', '.join(r.cvs.names) or 'none'} from {r.cvs.source}): are they runs of one molecule?")
    return first.cvs


def run_figures(runs: Sequence, basins: Mapping | None = None, blocks: int | None = None,
                cvs: MoleculeCVs | None = None) -> RunFigures:
    """Weighted basin populations and free energies of one or several runs, with errors.

    Args:
        runs: :class:`WeightedRun` objects or run folders (read with :func:`load_run`), at least one;
            a single SMC sample run gets figures without error bars (NaN).
        basins: name -> :class:`Basin` (on phi, psi) or :class:`~boltzgen.cvs.Region` for the
            populations, replacing the declared basins (default: the basins the molecule declares).
        blocks: None (default): the errors of a single MD run come from each figure's statistical
            inefficiency (pymbar); an int >= 2: from that many contiguous blocks instead. Ignored for
            several runs.
        cvs: the declaration for run folders (see :func:`load_run`; default: the recorded system's).

    Returns:
        :class:`RunFigures`. With several runs each figure is the mean over runs and its error
        the standard error over runs; with one MD run the whole-run figure and the standard error
        from its statistical inefficiency (with a suggested burn-in, not dropped), or over
        ``blocks`` contiguous blocks.
    """
    runs = [r if isinstance(r, WeightedRun) else load_run(r, cvs) for r in runs]
    if not runs:
        raise ValueError("runs is empty: give at least one run folder")
    declared = _common_cvs(runs)
    if basins is None:
        regions = {b.name: b for b in declared.basins}
    else:
        regions = {str(name): _as_region(str(name), b) for name, b in basins.items()}
        missing = sorted({cv for r in regions.values() for cv in r.cvs} - set(declared.names))
        if missing:
            raise ValueError(f"basins use {', '.join(missing)}, which the runs' molecule does not declare as "
                             f"collective variables (declared: {', '.join(declared.names) or 'none'})")
    blocks = check_count(blocks, "blocks", allow_none=True)
    errors, burn_in = None, None
    if len(runs) >= 2:
        units = [_unit_figures(r, declared, regions) for r in runs]
        whole = None
        labels = [str(r.path) for r in runs]
        method = (f"standard error over {len(runs)} independent runs (figures: mean over runs; free energies: "
                  "-ln of the ratio of mean populations)")
    elif runs[0].kind == "samples":  # SMC particles are correlated: no error bar from one run
        run = runs[0]
        whole = _unit_figures(run, declared, regions)
        units, labels = [whole], [str(run.path)]
        method = "none: one SMC run (error bars need independent runs, never the particles of one run)"
    elif blocks is None:
        run = runs[0]
        whole = _unit_figures(run, declared, regions)
        units, labels = [whole], [str(run.path)]
        errors, burn_in = _correlated_errors(run, declared, regions, whole), _burn_in(run)
        method = ("standard error of one run from each figure's statistical inefficiency (pymbar timeseries; "
                  "figures: whole run)")
    else:
        run = runs[0]
        if blocks < 2:
            raise ValueError(f"blocks must be at least 2 (error bars of one run need two blocks), got {blocks}")
        if run.n_frames < blocks:
            raise ValueError(f"{run.path} holds {run.n_frames} frames, fewer than blocks={blocks}")
        parts = np.array_split(np.arange(run.n_frames), blocks)
        units = [_unit_figures(run[i], declared, regions) for i in parts]
        whole = _unit_figures(run, declared, regions)
        labels = [f"{run.path} block {k}" for k in range(blocks)]
        method = f"standard error over {blocks} contiguous blocks of one run (figures: whole run)"

    notes = [r.note for r in runs if r.note][:1]
    kind = "blocks" if len(units) > 1 and whole is not None else "runs"
    sides = {f"delta_f_{f.key}": f"{f.state} or {f.reference}" for f in declared.free_energies}

    def estimate(key):
        values = [u.get(key) for u in units]
        missing = [label for label, v in zip(labels, values) if v is None]
        if missing or (whole is not None and whole.get(key) is None):
            notes.append(f"{key}: {len(missing)} of {len(units)} {kind} hold no weighted frame on one side "
                         f"({sides.get(key, key)}), first {missing[0] if missing else runs[0].path}")
            return None
        if errors is not None:
            e = errors[key]
            return Estimate(mean=whole[key], standard_error=e.standard_error, n=max(1, round(e.effective_samples)))
        if len(values) == 1:
            return Estimate(mean=values[0], standard_error=float("nan"), n=1)
        e = with_error(values)
        return Estimate(mean=whole[key], standard_error=e.standard_error, n=e.n) if whole is not None else e

    def over_runs(key):
        """Several runs: dF from the populations averaged over runs (see delta_f_over_runs)."""
        try:
            return delta_f_over_runs([u[f"p_{key}"] for u in units], [u[f"p_reference_{key}"] for u in units])
        except ValueError:
            notes.append(f"delta_f_{key}: no run holds weighted frames on one side ({sides[f'delta_f_{key}']})")
            return None

    populations = {name: estimate(f"p[{name}]") for name in regions}
    state_populations = {f.key: estimate(f"p_{f.key}") for f in declared.free_energies}
    free_energies = {f.key: over_runs(f.key) if whole is None and len(units) > 1 else estimate(f"delta_f_{f.key}")
                     for f in declared.free_energies}
    energy = estimate("energy_mean") if all("energy_mean" in u for u in units) else None
    per_unit = {key: tuple(u[key] for u in units) for key in units[0]}
    ess_per_run = tuple(ess(torch.from_numpy(np.asarray(r.log_weights, dtype=np.float64))) for r in runs)
    has_l = all(r.is_l is not None for r in runs)
    l_fraction = None
    if has_l:
        l_fraction = float(np.mean([u["l_fraction"] for u in units]) if whole is None else whole["l_fraction"])
    t = declared.transitions
    per_run_transitions = None
    if t is not None:
        cores = [(low, high) for _, low, high in t.cores]
        per_run_transitions = tuple(transitions(r.cv_values[t.cv], cores) for r in runs)
    return RunFigures(
        runs=tuple(r.path for r in runs), n_frames=sum(r.n_frames for r in runs),
        n_frames_per_run=tuple(r.n_frames for r in runs), ess=float(sum(ess_per_run)), ess_per_run=ess_per_run,
        error_method=method, n_error_units=len(units), cvs=declared, populations=populations,
        free_energies=free_energies, state_populations=state_populations, energy=energy, l_fraction=l_fraction,
        transitions_per_run=per_run_transitions, per_unit=per_unit, basins=regions, note="; ".join(notes) or None,
        statistical_inefficiency={k: e.statistical_inefficiency for k, e in (errors or {}).items()},
        burn_in_frames=burn_in)


__all__ = ["RunFigures", "WeightedRun", "cv_values", "load_basins", "load_run", "ramachandran_pairs", "run_figures",
           "transitions"]
