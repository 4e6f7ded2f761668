import csv
import json
import math

import torch
from safetensors.torch import load_file

from tests.conftest import tiny_params

REQUIRED_COLUMNS = {"step", "reward/brme", "reward/nominal", "reward/min", "reward/mean", "objective/kl",
                    "policy/entropy", "loss/policy", "loss/value", "policy/clipfrac"}


def test_ppo_logs_every_step_with_finite_values(pipeline_run):
    with open(pipeline_run["steps"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == tiny_params()["ppo"]["steps"]
    assert REQUIRED_COLUMNS <= set(rows[0])
    assert [int(row["step"]) for row in rows] == list(range(len(rows)))
    for row in rows:
        assert all(math.isfinite(float(value)) for value in row.values())
    # PPO starts from the reference: the first rollout has exactly zero KL.
    assert float(rows[0]["objective/kl"]) == 0.0


def test_ppo_reports_the_optimised_reward(pipeline_run):
    metrics = json.loads((pipeline_run["metrics"] / "ppo.json").read_text())
    assert metrics["method"] == "brme" and metrics["steps"] == tiny_params()["ppo"]["steps"]
    assert metrics["final"]["reward/optimised"] == metrics["final"]["reward/brme"]


def test_ppo_changed_the_policy(pipeline_run):
    initial = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    final = load_file(str(pipeline_run["policy"] / "model.safetensors"))
    assert initial.keys() <= final.keys()  # a tied lm_head may be written out explicitly
    unchanged = [name for name in initial if torch.equal(initial[name], final[name])]
    assert not unchanged, f"parameters PPO did not update: {unchanged}"
