"""Tests for robust_rlhf.reward.centering: the affine map that centres (and scales) each reward
model on the reference responses, folded into its last layer, and the BRME's anchors."""

import math

import pytest
import torch
import torch.nn.functional as F

from robust_rlhf.reward.aggregation import min_reward
from robust_rlhf.reward.centering import SIGMA_START, anchored_heads, centring_affine, feature_rms, fold_affine


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_centring_affine_hand_values():
    # model 0 rewards [1, 3] -> mean 2, population std 1; model 1 [4, 4] -> mean 4, std 0 -> scale 1
    offset, scale = centring_affine(_t([[1.0, 4.0], [3.0, 4.0]]), scale=True)
    assert offset.tolist() == [2.0, 4.0] and scale.tolist() == [1.0, 1.0]
    offset, scale = centring_affine(_t([[0.0, 1.0], [4.0, 1.0]]), scale=True)
    assert offset.tolist() == [2.0, 1.0] and scale.tolist() == [2.0, 1.0]
    assert centring_affine(_t([[0.0], [4.0]]), scale=False)[1].tolist() == [1.0]


def test_folded_heads_give_mean_zero_and_std_one_on_the_reference_features():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=g, dtype=torch.float64) + 3.0
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    offset, scale = centring_affine(features @ weight.T + bias, scale=True)
    new_weight, new_bias = fold_affine(weight, bias, offset, scale)
    rewards = features @ new_weight.T + new_bias
    assert rewards.mean(dim=0).abs().max() < 1e-10
    assert (rewards.std(dim=0, unbiased=False) - 1).abs().max() < 1e-10
    # a fold is affine per model: it keeps each model's ranking of any response
    other = torch.randn(7, 6, generator=g, dtype=torch.float64)
    assert torch.equal((other @ weight.T + bias).argsort(dim=0), (other @ new_weight.T + new_bias).argsort(dim=0))


def test_min_over_centred_members_differs_from_min_over_raw_ones():
    # Member 1 carries a +10 offset and sees the same ranking as member 0 up to a flip on response 2:
    # raw, member 0 is always the min; centred on the reference, the min switches to member 1 there.
    reference = _t([[0.0, 10.0], [2.0, 12.0]])  # two reference responses, two members
    responses = _t([[1.0, 11.0], [3.0, 10.5]])
    offset, scale = centring_affine(reference, scale=False)  # offsets [1, 11]
    centred = responses - offset
    sigma = torch.ones_like(responses)
    assert min_reward(responses, sigma).tolist() == [1.0, 3.0]  # member 0 on both
    assert min_reward(centred, sigma).tolist() == [0.0, -0.5]  # member 1 on response 2
    assert centred.argmin(dim=1).tolist() == [0, 1]


def test_feature_rms_hand_value():
    # features [0, 0], [2, 0] -> mean [1, 0]; squared distances 1 and 1 -> rms 1
    assert feature_rms(_t([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)


def test_anchored_heads_spread_around_the_stage1_head_by_the_prior_scale():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(400, 16, generator=g, dtype=torch.float64)
    w1, b1 = torch.randn(1, 16, generator=g, dtype=torch.float64), _t([0.3])
    anchors, prior_std = anchored_heads(w1, b1, features, num_heads=200, prior_scale=0.5, sigma_min=0.01, seed=0)
    stage1_reward = features @ w1[0] + b1[0]
    assert prior_std == pytest.approx(0.5 * stage1_reward.std(unbiased=False).item() / feature_rms(features))
    assert anchors["mu_weight"].shape == (200, 16) and torch.equal(anchors["mu_bias"], b1.expand(200))
    # the prior moves a head's reward on the training responses by ~ prior_scale x the stage-1 spread
    moved = ((features - features.mean(0)) @ (anchors["mu_weight"] - w1).T).std(dim=0, unbiased=False)
    assert moved.mean().item() == pytest.approx(0.5 * stage1_reward.std(unbiased=False).item(), rel=0.1)
    assert (anchors["mu_weight"] - w1).mean(dim=0).abs().max() < 4 * prior_std / math.sqrt(200)
    # every head starts at sigma = SIGMA_START; two seeds give two anchor sets
    assert (F.softplus(anchors["s_bias"]) + 0.01).tolist() == pytest.approx([SIGMA_START] * 200)
    other, _ = anchored_heads(w1, b1, features, num_heads=200, prior_scale=0.5, sigma_min=0.01, seed=1)
    assert not torch.equal(other["mu_weight"], anchors["mu_weight"])
