import json
import math

import pytest
import torch
from safetensors.torch import load_file

from robust_rlhf.reward.model import load_reward_model, score_texts
from robust_rlhf.reward.scoring import load_reward_models
from robust_rlhf.runtime.atomic import read_jsonl
from tests.conftest import run_stage_ok, tiny_params, write_params

INTERVAL_KEYS = {"value", "ci_low", "ci_high"}


def _train_reward(pipeline_run, tmp_path, **overrides) -> dict:
    params = write_params(tmp_path / "params.yaml", tiny_params(**overrides))
    run_stage_ok(
        "train_reward",
        params,
        data=pipeline_run["data"],
        policy=pipeline_run["policy_init"],
        reward=tmp_path / "reward",
        ensemble=tmp_path / "ensemble",
        reliability=tmp_path / "reliability",
        metrics=tmp_path / "metrics.json",
        resume=tmp_path / ".reward.resume",
    )
    return json.loads((tmp_path / "metrics.json").read_text())


def _val_scores(reward, ensemble, pipeline_run, rows: int = 6) -> dict:
    models = load_reward_models(
        reward, ensemble, trust_remote_code=False, attn_implementation="sdpa", dtype=torch.float32
    )
    pairs = read_jsonl(pipeline_run["data"] / "prefs_val.jsonl")[:rows]
    return models.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], batch_size=rows)


def test_train_reward_reports_every_reward_model_with_intervals_on_val_and_test(pipeline_run):
    metrics = json.loads((pipeline_run["metrics"] / "train_reward.json").read_text())
    config = tiny_params()["train_reward"]
    for split in ("val", "test"):
        figures = metrics[split]
        assert figures["pairs"] == len(read_jsonl(pipeline_run["data"] / f"prefs_{split}.jsonl"))
        assert set(figures["brme"]["heads"]) == {f"head_{i}" for i in range(config["num_heads"])}
        assert set(figures["brme"]["aggregates"]) == {"mean", "min", "nominal"}
        assert set(figures["ensemble"]["heads"]) == {f"head_{i}" for i in range(config["ensemble_size"])}
        assert set(figures["ensemble"]["aggregates"]) == {"mean", "min"}
        for row in [figures["single"], figures["brme"]["heads"]["head_0"], figures["ensemble"]["aggregates"]["min"]]:
            for key in ("accuracy", "nll"):
                assert set(row[key]) == INTERVAL_KEYS
                assert row[key]["ci_low"] <= row[key]["value"] <= row[key]["ci_high"]
        brme = figures["brme"]
        assert sum(brme["nominal_share"]) == pytest.approx(1.0) and len(brme["nominal_share"]) == config["num_heads"]
        assert sum(brme["min_share"]) == pytest.approx(1.0)
        assert brme["mean_sigma"] > config["sigma_min"]
        assert set(brme["relative_disagreement"]) == INTERVAL_KEYS and brme["relative_disagreement"]["value"] > 0
        assert "auroc_sigma_misranked" in brme and "auroc_sigma_misranked" not in figures["ensemble"]
    assert set(metrics["shift"]) == {"responses", "brme", "ensemble"}
    assert metrics["shift"]["responses"] == len(read_jsonl(pipeline_run["data"] / "shift_responses.jsonl"))
    assert metrics["train"]["ensemble_layout"] == "heads" and metrics["train"]["stage2_loss"] == "thurstone"
    assert math.isfinite(metrics["train"]["stage1_final_loss"]) and math.isfinite(metrics["train"]["stage2_final_loss"])


def test_reliability_diagram_per_reward_model(pipeline_run):
    import csv

    for kind in ("brme", "single", "ensemble"):
        with open(pipeline_run["reliability"] / f"{kind}.csv") as handle:
            rows = list(csv.DictReader(handle))
        # Each val pair enters the symmetrised diagram twice.
        assert (
            sum(int(row["count"]) for row in rows)
            == 2 * json.loads((pipeline_run["metrics"] / "train_reward.json").read_text())["val"]["pairs"]
        )


