"""Tests for robust_rlhf.rl.losses: masked statistics, PPO policy/value losses, reward shaping, entropy."""

import math

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.logprobs import entropy_from_logits, logprobs_of_labels
from robust_rlhf.rl.losses import (
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _prefix_mask(lengths, T):
    mask = torch.zeros(len(lengths), T, dtype=torch.float64)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1.0
    return mask


# ---------------------------------------------------------------- masked_mean / masked_whiten


def test_masked_mean_hand_computed():
    # (1 + 3 + 4) / 3; the masked-out 2 is ignored
    assert masked_mean(_t([[1.0, 2.0], [3.0, 4.0]]), _t([[1, 0], [1, 1]])).item() == pytest.approx(8 / 3)


def test_masked_mean_empty_mask_is_zero_not_nan():
    assert masked_mean(_t([[1.0, 2.0]]), _t([[0, 0]])).item() == 0.0


def test_masked_whiten_zero_mean_unit_var_on_mask_zero_outside():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3 + 5
    mask = _prefix_mask([7, 2, 5, 4], 7)
    w = masked_whiten(x, mask)
    sel = w[mask.bool()]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert sel.var(unbiased=False).item() == pytest.approx(1.0, rel=1e-6)
    assert (w[~mask.bool()] == 0).all()


def test_masked_whiten_hand_computed():
    # masked values [1, 3]: mean 2, population var 1 -> [-1, 1]; padding -> 0
    w = masked_whiten(_t([[1.0, 3.0, 100.0]]), _t([[1, 1, 0]]))
    assert_close(w, _t([[-1.0, 1.0, 0.0]]), rtol=0, atol=1e-7)


def test_masked_whiten_without_shift_keeps_mean():
    # shift_mean=False rescales to unit variance but adds the original masked mean back
    x = _t([[1.0, 3.0, 100.0]])  # masked mean 2, var 1
    w = masked_whiten(x, _t([[1, 1, 0]]), shift_mean=False)
    assert_close(w, _t([[1.0, 3.0, 0.0]]), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- ppo_policy_loss


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = _prefix_mask([5, 3, 1], 5)
    loss, clip_frac = ppo_policy_loss(lp, lp.clone(), adv, mask, clip_range=0.2)
    assert_close(loss, -masked_mean(adv, mask))
    assert clip_frac.item() == 0.0


def _clip_case():
    # eps = 0.2. Token: ratio, A -> unclipped -A*r, clipped -A*clip(r), max, clip active?
    #   0: 1.5, +1 -> -1.5, -1.2 -> -1.2  yes
    #   1: 1.5, -1 ->  1.5,  1.2 ->  1.5  no
    #   2: 0.5, +1 -> -0.5, -0.8 -> -0.5  no
    #   3: 0.5, -1 ->  0.5,  0.8 ->  0.8  yes
    #   4: 3.0, +1 -> padding (would clip), ignored
    ratios = [1.5, 1.5, 0.5, 0.5, 3.0]
    old = _t([[-1.0, -2.0, -0.5, -3.0, -1.0]])
    lp = old + _t([[math.log(r) for r in ratios]])
    adv = _t([[1.0, -1.0, 1.0, -1.0, 1.0]])
    mask = _t([[1, 1, 1, 1, 0]])
    return lp, old, adv, mask


def test_policy_loss_and_clip_fraction_hand_computed():
    lp, old, adv, mask = _clip_case()
    loss, clip_frac = ppo_policy_loss(lp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)  # = 0.15
    assert clip_frac.item() == pytest.approx(2 / 4)


def test_policy_loss_gradient_is_zero_on_clipped_tokens():
    # d loss / d logp_t = -A_t * ratio_t / N on unclipped tokens, 0 where the clipped term is active
    lp, old, adv, mask = _clip_case()
    lp = lp.clone().requires_grad_()
    loss, _ = ppo_policy_loss(lp, old, adv, mask, clip_range=0.2)
    loss.backward()
    assert_close(lp.grad, _t([[0.0, 1.5 / 4, -0.5 / 4, 0.0, 0.0]]))


# ---------------------------------------------------------------- ppo_value_loss


def test_value_loss_hand_computed():
    # eps_v = 0.2. Token: V, V_old, R -> V_clip, (V-R)^2, (V_clip-R)^2, max, clipped term active?
    #   0: 1.0, 0.5, 1.0 -> 0.7, 0,    0.09 -> 0.09  yes
    #   1: 0.6, 0.5, 0.0 -> 0.6, 0.36, 0.36 -> 0.36  no (equal)
    #   2: 0.0, 0.5, 1.0 -> 0.3, 1,    0.49 -> 1     no
    #   3: padding, ignored
    values = _t([[1.0, 0.6, 0.0, 50.0]])
    old = _t([[0.5, 0.5, 0.5, 0.0]])
    returns = _t([[1.0, 0.0, 1.0, -50.0]])
    mask = _t([[1, 1, 1, 0]])
    loss, clip_frac = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.09 + 0.36 + 1.0) / 3)
    assert clip_frac.item() == pytest.approx(1 / 3)


