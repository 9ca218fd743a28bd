"""Tolerances for statistical tests, from the spread of independent runs (no added slack)."""
import math

from scipy import stats


def t_bound(values, confidence: float = 0.999) -> tuple[float, float]:
    """Mean of independent estimates and the half-width of its two-sided Student-t interval.

    With n runs the mean's standard error is s / sqrt(n) and the interval holds the true value
    with probability ``confidence`` (n - 1 degrees of freedom).
    """
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        raise ValueError("need at least two independent estimates for an error bar")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)


def assert_covers(values, exact: float, confidence: float = 0.999) -> None:
    """The exact value lies within the Student-t interval of the runs' mean."""
    mean, half = t_bound(values, confidence)
    assert abs(mean - exact) <= half, f"mean {mean:.4f} +- {half:.4f} (t, {confidence}) vs exact {exact:.4f}: {values}"
