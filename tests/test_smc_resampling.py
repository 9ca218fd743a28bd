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


# ---- zero-weight particles and rounding -------------------------------------------------------------
_LARGEST_BELOW_ONE = 1.0 - 2.0**-53


@pytest.mark.parametrize("method", sorted(RESAMPLERS))
@pytest.mark.parametrize("weights", [[0.3, 0.7, 0.0], [0.1] * 10 + [0.0], [0.0, 0.5, 0.0, 0.5, 0.0]])
def test_zero_weight_particle_is_never_drawn_even_by_rounding(monkeypatch, method, weights):
    """The cumulative sum of [0.1] * 10 is 0.9999999999999999, which left a trailing zero-weight
    particle the sliver [0.9999999999999999, 1); and (n - 1 + U) / n rounds to 1.0 for U close to
    one. Feed the uniforms at the very top of [0, 1) (and 1.0 itself) that hit both."""
    import boltzgen.smc.resampling as resampling

    w = torch.tensor(weights, dtype=torch.float64)
    zero = (w == 0).nonzero().squeeze(1)
    for top in (_LARGEST_BELOW_ONE, 1.0):
        monkeypatch.setattr(resampling, "_uniforms",
                            lambda n, weights, generator, top=top: torch.full((n,), top, dtype=torch.float64))
        for n in (1, 3, len(weights), 64):
            idx = RESAMPLERS[method](w, n, None)
            assert idx.shape == (n,)
            assert not torch.isin(idx, zero).any(), f"{method} drew a zero-weight particle: {idx.tolist()}"


@pytest.mark.parametrize("method", sorted(RESAMPLERS))
def test_minus_inf_log_weights_are_never_resampled_over_many_draws(method):
    log_w = torch.log(torch.tensor([0.3, 0.7, 0.0], dtype=torch.float64))  # [.., .., -inf]
    ten = torch.cat([torch.full((10,), math.log(0.1), dtype=torch.float64), torch.tensor([-math.inf])])
    g = torch.Generator().manual_seed(4)
    for lw in (log_w, ten):
        drawn = torch.cat([resample(lw, method, g, n=257) for _ in range(400)])
        assert (drawn != lw.numel() - 1).all(), f"{method} drew the -inf particle"
        assert set(drawn.tolist()) == set(range(lw.numel() - 1))  # every positive particle is drawn
