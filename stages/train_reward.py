"""DVC stage `train_reward`: the BRME reward model (PAPER.md §2), trained in two stages under DeepSpeed,
and the independent reward-model ensemble of the Coste et al. baselines.

Reads the preference splits from --data and, when `models.reward_backbone` is `policy`, the initial
policy from --policy. Writes the BRME to --reward, the ensemble to --ensemble, val metrics of every
reward model to --metrics and reliability diagrams (one CSV per reward model) to --reliability.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable

from robust_rlhf.atomic import atomic_directory, atomic_write_json, read_jsonl
from robust_rlhf.config import Params, Stage1Params, Stage2Params
from robust_rlhf.distributed import deepspeed_config, full_state_dict, init_distributed, initialize_engine
from robust_rlhf.metrics import write_csv
from robust_rlhf.models import load_backbone, load_tokenizer
from robust_rlhf.resume import PhasedResume, resume_folder
from robust_rlhf.reward_model import (BRMERewardModel, RewardModelConfig, resolve_pooling, save_reward_model)
from robust_rlhf.reward_scoring import ENSEMBLE_MANIFEST, RewardModels
from robust_rlhf.reward_training import (PhaseProgress, bootstrap_weights, checkpoint_due, evaluate_reward_models,
                                         pooled_and_targets, train_stage1, train_stage2_frozen,
                                         train_stage2_unfrozen)
from robust_rlhf.stage_cli import stage_main

logger = logging.getLogger(__name__)

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
    new_brme = lambda backbone: BRMERewardModel(  # noqa: E731  same seed -> same head init every time
        backbone, rm_config(config.num_heads), head_init_std=config.head_init_std, seed=params.seed)
    member_names = [f"member_{index}" for index in range(config.ensemble_size)]

    # A run killed after a checkpoint goes on from it: finished phases' results, the interrupted
    # phase's engine (model, optimizer, scheduler), its data position and the RNGs.
    resume = PhasedResume(resume_folder(reward), resume_params(params, world_size=world_size,
                                                               train_pairs=data / "prefs_train.jsonl"),
                          ["stage1", "stage2", *member_names])
    if resume.saved is not None:
        logger.info("resuming train_reward from step %d: phase %s at %s (%s)", resume.saved["step"], resume.phase,
                    _position_text(resume.position), resume.folder)

    def train_phase(phase: str, stage: Stage1Params | Stage2Params, new_model: Callable, train: Callable):
        """Train `phase`'s model on a fresh engine, going on from its checkpoint when it has one, and
        checkpoint every `checkpoint_every` optimizer steps. Returns (engine, losses)."""
        resume.start(phase)
        engine = initialize_engine(new_model(), deepspeed_config(
            deepspeed=params.deepspeed, micro_batch_size=stage.micro_batch_size, world_size=world_size,
            gradient_accumulation_steps=stage.gradient_accumulation_steps, learning_rate=stage.learning_rate,
            weight_decay=stage.weight_decay))
        progress = PhaseProgress(**(resume.restore(phase, engine) or {}))

        def on_step(reached: PhaseProgress) -> None:
            if checkpoint_due(len(reached.losses), gradient_accumulation_steps=stage.gradient_accumulation_steps,
                              checkpoint_every=config.checkpoint_every):
                resume.checkpoint(phase, engine, position=asdict(reached), micro_batches=len(reached.losses))

        return engine, train(engine, phase=f"train_reward {phase}", progress=progress, on_step=on_step)

    def bradley_terry(model: BRMERewardModel) -> BRMERewardModel:
        """Stage 1 (and an ensemble member) trains backbone + scalar head only."""
        model.heads.requires_grad_(False)
        return model

    train_bt = partial(train_stage1, pairs=train_pairs, tokenizer=tokenizer, epochs=config.stage1.epochs,
                       micro_batch_size=config.stage1.micro_batch_size, max_length=config.max_length)

    # BRME stage 1: backbone + scalar head, Bradley-Terry; then every pair's pooled features and reward.
    if not resume.finished("stage1"):
        engine1, losses = train_phase("stage1", config.stage1, lambda: bradley_terry(new_brme(new_backbone())),
                                      partial(train_bt, seed=params.seed))
        engine1.eval()
        features = pooled_and_targets(engine1.module, train_pairs, tokenizer,
                                      batch_size=config.stage1.micro_batch_size, max_length=config.max_length)
        resume.finish("stage1", losses, {"stage1": full_state_dict(engine1), "features": features})
    stage1_state, features = resume.tensors("stage1"), resume.tensors("features")

    # BRME stage 2: the k Gaussian heads, each on its own bootstrap resample. Fresh modules, not the
    # stage-1 engine's, which ZeRO-3 may have partitioned.
    stage2 = config.stage2
    if not resume.finished("stage2"):
        weights = bootstrap_weights(len(train_pairs), config.num_heads, seed=params.seed, enabled=stage2.bootstrap)
        common = dict(loss_name=stage2.loss, epochs=stage2.epochs, micro_batch_size=stage2.micro_batch_size,
                      num_noise_samples=stage2.num_noise_samples, seed=params.seed)
        if stage2.freeze_backbone:
            engine2, losses = train_phase("stage2", stage2, lambda: new_brme(new_backbone()).heads,
                                          partial(train_stage2_frozen, features=features, weights=weights, **common))
            brme_state = {**stage1_state, **{f"heads.{k}": v for k, v in full_state_dict(engine2).items()}}
        else:
            engine2, losses = train_phase("stage2", stage2, partial(_stage2_model, new_brme, new_backbone, stage1_state),
                                          partial(train_stage2_unfrozen, pairs=train_pairs, tokenizer=tokenizer,
                                                  features=features, weights=weights, max_length=config.max_length,
                                                  **common))
            brme_state = full_state_dict(engine2)
        resume.finish("stage2", losses, {"brme": brme_state})

    # The independent ensemble: Bradley-Terry reward models with no Gaussian heads, seeds apart.
    for index, name in enumerate(member_names):
        if not resume.finished(name):
            seed = params.seed + ENSEMBLE_SEED_OFFSET + index
            new_member = lambda: bradley_terry(BRMERewardModel(  # noqa: E731
                new_backbone(), rm_config(0), head_init_std=config.head_init_std, seed=seed))
            member_engine, losses = train_phase(name, config.stage1, new_member, partial(train_bt, seed=seed))
            resume.finish(name, losses, {name: full_state_dict(member_engine)})

    # Every model is rebuilt from its saved weights, so a resumed run and an uninterrupted one publish
    # the same tensors.
    brme = _loaded(new_brme(new_backbone()), resume.tensors("brme"))
    members = [_loaded(BRMERewardModel(new_backbone(), rm_config(0)), resume.tensors(name)) for name in member_names]
    with atomic_directory(reward) as reward_tmp:
        save_reward_model(brme, tokenizer, reward_tmp, brme.state_dict())
    with atomic_directory(ensemble) as ensemble_tmp:
        for name, member in zip(member_names, members):
            save_reward_model(member, tokenizer, ensemble_tmp / name, member.state_dict())
        atomic_write_json(ensemble_tmp / ENSEMBLE_MANIFEST, {"members": member_names})

    val_report, reliability_rows = evaluate_reward_models(RewardModels(brme, tokenizer, members), val_pairs,
                                                          batch_size=config.stage1.micro_batch_size)
    with atomic_directory(reliability) as reliability_tmp:
        for kind in dict.fromkeys(row["reward_model"] for row in reliability_rows):
            write_csv(reliability_tmp / f"{kind}.csv", [r for r in reliability_rows if r["reward_model"] == kind])
    resume.remove()
    member_losses = [resume.losses[name][-1] for name in member_names]
    return {
        "val": val_report,
        "train": {"pairs": len(train_pairs), "stage1_final_loss": resume.losses["stage1"][-1],
                  "stage2_final_loss": resume.losses["stage2"][-1], "stage2_loss": stage2.loss,
                  **({"ensemble_final_loss_mean": sum(member_losses) / len(member_losses)} if member_losses else {})},
    }


def resume_params(params: Params, *, world_size: int, train_pairs: Path) -> dict:
    """What a saved train_reward state depends on: a resume with any of it changed is refused. Not
    `checkpoint_every`, which changes when checkpoints are taken, not what is trained."""
    return {"seed": params.seed, "models": params.models.model_dump(include={"reward_backbone", "trust_remote_code"}),
            "deepspeed": params.deepspeed.model_dump(),
            "train_reward": params.train_reward.model_dump(exclude={"checkpoint_every"}),
            "world_size": world_size, "inputs": {"prefs_train_sha256": _sha256(train_pairs)}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _position_text(position: dict | None) -> str:
    if position is None:
        return "its start"
    return f"epoch {position['epoch'] + 1}, batch {position['batch']}"


def _stage2_model(new_brme: Callable, new_backbone: Callable, stage1_state: dict) -> BRMERewardModel:
    """Unfrozen stage 2 trains backbone + Gaussian heads from the stage-1 weights; the BT head stays."""
    model = new_brme(new_backbone())
    model.load_state_dict(stage1_state)
    model.bt_head.requires_grad_(False)
    return model


def _loaded(model: BRMERewardModel, state: dict) -> BRMERewardModel:
    model.load_state_dict(state)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    stage_main("train_reward", run, ["data", "policy", "reward", "ensemble", "reliability"], argv)


if __name__ == "__main__":
    main()
