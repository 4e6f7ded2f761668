"""DVC stage `train_reward`: the BRME reward model (PAPER.md §2), trained in two stages under DeepSpeed,
and the independent reward-model ensemble of the Coste et al. baselines.

Reads the preference splits from --data and, when `models.reward_backbone` is `policy`, the initial
policy from --policy. Writes the BRME to --reward, the ensemble to --ensemble, val metrics of every
reward model to --metrics and reliability diagrams (one CSV per reward model) to --reliability.
"""

from __future__ import annotations

from pathlib import Path

from robust_rlhf.atomic import atomic_directory, atomic_write_json, read_jsonl
from robust_rlhf.config import Params, Stage1Params
from robust_rlhf.distributed import deepspeed_config, full_state_dict, init_distributed, initialize_engine
from robust_rlhf.metrics import write_csv
from robust_rlhf.models import load_backbone, load_tokenizer
from robust_rlhf.reward_model import (BRMERewardModel, RewardModelConfig, resolve_pooling, save_reward_model)
from robust_rlhf.reward_scoring import ENSEMBLE_MANIFEST, RewardModels
from robust_rlhf.reward_training import (bootstrap_weights, evaluate_reward_models, pooled_and_targets,
                                         train_stage1, train_stage2_frozen, train_stage2_unfrozen)
from robust_rlhf.stage_cli import stage_main

# Ensemble member i is seeded with seed + ENSEMBLE_SEED_OFFSET + i: members differ only by seed.
ENSEMBLE_SEED_OFFSET = 1000


def run(params: Params, *, data: Path, policy: Path, reward: Path, ensemble: Path, reliability: Path) -> dict:
    config, remote = params.train_reward, params.models.trust_remote_code
    world_size = init_distributed()
    train_pairs, val_pairs = read_jsonl(data / "prefs_train.jsonl"), read_jsonl(data / "prefs_val.jsonl")
    source = policy if params.models.reward_backbone == "policy" else params.models.reward_backbone
    tokenizer = load_tokenizer(source, trust_remote_code=remote, padding_side="right")
    new_backbone = lambda: load_backbone(source, trust_remote_code=remote)  # noqa: E731
    pooling = resolve_pooling(config.pooling, new_backbone().config)
    rm_config = lambda num_heads: RewardModelConfig(  # noqa: E731
        num_heads=num_heads, sigma_min=config.sigma_min, pooling=pooling, max_length=config.max_length)
    engine_config = lambda stage: deepspeed_config(  # noqa: E731
        deepspeed=params.deepspeed, micro_batch_size=stage.micro_batch_size, world_size=world_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps, learning_rate=stage.learning_rate,
        weight_decay=stage.weight_decay)

    def train_bradley_terry(model: BRMERewardModel, seed: int, stage1: Stage1Params):
        """Stage 1 (and an ensemble member): backbone + scalar head on the BT loss."""
        model.heads.requires_grad_(False)
        engine = initialize_engine(model, engine_config(stage1))
        losses = train_stage1(engine, train_pairs, tokenizer, epochs=stage1.epochs, seed=seed,
                              micro_batch_size=stage1.micro_batch_size, max_length=config.max_length)
        return engine, losses

    # BRME stage 1: backbone + scalar head, Bradley-Terry.
    new_brme = lambda backbone: BRMERewardModel(  # noqa: E731  same seed -> same head init every time
        backbone, rm_config(config.num_heads), head_init_std=config.head_init_std, seed=params.seed)
    engine1, stage1_losses = train_bradley_terry(new_brme(new_backbone()), params.seed, config.stage1)
    stage1_state = full_state_dict(engine1)
    engine1.eval()
    features = pooled_and_targets(engine1.module, train_pairs, tokenizer, batch_size=config.stage1.micro_batch_size,
                                  max_length=config.max_length)

    # BRME stage 2: the k Gaussian heads, each on its own bootstrap resample. Fresh modules, not the
    # stage-1 engine's, which ZeRO-3 may have partitioned.
    stage2 = config.stage2
    weights = bootstrap_weights(len(train_pairs), config.num_heads, seed=params.seed, enabled=stage2.bootstrap)
    common = dict(loss_name=stage2.loss, epochs=stage2.epochs, micro_batch_size=stage2.micro_batch_size,
                  num_noise_samples=stage2.num_noise_samples, seed=params.seed)
    if stage2.freeze_backbone:
        engine2 = initialize_engine(new_brme(new_backbone()).heads, engine_config(stage2))
        stage2_losses = train_stage2_frozen(engine2, features, weights, **common)
        brme_state = {**stage1_state, **{f"heads.{k}": v for k, v in full_state_dict(engine2).items()}}
    else:
        model2 = new_brme(new_backbone())
        model2.load_state_dict(stage1_state)
        model2.bt_head.requires_grad_(False)
        engine2 = initialize_engine(model2, engine_config(stage2))
        stage2_losses = train_stage2_unfrozen(engine2, train_pairs, tokenizer, features, weights,
                                              max_length=config.max_length, **common)
        brme_state = full_state_dict(engine2)
    brme = _loaded(new_brme(new_backbone()), brme_state)

    # The independent ensemble: Bradley-Terry reward models with no Gaussian heads, seeds apart.
    members, member_losses = [], []
    for index in range(config.ensemble_size):
        seed = params.seed + ENSEMBLE_SEED_OFFSET + index
        member = BRMERewardModel(new_backbone(), rm_config(0), head_init_std=config.head_init_std, seed=seed)
        member_engine, losses = train_bradley_terry(member, seed, config.stage1)
        members.append(_loaded(BRMERewardModel(new_backbone(), rm_config(0)), full_state_dict(member_engine)))
        member_losses.append(losses[-1])

    with atomic_directory(reward) as reward_tmp:
        save_reward_model(brme, tokenizer, reward_tmp, brme_state)
    with atomic_directory(ensemble) as ensemble_tmp:
        names = [f"member_{index}" for index in range(len(members))]
        for name, member in zip(names, members):
            save_reward_model(member, tokenizer, ensemble_tmp / name, member.state_dict())
        atomic_write_json(ensemble_tmp / ENSEMBLE_MANIFEST, {"members": names})

    val_report, reliability_rows = evaluate_reward_models(RewardModels(brme, tokenizer, members), val_pairs,
                                                          batch_size=config.stage1.micro_batch_size)
    with atomic_directory(reliability) as reliability_tmp:
        for kind in dict.fromkeys(row["reward_model"] for row in reliability_rows):
            write_csv(reliability_tmp / f"{kind}.csv", [r for r in reliability_rows if r["reward_model"] == kind])
    return {
        "val": val_report,
        "train": {"pairs": len(train_pairs), "stage1_final_loss": stage1_losses[-1],
                  "stage2_final_loss": stage2_losses[-1], "stage2_loss": stage2.loss,
                  **({"ensemble_final_loss_mean": sum(member_losses) / len(member_losses)} if member_losses else {})},
    }


def _loaded(model: BRMERewardModel, state: dict) -> BRMERewardModel:
    model.load_state_dict(state)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    stage_main("train_reward", run, ["data", "policy", "reward", "ensemble", "reliability"], argv)


if __name__ == "__main__":
    main()
