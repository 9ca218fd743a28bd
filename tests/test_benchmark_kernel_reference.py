"""benchmarks/kernel_reference.py on tiny settings: both sides run, the rule's figures and the record."""
import contextlib
import io
import json

import numpy as np
import pytest

from boltzgen import md, systems


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A 2 ps MD run: its frames all sit at phi < 0 (the test mirrors half of them to get both sides)."""
    out = tmp_path_factory.mktemp("md") / "run"
    with systems.load("alanine-dipeptide", platform="Reference") as target:
        md.run_md(target, 0.002, out, seed=1, save_every_ps=0.5, chunk_frames=4, equilibration_ps=0.0)
    return out


def test_both_sides_and_the_rule(frames, tmp_path, monkeypatch):
    import benchmarks_path  # noqa: F401
    import kernel_reference
    from _record import read_records

    # the MD frames are all at phi < 0 this short: mirror half of them (x -> -x flips every dihedral's sign)
    real = kernel_reference.load_trajectory

    def both_sides(folder):
        traj = real(folder)
        traj.xyz[::2] *= np.array([-1.0, 1.0, 1.0], dtype=np.float32)
        return traj

    monkeypatch.setattr(kernel_reference, "load_trajectory", both_sides)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        kernel_reference.main(["--frames", str(frames), "--chains", "6", "--rounds", "8", "--block", "2",
                               "--sets", "2", "--threads", "1", "--no-compile", "--record", str(tmp_path / "r.jsonl")])
    lines = [json.loads(line) for line in out.getvalue().strip().splitlines()]
    sets, figures = lines[:-1], lines[-1]
    assert [(s["side"], s["set"]) for s in sets] == [("poor", 0), ("poor", 1), ("rich", 0), ("rich", 1)]
    assert all(len(s["trace"]) == 4 for s in sets)  # 8 rounds, a snapshot every 2
    rich = [s for s in sets if s["side"] == "rich"]
    assert all(s["trace"][0] > 0 for s in rich)  # half the chains start at phi > 0
    assert figures["sets_per_side"] == 2 and "relaxation_rounds" in figures
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record["name"] == "kernel_reference" and record["figures"]["chains"] == 6


def test_relaxation_is_where_the_sides_stay_together():
    import benchmarks_path  # noqa: F401
    from kernel_reference import relaxation_rounds

    rounds = np.array([50, 100, 150, 200])
    poor = np.array([[0.0, 0.01, 0.02, 0.02], [0.0, 0.012, 0.021, 0.019]])
    rich = np.array([[0.5, 0.1, 0.021, 0.02], [0.5, 0.12, 0.02, 0.021]])
    # one snapshot per block: the sides agree from the third block on, which starts after 100 rounds
    assert relaxation_rounds(poor, rich, rounds, block_rounds=50) == 100.0
    assert relaxation_rounds(poor, rich + 1.0, rounds, block_rounds=50) is None


def test_sides_pool_only_when_they_agree():
    import benchmarks_path  # noqa: F401
    from kernel_reference import side_figures

    agree = side_figures({"poor": [3.60, 3.64, 3.62], "rich": [3.63, 3.61, 3.65]})
    assert agree["sides_agree"] is True and agree["dF_pooled_kT"] == pytest.approx(3.625, abs=1e-4)
    apart = side_figures({"poor": [3.60, 3.61, 3.62], "rich": [3.80, 3.81, 3.82]})
    assert apart["sides_agree"] is False and "dF_pooled_kT" not in apart
    stuck = side_figures({"poor": [float("inf"), 3.6], "rich": [3.6, 3.7]})
    assert stuck["dF_poor_kT"] is None and stuck["sides_agree"] is None


def test_agreement_at_the_last_snapshot_alone_is_not_relaxation():
    import benchmarks_path  # noqa: F401
    from kernel_reference import relaxation_rounds

    rounds = np.arange(1, 9) * 50
    poor = np.array([[0.0] * 7 + [0.02], [0.0] * 7 + [0.021]])
    rich = np.array([[0.5] * 7 + [0.02], [0.5] * 7 + [0.021]])
    assert relaxation_rounds(poor, rich, rounds, block_rounds=50) is None


def test_relaxation_reads_block_means_with_an_allowance_for_many_blocks():
    import benchmarks_path  # noqa: F401
    from kernel_reference import relaxation_rounds

    # 3 sets per side, 4 snapshots in each of 6 blocks of 200 rounds; the sides agree from the third block on
    rng = np.random.default_rng(0)
    rounds = np.arange(1, 25) * 50
    poor = 0.025 + 0.002 * rng.standard_normal((3, 24))
    rich = 0.025 + 0.002 * rng.standard_normal((3, 24))
    rich[:, :8] += 0.05
    assert relaxation_rounds(poor, rich, rounds, block_rounds=200) == 400.0


def test_one_noisy_block_among_many_is_allowed_for():
    import benchmarks_path  # noqa: F401
    from kernel_reference import relaxation_rounds

    # 3 sets per side, one snapshot per block; spread [-s, 0, s] gives a combined s.e. of s * sqrt(2/3)
    s, rounds = 0.003, np.arange(1, 7) * 50
    spread = np.array([[-s], [0.0], [s]])

    def sides(z_per_block):
        gap = np.asarray(z_per_block) * s * np.sqrt(2 / 3)
        return np.broadcast_to(0.025 + spread, (3, 6)), 0.025 + spread + gap

    # z = 2.3 in block 3 breaks a 2-s.e. rule but not the Bonferroni bound for 5 blocks (2.58)
    assert relaxation_rounds(*sides([20, 0, 0, 2.3, 0, 0]), rounds, block_rounds=50) == 50.0
    # z = 3.0 breaks it: agreement starts after that block
    assert relaxation_rounds(*sides([20, 0, 0, 3.0, 0, 0]), rounds, block_rounds=50) == 200.0
