"""The report's reward-model verdicts on hand-built metrics: the interval decides, not the point,
and an AUROC must clear chance on both held-out splits."""

from robust_rlhf.evaluation.report import (
    best_of_n_finding,
    interval_text,
    reward_model_section,
    reward_model_text,
    uncertainty_findings,
)


def _interval(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def _heads(auroc_disagreement, auroc_sigma=None):
    heads = {
        "auroc_disagreement_misranked": auroc_disagreement,
        "relative_disagreement": _interval(0.3, 0.2, 0.4),
        "heads": {"head_0": {"accuracy": _interval(0.6, 0.5, 0.7)}},
        "aggregates": {},
        "nominal_share": [0.5, 0.5],
        "min_share": [0.4, 0.6],
    }
    if auroc_sigma is not None:
        heads["auroc_sigma_misranked"] = auroc_sigma
    return heads


ABOVE, REACHES = _interval(0.64, 0.55, 0.73), _interval(0.58, 0.47, 0.69)


def test_an_auroc_above_a_half_on_both_splits_is_informative_and_on_one_split_is_not_replicated():
    metrics = {
        "val": {
            "single": {"gold_accuracy": _interval(0.62, 0.55, 0.69)},
            "brme": _heads(REACHES, auroc_sigma=ABOVE),
            "ensemble": _heads(ABOVE),
        },
        "test": {
            "single": {"gold_accuracy": _interval(0.6, 0.45, 0.7)},
            "brme": _heads(REACHES, auroc_sigma=ABOVE),
            "ensemble": _heads(REACHES),
        },
        "shift": {
            "brme": {"disagreement_ratio": _interval(1.4, 0.9, 1.8)},
            "ensemble": {"disagreement_ratio": _interval(0.8, 0.7, 0.9)},
        },
    }
    single, brme, ensemble = uncertainty_findings(metrics, {})
    assert single.endswith("yes on val (the interval lies above 0.5).")
    assert brme.startswith("brme: its uncertainty is informative") and "sigma predicts gold mis-rankings" in brme
    assert "Not shown (the interval reaches chance): head disagreement predicts" in brme
    # the ensemble clears chance on val only: not replicated, and its hot samples show less disagreement
    assert (
        ensemble.startswith("ensemble: no sign")
        and "head disagreement predicts gold mis-rankings (on val only)" in ensemble
    )
    assert "heads disagree more on high-temperature samples" in ensemble


def test_final_policy_ratios_are_grouped_by_method():
    metrics = {"test": {"brme": _heads(REACHES, auroc_sigma=REACHES)}}
    comparison = {
        "single": {"brme_disagreement_ratio": _interval(0.95, 0.8, 1.1)},
        "brme": {"brme_disagreement_ratio": _interval(1.5, 1.2, 1.8)},
    }
    (line,) = uncertainty_findings(metrics, comparison)
    assert line.startswith("brme: its uncertainty is informative") and "the final PPO samples of brme" in line
    (line,) = uncertainty_findings(metrics, {"single": comparison["single"]})
    assert line.startswith("brme: no sign that its uncertainty is informative")


def test_undefined_intervals_decide_nothing():
    nan = _interval("nan", "nan", "nan")  # how metrics files store a NaN
    lines = uncertainty_findings({"test": {"brme": _heads(nan, auroc_sigma=nan)}}, {})
    assert lines == [
        "brme: no sign that its uncertainty is informative on this run (the intervals reach chance: nothing measured)."
    ]
    assert interval_text(nan) == "nan [nan, nan]" and interval_text(None) == "n/a"


def test_reward_model_section_names_what_differs_between_the_members():
    metrics = {
        "test": {"pairs": 4, "prompts": 2, "ensemble": _heads(_interval(0.5, 0.4, 0.6))},
        "train": {"ensemble_layout": "models"},
    }
    html = reward_model_section(metrics, {}, {})
    assert "fine-tuned apart, differing only by seed" in html and "0.6 [0.5, 0.7]" in html
    assert "ensemble (test)" in html


def test_a_mixture_is_named_by_its_members_in_order_and_other_reward_models_by_their_kind():
    assert reward_model_text("mixture", ["chat", "pair", "single"]) == "mixture [chat, pair, single]"
    assert reward_model_text("ensemble", None) == "ensemble"
    assert reward_model_text("brme", []) == "brme"


def test_a_best_of_n_fall_after_the_peak_is_read_against_the_peaks_interval():
    curve = [
        {"n": "32", "gold": "0.90", "gold_ci_low": "0.80", "gold_ci_high": "1.00"},
        {"n": "48", "gold": "0.94", "gold_ci_low": "0.84", "gold_ci_high": "1.03"},
        {"n": "64", "gold": "0.93", "gold_ci_low": "0.81", "gold_ci_high": "1.04"},
    ]
    row = {"best_of_n": 64, "best_of_n_gold": 0.93, "best_of_n_peak_n": 48, "best_of_n_peak_gold": 0.94}
    dip = best_of_n_finding("mean", row | {"best_of_n_peaks_before_n": True}, curve)
    assert dip == (
        "Best-of-n picked by mean's reward peaks at n = 48 (0.940) and falls to 0.930 at n = 64, inside the "
        "peak's 95% interval [0.840, 1.030]: within noise."
    )
    fall = best_of_n_finding("mean", row | {"best_of_n_gold": 0.70, "best_of_n_peaks_before_n": True}, curve)
    assert fall.endswith("below the peak's 95% interval [0.840, 1.030]: beyond noise: overoptimization.")
    flat = best_of_n_finding("mean", row | {"best_of_n_peaks_before_n": False}, curve)
    assert flat == "Best-of-n picked by mean's reward does not peak up to n = 64 (0.930)."
    unbanded = best_of_n_finding("mean", row | {"best_of_n_peaks_before_n": True}, [])
    assert unbanded.endswith("falls to 0.930 at n = 64.")
