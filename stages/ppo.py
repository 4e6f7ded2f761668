"""DVC stage `ppo`: PPO of the initial policy on the robust reward of the BRME (PAPER.md §3).

Reads --policy-init, --reward, --data (ppo_prompts.jsonl); writes the final policy to --policy,
per-step scalars (a DVC plot) to --steps and the last step's scalars to --metrics.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from robust_rlhf.atomic import atomic_directory, read_jsonl
from robust_rlhf.config import Params
from robust_rlhf.distributed import (deepspeed_config, full_state_dict, init_distributed, initialize_engine,
                                     is_main_process)
from robust_rlhf.metrics import StepLog
from robust_rlhf.models import load_backbone, load_causal_lm, load_tokenizer
from robust_rlhf.ppo import ValueModel, ppo_step
from robust_rlhf.reward_model import load_reward_model
from robust_rlhf.stage_cli import stage_main


def run(params: Params, *, data: Path, policy_init: Path, reward: Path, policy: Path, steps: Path) -> dict:
    config, remote = params.ppo, params.models.trust_remote_code
    world_size = init_distributed()
    train_config = lambda learning_rate: deepspeed_config(  # noqa: E731
        deepspeed=params.deepspeed, micro_batch_size=config.micro_batch_size, world_size=world_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=learning_rate)
    frozen_config = deepspeed_config(deepspeed=params.deepspeed, micro_batch_size=config.micro_batch_size,
                                     gradient_accumulation_steps=1, world_size=world_size, learning_rate=None)

    tokenizer = load_tokenizer(policy_init, trust_remote_code=remote)
    actor = initialize_engine(load_causal_lm(policy_init, trust_remote_code=remote), train_config(config.learning_rate))
    critic = initialize_engine(ValueModel(load_backbone(policy_init, trust_remote_code=remote)),
                               train_config(config.critic_learning_rate))
    ref_model = initialize_engine(load_causal_lm(policy_init, trust_remote_code=remote).eval(), frozen_config).module
    reward_model, reward_tokenizer = load_reward_model(reward, trust_remote_code=remote)
    reward_model = initialize_engine(reward_model, frozen_config).module
    ref_model.requires_grad_(False)
    reward_model.requires_grad_(False)

    prompts = [row["prompt"] for row in read_jsonl(data / "ppo_prompts.jsonl")]
    step_log = StepLog(steps)
    metrics: dict[str, float] = {}
    for step in tqdm(range(config.steps), desc=f"ppo {config.method}", unit="step"):
        # Prompts cycle through the set in order, so a run is a pure function of params and seed.
        start = (step * config.rollout_batch_size) % len(prompts)
        batch_prompts = [prompts[(start + i) % len(prompts)] for i in range(config.rollout_batch_size)]
        metrics, _ = ppo_step(step, actor, critic, ref_model, reward_model, reward_tokenizer, tokenizer,
                              batch_prompts, config=config, max_prompt_tokens=params.prepare.max_prompt_tokens)
        if is_main_process():
            step_log.log(step, metrics)

    state = full_state_dict(actor)
    if is_main_process():
        with atomic_directory(policy) as policy_tmp:
            actor.module.save_pretrained(policy_tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(policy_tmp)
    return {"method": config.method, "steps": config.steps, "final": metrics}


def main(argv: list[str] | None = None) -> None:
    stage_main("ppo", run, ["data", "policy_init", "reward", "policy", "steps"], argv)


if __name__ == "__main__":
    main()