def test_ensemble_members_are_heads_on_the_stage1_backbone_and_differ(pipeline_run):
    models = load_reward_models(
        pipeline_run["reward"],
        pipeline_run["ensemble"],
        trust_remote_code=False,
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    members = tiny_params()["train_reward"]["ensemble_size"]
    assert models.ensemble == [] and models.brme.member_head.weight.shape[0] == members
    scores = models.score(["Rate this."] * 2, ["great fun", "awful"], batch_size=2)
    assert scores["ensemble"][0].shape == (2, members)
    weights = models.brme.member_head.weight
    assert all(not torch.equal(weights[0], weights[i]) for i in range(1, members))


def test_members_are_standardised_and_brme_heads_centred_on_the_training_responses(pipeline_run):
    models = load_reward_models(
        pipeline_run["reward"],
        pipeline_run["ensemble"],
        trust_remote_code=False,
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    pairs = read_jsonl(pipeline_run["data"] / "prefs_train.jsonl")
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    scores = models.score([p["prompt"] for p in pairs] * 2, responses, batch_size=32)
    members = scores["ensemble"][0]
    assert members.mean(dim=0).abs().max() < 1e-4
    assert (members.std(dim=0, unbiased=False) - 1).abs().max() < 1e-4
    assert scores["brme"][0].mean(dim=0).abs().max() < 1e-4
    metrics = json.loads((pipeline_run["metrics"] / "train_reward.json").read_text())
    assert len(metrics["centering"]["ensemble"]["offsets"]) == tiny_params()["train_reward"]["ensemble_size"]


def test_saved_reward_model_loads_and_scores_k_heads(pipeline_run):
    model, tokenizer = load_reward_model(pipeline_run["reward"], attn_implementation="sdpa", dtype=torch.float32)
    k = tiny_params()["train_reward"]["num_heads"]
    scores = score_texts(model, tokenizer, ["Rate this.", "And this."], ["great fun", "awful"], batch_size=2)
    assert scores["mu"].shape == (2, k) and scores["sigma"].shape == (2, k)
    assert (scores["sigma"] > model.config.sigma_min).all()


def test_frozen_backbone_stays_the_initial_policys(pipeline_run):
    """With `finetune_backbone: false` the backbone is the initial policy's, bit for bit (that every
    head trained is tests/reward/test_brme_uncertainty.py's)."""
    trained, _ = load_reward_model(pipeline_run["reward"], attn_implementation="sdpa", dtype=torch.float32)
    policy_weights = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    backbone_weights = trained.backbone.state_dict()
    compared = [name for name in backbone_weights if f"model.{name}" in policy_weights]
    assert len(compared) >= len(backbone_weights) // 2
    assert all(torch.equal(backbone_weights[name], policy_weights[f"model.{name}"]) for name in compared)


def test_finetuned_backbone_changes_and_members_are_models(pipeline_run, tmp_path):
    metrics = _train_reward(
        pipeline_run,
        tmp_path,
        **{
            "train_reward.finetune_backbone": True,
            "train_reward.stage1.learning_rate": 1e-3,
            "train_reward.stage1.epochs": 1,
            "train_reward.stage2.epochs": 1,
            "train_reward.ensemble_size": 2,
        },
    )
    assert metrics["train"]["ensemble_layout"] == "models"
    trained, _ = load_reward_model(tmp_path / "reward", attn_implementation="sdpa", dtype=torch.float32)
    policy_weights = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    backbone_weights = trained.backbone.state_dict()
    changed = [
        name
        for name, value in backbone_weights.items()
        if f"model.{name}" in policy_weights and not torch.equal(value, policy_weights[f"model.{name}"])
    ]
    assert len(changed) >= len(backbone_weights) // 2
    models = load_reward_models(
        tmp_path / "reward",
        tmp_path / "ensemble",
        trust_remote_code=False,
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    assert len(models.ensemble) == 2 and models.brme.member_head is None
    pairs = read_jsonl(pipeline_run["data"] / "prefs_train.jsonl")
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    members = models.score([p["prompt"] for p in pairs] * 2, responses, batch_size=32)["ensemble"][0]
    assert members.mean(dim=0).abs().max() < 1e-4  # centred member by member, on each one's own features


@pytest.mark.parametrize("loss", ["bt_sampled", "gaussian_nll"])
def test_train_reward_stage2_losses(pipeline_run, tmp_path, loss):
    metrics = _train_reward(
        pipeline_run,
        tmp_path,
        **{
            "train_reward.stage2.loss": loss,
            "train_reward.stage2.epochs": 1,
            "train_reward.ensemble_size": 0,
            "methods": {"brme": {"reward_model": "brme", "aggregation": "brme"}},
        },
    )
    assert metrics["train"]["stage2_loss"] == loss
    assert math.isfinite(metrics["train"]["stage2_final_loss"])
    scores = _val_scores(tmp_path / "reward", tmp_path / "ensemble", pipeline_run)
    assert torch.isfinite(scores["brme"][0]).all() and "ensemble" not in scores


def test_single_is_the_stage1_model_whatever_freeze_backbone_says(pipeline_run, tmp_path):
    """Unfreezing stage 2 retrains the BRME's backbone; `single` must still be stage 1's model, so its
    scores are bit-identical to the frozen run's (and so are the ensemble's, heads on that backbone)."""
    _train_reward(pipeline_run, tmp_path, **{"train_reward.stage2.freeze_backbone": False})
    unfrozen = _val_scores(tmp_path / "reward", tmp_path / "ensemble", pipeline_run)
    frozen = _val_scores(pipeline_run["reward"], pipeline_run["ensemble"], pipeline_run)
    assert torch.equal(unfrozen["single"][0], frozen["single"][0])
    assert torch.equal(unfrozen["ensemble"][0], frozen["ensemble"][0])
    assert not torch.equal(unfrozen["brme"][0], frozen["brme"][0])  # the BRME itself did change
    assert (tmp_path / "reward" / "stage1" / "heads.safetensors").exists()


def test_reward_seed_changes_the_heads_not_the_data(pipeline_run, tmp_path):
    _train_reward(pipeline_run, tmp_path, **{"train_reward.seed": 1})
    other = _val_scores(tmp_path / "reward", tmp_path / "ensemble", pipeline_run)
    base = _val_scores(pipeline_run["reward"], pipeline_run["ensemble"], pipeline_run)
    assert not torch.equal(other["brme"][0], base["brme"][0])
    assert not torch.equal(other["ensemble"][0], base["ensemble"][0])


def test_zero_stage_2_trains_the_same_reward_model_as_zero_0(pipeline_run, tmp_path):
    """ZeRO partitions optimizer state and gradients; in one process it must not change the result."""
    zero2 = _train_reward(pipeline_run, tmp_path, **{"deepspeed.zero_stage": 2})
    zero0 = json.loads((pipeline_run["metrics"] / "train_reward.json").read_text())
    assert zero2["train"]["stage1_final_loss"] == pytest.approx(zero0["train"]["stage1_final_loss"], abs=1e-4)
    assert zero2["train"]["stage2_final_loss"] == pytest.approx(zero0["train"]["stage2_final_loss"], abs=1e-4)
    assert (
        zero2["val"]["brme"]["aggregates"]["mean"]["accuracy"] == zero0["val"]["brme"]["aggregates"]["mean"]["accuracy"]
    )


def test_zero_3_bf16_with_trainable_backbone_runs(pipeline_run, tmp_path):
    """The GPU profile's code path (ZeRO-3 partitioned weights, bf16) on DeepSpeed's CPU accelerator."""
    metrics = _train_reward(
        pipeline_run,
        tmp_path,
        **{
            "deepspeed.zero_stage": 3,
            "deepspeed.precision": "bf16",
            "train_reward.finetune_backbone": True,
            "train_reward.stage1.learning_rate": 1e-3,
            "train_reward.stage2.freeze_backbone": False,
            "train_reward.stage1.epochs": 1,
            "train_reward.stage2.epochs": 1,
            "train_reward.ensemble_size": 2,
        },
    )
    assert math.isfinite(metrics["train"]["stage2_final_loss"])
    model, _ = load_reward_model(tmp_path / "reward", attn_implementation="sdpa", dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finetuned_backbone_with_lora_saves_a_merged_backbone_that_changed(pipeline_run, tmp_path):
    """`train_reward.lora`: the backbones train adapters and are saved merged, so every reader loads a
    plain transformers backbone whose weights moved from the initial policy's."""
    metrics = _train_reward(
        pipeline_run,
        tmp_path,
        **{
            "train_reward.finetune_backbone": True,
            "train_reward.lora.enabled": True,
            "train_reward.stage1.learning_rate": 1e-3,
            "train_reward.stage1.epochs": 1,
            "train_reward.stage2.freeze_backbone": False,
            "train_reward.stage2.epochs": 1,
            "train_reward.ensemble_size": 2,
        },
    )
    assert math.isfinite(metrics["train"]["stage2_final_loss"])
    trained, _ = load_reward_model(tmp_path / "reward", attn_implementation="sdpa", dtype=torch.float32)
    policy_weights = load_file(str(pipeline_run["policy_init"] / "model.safetensors"))
    backbone_weights = trained.backbone.state_dict()
    assert not any("lora" in name for name in backbone_weights)
    changed = [
        name
        for name, value in backbone_weights.items()
        if f"model.{name}" in policy_weights and not torch.equal(value, policy_weights[f"model.{name}"])
    ]
    # all-linear: the attention and MLP projections moved; embeddings and norms are not adapted
    assert any("q_proj" in name for name in changed) and not any("norm" in name for name in changed)
    models = load_reward_models(
        tmp_path / "reward",
        tmp_path / "ensemble",
        trust_remote_code=False,
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    assert len(models.ensemble) == 2
    scores = _val_scores(tmp_path / "reward", tmp_path / "ensemble", pipeline_run)
    assert all(torch.isfinite(mu).all() for mu, _ in scores.values())
