"""benchmarks/tetrapeptide_vs_md.py --quick runs every arm end to end (a tiny model for the generator arms;
figures meaningless), and its state arithmetic."""
import contextlib
import io
import json
import math

import pytest

from boltzgen import md, systems
from boltzgen.pipeline import TrainSettings, train_model

TINY = TrainSettings(dsm_steps=12, clf_steps=6, batch_size=16, clf_batch_size=4, clf_levels=3, hidden=16, n_blocks=1,
                     own_samples=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("tp")
    with systems.load("alanine-tetrapeptide") as target:
        md.run_md(target, 0.02, work / "md", seed=3, equilibration_ps=1.0, chunk_frames=10)
        report = train_model(target, [work / "md"], work / "m.pt", TINY)
    return report.model_path


@pytest.mark.parametrize("system", ["alanine-tetrapeptide", "alanine-tetrapeptide-implicit"])
def test_quick_benchmark_runs_every_arm_and_records_them(tmp_path, tiny_model, system):
    import benchmarks_path  # noqa: F401  (adds benchmarks/ to sys.path)
    from _record import read_records
    from tetrapeptide_vs_md import main

    # the implicit case also passes the generator arms their levels and moves per level
    levels = ["--levels", "6", "--level-moves", "2"] if system.endswith("implicit") else []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--quick", "--system", system, "--threads", "1", "--model", str(tiny_model),
              "--record", str(tmp_path / "r.jsonl"), *levels])
    lines = out.getvalue().strip().splitlines()
    result = json.loads(lines[-1])
    assert result["system"] == system
    assert [r["method"] for r in result["rows"]] == ["biased MD", "MCMC alone", "generator", "generator, no mixing"]
    for r in result["rows"]:
        assert sum(r["populations"].values()) == pytest.approx(1.0)  # the eight states tile the torus
    assert all(r["model_evaluations"] > 0 for r in result["rows"][2:])
    # the generator arms say how many lineages carry the rare state in each run (at most the run's lineages)
    assert all(len(r["state_lineages"]) == 2 and all(0 <= n <= k for n, k in zip(r["state_lineages"], r["lineages"]))
               for r in result["rows"][2:])
    assert "effective lineages carrying" in out.getvalue()
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record["figures"]["generator_state_lineages_min"] == min(result["rows"][2]["state_lineages"])
    assert record["name"] == "tetrapeptide_vs_md" and record["figures"]["state"] == result["state"]
    assert record["figures"]["system"] == system
    assert (record["figures"]["generator_levels"], record["figures"]["generator_level_moves"]) == \
        ((6, 2) if levels else (8, 1))
    assert "figures meaningless" in record["note"]


@pytest.mark.parametrize("system", ["alanine-tetrapeptide", "alanine-tetrapeptide-implicit"])
def test_reference_is_the_systems_own(system):
    """Each set-up is judged against its own shipped reference, else against the biased MD arm."""
    import benchmarks_path  # noqa: F401
    from tetrapeptide_vs_md import STATES, reference_figures

    from boltzgen.pipeline.sample import reference_file

    biased = {**{s: (1 / 8, 0.01) for s in STATES}, **{f"phi{i}_positive": (0.0, 0.1) for i in (1, 2, 3)}}
    reference, source = reference_figures(system, biased)
    path = reference_file(system)
    assert path.is_file()  # both set-ups ship one
    shipped = json.loads(path.read_text())
    assert source == shipped["source"]
    assert reference["phi3_positive"] == (shipped["delta_f_phi3_positive_kT"], shipped["delta_f_phi3_positive_err_kT"])
    assert reference["+++"] == (shipped["populations"]["+++"]["p"], shipped["populations"]["+++"]["err"])


def test_without_a_shipped_reference_the_biased_md_arm_is_the_reference(monkeypatch, tmp_path):
    import benchmarks_path  # noqa: F401
    import tetrapeptide_vs_md
    from tetrapeptide_vs_md import STATES, reference_figures

    monkeypatch.setattr(tetrapeptide_vs_md, "reference_file", lambda system: tmp_path / "missing.json")
    biased = {s: (1 / 8, 0.01) for s in STATES}
    reference, source = reference_figures("alanine-tetrapeptide", biased)
    assert reference is biased and "biased MD arm" in source


def test_state_arithmetic():
    import benchmarks_path  # noqa: F401
    from tetrapeptide_vs_md import STATES, figures_of_sets, rarest_state, state_free_energy

    assert state_free_energy(0.02, 0.002) == (pytest.approx(-math.log(0.02)), pytest.approx(0.1))
    assert state_free_energy(0.0, 0.0) == (None, None)
    reference = {s: (p, 0.001) for s, p in zip(STATES, (0.9, 0.03, 0.03, 0.005, 0.02, 0.004, 0.01, 0.001))}
    assert rarest_state(reference) == "++-"  # 0.01 holds 1 % of the mass; 0.005 and below do not
    one = dict(zip(STATES, (0.9, 0.03, 0.03, 0.005, 0.02, 0.004, 0.01, 0.001)))
    two = dict(zip(STATES, (0.88, 0.04, 0.03, 0.005, 0.03, 0.004, 0.01, 0.001)))
    figures = figures_of_sets([one, two])
    assert figures["---"][0] == pytest.approx(0.89) and figures["---"][1] == pytest.approx(0.01)
    # residue 1 at phi > 0 in states +--, +-+, ++-, +++: 0.035 and 0.045; -ln of the ratio of the means
    assert figures["phi1_positive"][0] == pytest.approx(-math.log(0.04 / 0.96))
    assert figures["phi1_positive"][1] == pytest.approx(0.005 / (0.04 * 0.96))


def test_empty_runs_are_counted_because_they_break_the_delta_method():
    import benchmarks_path  # noqa: F401
    from tetrapeptide_vs_md import STATES, empty_units, figures_of_sets, state_free_energy

    # one run of four holds the state: se(P) / P is exactly 1 whatever the state's spread (session 9's
    # "generator, no mixing" row printed F's s.e. as 1.000 for this reason)
    per_run = [0.004, 0.0, 0.0, 0.0]
    mean = sum(per_run) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in per_run) / 3)
    se = sd / 2
    assert state_free_energy(mean, se)[1] == pytest.approx(1.0)
    assert empty_units(per_run) == 3 and empty_units([0.1, 0.2]) == 0
    sets = [dict(zip(STATES, (0.9, 0.1, 0, 0, 0, 0, 0, 0))), dict(zip(STATES, (0.95, 0, 0.05, 0, 0, 0, 0, 0)))]
    empty = figures_of_sets(sets)["empty"]
    assert empty["--+"] == 1 and empty["-+-"] == 1 and empty["---"] == 0 and empty["+++"] == 2


def test_generator_settings_change_only_what_is_given():
    import benchmarks_path  # noqa: F401
    from tetrapeptide_vs_md import generator_settings

    from boltzgen.sampling import SampleSettings

    assert generator_settings(None, None) == SampleSettings()
    s = generator_settings(400, 4)
    assert (s.n_levels, s.level_moves) == (400, 4)
    assert s.mixing == SampleSettings().mixing and s.level_torsions == SampleSettings().level_torsions
