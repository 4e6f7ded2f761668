import json
import math

from robust_rlhf.atomic import read_jsonl
from tests.conftest import tiny_params


def test_evaluate_compares_initial_and_final_policy(pipeline_run):
    metrics = json.loads((pipeline_run["metrics"] / "eval.json").read_text())
    for policy in ("initial", "final"):
        assert math.isfinite(metrics[policy]["gold"])
        assert set(metrics[policy]["proxy"]) >= {"brme", "nominal", "min", "mean"}
    # The initial policy is the reference: its sampled log-ratio is exactly 0.
    assert metrics["initial"]["kl_k1"] == 0.0 and metrics["initial"]["kl_k2"] == 0.0
    assert metrics["final"]["kl_k2"] >= 0.0
    assert metrics["gain"]["gold"] == round(metrics["final"]["gold"] - metrics["initial"]["gold"], 6)


def test_evaluate_keeps_every_scored_sample(pipeline_run):
    config = tiny_params()
    samples = read_jsonl(pipeline_run["samples"])
    per_policy = config["prepare"]["num_eval_prompts"] * config["evaluate"]["samples_per_prompt"]
    assert len(samples) == 2 * per_policy
    assert {row["policy"] for row in samples} == {"initial", "final"}
