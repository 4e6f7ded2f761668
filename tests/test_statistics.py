"""Tests for robust_rlhf.statistics: cluster bootstrap and AUROC on cases with a known answer."""

import math

import pytest
import torch

from robust_rlhf.statistics import (
    ClusterBootstrap,
    auroc,
    bootstrap_mean,
    bootstrap_p_value,
    bootstrap_ratio_of_means,
    bootstrap_ratio_two_samples,
    bootstrap_statistic,
    cluster_bootstrap_weights,
    cluster_ids,
    holm_adjust,
    paired_difference,
    percentile_interval,
)


def test_cluster_ids_number_labels_in_order_of_first_appearance():
    assert cluster_ids(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]


def test_cluster_bootstrap_weights_give_every_row_of_a_cluster_its_clusters_draw_count():
    clusters = torch.tensor([0, 0, 1, 2, 2, 2])
    weights = cluster_bootstrap_weights(clusters, num_resamples=50, seed=0)
    assert weights.shape == (50, 6)
    assert torch.equal(weights[:, 0], weights[:, 1]) and torch.equal(weights[:, 3], weights[:, 5])
    # each resample draws 3 clusters: the draw counts of clusters 0, 1, 2 sum to 3
    assert torch.equal(weights[:, 0] + weights[:, 2] + weights[:, 3], torch.full((50,), 3.0, dtype=torch.float64))


def test_bootstrap_mean_of_a_constant_has_a_zero_width_interval():
    interval = bootstrap_mean(torch.full((10,), 0.7), torch.arange(10), num_resamples=200, seed=0)
    assert interval.estimate == pytest.approx(0.7) and interval.low == pytest.approx(0.7)
    assert interval.high == pytest.approx(0.7)


def test_bootstrap_mean_interval_matches_the_normal_approximation():
    # 400 independent Bernoulli(0.5) rows, one per cluster: the 95% interval is ~ mean +- 1.96 * 0.025
    g = torch.Generator().manual_seed(1)
    values = (torch.rand(400, generator=g) < 0.5).double()
    interval = bootstrap_mean(values, torch.arange(400), num_resamples=4000, seed=2)
    half = (interval.high - interval.low) / 2
    assert half == pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.12)
    assert interval.low < values.mean().item() < interval.high


def test_clustered_rows_give_a_wider_interval_than_rows_treated_as_independent():
    # 20 prompts x 10 samples whose values are the prompt's own: only 20 independent draws
    g = torch.Generator().manual_seed(3)
    per_prompt = torch.randn(20, generator=g, dtype=torch.float64)
    values = per_prompt.repeat_interleave(10)
    clustered = bootstrap_mean(values, torch.arange(20).repeat_interleave(10), num_resamples=2000, seed=0)
    naive = bootstrap_mean(values, torch.arange(200), num_resamples=2000, seed=0)
    assert (clustered.high - clustered.low) > 2.5 * (naive.high - naive.low)


def test_ratio_of_identical_inputs_is_exactly_one_in_every_resample():
    values = torch.rand(30, generator=torch.Generator().manual_seed(4)) + 0.5
    interval = bootstrap_ratio_of_means(values, values.clone(), torch.arange(30) // 3, num_resamples=300, seed=0)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((1.0, 1.0, 1.0))
    assert not interval.excludes(1.0)


def test_a_planted_ratio_is_found_and_excludes_one():
    g = torch.Generator().manual_seed(5)
    base = torch.rand(200, generator=g, dtype=torch.float64) + 0.5
    planted = 1.5 * base + 0.05 * torch.randn(200, generator=g, dtype=torch.float64)
    paired = bootstrap_ratio_of_means(planted, base, torch.arange(200), num_resamples=1000, seed=0)
    assert paired.low < 1.5 < paired.high and paired.excludes(1.0)
    two_sample = bootstrap_ratio_two_samples(
        planted, torch.arange(200), base, torch.arange(200), num_resamples=1000, seed=0
    )
    assert two_sample.low < 1.5 < two_sample.high and two_sample.excludes(1.0)
    assert (two_sample.high - two_sample.low) > (paired.high - paired.low)  # pairing removes the shared noise


def test_bootstrap_statistic_resamples_clusters_whole():
    # The statistic sees row indices; with one cluster every resample is the whole data set.
    seen = []
    interval = bootstrap_statistic(
        lambda rows: seen.append(sorted(rows.tolist())) or float(len(rows)),
        torch.zeros(4, dtype=torch.long),
        num_resamples=5,
        seed=0,
    )
    assert interval.estimate == 4.0 and all(rows == [0, 1, 2, 3] for rows in seen)


def test_percentile_interval_drops_undefined_replicates():
    interval = percentile_interval(0.5, torch.tensor([float("nan"), 0.2, 0.4, 0.6, 0.8]), level=0.5)
    assert interval.low == pytest.approx(0.35) and interval.high == pytest.approx(0.65)
    assert math.isnan(percentile_interval(0.5, torch.tensor([float("nan")]), level=0.9).low)


def test_auroc_of_a_perfect_a_reversed_and_a_useless_signal():
    positive = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2]), positive) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8]), positive) == 0.0
    assert auroc(torch.full((4,), 0.3), positive) == 0.5  # all tied: ties count half


