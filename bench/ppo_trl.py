"""TRL's GRPO trainer (the online-RL trainer current TRL offers besides RLOO) on the same policy,
prompts, rollout batch, generation length, epochs and reward models as our PPO step, timed per
phase. Run by `python -m bench` in a child process (needs the `bench` extra: pip install -e .[bench]):

    python -m bench.ppo_trl --work DIR --out trl.json [--ppo-steps 3 ...]

Matched settings: one optimizer step per rollout batch (micro-batch x accumulation = batch), fp32,
no gradient checkpointing (ours has none), ancestral sampling (top_k 0, top_p 1, temperature 1),
the same learning rate and gradient clipping, and `beta` = our `kl_coef`, so TRL also runs a
frozen reference forward. The reward function scores with the same reward models as our step
(every kind, as ours does for its log) and returns the BRME method's aggregated reward.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import torch

from bench.ppo_workload import (
    GENERATION,
    LOGPROB_FORWARD,
    SCORING,
    StepRecord,
    child_parser,
    finish_profile,
    start_profile,
    trl_training_arguments,
    workload_from_args,
)
from bench.timing import PhaseTimer
from bench.workload import POLICY_DIR, bench_prompts, build_reward_models, default_params

GROUP_SIZE = 2  # GRPO's completions per prompt; the smallest group, so the batch has the most prompts


def reward_function(reward_models, method, aggregation):
    """A TRL reward function: our reward models' scores under the method's aggregation, (B,) floats."""
    from robust_rlhf.reward.scoring import method_rewards

    def brme_reward(prompts, completions, **_) -> list[float]:
        prompt_texts = [turns[-1]["content"] for turns in prompts]
        responses = [turns[-1]["content"] for turns in completions]
        scores = reward_models.score(prompt_texts, responses, batch_size=len(responses))
        return method_rewards(scores, {"optimised": method}, aggregation)["optimised"].tolist()

    return brme_reward


def instrument(trainer, timer: PhaseTimer, generated_tokens: list[int]) -> None:
    """Time TRL's own methods on the instance; log-prob forwards only when run without grad (the
    reference pass), since the same method computes the training forward. Each generation's
    completion tokens (EOS included, as our response mask counts) go to `generated_tokens`."""
    no_grad = lambda: not torch.is_grad_enabled()  # noqa: E731
    generate = trainer._generate

    def counted_generate(prompts):
        generated = generate(prompts)
        generated_tokens.append(sum(len(ids) for ids in generated[1]))  # [1]: completion ids per sample
        return generated

    trainer._generate = timer.wrap(counted_generate, GENERATION)
    trainer._calculate_rewards = timer.wrap(trainer._calculate_rewards, SCORING)
    trainer._get_per_token_logps_and_entropies = timer.wrap(
        trainer._get_per_token_logps_and_entropies, LOGPROB_FORWARD, when=no_grad
    )


def step_recorder(timer: PhaseTimer, record: StepRecord, generated_tokens: list[int], args):
    """A TrainerCallback timing each optimizer step (one generation batch) after the first, the warm-up."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        profiler = contextlib.nullcontext()

        def on_step_begin(self, _args, state, control, **kwargs):
            if state.global_step == 1 and args.torch_profile:
                self.profiler = start_profile()
            timer.reset()
            generated_tokens.clear()
            self.started = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            wall = time.perf_counter() - self.started
            if state.global_step > 1:
                record.add(state.global_step, wall, dict(timer.totals), sum(generated_tokens))

        def on_train_end(self, _args, state, control, **kwargs):
            if args.torch_profile:
                finish_profile(self.profiler, args.torch_profile)

    return StepTimes()


def main(argv: list[str] | None = None) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from robust_rlhf.models import load_causal_lm, load_tokenizer, model_options
    from robust_rlhf.reward.scoring import load_reward_models

    args = child_parser("python -m bench.ppo_trl").parse_args(argv)
    workload = workload_from_args(args)
    params = default_params(Path.cwd())
    policy_init = args.work / POLICY_DIR
    reward_models = load_reward_models(*build_reward_models(params, args.work), **model_options(params))
    prompts = bench_prompts(workload.batch_size * (workload.steps + 1) // GROUP_SIZE)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt}]} for prompt in prompts])
    record = StepRecord("trl", vars(workload), note=f"GRPOTrainer, {GROUP_SIZE} completions per prompt")
    timer, generated_tokens = PhaseTimer(), []
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            **trl_training_arguments(workload, params, output_dir),
            num_generations=GROUP_SIZE,
            num_iterations=workload.epochs,
            max_completion_length=workload.max_new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            beta=params.ppo.kl_coef,
            max_steps=workload.steps + 1,
            shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=load_causal_lm(policy_init, **model_options(params)),
            args=config,
            train_dataset=dataset,
            processing_class=load_tokenizer(policy_init),
            reward_funcs=reward_function(reward_models, params.methods["brme"], params.aggregation),
            callbacks=[step_recorder(timer, record, generated_tokens, args)],
        )
        instrument(trainer, timer, generated_tokens)
        trainer.train()
    record.write(args.out)


if __name__ == "__main__":
    main()
