"""Tests for robust_rlhf.reward.metrics: accuracy, Bradley-Terry NLL, reliability bins, ECE and the
head disagreement and shares, on hand-computed 1-4 pair examples."""

import math

import pytest
import torch

from robust_rlhf.reward.metrics import (
    bt_nll,
    expected_calibration_error,
    head_disagreement,
    head_shares,
    margin_report,
    misranked_under_gold,
    pair_sigma,
    pairwise_accuracy,
    relative_disagreement,
    reliability_bins,
)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------- pairwise_accuracy


def test_accuracy_counts_ties_as_wrong():
    # [1, -1, 0]: only the first pair has chosen strictly above rejected -> 1/3.
    assert pairwise_accuracy(_t([1.0, -1.0, 0.0])) == pytest.approx(1 / 3)


def test_accuracy_all_right_and_all_wrong():
    assert pairwise_accuracy(_t([0.1, 2.0, 5.0])) == 1.0
    assert pairwise_accuracy(_t([-0.1, -2.0, 0.0])) == 0.0


# ---------------------------------------------------------------- bt_nll


def test_bt_nll_of_zero_margin_is_log_two():
    # -log sigmoid(0) = -log(1/2) = log 2
    assert bt_nll(_t([0.0])) == pytest.approx(math.log(2))


def test_bt_nll_hand_values():
    # sigmoid(log 3) = 3/4, sigmoid(-log 3) = 1/4
    # mean(-log(3/4), -log(1/4)) = (log(4/3) + log 4) / 2
    expected = (math.log(4 / 3) + math.log(4)) / 2
    assert bt_nll(_t([math.log(3), -math.log(3)])) == pytest.approx(expected)


def test_bt_nll_is_stable_for_large_margins():
    # -log sigmoid(-100) = 100 + log(1 + e^-100) ~ 100; -log sigmoid(100) ~ e^-100 ~ 0 -> mean ~ 50
    value = bt_nll(_t([100.0, -100.0]))
    assert math.isfinite(value) and value == pytest.approx(50.0)


# ---------------------------------------------------------------- reliability_bins / ECE


def test_zero_margins_fall_in_bin_five_with_zero_ece():
    # every p = 0.5: both copies (0.5, 1) and (0.5, 0) go to bin int(0.5 * 10) = 5
    # -> confidence 0.5, accuracy (1 + 0 + 1 + 0) / 4 = 0.5, count 2 * 2 = 4
    rows = reliability_bins(_t([0.0, 0.0]))
    assert rows == [{"bin": 5, "confidence": pytest.approx(0.5), "accuracy": pytest.approx(0.5), "count": 4}]
    assert expected_calibration_error(_t([0.0, 0.0])) == pytest.approx(0.0)


def test_log_three_margin_splits_into_bins_two_and_seven():
    # p = sigmoid(log 3) = 3/4: the pair enters as (0.75, outcome 1) -> bin int(7.5) = 7
    # and as (0.25, outcome 0) -> bin int(2.5) = 2
    rows = reliability_bins(_t([math.log(3)]))
    assert [row["bin"] for row in rows] == [2, 7]
    low, high = rows
    assert low["confidence"] == pytest.approx(0.25) and low["accuracy"] == 0.0 and low["count"] == 1
    assert high["confidence"] == pytest.approx(0.75) and high["accuracy"] == 1.0 and high["count"] == 1
    # ECE = 1/2 * |1 - 0.75| + 1/2 * |0 - 0.25| = 0.25
    assert expected_calibration_error(_t([math.log(3)])) == pytest.approx(0.5 * abs(1 - 0.75) + 0.5 * abs(0 - 0.25))


def test_mixed_bins_hand_values():
    # margins [log 3, -log 3, 0]: p = 0.75, 0.25, 0.5
    # copies: (0.75, 1) (0.25, 1) (0.5, 1) and (0.25, 0) (0.75, 0) (0.5, 0)
    # bin 2: confidences 0.25, 0.25, outcomes 1, 0 -> acc 0.5, conf 0.25, count 2
    # bin 5: 0.5, 0.5, outcomes 1, 0 -> acc 0.5, conf 0.5, count 2
    # bin 7: 0.75, 0.75, outcomes 1, 0 -> acc 0.5, conf 0.75, count 2
    margin = _t([math.log(3), -math.log(3), 0.0])
    rows = reliability_bins(margin)
    assert [(r["bin"], r["count"]) for r in rows] == [(2, 2), (5, 2), (7, 2)]
    assert [r["confidence"] for r in rows] == pytest.approx([0.25, 0.5, 0.75])
    assert [r["accuracy"] for r in rows] == pytest.approx([0.5, 0.5, 0.5])
    # ECE = 2/6 * |0.5 - 0.25| + 2/6 * 0 + 2/6 * |0.5 - 0.75| = 1/6
    assert expected_calibration_error(margin) == pytest.approx(2 / 6 * 0.25 + 0 + 2 / 6 * 0.25)


def test_saturated_confidence_is_clamped_into_last_bin():
    # p = sigmoid(100) = 1.0 exactly in float64 -> int(1.0 * 10) = 10, clamped to bin 9; 1 - p = 0 -> bin 0
    rows = reliability_bins(_t([100.0]))
    assert [row["bin"] for row in rows] == [0, 9]
    assert sum(row["count"] for row in rows) == 2
    # perfectly confident and right: ECE = 1/2 * |0 - 0| + 1/2 * |1 - 1| = 0
    assert expected_calibration_error(_t([100.0])) == pytest.approx(0.0)


