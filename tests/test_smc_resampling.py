"""Resamplers are unbiased: E[offspring_i] = N W_i (tested within 4 standard errors)."""
import math

import pytest
import torch

from boltzgen.smc.resampling import RESAMPLERS, resample

N = 20
REPEATS = 4000


def _weights() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.rand(N, generator=g, dtype=torch.float64) ** 3  # uneven, some tiny
    w[5] = 0.0  # a zero-weight particle
    w[7] = 0.3 * w.sum()  # one heavy particle with several offspring
    return w / w.sum()


def _offspring_z_scores(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scores of the mean offspring counts against N W_i, and the counts themselves."""
    w = _weights()
    g = torch.Generator().manual_seed(1)
    counts = torch.stack([torch.bincount(draw(w, N, g), minlength=N) for _ in range(REPEATS)]).double()
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(REPEATS)
    expected = N * w
    # a scheme whose count is deterministic for some particle has se = 0 there: then it must be exact
    z = torch.where(se > 0, (mean - expected) / se.clamp(min=1e-300), (mean - expected).abs() * 1e12)
    return z, counts


@pytest.mark.parametrize("method", sorted(RESAMPLERS))
def test_resampler_is_unbiased(method):
    z, counts = _offspring_z_scores(RESAMPLERS[method])
    # 4 standard errors per particle: with 20 particles x 4 schemes a false alarm has p ~ 5e-3
    assert z.abs().max() < 4.0, f"{method}: max |z| = {z.abs().max():.2f}"
    assert (counts.sum(1) == N).all()
    assert (counts[:, 5] == 0).all(), "a zero-weight particle was drawn"


def test_the_unbiasedness_check_detects_a_biased_scheme():
    def rounded(weights, n, generator):  # deterministic rounding: biased for non-integer N W_i
        copies = torch.round(n * weights).long()
        idx = torch.repeat_interleave(torch.arange(weights.numel()), copies)
        return torch.cat([idx, idx.new_full((n,), int(weights.argmax()))])[:n]

    z, _ = _offspring_z_scores(rounded)
    assert z.abs().max() > 4.0


def test_low_variance_schemes_keep_counts_near_expectation():
    w = _weights()
    g = torch.Generator().manual_seed(2)
    expected = N * w
    for _ in range(200):
        sys_counts = torch.bincount(RESAMPLERS["systematic"](w, N, g), minlength=N).double()
        assert ((sys_counts >= torch.floor(expected) - 1e-9) & (sys_counts <= torch.ceil(expected) + 1e-9)).all()
        res_counts = torch.bincount(RESAMPLERS["residual"](w, N, g), minlength=N).double()
        assert (res_counts >= torch.floor(expected)).all()


def test_resample_from_log_weights():
    log_w = torch.log(_weights())
    idx = resample(log_w, "systematic", torch.Generator().manual_seed(3))
    assert idx.shape == (N,) and idx.dtype == torch.int64
    assert resample(log_w, "multinomial", torch.Generator().manual_seed(3), n=7).shape == (7,)
    # a NaN log-weight is a zero weight, never drawn
    log_w[2] = float("nan")
    for _ in range(50):
        assert (resample(log_w, "stratified") != 2).all()


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        resample(torch.zeros(3), "bogus")
    with pytest.raises(ValueError, match="zero weight"):
        resample(torch.full((3,), -math.inf))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        resample(torch.zeros(3), n=0)