def test_value_loss_unchanged_values_is_half_mse():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 4, generator=g, dtype=torch.float64)
    r = torch.randn(2, 4, generator=g, dtype=torch.float64)
    mask = _prefix_mask([4, 2], 4)
    loss, clip_frac = ppo_value_loss(v, v.clone(), r, mask, clip_range_value=0.2)
    assert_close(loss, 0.5 * masked_mean((v - r) ** 2, mask))
    assert clip_frac.item() == 0.0


# ---------------------------------------------------------------- kl_shaped_rewards


def test_kl_shaped_rewards_hand_computed():
    # -0.5 * KL on each real token, sequence reward added on the last real token, 0 on padding
    kl = _t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = _t([[1, 1, 0], [1, 1, 1]])
    out = kl_shaped_rewards(_t([10.0, 20.0]), kl, mask, kl_coef=0.5)
    expected = _t([[-0.05, -0.1 + 10.0, 0.0], [-0.2, -0.25, -0.3 + 20.0]])
    assert_close(out, expected)


def test_kl_shaped_rewards_sequence_reward_on_last_unmasked_token():
    g = torch.Generator().manual_seed(3)
    lengths = [1, 4, 6, 2]
    mask = _prefix_mask(lengths, 6)
    seq = torch.randn(4, generator=g, dtype=torch.float64)
    kl = torch.rand(4, 6, generator=g, dtype=torch.float64)
    kl_before = kl.clone()
    out = kl_shaped_rewards(seq, kl, mask, kl_coef=0.1)
    # Removing the KL part leaves exactly one nonzero per row, at index length - 1.
    residual = out + 0.1 * kl * mask
    for b, L in enumerate(lengths):
        expected_row = torch.zeros(6, dtype=torch.float64)
        expected_row[L - 1] = seq[b]
        assert_close(residual[b], expected_row)
    assert torch.equal(kl, kl_before)


# ---------------------------------------------------------------- entropy / log-probs


@pytest.mark.parametrize("V", [2, 7, 50])
def test_entropy_uniform_is_log_v(V):
    logits = torch.full((2, 3, V), 4.2, dtype=torch.float64)
    assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(V), dtype=torch.float64))


def test_entropy_hand_computed_and_near_deterministic():
    # logits [0, log 3] -> p = [1/4, 3/4]; H = -(1/4 log 1/4 + 3/4 log 3/4)
    h = entropy_from_logits(_t([[0.0, math.log(3.0)], [0.0, 1e4]]))
    assert h[0].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert h[1].item() == pytest.approx(0.0, abs=1e-12)  # one-hot, no NaN from 0 * log 0


def test_logprobs_of_labels_hand_computed():
    # logits [0, log 3] -> log p = [log 1/4, log 3/4]; logits [0, 0, 0] padded with -inf-like -> uniform over 3
    logits = _t([[[0.0, math.log(3.0), -1e9], [0.0, 0.0, 0.0]]])  # (B=1, T=2, V=3)
    labels = torch.tensor([[1, 2]])
    out = logprobs_of_labels(logits, labels)
    assert out.shape == (1, 2)
    assert_close(out, _t([[math.log(0.75), math.log(1 / 3)]]))


def test_logprobs_of_labels_matches_log_softmax_gather_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    out = logprobs_of_labels(logits, labels)
    for b in range(2):
        for t in range(3):
            row = logits[b, t]
            ref = row[labels[b, t]] - torch.log(torch.exp(row).sum())
            assert out[b, t].item() == pytest.approx(ref.item())