def test_bin_count_follows_num_bins():
    # p = 0.75 with 4 bins: int(0.75 * 4) = 3 and int(0.25 * 4) = 1
    rows = reliability_bins(_t([math.log(3)]), num_bins=4)
    assert [row["bin"] for row in rows] == [1, 3]


def test_reliability_is_independent_of_input_dtype():
    # reliability_bins works in float64 whatever the input dtype
    margin = [math.log(3), 0.0, -2.0]
    rows32 = reliability_bins(torch.tensor(margin, dtype=torch.float32))
    rows64 = reliability_bins(_t(margin))
    assert [(r["bin"], r["count"]) for r in rows32] == [(r["bin"], r["count"]) for r in rows64]
    assert [r["confidence"] for r in rows32] == pytest.approx([r["confidence"] for r in rows64], rel=1e-6)


# ---------------------------------------------------------------- margin_report


def test_margin_report_without_gold():
    margin = _t([math.log(3)])
    report = margin_report(margin)
    assert set(report) == {"accuracy", "nll", "ece"}
    assert report["accuracy"] == 1.0
    assert report["nll"] == pytest.approx(math.log(4 / 3))  # -log(3/4)
    assert report["ece"] == pytest.approx(0.25)


def test_gold_accuracy_ignores_pairs_with_zero_gold_margin():
    # pair 0: gold 0 -> ignored (the model is wrong there, which must not count)
    # pair 1: model +, gold + -> agree; pair 2: model -, gold + -> disagree; pair 3: model -, gold - -> agree
    # -> gold_accuracy = 2/3 over the 3 decided pairs
    margin = _t([-1.0, 2.0, -0.5, -3.0])
    gold = _t([0.0, 1.0, 2.0, -1.0])
    report = margin_report(margin, gold)
    assert report["gold_accuracy"] == pytest.approx(2 / 3)
    assert report["accuracy"] == pytest.approx(1 / 4)  # vs the labels: only pair 1 has margin > 0


def test_gold_accuracy_absent_when_gold_never_decides():
    report = margin_report(_t([1.0, -1.0]), _t([0.0, 0.0]))
    assert "gold_accuracy" not in report


def test_gold_accuracy_counts_a_model_tie_as_wrong():
    # A model tie (margin 0) orders nothing, so it cannot agree with a decided gold order, whichever
    # way gold goes, just as pairwise_accuracy counts ties as wrong. Gold margins [+1, -1] -> 0/2.
    report = margin_report(_t([0.0, 0.0]), _t([1.0, -1.0]))
    assert report["gold_accuracy"] == 0.0


# ---------------------------------------------------------------- head disagreement and shares


MU_CHOSEN = _t([[1.0, 3.0], [2.0, 2.0]])  # (N=2, k=2)
MU_REJECTED = _t([[0.0, 4.0], [1.0, 0.0]])


def test_head_disagreement_is_the_population_std_across_heads():
    # responses [1, 3] [2, 2] [0, 4] [1, 0]: population std of two values a, b = |a - b| / 2
    disagreement = head_disagreement(torch.cat([MU_CHOSEN, MU_REJECTED]))
    assert disagreement.tolist() == pytest.approx([1.0, 0.0, 2.0, 0.5])


def test_head_disagreement_three_heads_and_one_head():
    assert head_disagreement(_t([[0.0, 1.0, 2.0]])).item() == pytest.approx(math.sqrt(2 / 3))
    assert head_disagreement(_t([[1.0], [2.0]])).tolist() == [0.0, 0.0]


def test_relative_disagreement_hand_values():
    # heads [0, 2] and [2, 4]: per-response std 1 and 1; head means 1 and 3 -> population std 1 -> ratio 1
    assert relative_disagreement(_t([[0.0, 2.0], [2.0, 4.0]])) == pytest.approx(1.0)
    # identical heads: no disagreement at any spread
    assert relative_disagreement(_t([[1.0, 1.0], [5.0, 5.0]])) == 0.0
    # no spread across responses: undefined
    assert math.isnan(relative_disagreement(_t([[0.0, 2.0], [0.0, 2.0]])))


def test_head_shares_count_the_argmin_per_row_ties_to_the_lowest_index():
    values = _t([[0.0, 1.0, 2.0], [3.0, 1.0, 1.0], [5.0, 5.0, 4.0], [1.0, 1.0, 1.0]])
    assert head_shares(values) == pytest.approx([0.5, 0.25, 0.25])
    assert head_shares(values, largest=True) == pytest.approx([0.75, 0.0, 0.25])


def test_pair_sigma_is_the_mean_over_heads_of_the_margin_scale():
    # head 0: sqrt(3^2 + 4^2) = 5; head 1: sqrt(0 + 1) = 1 -> mean 3
    assert pair_sigma(_t([[3.0, 0.0]]), _t([[4.0, 1.0]])).tolist() == pytest.approx([3.0])


def test_misranked_under_gold_counts_a_model_tie_as_misranked():
    assert misranked_under_gold(_t([1.0, -1.0, 0.0, 2.0]), _t([1.0, 1.0, 1.0, -0.5])).tolist() == [
        False,
        True,
        True,
        True,
    ]
