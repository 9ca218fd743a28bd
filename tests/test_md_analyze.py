"""Weighted analysis of MD runs: boltzgen.analysis.runs and `boltzgen analyze DIR [DIR ...]`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from boltzgen import md, systems
from boltzgen.analysis import ALANINE_DIPEPTIDE_BASINS, WeightedRun, basin_probabilities, load_run, run_figures
from boltzgen.analysis.runs import transitions
from boltzgen.cli import main

BIAS = md.Metadynamics(("phi",), height_kj_per_mol=3.0, frequency_steps=50, deposition_ps=2.0)
ALANINE = systems.collective_variables("alanine-dipeptide")


@pytest.fixture(scope="module")
def biased_runs(tmp_path_factory):
    """Two short independent metadynamics runs (seeds 1, 2): 12 frames each."""
    root = tmp_path_factory.mktemp("analyze")
    with systems.load("alanine-dipeptide", platform="Reference") as target:
        for seed in (1, 2):
            md.run_md(target, 0.003, root / f"seed{seed}", seed=seed, bias=BIAS, save_every_ps=0.25,
                      chunk_frames=6, equilibration_ps=1.0)
    return [root / "seed1", root / "seed2"]


def _synthetic(phi, log_w, path="synthetic"):
    phi = np.asarray(phi, dtype=np.float64)
    return WeightedRun(path=path, cv_values={"phi": phi, "psi": np.full_like(phi, 2.0)}, cvs=ALANINE,
                       log_weights=np.asarray(log_w, dtype=np.float64), is_l=np.ones(len(phi), bool), biased=True)


def test_weighted_delta_f_is_exact_on_a_known_case():
    """Half the frames at phi > 0 with weight 1/9 of the others: P(phi > 0) = 0.1, dF = ln 9."""
    phi = np.tile([-1.5, 1.0], 50)
    log_w = np.where(phi > 0, -math.log(9.0), 0.0) + 3.7  # any offset
    figures = run_figures([_synthetic(phi, log_w)], blocks=5)
    assert figures.delta_f_phi_positive.mean == pytest.approx(math.log(9.0), abs=1e-12)
    assert figures.delta_f_phi_positive.standard_error == pytest.approx(0.0, abs=1e-12)
    assert figures.p_phi_positive.mean == pytest.approx(0.1)
    assert figures.populations["alpha_L/C7ax"].mean == pytest.approx(0.1)
    assert figures.ess == pytest.approx(100 * (0.5 + 0.5 / 9) ** 2 / (0.5 + 0.5 / 81))  # Kish
    assert "5 contiguous blocks" in figures.error_method and figures.n_error_units == 5


def test_several_runs_give_mean_and_standard_error_over_runs():
    runs = [_synthetic(np.tile([-1.5, 1.0], 10), np.where(np.tile([-1.5, 1.0], 10) > 0, -math.log(k), 0.0),
                       path=f"run{k}") for k in (4.0, 9.0, 19.0)]
    figures = run_figures(runs)
    per_run = np.log([4.0, 9.0, 19.0])
    # over runs: -ln of the ratio of mean populations, with the delta method's error
    k = np.array([4.0, 9.0, 19.0])
    p_state, p_reference = 1 / (1 + k), k / (1 + k)
    pooled = math.log(p_reference.mean() / p_state.mean())
    influence = -(p_state - p_state.mean()) / p_state.mean() + (p_reference - p_reference.mean()) / p_reference.mean()
    assert figures.delta_f_phi_positive.mean == pytest.approx(pooled)
    assert figures.delta_f_phi_positive.standard_error == pytest.approx(influence.std(ddof=1) / math.sqrt(3))
    assert "3 independent runs" in figures.error_method and figures.n_frames == 60
    d = figures.to_dict()
    assert d["delta_f_phi_positive_kT"] == pytest.approx(pooled)
    assert d["per_unit"]["delta_f_phi_positive"] == pytest.approx(list(per_run))  # each run's own dF
    json.dumps(d)  # JSON-ready


def test_missing_side_gives_no_delta_f_but_populations():
    figures = run_figures([_synthetic(np.full(10, -1.5), np.zeros(10))], blocks=2)
    assert figures.delta_f_phi_positive is None and "(phi>0 or phi<0)" in figures.note
    assert figures.populations["beta/C7eq"].mean == 1.0
    assert figures.to_dict()["delta_f_phi_positive_kT"] is None


def test_transitions_count_core_to_core_changes():
    # alanine dipeptide's declared cores: phi <= -0.5 and 0.5 <= phi <= 2; frames between them (0, 2.5) keep
    # the last core
    cores = [(low, high) for _, low, high in ALANINE.transitions.cores]
    assert cores == [(-math.pi, -0.5), (0.5, 2.0)]
    assert transitions([-1.0, 0.0, 1.0, 0.0, 1.2, -0.2, -2.0, 2.5, 1.0], cores) == 3
    assert transitions([-1.0, -2.0], cores) == 0


def test_load_run_uses_the_log_weights(biased_runs):
    run = load_run(biased_runs[0])
    assert run.biased and run.n_frames == 12
    np.testing.assert_array_equal(run.log_weights, md.load_log_weights(biased_runs[0]))
    figures = run_figures([run], blocks=2)
    expected = basin_probabilities(run.angles, ALANINE_DIPEPTIDE_BASINS, run.log_weights)
    for name, p in expected.items():
        assert figures.populations[name].mean == pytest.approx(p)


def test_cli_analyze_several_runs_writes_json(biased_runs, tmp_path, capsys):
    out_json = tmp_path / "figures.json"
    assert main(["analyze", *map(str, biased_runs), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "24 MD frames from 2 runs (weighted by metadynamics log-weights" in out
    assert "standard error over 2 independent runs" in out
    d = json.loads(out_json.read_text())
    for key in ("delta_f_phi_positive_kT", "delta_f_phi_positive_err_kT", "populations", "n_frames", "ess_kish",
                "error_method", "phi_transitions_per_run"):
        assert key in d
    assert d["n_frames"] == 24 and d["n_frames_per_run"] == [12, 12] and 1 <= d["ess_kish"] <= 24
    assert set(d["populations"]) == set(ALANINE_DIPEPTIDE_BASINS)
    p = [run_figures([load_run(r)], blocks=2).populations["beta/C7eq"].mean for r in biased_runs]
    assert d["populations"]["beta/C7eq"]["p"] == pytest.approx(np.mean(p))


def test_cli_analyze_own_basins(biased_runs, tmp_path, capsys):
    basins = tmp_path / "basins.yaml"
    basins.write_text("left: {phi: [-3.14159, 0.0]}\nright: {phi: [0.0, 3.14159]}\n")
    out_json = tmp_path / "f.json"
    args = ["analyze", str(biased_runs[0]), "--blocks", "2", "--basins", str(basins), "--json", str(out_json)]
    assert main(args) == 0
    d = json.loads(out_json.read_text())
    assert set(d["populations"]) == {"left", "right"}
    assert d["populations"]["left"]["p"] + d["populations"]["right"]["p"] == pytest.approx(1.0, abs=1e-5)
    capsys.readouterr()
    basins.write_text("left: {phi: [-7.0, 0.0]}\n")
    assert main(["analyze", str(biased_runs[0]), "--basins", str(basins)]) == 2
    err = capsys.readouterr().err
    assert f"basins file {basins}: basin 'left'" in err and err.count("\n") == 1
    assert main(["analyze", str(biased_runs[0]), "--basins", str(tmp_path / "none.yaml")]) == 2
    assert f"basins file {tmp_path / 'none.yaml'} does not exist" in capsys.readouterr().err


def _sample_job(folder, n_runs: int = 2, n: int = 6):
    """A folder as `boltzgen sample` writes it: run-000 ... (sample runs of alanine dipeptide) and summary.json."""
    from boltzgen.io.sample_runs import write_json, write_sample_run

    with systems.load("alanine-dipeptide", platform="Reference") as target:
        x0 = np.asarray(target.positions, dtype=np.float64)
        for k in range(n_runs):
            x = x0 + 0.002 * np.random.default_rng(k).standard_normal((n, *x0.shape))
            write_sample_run(folder / f"run-{k:03d}", x, np.zeros(n), target.reduced_energy(x).numpy(),
                             target.topology, {"system": target.name})
    write_json(folder / "summary.json", {"n_runs": n_runs})
    return folder


def test_cli_analyze_expands_a_sample_job_folder_and_says_so(tmp_path, capsys):
    job = _sample_job(tmp_path / "job", n_runs=3)
    assert main(["analyze", str(job)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{job} holds the runs of one job; analysing its 3 run folders" in lines[0]
    assert "run-000, run-001, run-002" in lines[0]
    assert "18 SMC samples from 3 runs" in captured.out
    # one run folder is analysed as itself, with no note
    assert main(["analyze", str(job / "run-000")]) == 0
    assert capsys.readouterr().err == ""


def test_a_damaged_diagnostics_json_is_named_not_taken_for_md(tmp_path, capsys):
    job = _sample_job(tmp_path / "job", n_runs=2)
    damaged = job / "run-001" / "diagnostics.json"
    for text in ("{\"kind\": \"boltzgen-sam", "[1, 2]", ""):
        damaged.write_text(text)
        for argv in (["analyze", str(job / "run-001")], ["analyze", str(job)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert f"{damaged} is damaged" in err and f"the sample run in {job / 'run-001'} cannot be read" in err
            assert "MD chunk" not in err
    damaged.unlink()
    assert main(["analyze", str(job / "run-001")]) == 2
    assert f"{damaged} is missing: the sample run in {job / 'run-001'} is incomplete" in capsys.readouterr().err


def test_cli_analyze_one_md_run_reports_its_statistical_inefficiency_and_burn_in(biased_runs, tmp_path, capsys):
    out_json = tmp_path / "one.json"
    assert main(["analyze", str(biased_runs[0]), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "errors: standard error of one run from each figure's statistical inefficiency" in out
    assert "effective samples n/g of 12 frames" in out and "suggested burn-in: the first" in out
    d = json.loads(out_json.read_text())
    assert d["n_error_units"] == 1 and d["statistical_inefficiency"]["energy_mean"] >= 1.0
    assert 0 <= d["suggested_burn_in_frames"] < 12


def test_cli_analyze_basins_in_degrees_or_radians_agree(biased_runs, tmp_path, capsys):
    """basins_deg: (as a system YAML declares them), basins_rad: (as --json writes them) and the bare radians
    form give the same populations."""
    files = {"deg": "basins_deg:\n  left: {phi: [-180, 0]}\n  right: {phi: [0, 180], psi: [-180, 180]}\n",
             "rad": f"basins_rad:\n  left: {{phi: [{-math.pi!r}, 0.0]}}\n  right: {{phi: [0.0, {math.pi!r}]}}\n",
             "bare": f"left: {{phi: [{-math.pi!r}, 0.0]}}\nright: {{phi: [0.0, {math.pi!r}]}}\n"}
    found = {}
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        assert main(["analyze", str(biased_runs[0]), "--basins", str(tmp_path / f"{name}.yaml"), "--json",
                     str(tmp_path / f"{name}.json")]) == 0
        found[name] = json.loads((tmp_path / f"{name}.json").read_text())["populations"]
    assert found["deg"] == found["rad"] == found["bare"]
    capsys.readouterr()
    (tmp_path / "bad.yaml").write_text("basins_deg:\n  left: {phi: [-200, 0]}\n")
    assert main(["analyze", str(biased_runs[0]), "--basins", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "basins_deg 'left': arcs must be [low, high] in degrees" in err and "[-200, 0] deg" in err
    assert err.count("\n") == 1


def test_the_table_gives_kt_in_molar_units_at_the_runs_temperature():
    from boltzgen.analysis.report import AnalysisReport, format_analysis

    runs = [_synthetic(np.tile([-1.5, 1.0], 10), np.where(np.tile([-1.5, 1.0], 10) > 0, -math.log(k), 0.0),
                       path=f"run{k}") for k in (4.0, 9.0)]
    figures = run_figures(runs)
    at_300 = format_analysis(AnalysisReport(figures, None, None, kinds=("md", "md"), temperature_K=300.0))
    assert "at 300 K, 1 kT = 2.4943 kJ/mol = 0.5962 kcal/mol" in at_300
    assert "kJ/mol" not in format_analysis(AnalysisReport(figures, None, None, kinds=("md", "md")))


def test_rare_populations_print_with_significant_digits():
    from boltzgen.analysis.report import format_population

    assert format_population(0.0015, 0.00002) == "0.00150 +- 0.00002"  # not 0.002 +- 0.000
    assert format_population(0.000029, 0.00002) == "0.000029 +- 0.000020"
    assert format_population(0.0010, 0.0004) == "0.0010 +- 0.0004"  # two significant digits of the value
    assert format_population(0.351, 0.011) == "0.351 +- 0.011" and format_population(0.0, 0.0) == "0.000 +- 0.000"
    assert format_population(0.02, None) == "0.020" and format_population(None, 0.1) == "n/a"
