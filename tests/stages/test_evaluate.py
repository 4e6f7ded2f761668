import csv
import json
import math

import pytest

from robust_rlhf.evaluation.curves import best_of_n_grid
from robust_rlhf.runtime.atomic import read_jsonl
from tests.conftest import tiny_params

INTERVAL = {"value", "ci_low", "ci_high", "p_value", "p_holm"}


def _eval(pipeline_run) -> dict:
    return json.loads((pipeline_run["metrics"] / "eval.json").read_text())


def test_evaluate_writes_one_table_row_per_method(pipeline_run):
    config = tiny_params()
    for method, spec in config["methods"].items():
        row = json.loads((pipeline_run["table"] / f"{method}.json").read_text())
        assert (row["reward_model"], row["aggregation"]) == (spec["reward_model"], spec["aggregation"])
        assert row["steps"] == config["ppo"]["steps"] and row["prompts"] == config["prepare"]["num_eval_prompts"]
        assert all(
            math.isfinite(row[key])
            for key in (
                "gold",
                "gold_gain",
                "proxy",
                "kl",
                "kl_k1",
                "sqrt_kl",
                "win_rate",
                "best_of_n_gold",
                "truncated",
            )
        )
        assert 0.0 <= row["win_rate"] <= 1.0 and row["seeds"] == 1 and row["gold_seed_std"] == 0.0
        assert set(row["gold_gain_interval"]) == INTERVAL and row["gold_gain_interval"]["value"] == row["gold_gain"]
        assert row["best_of_n"] == config["evaluate"]["best_of_n"] and 0 <= row["truncated"] <= 1
        assert set(row["facet_gains"]) == {"sentiment", "repetition"}  # the tiny profile's lexicon gold
        for kind in ("brme", "ensemble"):  # off-distribution disagreement on this method's final samples
            ratio = row[f"{kind}_disagreement_ratio"]
            assert 0 < ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"]
        assert row["kl"] >= 0 and row["sqrt_kl"] == pytest.approx(math.sqrt(row["kl"]), abs=1e-5)
    assert len(list(pipeline_run["table"].iterdir())) == len(config["methods"])


def test_comparisons_are_paired_and_holm_adjusted_per_family(pipeline_run):
    evaluation, methods = _eval(pipeline_run), list(tiny_params()["methods"])
    vs_initial, brme_vs = evaluation["comparisons"]["vs_initial"], evaluation["comparisons"]["brme_vs"]
    assert set(vs_initial) == set(methods) and set(brme_vs) == set(methods) - {"brme"}
    for family in (vs_initial, brme_vs):
        for row in family.values():
            assert set(row) == INTERVAL and row["ci_low"] <= row["value"] <= row["ci_high"]
            assert row["p_value"] <= row["p_holm"] <= 1.0
    assert evaluation["near_identical_objectives"] == [
        "kl_dro (kl_dro, beta 1.0) and uwo (uwo, c 0.5) optimise the same objective to second order"
    ]


def test_initial_policy_has_zero_kl_and_every_methods_proxy(pipeline_run):
    initial = _eval(pipeline_run)["initial"]
    assert initial["kl"] == 0.0 and initial["kl_k1"] == 0.0
    assert set(initial["proxy"]) == set(tiny_params()["methods"])
    assert (
        initial["samples"]
        == tiny_params()["prepare"]["num_eval_prompts"] * tiny_params()["evaluate"]["samples_per_prompt"]
    )


def test_curves_follow_every_checkpoint_on_the_curve_prompts(pipeline_run):
    config = tiny_params()
    for method in config["methods"]:
        with open(pipeline_run["curves"] / f"{method}-seed0.csv") as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(row["step"]) for row in rows]
        assert steps == list(range(0, config["ppo"]["steps"] + 1, config["ppo"]["checkpoint_every"]))
        assert float(rows[0]["sqrt_kl"]) == 0.0
        assert all(float(row["kl"]) >= 0.0 for row in rows)
        assert {"disagreement_brme", "disagreement_ensemble", "gold_sentiment", "gold_repetition"} <= set(rows[0])


def test_best_of_n_curves_start_at_the_initial_policy(pipeline_run):
    config = tiny_params()
    for method in config["methods"]:
        with open(pipeline_run["best_of_n"] / f"{method}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["n"]) for row in rows] == best_of_n_grid(config["evaluate"]["best_of_n"])
        assert float(rows[0]["kl"]) == 0.0
        assert all(float(r["gold_ci_low"]) <= float(r["gold"]) <= float(r["gold_ci_high"]) for r in rows)
        # the picker's own proxy can only rise with n
        proxies = [float(row["proxy"]) for row in rows]
        assert all(b >= a - 1e-9 for a, b in zip(proxies, proxies[1:]))
        n = int(rows[-1]["n"])
        assert float(rows[-1]["sqrt_kl"]) == pytest.approx(math.sqrt(math.log(n) - (n - 1) / n), abs=1e-5)


def test_evaluate_keeps_every_scored_sample(pipeline_run):
    config = tiny_params()
    samples = read_jsonl(pipeline_run["samples"])
    prompts, evaluation = config["prepare"]["num_eval_prompts"], config["evaluate"]
    final = prompts * evaluation["samples_per_prompt"]
    earlier = evaluation["curve_prompts"] * evaluation["samples_per_prompt"]
    checkpoints = config["ppo"]["steps"] // config["ppo"]["checkpoint_every"]
    assert len(samples) == final + len(config["methods"]) * ((checkpoints - 1) * earlier + final)
    assert {row["method"] for row in samples} == {"initial", *config["methods"]}
