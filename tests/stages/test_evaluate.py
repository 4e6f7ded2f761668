import csv
import json
import math

from robust_rlhf.atomic import read_jsonl
from tests.conftest import tiny_params


def test_evaluate_writes_one_table_row_per_method(pipeline_run):
    config = tiny_params()
    for method, spec in config["methods"].items():
        row = json.loads((pipeline_run["table"] / f"{method}.json").read_text())
        assert (row["reward_model"], row["aggregation"]) == (spec["reward_model"], spec["aggregation"])
        assert row["steps"] == config["ppo"]["steps"]
        assert all(math.isfinite(row[key]) for key in ("gold", "gold_gain", "proxy", "kl_k2", "sqrt_kl"))
        assert row["sqrt_kl"] == round(math.sqrt(row["kl_k2"]), 6) or abs(row["sqrt_kl"] ** 2 - row["kl_k2"]) < 1e-5
    assert len(list(pipeline_run["table"].iterdir())) == len(config["methods"])


def test_initial_policy_has_zero_kl_and_every_methods_proxy(pipeline_run):
    initial = json.loads((pipeline_run["metrics"] / "eval.json").read_text())["initial"]
    assert initial["kl_k1"] == 0.0 and initial["kl_k2"] == 0.0
    assert set(initial["proxy"]) == set(tiny_params()["methods"])


def test_curves_follow_every_checkpoint(pipeline_run):
    config = tiny_params()
    for method in config["methods"]:
        with open(pipeline_run["curves"] / f"{method}.csv") as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(row["step"]) for row in rows]
        assert steps[0] == 0 and steps[-1] == config["ppo"]["steps"]
        assert float(rows[0]["sqrt_kl"]) == 0.0
        assert all(float(row["sqrt_kl"]) >= 0.0 for row in rows)


def test_evaluate_keeps_every_scored_sample(pipeline_run):
    config = tiny_params()
    samples = read_jsonl(pipeline_run["samples"])
    per_policy = config["prepare"]["num_eval_prompts"] * config["evaluate"]["samples_per_prompt"]
    checkpoints = config["ppo"]["steps"] // config["ppo"]["checkpoint_every"]
    assert len(samples) == per_policy * (1 + len(config["methods"]) * checkpoints)
    assert {row["method"] for row in samples} == {"initial", *config["methods"]}
