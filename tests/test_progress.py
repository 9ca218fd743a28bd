from types import SimpleNamespace

import pytest

from boltzgen.pipeline.progress import BRIDGE_STEPS, MODEL_COST, RunProgress, describe, stage_fraction, stage_shares
from boltzgen.sampling import SampleSettings


def _step(stage, value=0.5, moves=None):
    return SimpleNamespace(stage=stage, name="t", value=value, ess_fraction=0.42, n_ancestors=17,
                           moves=moves or {})


def test_fraction_follows_the_stage_position_either_way():
    up = SimpleNamespace(start=0.0, total=100.0)
    down = SimpleNamespace(start=1.0, total=0.001)  # adaptive levels: t runs down to t_min
    assert stage_fraction(up, 25.0) == 0.25 and stage_fraction(down, 0.001) == 1.0
    assert stage_fraction(down, 0.5005) == pytest.approx(0.5)
    assert stage_fraction(SimpleNamespace(start=-1.0), 2.0) == 1.0  # no total: ends at 1, clamped


def test_shares_weigh_model_levels_by_their_cost():
    s = SampleSettings()
    shares = stage_shares(s)
    assert list(shares) == ["levels", "bridge", "mixing"]
    # per level: the reverse step, then each MALA move with its torsion moves (each one model evaluation)
    assert shares["levels"] == s.n_levels * (1 + s.level_moves * (1 + s.level_torsions)) * MODEL_COST
    assert shares["bridge"] == BRIDGE_STEPS * (2 + s.bridge.moves * (1 + s.bridge.torsions))
    assert shares["mixing"] == s.mixing.moves * (1 + s.mixing.torsions.moves)


def test_the_bar_ends_full_and_never_goes_back():
    s = SampleSettings(n_levels=10)
    bar = RunProgress("run", s)
    levels = SimpleNamespace(start=0.0, total=9.0)
    for k in range(10):
        bar(levels, float(k), _step("levels", 1 - k / 10))
    assert bar.bar.n == pytest.approx(stage_shares(s)["levels"])
    bar(SimpleNamespace(start=0.0), 1.0, _step("bridge"))
    mixing = SimpleNamespace(start=0.0, total=100.0)
    bar(mixing, 100.0, _step("mixing", moves={"mala.acceptance": 0.5, "torsion.acceptance": 0.1}))
    bar(SimpleNamespace(start=0.0), 0.5, _step("switch"))  # a stage the settings do not name: text only
    assert bar.bar.n == pytest.approx(bar.bar.total) and "switch" in bar.bar.postfix
    bar.close()


def test_the_text_names_stage_ess_lineages_and_acceptance():
    text = describe(_step("mixing", 50.0, {"mala.acceptance": 0.574, "torsion.acceptance": 0.104, "x": 1.0}))
    assert text == "mixing t=50 ESS=0.42 lineages=17, mala acc 0.57, torsion acc 0.10"
    assert describe(_step("levels", 0.25, {"acceptance": 0.5})).endswith("moves acc 0.50")
    assert stage_fraction(SimpleNamespace(start=0.0, total=0.0), 0.0) == 1.0  # an empty stage is done
