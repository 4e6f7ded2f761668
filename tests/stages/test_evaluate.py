import csv
import json
import math

import pytest

from robust_rlhf.atomic import read_jsonl
from tests.conftest import tiny_params


def test_evaluate_writes_one_table_row_per_method(pipeline_run):
    config = tiny_params()
    for method, spec in config["methods"].items():
        row = json.loads((pipeline_run["table"] / f"{method}.json").read_text())
        assert (row["reward_model"], row["aggregation"]) == (spec["reward_model"], spec["aggregation"])
        assert row["steps"] == config["ppo"]["steps"]
        assert all(math.isfinite(row[key]) for key in ("gold", "gold_gain", "proxy", "kl_k2", "sqrt_kl", "win_rate",
                                                       "best_of_n_gold", "gold_standard_error"))
        assert 0.0 <= row["win_rate"] <= 1.0 and row["seeds"] == 1 and row["gold_seed_std"] == 0.0
        assert row["best_of_n"] == config["evaluate"]["best_of_n"]
        for kind in ("brme", "ensemble"):  # off-distribution disagreement on this method's final samples
            ratio = row[f"{kind}_disagreement_ratio"]
            assert 0 < ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"]
        assert row["sqrt_kl"] == round(math.sqrt(row["kl_k2"]), 6) or abs(row["sqrt_kl"] ** 2 - row["kl_k2"]) < 1e-5
    assert len(list(pipeline_run["table"].iterdir())) == len(config["methods"])


def test_initial_policy_has_zero_kl_and_every_methods_proxy(pipeline_run):
    initial = json.loads((pipeline_run["metrics"] / "eval.json").read_text())["initial"]
    assert initial["kl_k1"] == 0.0 and initial["kl_k2"] == 0.0
    assert set(initial["proxy"]) == set(tiny_params()["methods"])


def test_curves_follow_every_checkpoint(pipeline_run):
    config = tiny_params()
    for method in config["methods"]:
        with open(pipeline_run["curves"] / f"{method}-seed0.csv") as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(row["step"]) for row in rows]
        assert steps[0] == 0 and steps[-1] == config["ppo"]["steps"]
        assert float(rows[0]["sqrt_kl"]) == 0.0 and float(rows[0]["win_rate"]) == 0.5
        assert all(float(row["sqrt_kl"]) >= 0.0 for row in rows)
        table_row = json.loads((pipeline_run["table"] / f"{method}.json").read_text())
        assert float(rows[-1]["win_rate"]) == pytest.approx(table_row["win_rate"], abs=1e-6)


def test_best_of_n_curves_start_at_the_initial_policy(pipeline_run):
    config = tiny_params()
    initial = json.loads((pipeline_run["metrics"] / "eval.json").read_text())["initial"]
    for method in config["methods"]:
        with open(pipeline_run["best_of_n"] / f"{method}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["n"]) for row in rows] == list(range(1, config["evaluate"]["best_of_n"] + 1))
        # n = 1 is a plain sample of the initial policy: KL 0, its mean gold (over the first N samples).
        assert float(rows[0]["kl"]) == 0.0
        assert float(rows[0]["gold"]) == pytest.approx(initial["gold"], abs=1e-5)
        # the picker's own proxy can only rise with n
        proxies = [float(row["proxy"]) for row in rows]
        assert all(b >= a - 1e-9 for a, b in zip(proxies, proxies[1:]))
        assert float(rows[-1]["sqrt_kl"]) == pytest.approx(math.sqrt(math.log(len(rows)) - (len(rows) - 1) / len(rows)),
                                                          abs=1e-5)


def test_evaluate_keeps_every_scored_sample(pipeline_run):
    config = tiny_params()
    samples = read_jsonl(pipeline_run["samples"])
    prompts, evaluation = config["prepare"]["num_eval_prompts"], config["evaluate"]
    per_policy = prompts * evaluation["samples_per_prompt"]
    initial = prompts * max(evaluation["samples_per_prompt"], evaluation["best_of_n"])
    checkpoints = config["ppo"]["steps"] // config["ppo"]["checkpoint_every"]
    assert len(samples) == initial + per_policy * len(config["methods"]) * checkpoints
    assert {row["method"] for row in samples} == {"initial", *config["methods"]}
