"""Tests for robust_rlhf.reward.aggregation: each aggregation over reward-ensemble heads and the registry."""

import math

import pytest
import torch
from torch.testing import assert_close

from robust_rlhf.reward.aggregation import (
    AGGREGATIONS,
    aggregate_rewards,
    brme_reward,
    kl_dro_reward,
    mean_reward,
    min_reward,
    nominal_reward,
    single_reward,
    uwo_reward,
)

COEFS = dict(brme_lambda=0.25, uwo_coef=0.5, kl_dro_beta=1.0)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# B = 2, k = 3. Row 1 has a sigma tie between heads 0 and 1 (both 0.2, the minimum).
MU = _t([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
SIGMA = _t([[0.5, 0.1, 0.3], [0.2, 0.2, 0.9]])


def _random(B=8, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, k, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(B, k, generator=g, dtype=torch.float64) + 0.05
    return mu, sigma


# ---------------------------------------------------------------- hand-computed values


def test_mean_and_min_hand_computed():
    assert_close(mean_reward(MU, SIGMA), _t([2.0, 1.0]))  # (1+2+3)/3, (0-1+4)/3
    assert_close(min_reward(MU, SIGMA), _t([1.0, -1.0]))


def test_uwo_hand_computed_population_variance():
    # row 0: mean 2, pop var ((-1)^2 + 0 + 1^2)/3 = 2/3 -> 2 - 0.5 * 2/3 = 5/3
    # row 1: mean 1, pop var ((-1)^2 + (-2)^2 + 3^2)/3 = 14/3 -> 1 - 0.5 * 14/3 = -4/3
    assert_close(uwo_reward(MU, SIGMA, uwo_coef=0.5), _t([5 / 3, -4 / 3]))


def test_nominal_picks_smallest_sigma_head_ties_to_lowest_index():
    # row 0: argmin sigma = head 1 -> mu 2; row 1: heads 0 and 1 tie at 0.2 -> head 0 -> mu 0 (not -1)
    assert_close(nominal_reward(MU, SIGMA), _t([2.0, 0.0]))


def test_nominal_all_sigmas_equal_uses_head_zero():
    mu, _ = _random(B=4, k=6)
    assert_close(nominal_reward(mu, torch.ones_like(mu)), mu[:, 0])


def test_brme_hand_computed():
    # lam * nominal + (1 - lam) * min with lam = 0.25
    # row 0: 0.25 * 2 + 0.75 * 1 = 1.25; row 1: 0.25 * 0 + 0.75 * (-1) = -0.75
    assert_close(brme_reward(MU, SIGMA, brme_lambda=0.25), _t([1.25, -0.75]))


def test_kl_dro_hand_computed():
    # beta = 1: -log((e^-1 + e^-2 + e^-3)/3), -log((e^0 + e^1 + e^-4)/3)
    expected = _t(
        [
            -math.log((math.exp(-1) + math.exp(-2) + math.exp(-3)) / 3),
            -math.log((1 + math.exp(1) + math.exp(-4)) / 3),
        ]
    )
    assert_close(kl_dro_reward(MU, SIGMA, kl_dro_beta=1.0), expected)


# ---------------------------------------------------------------- invariances and limits


def test_brme_endpoints():
    mu, sigma = _random()
    assert_close(brme_reward(mu, sigma, brme_lambda=1.0), nominal_reward(mu, sigma))
    assert_close(brme_reward(mu, sigma, brme_lambda=0.0), min_reward(mu, sigma))


def test_uwo_zero_coef_is_mean():
    mu, sigma = _random()
    assert_close(uwo_reward(mu, sigma, uwo_coef=0.0), mean_reward(mu, sigma))


def test_kl_dro_small_beta_tends_to_min():
    # -beta * log((1/k) sum exp(-mu_i/beta)) = min + beta * log(k) - (exponentially small terms)
    mu, sigma = _random(k=5)
    beta = 1e-3
    assert_close(kl_dro_reward(mu, sigma, kl_dro_beta=beta), min_reward(mu, sigma), rtol=0, atol=2 * beta * math.log(5))


def test_kl_dro_large_beta_tends_to_mean():
    # second-order expansion: mean - var / (2 beta); var of these heads is O(10), so O(1e-3) at beta = 1e4
    mu, sigma = _random(k=5)
    assert_close(kl_dro_reward(mu, sigma, kl_dro_beta=1e4), mean_reward(mu, sigma), rtol=0, atol=2e-3)


def test_kl_dro_between_min_and_mean_and_monotone_in_beta():
    # Jensen: min <= kl_dro <= mean, and the soft-min relaxes towards the mean as beta grows.
    mu, sigma = _random(seed=3)
    betas = [0.1, 0.5, 1.0, 5.0, 50.0]
    vals = [kl_dro_reward(mu, sigma, kl_dro_beta=b) for b in betas]
    for v in vals:
        assert (v >= min_reward(mu, sigma) - 1e-12).all()
        assert (v <= mean_reward(mu, sigma) + 1e-12).all()
    for a, b in zip(vals, vals[1:]):
        assert (b >= a - 1e-12).all()


def test_kl_dro_stable_for_large_rewards_and_small_beta():
    mu = _t([[1000.0, 1001.0], [-1000.0, -999.0]])
    out = kl_dro_reward(mu, torch.ones_like(mu), kl_dro_beta=1e-3)
    assert torch.isfinite(out).all()
    assert_close(out, _t([1000.0, -1000.0]), rtol=0, atol=1e-3)


def test_all_aggregations_are_shift_equivariant():
    # Adding a constant to every head adds it to the aggregate (sigma untouched); catches e.g. a missing mean.
    mu, sigma = _random(seed=4)
    for name in AGGREGATIONS:
        if name == "single":
            continue
        a = aggregate_rewards(name, mu, sigma, **COEFS)
        b = aggregate_rewards(name, mu + 3.0, sigma, **COEFS)
        assert_close(b, a + 3.0, msg=name)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_one_head_every_aggregation_is_mu0(name):
    # k = 1: min = mean = nominal = brme = kl_dro = single = mu[:, 0]; uwo's variance term is 0.
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(6, 1, generator=g, dtype=torch.float64)
    sigma = torch.rand(6, 1, generator=g, dtype=torch.float64) + 0.1
    out = aggregate_rewards(name, mu, sigma, brme_lambda=0.3, uwo_coef=2.0, kl_dro_beta=0.7)
    assert out.shape == (6,)
    assert_close(out, mu[:, 0])


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_registry_output_shape(name):
    mu, sigma = _random(B=7, k=1 if name == "single" else 4)
    assert aggregate_rewards(name, mu, sigma, **COEFS).shape == (7,)


def test_registry_dispatches_the_right_coefficient():
    mu, sigma = _random(seed=6)
    assert_close(aggregate_rewards("brme", mu, sigma, **COEFS), brme_reward(mu, sigma, brme_lambda=0.25))
    assert_close(aggregate_rewards("uwo", mu, sigma, **COEFS), uwo_reward(mu, sigma, uwo_coef=0.5))
    assert_close(aggregate_rewards("kl_dro", mu, sigma, **COEFS), kl_dro_reward(mu, sigma, kl_dro_beta=1.0))
    assert_close(aggregate_rewards("mean", mu, sigma, **COEFS), mean_reward(mu, sigma))
    assert_close(aggregate_rewards("min", mu, sigma, **COEFS), min_reward(mu, sigma))
    assert_close(aggregate_rewards("nominal", mu, sigma, **COEFS), nominal_reward(mu, sigma))
    assert_close(aggregate_rewards("single", mu[:, :1], sigma[:, :1], **COEFS), single_reward(mu[:, :1], sigma[:, :1]))


def test_registry_names():
    assert set(AGGREGATIONS) == {"single", "mean", "min", "uwo", "nominal", "brme", "kl_dro"}


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["mu", "sigma"])
@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_non_finite_input_raises(name, where, bad):
    k = 1 if name == "single" else 3
    mu, sigma = _random(B=2, k=k)
    (mu if where == "mu" else sigma)[1, 0] = bad
    with pytest.raises(ValueError):
        aggregate_rewards(name, mu, sigma, **COEFS)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        mean_reward(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError):
        mean_reward(torch.zeros(3), torch.ones(3))


def test_single_with_several_heads_raises():
    mu, sigma = _random(k=2)
    with pytest.raises(ValueError):
        single_reward(mu, sigma)
    with pytest.raises(ValueError):
        aggregate_rewards("single", mu, sigma, **COEFS)


def test_unknown_name_raises():
    mu, sigma = _random()
    with pytest.raises(ValueError, match="unknown"):
        aggregate_rewards("median", mu, sigma, **COEFS)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_kl_dro_nonpositive_beta_raises(beta):
    mu, sigma = _random()
    with pytest.raises(ValueError):
        kl_dro_reward(mu, sigma, kl_dro_beta=beta)
