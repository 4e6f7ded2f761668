"""Tests for robust_rlhf.reward_losses: Bradley-Terry and the two BRME stage-2 losses."""

import math

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.reward_losses import (
    bradley_terry_loss,
    bt_sampled_loss,
    gaussian_nll_loss,
    preference_probability,
)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------- bradley_terry_loss


def test_bt_loss_hand_computed():
    # mean(-log sigmoid(1), -log sigmoid(0)); -log sigmoid(m) = log(1 + e^-m)
    loss = bradley_terry_loss(_t([1.0, 0.0]), _t([0.0, 0.0]))
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_bt_loss_depends_only_on_margin():
    # shifting both rewards by the same constant leaves the BT likelihood unchanged
    rc, rr = _t([0.3, -1.2, 2.0]), _t([0.1, 0.4, -0.5])
    assert_close(bradley_terry_loss(rc + 7.0, rr + 7.0), bradley_terry_loss(rc, rr))


def test_bt_loss_stable_for_large_margins():
    # -log sigmoid(-100) = log(1 + e^100) ~= 100; a naive log(sigmoid()) would give inf in float32
    loss = bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([0.0]))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(100.0, rel=1e-6)
    # and a hugely correct margin costs ~0
    assert bradley_terry_loss(torch.tensor([100.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-30)


def test_bt_loss_gradient():
    # d/dr_c [-log sigmoid(r_c - r_r)] = -(1 - sigmoid(m)); at m = 0 that is -0.5, divided by B = 2 for the mean
    rc = _t([0.0, 0.0]).requires_grad_()
    rr = _t([0.0, 0.0]).requires_grad_()
    bradley_terry_loss(rc, rr).backward()
    assert_close(rc.grad, _t([-0.25, -0.25]))
    assert_close(rr.grad, _t([0.25, 0.25]))


# ---------------------------------------------------------------- preference_probability


def test_preference_probability_hand_computed():
    # sigmoid(0) = 1/2, sigmoid(log 3) = 3 / (3 + 1) = 3/4
    p = preference_probability(_t([0.0, math.log(3.0)]), _t([0.0, 0.0]))
    assert_close(p, _t([0.5, 0.75]))


def test_preference_probability_complement_and_broadcast():
    a = _t([[0.2], [-1.0]])  # (2, 1)
    b = _t([0.5, 1.5, -2.0])  # (3,)
    p = preference_probability(a, b)
    assert p.shape == (2, 3)
    assert_close(p + preference_probability(b, a), torch.ones(2, 3, dtype=torch.float64))


def test_bt_loss_is_mean_neg_log_preference_probability():
    rc, rr = _t([0.3, -1.2, 2.0]), _t([0.1, 0.4, -0.5])
    assert_close(bradley_terry_loss(rc, rr), -preference_probability(rc, rr).log().mean())


# ---------------------------------------------------------------- gaussian_nll_loss


def test_gaussian_nll_hand_computed():
    # k = 1; item 0: residual 1, sigma 1 -> 0.5 * 1 + log 1 = 0.5
    #        item 1: residual 0, sigma 2 -> 0 + log 2
    mu = _t([[0.0], [1.0]])
    sigma = _t([[1.0], [2.0]])
    target = _t([1.0, 1.0])
    w = torch.ones(2, 1, dtype=torch.float64)
    loss = gaussian_nll_loss(mu, sigma, target, w)
    assert loss.item() == pytest.approx((0.5 + math.log(2.0)) / 2, rel=1e-12)


def test_gaussian_nll_per_head_bootstrap_weights():
    # Two heads with different bootstrap counts: weighted mean per head, then plain mean over heads.
    mu = _t([[0.0, 0.0], [1.0, 3.0]])
    sigma = _t([[1.0, 1.0], [1.0, 1.0]])
    target = _t([2.0, 1.0])
    # per_item: head 0 -> [0.5*4, 0.5*0] = [2, 0]; head 1 -> [0.5*4, 0.5*4] = [2, 2]
    w = _t([[3.0, 0.0], [1.0, 2.0]])
    # head 0: (3*2 + 1*0) / 4 = 1.5; head 1: (0*2 + 2*2) / 2 = 2.0; mean = 1.75
    assert gaussian_nll_loss(mu, sigma, target, w).item() == pytest.approx(1.75, rel=1e-12)


def test_gaussian_nll_zero_weight_items_are_ignored():
    # A response left out of a head's bootstrap sample (count 0) must not affect that head's loss,
    # however bad its fit.
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sigma = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1
    target = torch.randn(5, generator=g, dtype=torch.float64)
    w = torch.ones(5, 3, dtype=torch.float64)
    base = gaussian_nll_loss(mu, sigma, target, w)

    mu_x = torch.cat([mu, _t([[1e3, -1e3, 5e2]])])
    sigma_x = torch.cat([sigma, _t([[1e-3, 1e-3, 1e-3]])])
    target_x = torch.cat([target, _t([0.0])])
    w_x = torch.cat([w, torch.zeros(1, 3, dtype=torch.float64)])
    assert_close(gaussian_nll_loss(mu_x, sigma_x, target_x, w_x), base)


def test_gaussian_nll_integer_weight_equals_duplication():
    # Bootstrap count 2 == the item appearing twice.
    mu = _t([[0.0], [1.0]])
    sigma = _t([[0.5], [2.0]])
    target = _t([1.0, -1.0])
    weighted = gaussian_nll_loss(mu, sigma, target, _t([[2.0], [1.0]]))
    duplicated = gaussian_nll_loss(
        _t([[0.0], [0.0], [1.0]]), _t([[0.5], [0.5], [2.0]]), _t([1.0, 1.0, -1.0]), torch.ones(3, 1, dtype=torch.float64)
    )
    assert_close(weighted, duplicated)


def test_gaussian_nll_optimal_sigma_is_abs_residual():
    # d/ds [0.5 e^2 / s^2 + log s] = -e^2/s^3 + 1/s = 0  <=>  s = |e|
    sigma = _t([[0.7]]).requires_grad_()
    loss = gaussian_nll_loss(_t([[0.3]]), sigma, _t([1.0]), _t([[1.0]]))  # residual 0.7
    loss.backward()
    assert sigma.grad.item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- bt_sampled_loss


def test_bt_sampled_hand_computed():
    # S = 2, B = 1, k = 1, mu = 0, sigma = 1, eps_c = [1, -1], eps_r = [0, 0]
    # -> mean(-log sigmoid(1), -log sigmoid(-1)) = (log(1 + e^-1) + log(1 + e)) / 2
    z = _t([[0.0]])
    one = _t([[1.0]])
    loss = bt_sampled_loss(z, one, z, one, _t([[[1.0]], [[-1.0]]]), _t([[[0.0]], [[0.0]]]), one)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_bt_sampled_zero_sigma_equals_plain_bt_per_head():
    # With no noise the sampled loss is the plain BT loss of each head, averaged over heads.
    g = torch.Generator().manual_seed(1)
    B, k, S = 6, 3, 4
    mu_c = torch.randn(B, k, generator=g, dtype=torch.float64)
    mu_r = torch.randn(B, k, generator=g, dtype=torch.float64)
    tiny = torch.full((B, k), 1e-9, dtype=torch.float64)
    eps_c = torch.randn(S, B, k, generator=g, dtype=torch.float64)
    eps_r = torch.randn(S, B, k, generator=g, dtype=torch.float64)
    w = torch.ones(B, k, dtype=torch.float64)
    loss = bt_sampled_loss(mu_c, tiny, mu_r, tiny, eps_c, eps_r, w)
    expected = sum(bradley_terry_loss(mu_c[:, i], mu_r[:, i]) for i in range(k)) / k
    assert_close(loss, expected, rtol=1e-7, atol=1e-8)


def test_bt_sampled_zero_weight_pairs_are_ignored():
    g = torch.Generator().manual_seed(2)
    B, k, S = 4, 2, 3
    args = [torch.randn(B, k, generator=g, dtype=torch.float64) for _ in range(4)]
    args[1], args[3] = args[1].abs() + 0.1, args[3].abs() + 0.1
    eps = [torch.randn(S, B, k, generator=g, dtype=torch.float64) for _ in range(2)]
    w = _t([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = bt_sampled_loss(*args, *eps, w)
    # Reference: head 0 uses pairs {0, 1, 3}, head 1 uses pairs {0, 2, 3}, each with k = 1.
    per_head = []
    for head, keep in ((0, [0, 1, 3]), (1, [0, 2, 3])):
        sub = [a[keep][:, head : head + 1] for a in args]
        sub_eps = [e[:, keep][:, :, head : head + 1] for e in eps]
        per_head.append(bt_sampled_loss(*sub, *sub_eps, torch.ones(3, 1, dtype=torch.float64)))
    assert_close(loss, (per_head[0] + per_head[1]) / 2)
