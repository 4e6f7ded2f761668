"""Tests for robust_rlhf.reward.losses: Bradley-Terry, the BRME stage-2 losses and the priors."""

import math

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.reward.losses import (
    anchor_penalty,
    bradley_terry_heads_loss,
    bradley_terry_loss,
    bt_sampled_loss,
    gaussian_nll_loss,
    l2_penalty,
    preference_probability,
    thurstone_nll_loss,
    thurstone_probability,
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
        _t([[0.0], [0.0], [1.0]]),
        _t([[0.5], [0.5], [2.0]]),
        _t([1.0, 1.0, -1.0]),
        torch.ones(3, 1, dtype=torch.float64),
    )
    assert_close(weighted, duplicated)


def test_gaussian_nll_optimal_sigma_is_abs_residual():
    # d/ds [0.5 e^2 / s^2 + log s] = -e^2/s^3 + 1/s = 0  <=>  s = |e|
    sigma = _t([[0.7]]).requires_grad_()
    loss = gaussian_nll_loss(_t([[0.3]]), sigma, _t([1.0]), _t([[1.0]]))  # residual 0.7
    loss.backward()
    assert sigma.grad.item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- bt_sampled_loss


def test_bt_sampled_hand_computed_is_the_marginal_likelihood():
    # S = 2, B = 1, k = 1, mu_c = 1, mu_r = 0, sigma = 1, eps_c = [1, -1], eps_r = [0, 0]
    # margins 2 and 0 -> -log((sigmoid(2) + sigmoid(0)) / 2), the log outside the mean
    one = _t([[1.0]])
    loss = bt_sampled_loss(one, one, _t([[0.0]]), one, _t([[[1.0]], [[-1.0]]]), _t([[[0.0]], [[0.0]]]), one)
    expected = -math.log((1 / (1 + math.exp(-2)) + 0.5) / 2)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the mean of the per-sample losses (the old, Jensen-biased form) is larger
    assert loss.item() < (math.log(1 + math.exp(-2)) + math.log(2)) / 2


def test_bt_sampled_a_larger_sigma_can_lower_the_loss_of_a_misranked_pair():
    # mu_c = -2 < mu_r = 0: with sigma near 0 the pair costs ~ -log sigmoid(-2); a large sigma pulls
    # P toward 1/2. Averaging the per-sample loss instead would make every sigma cost more.
    g = torch.Generator().manual_seed(0)
    eps_c, eps_r = (torch.randn(4000, 1, 1, generator=g, dtype=torch.float64) for _ in range(2))
    mu_c, mu_r, w = _t([[-2.0]]), _t([[0.0]]), _t([[1.0]])
    small = bt_sampled_loss(mu_c, _t([[1e-6]]), mu_r, _t([[1e-6]]), eps_c, eps_r, w)
    large = bt_sampled_loss(mu_c, _t([[5.0]]), mu_r, _t([[5.0]]), eps_c, eps_r, w)
    assert small.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-4)
    # At sigma 5 the margin is N(-2, 50): the loss is -log E[sigmoid(-2 + sqrt(50) z)], z ~ N(0, 1), here by
    # quadrature (0.937); 4000 draws estimate P ~ 0.39 to a standard error of ~0.007, 0.017 in the log, so
    # 0.06 is ~3.5 of them. The Jensen-biased mean of per-sample losses would be 4.02, above `small`.
    z = torch.linspace(-12.0, 12.0, 240_001, dtype=torch.float64)
    density = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    exact = -math.log(torch.trapezoid(density * torch.sigmoid(-2.0 + math.sqrt(50.0) * z), z).item())
    assert large.item() == pytest.approx(exact, abs=0.06)
    assert large.item() < small.item() - 0.8


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


# ---------------------------------------------------------------- thurstone


def test_thurstone_probability_hand_values():
    # margin 1, scale sqrt(0.6^2 + 0.8^2 + 0) = 1 -> Phi(1) = 0.841344746
    p = thurstone_probability(_t([1.0]), _t([0.6]), _t([0.0]), _t([0.8]), noise_floor=0.0)
    assert p.item() == pytest.approx(0.8413447460685429, rel=1e-12)
    # the noise floor adds in quadrature: scale sqrt(0 + 0 + 2^2) = 2 -> Phi(0.5) = 0.691462461
    p = thurstone_probability(_t([1.0]), _t([0.0]), _t([0.0]), _t([0.0]), noise_floor=2.0)
    assert p.item() == pytest.approx(0.6914624612740131, rel=1e-12)


