import json
import math

import pytest
import torch
from safetensors.torch import load_file

from robust_rlhf.atomic import read_jsonl
from robust_rlhf.reward_model import BRMERewardModel, load_reward_model, score_texts
from tests.conftest import run_stage_ok, tiny_params, write_params


def test_train_reward_reports_every_reward_model(pipeline_run):
    metrics = json.loads((pipeline_run["metrics"] / "train_reward.json").read_text())
    config = tiny_params()["train_reward"]
    val = metrics["val"]
    assert set(val["brme"]) == {*(f"head_{i}" for i in range(config["num_heads"])), "ensemble_mean",
                                "head_disagreement", "mean_sigma"}
    assert set(val["ensemble"]) == {*(f"head_{i}" for i in range(config["ensemble_size"])), "ensemble_mean",
                                    "head_disagreement"}
    for report in [val["single"], val["brme"]["ensemble_mean"], val["ensemble"]["head_0"]]:
        assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["ece"] <= 1.0 and report["nll"] > 0.0
    assert val["brme"]["mean_sigma"] > config["sigma_min"]
    assert val["ensemble"]["head_disagreement"] > 0.0  # members differ by seed
    assert math.isfinite(metrics["train"]["stage1_final_loss"]) and math.isfinite(metrics["train"]["stage2_final_loss"])


def test_reliability_diagram_per_reward_model(pipeline_run):
    import csv

    for kind in ("brme", "single", "ensemble"):
        with open(pipeline_run["reliability"] / f"{kind}.csv") as handle:
            rows = list(csv.DictReader(handle))
        # Each val pair enters the symmetrised diagram twice.
        assert sum(int(row["count"]) for row in rows) == 2 * json.loads(
            (pipeline_run["metrics"] / "train_reward.json").read_text())["val"]["pairs"]


def test_ensemble_members_load_and_differ(pipeline_run):
    from robust_rlhf.reward_scoring import load_reward_models

    models = load_reward_models(pipeline_run["reward"], pipeline_run["ensemble"], trust_remote_code=False)
    assert len(models.ensemble) == tiny_params()["train_reward"]["ensemble_size"]
    scores = models.score(["Rate this."] * 2, ["great fun", "awful"], batch_size=2)
    assert scores["ensemble"][0].shape == (2, len(models.ensemble))
    assert not torch.equal(models.ensemble[0].bt_head.weight, models.ensemble[1].bt_head.weight)


def test_saved_reward_model_loads_and_scores_k_heads(pipeline_run):
    model, tokenizer = load_reward_model(pipeline_run["reward"])
    k = tiny_params()["train_reward"]["num_heads"]
    scores = score_texts(model, tokenizer, ["Rate this.", "And this."], ["great fun", "awful"], batch_size=2)
    assert scores["mu"].shape == (2, k) and scores["sigma"].shape == (2, k)
    assert (scores["sigma"] > model.config.sigma_min).all()


def test_training_changed_every_head_and_the_backbone(pipeline_run):
    """Stage 1 trains the backbone; stage 2 trains every head (TRL's 'every parameter changed' habit)."""
    trained, _ = load_reward_model(pipeline_run["reward"])
    initial = BRMERewardModel(trained.backbone.__class__(trained.backbone.config), trained.config,
                              head_init_std=tiny_params()["train_reward"]["head_init_std"], seed=tiny_params()["seed"])
    for name, value in initial.heads.state_dict().items():
        assert not torch.equal(value, trained.heads.state_dict()[name]), f"heads.{name} did not change"
    policy_weights = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    backbone_weights = trained.backbone.state_dict()
    changed = [name for name, value in backbone_weights.items()
               if f"model.{name}" in policy_weights and not torch.equal(value, policy_weights[f"model.{name}"])]
    assert len(changed) >= len(backbone_weights) // 2


@pytest.mark.parametrize("loss, freeze", [("bt_sampled", True), ("gaussian_nll", False)])
def test_train_reward_stage2_variants(pipeline_run, tmp_path, loss, freeze):
    params = write_params(tmp_path / "params.yaml", tiny_params(**{
        "train_reward.stage2.loss": loss, "train_reward.stage2.freeze_backbone": freeze,
        "train_reward.stage2.epochs": 1, "train_reward.stage1.epochs": 1, "train_reward.ensemble_size": 0,
        "methods": {"brme": {"reward_model": "brme", "aggregation": "brme"}}}))
    run_stage_ok("train_reward", params, data=pipeline_run["data"], policy=pipeline_run["policy_init"],
                 reward=tmp_path / "reward", ensemble=tmp_path / "ensemble", reliability=tmp_path / "reliability",
                 metrics=tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train"]["stage2_loss"] == loss
    assert math.isfinite(metrics["train"]["stage2_final_loss"])
    model, tokenizer = load_reward_model(tmp_path / "reward")
    rows = read_jsonl(pipeline_run["data"] / "prefs_val.jsonl")[:3]
    scores = score_texts(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], batch_size=3)
    assert torch.isfinite(scores["mu"]).all()


def test_zero_stage_2_trains_the_same_reward_model_as_zero_0(pipeline_run, tmp_path):
    """ZeRO partitions optimizer state and gradients; in one process it must not change the result."""
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"deepspeed.zero_stage": 2}))
    run_stage_ok("train_reward", params, data=pipeline_run["data"], policy=pipeline_run["policy_init"],
                 reward=tmp_path / "reward", ensemble=tmp_path / "ensemble", reliability=tmp_path / "reliability",
                 metrics=tmp_path / "metrics.json")
    zero2 = json.loads((tmp_path / "metrics.json").read_text())
    zero0 = json.loads((pipeline_run["metrics"] / "train_reward.json").read_text())
    assert zero2["train"]["stage1_final_loss"] == pytest.approx(zero0["train"]["stage1_final_loss"], abs=1e-4)
    assert zero2["train"]["stage2_final_loss"] == pytest.approx(zero0["train"]["stage2_final_loss"], abs=1e-4)
    assert zero2["val"]["brme"]["ensemble_mean"]["accuracy"] == zero0["val"]["brme"]["ensemble_mean"]["accuracy"]


def test_zero_3_bf16_with_trainable_backbone_runs(pipeline_run, tmp_path):
    """The GPU profile's code path (ZeRO-3 partitioned weights, bf16) on DeepSpeed's CPU accelerator."""
    params = write_params(tmp_path / "params.yaml", tiny_params(**{
        "deepspeed.zero_stage": 3, "deepspeed.precision": "bf16", "train_reward.stage2.freeze_backbone": False,
        "train_reward.stage1.epochs": 1, "train_reward.stage2.epochs": 1, "train_reward.ensemble_size": 2}))
    run_stage_ok("train_reward", params, data=pipeline_run["data"], policy=pipeline_run["policy_init"],
                 reward=tmp_path / "reward", ensemble=tmp_path / "ensemble", reliability=tmp_path / "reliability",
                 metrics=tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["train"]["stage2_final_loss"])
    model, _ = load_reward_model(tmp_path / "reward")
    assert all(torch.isfinite(p).all() for p in model.parameters())
