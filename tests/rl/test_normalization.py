"""Tests for robust_rlhf.rl.normalization: the affine map, running moments (vs a naive plain-Python
reference over the concatenated stream) and the three RewardNormalizer modes."""

import math

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.rl.normalization import RewardNormalizer, RunningMoments, normalize_rewards


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _naive_moments(values: list[float]) -> tuple[float, float]:
    """Mean and population std of a list, by plain loops (the reference for the Chan et al. merge)."""
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values)
    squares = 0.0
    for v in values:
        squares += (v - mean) ** 2
    return mean, math.sqrt(squares / len(values))


# ---------------------------------------------------------------- normalize_rewards


def test_normalize_rewards_hand_values():
    # (r - 2) / 4: [2, 6, -2] -> [0, 1, -1]
    assert_close(normalize_rewards(_t([2.0, 6.0, -2.0]), 2.0, 4.0), _t([0.0, 1.0, -1.0]))


def test_normalize_rewards_eps_guards_zero_std():
    # std 0: (3 - 1) / (0 + 0.5) = 4 with eps = 0.5; finite with the default eps
    assert_close(normalize_rewards(_t([3.0]), 1.0, 0.0, eps=0.5), _t([4.0]))
    assert torch.isfinite(normalize_rewards(_t([3.0]), 1.0, 0.0)).all()


# ---------------------------------------------------------------- RunningMoments


def test_running_moments_over_uneven_batches_match_naive_concatenation():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=g, dtype=torch.float64) * 3 + 5 for n in (1, 7, 2, 13, 4)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    stream = [float(v) for batch in batches for v in batch]
    mean, std = _naive_moments(stream)
    assert moments.count == len(stream) == 27
    assert moments.mean == pytest.approx(mean, rel=1e-12)
    assert moments.std == pytest.approx(std, rel=1e-12)


def test_running_moments_hand_values_and_2d_batches():
    # [[1, 3]] then [5]: stream [1, 3, 5] -> mean 3, population var (4 + 0 + 4) / 3 = 8/3
    moments = RunningMoments()
    moments.update(_t([[1.0, 3.0]]))
    moments.update(_t([5.0]))
    assert moments.count == 3
    assert moments.mean == pytest.approx(3.0)
    assert moments.std == pytest.approx(math.sqrt(8 / 3))


def test_running_moments_ignore_empty_batches():
    moments = RunningMoments()
    moments.update(_t([1.0, 3.0]))
    moments.update(_t([]))
    assert (moments.count, moments.mean, moments.std) == (2, pytest.approx(2.0), pytest.approx(1.0))


def test_running_moments_std_is_one_before_two_values():
    moments = RunningMoments()
    assert moments.std == 1.0  # no data
    moments.update(_t([7.0]))
    assert moments.mean == 7.0 and moments.std == 1.0  # one value: no spread yet
    moments.update(_t([9.0]))
    assert moments.std == pytest.approx(1.0)  # [7, 9]: |9 - 7| / 2 = 1 (now from data)
    moments.update(_t([8.0]))
    assert moments.std == pytest.approx(math.sqrt(2 / 3))  # [7, 9, 8]: (1 + 1 + 0) / 3


# ---------------------------------------------------------------- RewardNormalizer


def test_none_mode_is_identity():
    reward = _t([1.0, -5.0, 10.0])
    normalizer = RewardNormalizer("none", reference_mean=3.0, reference_std=2.0)
    assert torch.equal(normalizer(reward), reward)
    assert normalizer.moments.count == 0


def test_reference_mode_is_the_fixed_affine_map():
    # (r - 3) / 2 every call, however many batches pass
    normalizer = RewardNormalizer("reference", reference_mean=3.0, reference_std=2.0)
    assert_close(normalizer(_t([3.0, 5.0, 1.0])), _t([0.0, 1.0, -1.0]))
    assert_close(normalizer(_t([100.0])), _t([(100.0 - 3.0) / 2.0]))
    assert_close(normalizer(_t([3.0, 5.0, 1.0])), _t([0.0, 1.0, -1.0]))
    assert normalizer.moments.count == 0


def test_running_mode_updates_then_normalises():
    normalizer = RewardNormalizer("running")
    # first batch [1, 3]: mean 2, population std 1 -> [-1, 1]
    assert_close(normalizer(_t([1.0, 3.0])), _t([-1.0, 1.0]))
    # then [5]: moments of [1, 3, 5] -> mean 3, std sqrt(8/3) -> (5 - 3) / sqrt(8/3)
    assert_close(normalizer(_t([5.0])), _t([2.0 / math.sqrt(8 / 3)]))
    assert normalizer.moments.count == 3


def test_running_mode_single_first_value_only_centres():
    # one value: mean 4, std 1.0 by convention -> 4 - 4 = 0
    assert_close(RewardNormalizer("running")(_t([4.0])), _t([0.0]))


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown reward normalisation 'whiten'"):
        RewardNormalizer("whiten")


def test_normaliser_state_round_trips_for_a_resumed_run():
    import json

    from robust_rlhf.rl.normalization import RewardNormalizer

    first = RewardNormalizer("running")
    first(torch.tensor([1.0, 2.0, 3.0]))
    resumed = RewardNormalizer("running")
    resumed.load_state(json.loads(json.dumps(first.state())))
    batch = torch.tensor([4.0, 0.0])
    assert torch.equal(first(batch.clone()), resumed(batch.clone()))
    with pytest.raises(ValueError, match="mode"):
        RewardNormalizer("none").load_state(first.state())