def test_auroc_hand_computed_with_ties():
    # positives 0.5, 0.2; negatives 0.5, 0.1: pairs (pos, neg) -> 0.5-0.5 tie (1/2), 0.5>0.1 (1),
    # 0.2<0.5 (0), 0.2>0.1 (1) -> 2.5 / 4
    assert auroc(torch.tensor([0.5, 0.2, 0.5, 0.1]), torch.tensor([True, True, False, False])) == 0.625


def test_auroc_of_a_random_signal_is_near_a_half_and_undefined_without_both_classes():
    g = torch.Generator().manual_seed(6)
    value = auroc(torch.rand(4000, generator=g), torch.rand(4000, generator=g) < 0.3)
    assert value == pytest.approx(0.5, abs=0.03)
    assert math.isnan(auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))


def test_cluster_bootstrap_renumbers_labels_of_a_subset():
    bootstrap = ClusterBootstrap(num_resamples=200, level=0.95, seed=0)
    # labels "x" twice and "y" once; a renumbered subset resamples 2 clusters, never an empty one
    interval = bootstrap.mean(torch.tensor([1.0, 1.0, 0.0]), ["x", "x", "y"])
    assert interval.estimate == pytest.approx(2 / 3) and interval.low == pytest.approx(0.0)
    assert interval.high == pytest.approx(1.0)


# ---------------------------------------------------------------- paired comparisons


def test_paired_difference_of_identical_inputs_is_exactly_zero_with_p_one():
    scores = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0))
    result = paired_difference(scores, scores.clone(), num_resamples=500, seed=0)
    assert (result.estimate, result.low, result.high) == (0.0, 0.0, 0.0) and result.p_value == 1.0


def test_paired_difference_finds_a_planted_gain_and_pairing_shrinks_the_interval():
    g = torch.Generator().manual_seed(1)
    prompt_effect = 3.0 * torch.randn(1, 40, 1, generator=g, dtype=torch.float64)  # shared by both arms
    control = prompt_effect + 0.3 * torch.randn(1, 40, 4, generator=g, dtype=torch.float64)
    treatment = prompt_effect + 0.5 + 0.3 * torch.randn(1, 40, 4, generator=g, dtype=torch.float64)
    paired = paired_difference(treatment, control, num_resamples=2000, seed=0)
    assert paired.low < 0.5 < paired.high and paired.low > 0 and paired.p_value < 0.01
    assert (paired.high - paired.low) < 0.3  # an unpaired interval would carry the prompts' spread of 3
    null = paired_difference(
        control + 0.3 * torch.randn(1, 40, 4, generator=g, dtype=torch.float64), control, num_resamples=2000, seed=0
    )
    assert null.low < 0 < null.high and null.p_value > 0.05


def test_paired_difference_with_seeds_counts_the_seed_spread():
    # seeds that disagree (+1 and -1 on every prompt): the mean is 0 and the interval must be wide
    treatment = torch.cat([torch.ones(1, 30, 2), -torch.ones(1, 30, 2)]).double()
    result = paired_difference(treatment, torch.zeros(1, 30, 2, dtype=torch.float64), num_resamples=1000, seed=0)
    assert result.estimate == 0.0 and result.low <= -0.9 and result.high >= 0.9


def test_bootstrap_p_value_hand_values():
    replicates = torch.tensor([-1.0, 1.0, 2.0, 3.0])  # 1 of 4 at or below 0: 2 * (1 + 1) / 5 = 0.8
    assert bootstrap_p_value(replicates) == pytest.approx(0.8)
    assert bootstrap_p_value(torch.ones(99)) == pytest.approx(2 / 100)


def test_holm_adjust_hand_values():
    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_student_t_quantiles_match_the_tables():
    from robust_rlhf.statistics import student_t_quantile

    # Tables (e.g. Abramowitz & Stegun 26.10): t_{0.975} at 1, 4, 30 degrees of freedom; t_{0.995} at 1.
    assert student_t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert student_t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert student_t_quantile(0.975, 30) == pytest.approx(2.0423, abs=1e-4)
    assert student_t_quantile(0.995, 1) == pytest.approx(63.6567, abs=1e-3)
    assert student_t_quantile(0.025, 4) == -student_t_quantile(0.975, 4)


def test_an_expanded_interval_scales_each_side_by_the_small_sample_factor():
    from robust_rlhf.statistics import expanded_interval

    # 5 units at 95%: sqrt(5 / 4) * 2.7764 / 1.95996 = 1.5838, applied to each side's distance
    low, high = expanded_interval(0.1, -0.9, 0.6, replicates=5, level=0.95)
    assert (low, high) == (pytest.approx(0.1 - 1.5838 * 1.0, abs=1e-4), pytest.approx(0.1 + 1.5838 * 0.5, abs=1e-4))
