"""Tests for robust_rlhf.reward.scoring: which aggregations apply to each reward-model kind, every
aggregation of hand-made scores, and each method's reward. No model is loaded: scores are built by hand."""

import torch
from torch.testing import assert_close

from robust_rlhf.config import AggregationParams, MethodParams
from robust_rlhf.reward.aggregation import AGGREGATIONS, aggregate_rewards
from robust_rlhf.reward.scoring import applicable_aggregations, every_aggregation, method_rewards
from tests.conftest import tiny_params


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _coefficients(brme_lambda=0.25, uwo_coef=0.5, kl_dro_beta=2.0) -> AggregationParams:
    return AggregationParams(brme_lambda=brme_lambda, uwo_coef=uwo_coef, kl_dro_beta=kl_dro_beta)


# B = 2. Each kind has different numbers, so a method reading the wrong kind gets a different reward.
SCORES = {
    "brme": (_t([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]), _t([[0.5, 0.1, 0.3], [0.2, 0.3, 0.9]])),
    "single": (_t([[7.0], [-7.0]]), torch.ones(2, 1, dtype=torch.float64)),
    "ensemble": (_t([[10.0, 12.0], [-2.0, 2.0]]), torch.ones(2, 2, dtype=torch.float64)),
}


# ---------------------------------------------------------------- applicable_aggregations


def test_single_kind_has_only_single():
    assert applicable_aggregations("single") == ["single"]


def test_ensemble_excludes_sigma_based_and_single():
    names = applicable_aggregations("ensemble")
    assert set(names) == {"mean", "min", "uwo", "kl_dro"}
    assert not {"nominal", "brme", "single"} & set(names)


def test_brme_has_everything_but_single():
    assert set(applicable_aggregations("brme")) == set(AGGREGATIONS) - {"single"}
    assert set(applicable_aggregations("brme")) == {"mean", "min", "uwo", "nominal", "brme", "kl_dro"}


# ---------------------------------------------------------------- every_aggregation


def test_every_aggregation_keys_are_kind_slash_aggregation():
    rewards = every_aggregation(SCORES, _coefficients())
    assert set(rewards) == {
        "single/single",
        "ensemble/mean",
        "ensemble/min",
        "ensemble/uwo",
        "ensemble/kl_dro",
        "brme/mean",
        "brme/min",
        "brme/uwo",
        "brme/nominal",
        "brme/brme",
        "brme/kl_dro",
    }
    assert all(reward.shape == (2,) for reward in rewards.values())


def test_every_aggregation_values_equal_direct_calls_with_the_config_coefficients():
    config = _coefficients(brme_lambda=0.25, uwo_coef=0.5, kl_dro_beta=2.0)
    rewards = every_aggregation(SCORES, config)
    for key, reward in rewards.items():
        kind, name = key.split("/")
        mu, sigma = SCORES[kind]
        assert_close(reward, aggregate_rewards(name, mu, sigma, brme_lambda=0.25, uwo_coef=0.5, kl_dro_beta=2.0))


def test_every_aggregation_hand_values():
    rewards = every_aggregation(SCORES, _coefficients(brme_lambda=0.25, uwo_coef=0.5))
    assert_close(rewards["single/single"], _t([7.0, -7.0]))
    assert_close(rewards["ensemble/mean"], _t([11.0, 0.0]))
    # uwo = mean - 0.5 * population var: var([10, 12]) = 1, var([-2, 2]) = 4 -> [11 - 0.5, 0 - 2]
    assert_close(rewards["ensemble/uwo"], _t([11.0 - 0.5 * 1.0, 0.0 - 0.5 * 4.0]))
    # brme row 0: nominal = mu at argmin sigma (head 1) = 2, min = 1 -> 0.25 * 2 + 0.75 * 1 = 1.25
    # brme row 1: nominal = head 0 (sigma 0.2) = 0, min = -1 -> 0.25 * 0 + 0.75 * -1 = -0.75
    assert_close(rewards["brme/brme"], _t([0.25 * 2 + 0.75 * 1, 0.25 * 0 + 0.75 * -1]))


def test_every_aggregation_without_ensemble_scores():
    scores = {kind: SCORES[kind] for kind in ("brme", "single")}
    assert not any(key.startswith("ensemble/") for key in every_aggregation(scores, _coefficients()))


# ---------------------------------------------------------------- method_rewards


def _methods(**entries) -> dict[str, MethodParams]:
    return {name: MethodParams(reward_model=rm, aggregation=agg) for name, (rm, agg) in entries.items()}


def test_method_rewards_pick_reward_model_and_aggregation():
    methods = _methods(
        single=("single", "single"),
        mean=("ensemble", "mean"),
        wco=("ensemble", "min"),
        brme=("brme", "brme"),
        brme_mean=("brme", "mean"),
    )
    rewards = method_rewards(SCORES, methods, _coefficients(brme_lambda=0.25))
    assert list(rewards) == ["single", "mean", "wco", "brme", "brme_mean"]
    assert_close(rewards["single"], _t([7.0, -7.0]))
    assert_close(rewards["mean"], _t([(10 + 12) / 2, (-2 + 2) / 2]))
    assert_close(rewards["wco"], _t([10.0, -2.0]))
    assert_close(rewards["brme"], _t([0.25 * 2 + 0.75 * 1, 0.25 * 0 + 0.75 * -1]))
    assert_close(rewards["brme_mean"], _t([(1 + 2 + 3) / 3, (0 - 1 + 4) / 3]))


def test_method_rewards_use_the_config_coefficients():
    # kl_dro with beta from config: -beta * log mean exp(-mu / beta); beta = 2 vs beta = 1 must differ
    methods = _methods(kl_dro=("ensemble", "kl_dro"))
    mu, sigma = SCORES["ensemble"]
    for beta in (1.0, 2.0):
        reward = method_rewards(SCORES, methods, _coefficients(kl_dro_beta=beta))["kl_dro"]
        expected = -beta * torch.log((torch.exp(-mu[:, 0] / beta) + torch.exp(-mu[:, 1] / beta)) / 2)
        assert_close(reward, expected)


def test_method_rewards_skip_methods_without_scores():
    methods = {name: MethodParams.model_validate(raw) for name, raw in tiny_params()["methods"].items()}
    scores = {kind: SCORES[kind] for kind in ("brme", "single")}
    rewards = method_rewards(scores, methods, _coefficients())
    expected = [name for name, method in methods.items() if method.reward_model != "ensemble"]
    assert expected and len(expected) < len(methods)  # params.yaml has both kinds of method
    assert list(rewards) == expected
