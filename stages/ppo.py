"""DVC stage `ppo@<method>-<seed>`: PPO of the initial policy on one method's reward (PAPER.md §3; the
methods are listed under `methods:` in params.yaml, the seeds under `ppo_seeds:`).

Reads --policy-init, --reward, --ensemble, --data (ppo_prompts.jsonl). Writes policy checkpoints
every `ppo.checkpoint_every` steps to --policy, per-step scalars (a DVC plot) to --steps and the
last step's scalars to --metrics. Its resume state lives in --resume while it runs
(robust_rlhf/resume.py); `ppo.guards` stop a diverged run (robust_rlhf/guards.py).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from robust_rlhf.atomic import publish_directory, read_jsonl
from robust_rlhf.checkpoint import save_policy_checkpoint
from robust_rlhf.config import Params, ParamsError
from robust_rlhf.distributed import (deepspeed_config, full_state_dict, init_distributed, initialize_engine,
                                     is_main_process, mean_over_ranks, rank, weight_norm)
from robust_rlhf.guards import check_finite, check_ppo_step
from robust_rlhf.metrics import StepLog
from robust_rlhf.models import disable_dropout, load_backbone, load_causal_lm, load_tokenizer
from robust_rlhf.ppo import (build_actor_critic, policy_module, policy_state_dict, ppo_step, rank_sampling_seed,
                             reference_reward_moments, rollout_prompts)
from robust_rlhf.reward_normalization import RewardNormalizer
from robust_rlhf.resume import load_state, prune_finished, restore_engines, run_key, save_state
from robust_rlhf.reward_scoring import load_reward_models
from robust_rlhf.stage_cli import seed_everything, stage_main

logger = logging.getLogger(__name__)


def run(params: Params, *, method: str, seed: int, data: Path, policy_init: Path, reward: Path, ensemble: Path,
        policy: Path, steps: Path, resume: Path) -> dict:
    if method not in params.methods:
        raise ParamsError(f"--method {method!r} is not under `methods:` in params (known: {sorted(params.methods)})")
    if seed not in params.ppo_seeds:
        raise ParamsError(f"--seed {seed} is not in `ppo_seeds:` in params ({params.ppo_seeds})")
    config, remote, method_params = params.ppo, params.models.trust_remote_code, params.methods[method]
    # The run's seed drives the critic's head init, sampling and minibatch order; data and reward
    # models come from `seed`, shared by every run.
    seed_everything(seed)
    world_size = init_distributed()
    train_config = lambda learning_rate: deepspeed_config(  # noqa: E731
        deepspeed=params.deepspeed, micro_batch_size=config.micro_batch_size, world_size=world_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=learning_rate)
    frozen_config = deepspeed_config(deepspeed=params.deepspeed, micro_batch_size=config.micro_batch_size,
                                     gradient_accumulation_steps=1, world_size=world_size, learning_rate=None)
    frozen = lambda model: initialize_engine(model.eval().requires_grad_(False), frozen_config).module  # noqa: E731

    tokenizer = load_tokenizer(policy_init, trust_remote_code=remote)
    actor_module, critic_module = build_actor_critic(
        lambda: disable_dropout(load_causal_lm(policy_init, trust_remote_code=remote)),
        lambda: disable_dropout(load_backbone(policy_init, trust_remote_code=remote)), config.value_model)
    actor = initialize_engine(actor_module, train_config(config.learning_rate))
    critic = (None if critic_module is None
              else initialize_engine(critic_module, train_config(config.critic_learning_rate)))
    ref_model = frozen(disable_dropout(load_causal_lm(policy_init, trust_remote_code=remote)))
    reward_models = load_reward_models(reward, ensemble, trust_remote_code=remote, prepare=frozen)

    prompts = [row["prompt"] for row in read_jsonl(data / "ppo_prompts.jsonl")]
    max_prompt_tokens = params.prepare.max_prompt_tokens
    normalizer = RewardNormalizer(config.reward_normalization)
    # A run killed after a checkpoint goes on from it (engines, RNGs, normaliser and step log) when
    # it is exactly this run: the same params, inputs, code and libraries.
    prune_finished(resume.parent, keep=resume)
    key = run_key({"seed": seed, "method": method_params.model_dump(),
                   "ppo": config.model_dump(exclude={"resume_every", "guards"}),
                   "deepspeed": params.deepspeed.model_dump(), "max_prompt_tokens": max_prompt_tokens,
                   "world_size": world_size},
                  {"prompts": data / "ppo_prompts.jsonl", "policy_init": policy_init, "reward": reward,
                   "ensemble": ensemble})
    engines = {"actor": actor} if critic is None else {"actor": actor, "critic": critic}
    saved = load_state(resume, key, engines_of=lambda state: list(engines))
    initial_weight_norm = weight_norm(actor)  # before any resumed weights: the guard compares with the init
    step_log = StepLog(steps)
    if saved is None:
        if config.reward_normalization == "reference":
            normalizer.reference_mean, normalizer.reference_std = reference_reward_moments(
                ref_model, reward_models, tokenizer, prompts, method_params, config=config,
                max_prompt_tokens=max_prompt_tokens)
        first_step = 0
    else:
        restore_engines(resume, engines, saved)
        normalizer.load_state(saved["stage"]["normalizer"])
        step_log.rows = saved["stage"]["step_log"]
        first_step = saved["step"]
        logger.info("resuming ppo@%s-%s from step %d of %d (%s)", method, seed, first_step, config.steps, resume)
    run_dir = resume / "policy"
    this_rank = rank()
    if world_size > 1:
        logger.info("rank %d/%d: %d rollouts per step of the %d in each global batch", this_rank, world_size,
                    config.rollout_batch_size, config.rollout_batch_size * world_size)
    metrics: dict[str, float] = step_log.rows[-1] if step_log.rows else {}
    for step in tqdm(range(first_step, config.steps), desc=f"ppo@{method}-{seed}", unit="step",
                     initial=first_step, total=config.steps):
        batch_prompts = rollout_prompts(prompts, step=step, rank=this_rank, world_size=world_size,
                                        rollout_batch_size=config.rollout_batch_size)
        if this_rank > 0:  # rank 0 keeps the single-process stream; the others get their own, per step
            seed_everything(rank_sampling_seed(seed, rank=this_rank, step=step))
        metrics, _ = ppo_step(step, actor, critic, ref_model, reward_models, tokenizer, batch_prompts,
                              method=method_params, normalizer=normalizer, config=config,
                              max_prompt_tokens=max_prompt_tokens)
        metrics = mean_over_ranks(metrics)
        # A diverged step is never checkpointed: the last checkpoint stays the last good one.
        check_ppo_step(metrics, weight_norm=weight_norm(actor), initial_weight_norm=initial_weight_norm,
                       guards=config.guards, phase=f"ppo@{method}-{seed}", step=step)
        if critic is not None:
            check_finite("critic weights", torch.tensor(weight_norm(critic)), phase=f"ppo@{method}-{seed}", step=step)
        if is_main_process():
            step_log.log(step, metrics)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            state = policy_state_dict(full_state_dict(actor))
            if is_main_process():
                save_policy_checkpoint(policy_module(actor), tokenizer, state, run_dir, done)
            # Engines with optimizer states are GBs: saved every `resume_every` steps, not every checkpoint.
            if done % config.resume_every == 0 and done < config.steps:
                save_state(resume, engines, step=done, key=key, outputs=[policy],
                           stage_state={"normalizer": normalizer.state(), "step_log": step_log.rows})
    if is_main_process():
        publish_directory(run_dir, policy)
        shutil.rmtree(resume, ignore_errors=True)
    return {"method": method, "seed": seed, "reward_model": method_params.reward_model,
            "aggregation": method_params.aggregation, "steps": config.steps, "world_size": world_size,
            "value_model": config.value_model,
            "reward_normalization": {"mode": config.reward_normalization, "reference_mean": normalizer.reference_mean,
                                     "reference_std": normalizer.reference_std},
            "final": metrics}


def main(argv: list[str] | None = None) -> None:
    def method_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--method", required=True, help="a name under `methods:` in params.yaml")
        parser.add_argument("--seed", required=True, type=int, help="this run's PPO seed (one of `ppo_seeds`)")

    stage_main("ppo", run, ["data", "policy_init", "reward", "ensemble", "policy", "steps", "resume"], argv,
               extra_args=method_arg, data_parallel=True)


if __name__ == "__main__":
    main()
