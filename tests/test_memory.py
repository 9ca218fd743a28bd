"""Memory per particle and chunk sizes from a memory budget (boltzgen.memory, SampleSettings.memory_budget)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.memory import bytes_per_particle, chunk_for_budget, parse_bytes, peak_bytes
from boltzgen.models import load_model_file
from boltzgen.sampling import BridgeSettings, MixingSettings, SampleSettings, sample_molecule
from boltzgen.targets import torch_target

TINY = SampleSettings(n_levels=4, level_moves=1, bridge=BridgeSettings(moves=1), mixing=MixingSettings(moves=0))


@pytest.fixture(scope="module")
def model_file():
    return load_model_file(systems.shipped_model("alanine-dipeptide"))


def test_peak_bytes_counts_what_is_alive_at_once(device):
    x = torch.ones(1000, 1000, dtype=torch.float64, device=device)  # 8 MB

    def work():
        y = x * 2.0
        z = y + 1.0  # y and z alive: 16 MB
        del y
        return z.exp()  # z and the result: 16 MB

    assert peak_bytes(work, device) == pytest.approx(16e6, rel=0.01)


def test_bytes_per_particle_is_the_slope_and_grows_with_the_solvent_model(model_file):
    with systems.load("alanine-dipeptide") as vacuum, systems.load("alanine-dipeptide-implicit") as implicit:
        per_vacuum = bytes_per_particle(model_file, vacuum)
        assert per_vacuum == bytes_per_particle(model_file, vacuum, sizes=(64, 128))  # linear in the particles
        assert 5e3 < per_vacuum < 5e5  # tens of kB for a 22-atom molecule and a 256-wide network
        assert bytes_per_particle(model_file, implicit) > per_vacuum  # GB pair terms on top


def test_a_budget_sets_the_chunk_and_changes_no_result(model_file, device):
    model_file = load_model_file(systems.shipped_model("alanine-dipeptide"), device=device)
    with systems.load("alanine-dipeptide") as target:
        fast = torch_target(target, compile=False, device=device)
        per = bytes_per_particle(model_file, target)
        budget = int(10.5 * per)
        run = sample_molecule(model_file, target, 32, replace(TINY, memory_budget=budget), seed=2,
                              target_energy=fast.reduced_energy)
        assert run.chunk_size == 10 and run.bytes_per_particle == per
        totals = run.diagnostics()["totals"]
        assert totals["chunk_size"] == 10 and totals["bytes_per_particle"] == per
        plain = sample_molecule(model_file, target, 32, replace(TINY, chunk_size=10), seed=2,
                                target_energy=fast.reduced_energy)
        assert np.array_equal(run.log_weights, plain.log_weights)


def test_budgets_and_sizes_are_checked():
    assert chunk_for_budget(10_000, 1000.0) == 10 and chunk_for_budget(500, 1000.0) == 1
    assert chunk_for_budget(10**9, 1000.0, n_particles=64) == 64
    assert parse_bytes("4G") == 4 * 2**30 and parse_bytes("512MB") == 512 * 2**20 and parse_bytes("1.5k") == 1536
    assert parse_bytes("2000") == 2000 and parse_bytes("2GiB") == 2 * 2**30
    for bad in ("4X", "", "-1G", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="memory_budget"):
        SampleSettings(memory_budget=0)
