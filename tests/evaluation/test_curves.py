"""Best-of-n estimator, its KL, win rate and seed spread, against values worked out by hand."""

import math

import pytest
import torch

from robust_rlhf.evaluation.curves import best_of_n_expected_gold, best_of_n_kl, mean_and_spread, win_rate


def test_best_of_n_kl_is_log_n_minus_n_minus_one_over_n():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(4) == pytest.approx(1.3862944 - 0.75)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_matches_enumerating_every_subset():
    gold = torch.tensor([[1.0, 2.0, 3.0]])
    proxy = torch.tensor([[0.1, 0.3, 0.2]])
    # n = 1: any sample, mean gold 2.
    assert best_of_n_expected_gold(gold, proxy, 1) == pytest.approx(2.0)
    # n = 2: {0,1} -> sample 1 (gold 2), {0,2} -> sample 2 (gold 3), {1,2} -> sample 1 (gold 2).
    assert best_of_n_expected_gold(gold, proxy, 2) == pytest.approx(7 / 3)
    # n = N: always the proxy's favourite, sample 1.
    assert best_of_n_expected_gold(gold, proxy, 3) == pytest.approx(2.0)


def test_best_of_n_averages_over_prompts():
    gold = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    proxy = torch.tensor([[0.1, 0.3, 0.2], [0.0, 1.0, 2.0]])
    # second prompt, n = 2: {0,1} -> 0, {0,2} -> 6, {1,2} -> 6: mean 4.
    assert best_of_n_expected_gold(gold, proxy, 2) == pytest.approx((7 / 3 + 4) / 2)


def test_best_of_n_picks_uniformly_among_proxy_ties():
    gold = torch.tensor([[0.0, 4.0, 1.0]])
    proxy = torch.tensor([[1.0, 1.0, 0.0]])
    # n = 3: samples 0 and 1 tie on proxy -> gold (0 + 4) / 2 = 2.
    assert best_of_n_expected_gold(gold, proxy, 3) == pytest.approx(2.0)
    # n = 2: {0,1} tie -> 2, {0,2} -> 0, {1,2} -> 4: mean 2.
    assert best_of_n_expected_gold(gold, proxy, 2) == pytest.approx(2.0)
    # order of the tied samples does not matter
    assert best_of_n_expected_gold(gold[:, [1, 0, 2]], proxy[:, [1, 0, 2]], 3) == pytest.approx(2.0)


def test_best_of_n_rejects_bad_input():
    gold = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n_expected_gold(gold, gold, 4)
    with pytest.raises(ValueError, match="prompts, N"):
        best_of_n_expected_gold(gold, torch.zeros(2, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        best_of_n_expected_gold(gold, torch.tensor([[0.0, float("nan"), 0.0]] * 2), 1)


def test_win_rate_counts_ties_as_half():
    new = torch.tensor([1.0, 2.0, 3.0, 4.0])
    old = torch.tensor([2.0, 2.0, 1.0, 0.0])
    assert win_rate(new, old) == pytest.approx(2.5 / 4)
    assert win_rate(old, old) == 0.5
    with pytest.raises(ValueError):
        win_rate(new, old[:3])


def test_mean_and_spread_uses_the_sample_std():
    assert mean_and_spread([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert mean_and_spread([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_and_spread([])


def test_best_of_n_per_prompt_hand_values_and_its_mean():
    from robust_rlhf.evaluation.curves import best_of_n_per_prompt

    # prompt 0: proxy ranks samples 0 < 1 < 2, values 1, 2, 3; n = 2: pick rank 1 w.p. 1/3, rank 2 w.p. 2/3
    value = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    proxy = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    per_prompt = best_of_n_per_prompt(value, proxy, 2)
    assert per_prompt.tolist() == pytest.approx([2 / 3 * 3 + 1 / 3 * 2, 5.0])
    assert best_of_n_expected_gold(value, proxy, 2) == pytest.approx(per_prompt.mean().item())


def test_best_of_n_grid_is_about_two_points_per_doubling_and_ends_at_n():
    from robust_rlhf.evaluation.curves import best_of_n_grid

    assert best_of_n_grid(64) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert best_of_n_grid(5) == [1, 2, 3, 4, 5] and best_of_n_grid(1) == [1]
