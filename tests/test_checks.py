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
