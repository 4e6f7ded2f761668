"""Tests for robust_rlhf.rl.gae against hand values and a naive per-sample, per-timestep reference loop."""

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.rl.gae import gae


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _naive_gae(rewards, values, lengths, gamma, lam):
    """Deliberately naive reference: python floats, one row and one step at a time, V and A = 0 past the end."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        L = lengths[b]
        for t in reversed(range(L)):
            next_v = values[b][t + 1] if t + 1 < L else 0.0
            next_a = adv[b][t + 1] if t + 1 < L else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            adv[b][t] = delta + gamma * lam * next_a
            ret[b][t] = adv[b][t] + values[b][t]
    return adv, ret


def test_gae_hand_computed_two_steps():
    # gamma = lam = 0.5, r = [1, 2], V = [0.5, 1]
    # t=1: delta = 2 + 0 - 1 = 1;            A_1 = 1
    # t=0: delta = 1 + 0.5*1 - 0.5 = 1;      A_0 = 1 + 0.5*0.5*1 = 1.25
    # returns = A + V = [1.75, 2]
    adv, ret = gae(_t([[1.0, 2.0]]), _t([[0.5, 1.0]]), _t([[1.0, 1.0]]), gamma=0.5, lam=0.5)
    assert_close(adv, _t([[1.25, 1.0]]))
    assert_close(ret, _t([[1.75, 2.0]]))


def test_gae_lam1_gamma1_returns_are_reward_to_go():
    # Monte Carlo returns: R_t = sum_{s>=t} r_s, independent of V; padding positions are 0.
    rewards = _t([[1.0, 2.0, 3.0, 9.0], [0.5, -1.0, 0.0, 0.0]])
    values = _t([[0.3, -0.7, 2.0, 5.0], [1.0, 4.0, 8.0, 8.0]])
    mask = _t([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    expected_ret = _t([[6.0, 5.0, 3.0, 0.0], [-0.5, -1.0, 0.0, 0.0]])
    assert_close(ret, expected_ret)
    assert_close(adv, (expected_ret - values) * mask)


def test_gae_lam0_is_one_step_td_error():
    # lam = 0: A_t = r_t + gamma * V_{t+1} - V_t, with V past the end = 0
    rewards = _t([[1.0, 0.0, 2.0]])
    values = _t([[0.5, 1.5, -1.0]])
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.0)
    expected = _t([[1.0 + 0.9 * 1.5 - 0.5, 0.0 + 0.9 * -1.0 - 1.5, 2.0 - (-1.0)]])
    assert_close(adv, expected)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.7, 0.3), (1.0, 1.0)])
def test_gae_matches_naive_loop_with_variable_lengths(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    lengths = [9, 1, 0, 5, 8, 3]  # includes a full row, a one-token row and an empty row
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, T, dtype=torch.float64)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1.0
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _naive_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    assert_close(adv, _t(ref_adv))
    assert_close(ret, _t(ref_ret))


def test_gae_ignores_padding_contents():
    # Garbage rewards/values after the end of a response must not leak into its advantages.
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(3, 6, generator=g, dtype=torch.float64)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = _t([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    pad = mask == 0
    adv2, ret2 = gae(rewards.masked_fill(pad, 1e6), values.masked_fill(pad, -1e6), mask, gamma=0.95, lam=0.9)
    assert_close(adv2, adv)
    assert_close(ret2, ret)
    assert (adv[pad] == 0).all() and (ret[pad] == 0).all()


def test_gae_accepts_bool_mask_and_does_not_mutate_inputs():
    rewards = _t([[1.0, 2.0, 3.0]])
    values = _t([[0.1, 0.2, 0.3]])
    r0, v0 = rewards.clone(), values.clone()
    adv_b, ret_b = gae(rewards, values, torch.tensor([[True, True, False]]), gamma=0.9, lam=0.8)
    adv_f, ret_f = gae(rewards, values, _t([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.8)
    assert_close(adv_b, adv_f)
    assert_close(ret_b, ret_f)
    assert torch.equal(rewards, r0) and torch.equal(values, v0)