def test_thurstone_nll_hand_values_per_head_bootstrap_weights():
    # k = 2 heads, B = 2 pairs, floor 0; head 0: z = [1, 0], weights [1, 1] -> mean(-log Phi(1), log 2)
    # head 1: z = [-1, 2], weights [0, 2] -> -log Phi(2)
    mu_c, mu_r = _t([[1.0, -1.0], [0.0, 2.0]]), _t([[0.0, 0.0], [0.0, 0.0]])
    sigma = torch.full((2, 2), math.sqrt(0.5), dtype=torch.float64)
    loss = thurstone_nll_loss(mu_c, sigma, mu_r, sigma, _t([[1.0, 0.0], [1.0, 2.0]]), noise_floor=0.0)
    head0 = (-math.log(0.8413447460685429) + math.log(2)) / 2
    head1 = -math.log(0.9772498680518208)
    assert loss.item() == pytest.approx((head0 + head1) / 2, rel=1e-12)


def test_thurstone_nll_is_finite_far_in_the_tail():
    loss = thurstone_nll_loss(_t([[-60.0]]), _t([[0.01]]), _t([[0.0]]), _t([[0.01]]), _t([[1.0]]), noise_floor=1.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(60.0**2 / 2, rel=0.01)


def test_thurstone_optimal_sigma_grows_with_label_noise():
    # One pair type seen with label agreement q: the NLL-optimal P is q, so with mu fixed the
    # optimal sigma solves Phi(1 / sqrt(2 sigma^2 + 1)) = q; lower q -> larger sigma.
    def best_sigma(q):
        sigmas = torch.linspace(0.0, 10.0, 10001, dtype=torch.float64)
        z = 1.0 / torch.sqrt(2 * sigmas**2 + 1.0)
        nll = -(q * torch.special.log_ndtr(z) + (1 - q) * torch.special.log_ndtr(-z))
        return float(sigmas[nll.argmin()])

    assert best_sigma(0.9) == 0.0  # above Phi(1) = 0.84 the floor alone is too noisy: sigma stays at 0
    assert 0.5 < best_sigma(0.7) < best_sigma(0.6) < best_sigma(0.55)


# ---------------------------------------------------------------- bradley_terry_heads_loss, priors


def test_bradley_terry_heads_loss_with_unit_weights_is_the_mean_of_per_head_bt():
    g = torch.Generator().manual_seed(3)
    chosen, rejected = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    loss = bradley_terry_heads_loss(chosen, rejected, torch.ones(5, 3, dtype=torch.float64))
    expected = sum(bradley_terry_loss(chosen[:, m], rejected[:, m]) for m in range(3)) / 3
    assert_close(loss, expected)


def test_bradley_terry_heads_loss_weight_two_equals_a_duplicated_pair():
    chosen, rejected = _t([[1.0], [0.0]]), _t([[0.0], [2.0]])
    weighted = bradley_terry_heads_loss(chosen, rejected, _t([[2.0], [1.0]]))
    duplicated = bradley_terry_loss(_t([1.0, 1.0, 0.0]), _t([0.0, 0.0, 2.0]))
    assert_close(weighted, duplicated)


def test_anchor_penalty_hand_values():
    # k = 2, one group (k, 2): head 0 off by (1, 1), head 1 by (2, 0); prior std 2, N = 4
    # per head 0.5 * ||d||^2 / (4 * 4): 0.5 * 2 / 16 and 0.5 * 4 / 16 -> mean = (1/16 + 2/16) / 2
    weights, anchors = [_t([[1.0, 1.0], [2.0, 0.0]])], [_t([[0.0, 0.0], [0.0, 0.0]])]
    assert anchor_penalty(weights, anchors, prior_std=2.0, num_items=4).item() == pytest.approx(3 / 32)


def test_anchor_penalty_sums_groups_and_is_zero_at_the_anchor():
    a, b = _t([[1.0, 2.0]]), _t([[3.0]])
    assert anchor_penalty([a, b], [a.clone(), b.clone()], prior_std=1.0, num_items=1).item() == 0.0
    both = anchor_penalty([a, b], [a * 0, b * 0], prior_std=1.0, num_items=1).item()
    assert both == pytest.approx(0.5 * (1 + 4 + 9))


def test_l2_penalty_hand_values():
    # heads (2, 2): ||w_0||^2 = 1 + 4 = 5, ||w_1||^2 = 9 -> 0.5 * 0.1 * mean(5, 9) = 0.35
    assert l2_penalty(_t([[1.0, 2.0], [3.0, 0.0]]), l2_coef=0.1).item() == pytest.approx(0.35)
