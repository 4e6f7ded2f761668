"""Our PPO step (robust_rlhf.rl.ppo.ppo_step, the code the `ppo` stage runs) on the default models,
timed per phase. Run by `python -m bench` in a child process:

    python -m bench.ppo_ours --work DIR --out ours.json [--ppo-steps 3 ...]
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from bench.ppo_workload import (
    CRITIC,
    GENERATION,
    LOGPROB_FORWARD,
    SCORING,
    PPOWorkload,
    StepRecord,
    child_parser,
    finish_profile,
    start_profile,
    workload_from_args,
)
from bench.timing import PhaseTimer
from bench.workload import POLICY_DIR, bench_prompts, build_reward_models, default_params


def instrument(timer: PhaseTimer, critic) -> None:
    """Time the library's own functions where ppo_step calls them. Generation includes the old
    log-probs (generate's logits) and a shared value head's rollout values; the reference's rollout
    forward runs without grad; the actor's forward inside the update (grad on) stays in `training`.
    Every separate critic's forward, backward and step is the critic's phase, which GRPO lacks."""
    import robust_rlhf.rl.ppo as ppo
    from robust_rlhf.reward.scoring import RewardModels

    no_grad = lambda: not torch.is_grad_enabled()  # noqa: E731
    ppo.sample = timer.wrap(ppo.sample, GENERATION)
    ppo.forward_response = timer.wrap(ppo.forward_response, LOGPROB_FORWARD, when=no_grad)
    ppo.response_values = timer.wrap(ppo.response_values, CRITIC)
    if critic is not None:  # a shared value head has no engine of its own: its cost is inside the actor's
        critic.backward = timer.wrap(critic.backward, CRITIC)
        critic.step = timer.wrap(critic.step, CRITIC)
    RewardModels.score = timer.wrap(RewardModels.score, SCORING)


def build_engines(params, work: Path):
    """Actor, critic (DeepSpeed engines), reference and reward models, built as the ppo stage builds them."""
    from robust_rlhf.rl.run import PPOPaths, build_ppo_models
    from robust_rlhf.runtime.distributed import init_distributed

    reward, ensemble = build_reward_models(params, work)
    paths = PPOPaths(
        data=work,
        policy_init=work / POLICY_DIR,
        reward=reward,
        ensemble=ensemble,
        policy=work / "policy",
        steps=work / "steps.csv",
        resume=work / "resume",
    )
    models = build_ppo_models(params, paths, world_size=init_distributed())
    return models.tokenizer, models.actor, models.critic, models.ref_model, models.reward_models


def with_workload(params, workload: PPOWorkload, value_model: str, critic_layers: int | None = None):
    """The default params with the bench's PPO sizes and critic (validated like params.yaml)."""
    ppo = params.ppo.model_copy(
        update={
            "steps": workload.steps + 1,
            "rollout_batch_size": workload.batch_size,
            "micro_batch_size": workload.micro_batch_size,
            "gradient_accumulation_steps": workload.gradient_accumulation_steps,
            "ppo_epochs": workload.epochs,
            "max_new_tokens": workload.max_new_tokens,
            "value_model": value_model,
            "critic_layers": critic_layers,
        }
    )
    return params.model_copy(update={"ppo": type(params.ppo).model_validate(ppo.model_dump(by_alias=True))})


def main(argv: list[str] | None = None) -> None:
    from robust_rlhf.rl.normalization import RewardNormalizer
    from robust_rlhf.rl.ppo import ppo_step
    from robust_rlhf.runtime.distributed import seed_everything

    parser = child_parser("python -m bench.ppo_ours")
    parser.add_argument(
        "--value-model",
        choices=("separate", "shared"),
        default="separate",
        help="ppo.value_model: a separate critic model, or a value head on the actor's backbone",
    )
    parser.add_argument(
        "--critic-layers",
        type=int,
        default=None,
        help="ppo.critic_layers: the separate critic's depth (the policy's first N layers); default: all",
    )
    args = parser.parse_args(argv)
    workload = workload_from_args(args)
    params = with_workload(default_params(Path.cwd()), workload, args.value_model, args.critic_layers)
    seed_everything(workload.seed)
    tokenizer, actor, critic, ref_model, reward_models = build_engines(params, args.work)
    timer = PhaseTimer()
    instrument(timer, critic)
    method = params.methods["brme"]
    # Fixed moments: the `reference` moments cost one extra rollout per run, not per step.
    normalizer = RewardNormalizer(params.ppo.reward_normalization, reference_mean=0.0, reference_std=1.0)
    prompts = bench_prompts(workload.batch_size * (workload.steps + 1))
    record = StepRecord(
        "ours", vars(workload), note=f"value_model: {args.value_model}, critic_layers: {args.critic_layers}"
    )
    profiler = contextlib.nullcontext()
    for step in range(workload.steps + 1):
        if step == 1 and args.torch_profile:
            profiler = start_profile()
        timer.reset()
        batch = prompts[step * workload.batch_size : (step + 1) * workload.batch_size]
        started = time.perf_counter()
        metrics = ppo_step(
            step,
            actor,
            critic,
            ref_model,
            reward_models,
            tokenizer,
            batch,
            method=method,
            normalizer=normalizer,
            config=params.ppo,
            aggregation=params.aggregation,
            max_prompt_tokens=params.prepare.max_prompt_tokens,
        )
        wall = time.perf_counter() - started
        if step == 0:
            continue  # warm-up: first-call allocations and lazy inits
        record.add(step, wall, dict(timer.totals), round(metrics["response/length"] * workload.batch_size))
    if args.torch_profile:
        finish_profile(profiler, args.torch_profile)
    record.write(args.out)


if __name__ == "__main__":
    main()
