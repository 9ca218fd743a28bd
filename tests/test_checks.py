"""Argument checks shared by the package."""
import numpy as np
import pytest

from boltzgen._checks import check_count


def test_check_count_accepts_python_and_numpy_integers_and_names_the_argument():
    assert check_count(3, "n") == 3 and type(check_count(np.int64(3), "n")) is int
    assert check_count(0, "n_moves", minimum=0) == 0
    assert check_count(None, "chunk_size", allow_none=True) is None
    with pytest.raises(ValueError, match=r"n_particles must be a positive integer, got 0"):
        check_count(0, "n_particles")
    with pytest.raises(ValueError, match=r"n_moves must be a non-negative integer, got -1"):
        check_count(-1, "n_moves", minimum=0)
    with pytest.raises(ValueError, match=r"chunk_size must be a positive integer or None, got 2.5"):
        check_count(2.5, "chunk_size", allow_none=True)
    for bad in (True, "3", None, 3.0):
        with pytest.raises(ValueError, match="dim must be a positive integer"):
            check_count(bad, "dim")


def test_as_tensor_reads_python_floats_straight_into_float64():
    import torch

    from boltzgen._checks import as_tensor

    values = [0.1, 1.0 / 3.0, 2.0**-40]
    t = as_tensor(values, "x", dtype=torch.float64)
    assert t.dtype == torch.float64 and t.tolist() == values  # no float32 round trip
    with pytest.raises(TypeError, match="x must hold real numbers"):
        as_tensor([True, False], "x", dtype=torch.float64)
