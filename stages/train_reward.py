"""DVC stage `train_reward`: the BRME reward model (PAPER.md §2), trained in two stages under DeepSpeed.

Reads the preference splits from --data and, when `models.reward_backbone` is `policy`, the initial
policy from --policy; writes the reward model to --reward and val metrics to --metrics.
"""

from __future__ import annotations

from pathlib import Path

from robust_rlhf.atomic import atomic_directory, read_jsonl
from robust_rlhf.config import Params
from robust_rlhf.distributed import deepspeed_config, full_state_dict, init_distributed, initialize_engine
from robust_rlhf.models import load_backbone, load_tokenizer
from robust_rlhf.reward_model import (BRMERewardModel, GaussianHeads, RewardModelConfig, resolve_pooling,
                                      save_reward_model)
from robust_rlhf.reward_training import (bootstrap_weights, evaluate_on_pairs, pooled_and_targets,
                                         train_stage1, train_stage2_frozen, train_stage2_unfrozen)
from robust_rlhf.stage_cli import stage_main


def run(params: Params, *, data: Path, policy: Path, reward: Path) -> dict:
    config, remote = params.train_reward, params.models.trust_remote_code
    world_size = init_distributed()
    train_pairs, val_pairs = read_jsonl(data / "prefs_train.jsonl"), read_jsonl(data / "prefs_val.jsonl")
    source = policy if params.models.reward_backbone == "policy" else params.models.reward_backbone
    tokenizer = load_tokenizer(source, trust_remote_code=remote, padding_side="right")
    backbone = load_backbone(source, trust_remote_code=remote)
    rm_config = RewardModelConfig(num_heads=config.num_heads, sigma_min=config.sigma_min,
                                  pooling=resolve_pooling(config.pooling, backbone.config), max_length=config.max_length)
    new_model = lambda backbone_module: BRMERewardModel(  # noqa: E731  same seeds -> same head inits
        backbone_module, rm_config, head_init_std=config.head_init_std, seed=params.seed)

    # Stage 1: backbone + scalar head, Bradley-Terry.
    model = new_model(backbone)
    model.heads.requires_grad_(False)
    stage1 = config.stage1
    engine1 = initialize_engine(model, deepspeed_config(
        deepspeed=params.deepspeed, micro_batch_size=stage1.micro_batch_size, world_size=world_size,
        gradient_accumulation_steps=stage1.gradient_accumulation_steps, learning_rate=stage1.learning_rate,
        weight_decay=stage1.weight_decay))
    stage1_losses = train_stage1(engine1, train_pairs, tokenizer, epochs=stage1.epochs, seed=params.seed,
                                 micro_batch_size=stage1.micro_batch_size, max_length=config.max_length)
    stage1_state = full_state_dict(engine1)
    engine1.eval()
    features = pooled_and_targets(engine1.module, train_pairs, tokenizer, batch_size=stage1.micro_batch_size,
                                  max_length=config.max_length)

    # Stage 2: the k Gaussian heads, each on its own bootstrap resample.
    stage2 = config.stage2
    weights = bootstrap_weights(len(train_pairs), config.num_heads, seed=params.seed, enabled=stage2.bootstrap)
    stage2_config = deepspeed_config(
        deepspeed=params.deepspeed, micro_batch_size=stage2.micro_batch_size, world_size=world_size,
        gradient_accumulation_steps=stage2.gradient_accumulation_steps, learning_rate=stage2.learning_rate,
        weight_decay=stage2.weight_decay)
    common = dict(loss_name=stage2.loss, epochs=stage2.epochs, micro_batch_size=stage2.micro_batch_size,
                  num_noise_samples=stage2.num_noise_samples, seed=params.seed)
    if stage2.freeze_backbone:
        # A fresh heads module (not the stage-1 engine's, which ZeRO-3 may have partitioned).
        heads = new_model(_fresh_backbone(backbone)).heads
        engine2 = initialize_engine(heads, stage2_config)
        stage2_losses = train_stage2_frozen(engine2, features, weights, **common)
        final_state = {**stage1_state, **{f"heads.{k}": v for k, v in full_state_dict(engine2).items()}}
    else:
        model2 = new_model(_fresh_backbone(backbone))
        model2.load_state_dict(stage1_state)
        model2.bt_head.requires_grad_(False)
        engine2 = initialize_engine(model2, stage2_config)
        stage2_losses = train_stage2_unfrozen(engine2, train_pairs, tokenizer, features, weights,
                                              max_length=config.max_length, **common)
        final_state = full_state_dict(engine2)

    final_model = new_model(_fresh_backbone(backbone))
    final_model.load_state_dict(final_state)
    final_model.eval()
    with atomic_directory(reward) as reward_tmp:
        save_reward_model(final_model, tokenizer, reward_tmp, final_state)
    return {
        "val": evaluate_on_pairs(final_model, val_pairs, tokenizer, batch_size=stage1.micro_batch_size,
                                 max_length=config.max_length),
        "train": {"stage1_final_loss": stage1_losses[-1], "stage2_final_loss": stage2_losses[-1],
                  "stage2_loss": stage2.loss, "pairs": len(train_pairs)},
    }


def _fresh_backbone(backbone):
    """An unpartitioned copy of the backbone's architecture (weights come from a state dict)."""
    from transformers import AutoModel

    return AutoModel.from_config(backbone.config)


def main(argv: list[str] | None = None) -> None:
    stage_main("train_reward", run, ["data", "policy", "reward"], argv)


if __name__ == "__main__":
    main()
