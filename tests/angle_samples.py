"""Shared by the plot and comparison tests: (phi, psi) clusters and the no-pyplot-state check."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

DEG = math.pi / 180.0


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """The plots use the object API: no figure may be left open in pyplot's global state."""
    yield
    leaked = plt.get_fignums()
    plt.close("all")
    assert leaked == []


def cluster(phi_deg, psi_deg, n, sd_deg, seed):
    """Gaussian (phi, psi) samples in radians, wrapped into [-pi, pi) (angles outside are refused)."""
    g = np.random.default_rng(seed)
    deg = np.stack([g.normal(phi_deg, sd_deg, n), g.normal(psi_deg, sd_deg, n)], 1)
    return ((deg + 180.0) % 360.0 - 180.0) * DEG
