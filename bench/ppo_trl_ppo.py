"""TRL's last PPO trainer (`trl.experimental.ppo.PPOTrainer`, TRL 1.12.0: 1.13 removed it) on the
same policy, prompts, rollout batch, generation length and epochs as our PPO step, timed per phase.
Run by `python -m bench` in a child process with its own virtualenv (`make bench-trl-ppo-venv`,
bench/requirements-trl-ppo.txt), since that TRL wants an older transformers than the runtime's:

    .venv-trl-ppo/bin/python -m bench.ppo_trl_ppo --work DIR --out trl_ppo.json [--ppo-steps 3 ...]

Matched settings: one optimizer step per rollout batch (micro-batch x accumulation = batch, one
mini-batch), fp32, no gradient checkpointing, ancestral sampling (TRL's PPO hard-codes top_k 0,
top_p 1) at our temperature, stopping at EOS as ours does, the k1 KL estimator at our `kl_coef`,
our clip ranges, gamma, lambda and learning rate (one AdamW over policy and critic: TRL has no
separate critic rate), a constant schedule. TRL's PPO loop never clips gradients, whatever
`max_grad_norm` says. Its critic is a separate 135M model like our default `ppo.value_model:
separate`; its reward model must be a sequence classifier on the policy's tokenizer, so both are
built from the policy's weights with a seeded random one-output head (only timed, never trained
to score anything). That reward model is a 135M forward where ours is the MiniLM BRME; the parent
shows the ratio with and without each side's reward phase.
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
    VALUE_FORWARD,
    StepRecord,
    child_parser,
    finish_profile,
    start_profile,
    trl_training_arguments,
    workload_from_args,
)
from bench.timing import PhaseTimer
from bench.workload import POLICY_DIR, bench_prompts, default_params

# SmolLM2's pad token is its EOS (<|im_end|>), which its chat template also puts inside every prompt;
# TRL's PPO takes `ids != pad` as the attention mask, so it would mask those. TRL's own PPO examples
# add a [PAD] token; an id the prompts never hold (<|endoftext|>) does the same without a resize.
PAD_TOKEN = "<|endoftext|>"


def scoring_model(policy_init: Path, *, seed: int, options: dict):
    """The policy's backbone as a one-output sequence classifier (TRL's reward and value model
    interface: `.model` backbone, `.score` head), its head initialised from `seed`."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        policy_init, num_labels=1, use_safetensors=True, **options
    )
    return model


def prompt_dataset(tokenizer, prompts: list[str], *, max_prompt_tokens: int):
    """The prompts tokenised as our step tokenises them (chat template, left truncation), unpadded:
    TRL's collator pads each batch again, so its (B, Tq) queries equal ours."""
    from datasets import Dataset

    from robust_rlhf.generation import encode_prompts

    ids, mask = encode_prompts(tokenizer, prompts, max_prompt_tokens=max_prompt_tokens)
    return Dataset.from_list([{"input_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)])


def instrument(trainer_module, reward_model, timer: PhaseTimer, generated_tokens: list[int], eos_token_id: int):
    """Time the module-level functions TRL's `train()` calls: `batch_generation` (the old log-probs
    come from its logits, as ours from generate's), `forward` without grad (the reference; with grad
    it is the policy+value training forward) and `get_reward`, which scores with the reward model
    and, on the critic, gives the rollout values. Each batch's response tokens up to and including
    the first EOS (what our response mask counts) go to `generated_tokens`."""
    from robust_rlhf.generation import response_mask_from_ids

    no_grad = lambda: not torch.is_grad_enabled()  # noqa: E731
    batch_generation, get_reward = trainer_module.batch_generation, trainer_module.get_reward

    def counted_generation(model, queries, *args, **kwargs):
        query_responses, logits = batch_generation(model, queries, *args, **kwargs)
        responses = query_responses[:, queries.shape[1] :]
        generated_tokens.append(int(response_mask_from_ids(responses, eos_token_id).sum()))
        return query_responses, logits

    def phased_get_reward(model, *args, **kwargs):
        with timer.phase(SCORING if model is reward_model else VALUE_FORWARD):
            return get_reward(model, *args, **kwargs)

    trainer_module.batch_generation = timer.wrap(counted_generation, GENERATION)
    trainer_module.forward = timer.wrap(trainer_module.forward, LOGPROB_FORWARD, when=no_grad)
    trainer_module.get_reward = phased_get_reward


def step_recorder(timer: PhaseTimer, record: StepRecord, generated_tokens: list[int], args):
    """A TrainerCallback timing each PPO update after the first, the warm-up. TRL's PPO loop calls
    no `on_step_begin`, so a step runs from one `on_step_end` (or the start) to the next."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        profiler = contextlib.nullcontext()

        def start(self):
            timer.reset()
            generated_tokens.clear()
            self.started = time.perf_counter()

        def on_train_begin(self, _args, state, control, **kwargs):
            self.start()

        def on_step_end(self, _args, state, control, **kwargs):
            wall = time.perf_counter() - self.started
            if state.global_step > 1:
                record.add(state.global_step, wall, dict(timer.totals), sum(generated_tokens))
            elif args.torch_profile:
                self.profiler = start_profile()
            self.start()

        def on_train_end(self, _args, state, control, **kwargs):
            if args.torch_profile:
                finish_profile(self.profiler, args.torch_profile)

    return StepTimes()


def main(argv: list[str] | None = None) -> None:
    import trl.experimental.ppo.ppo_trainer as trainer_module
    from torch.utils.data import DataLoader
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from robust_rlhf.models import load_causal_lm, load_tokenizer, model_options

    args = child_parser("python -m bench.ppo_trl_ppo").parse_args(argv)
    workload = workload_from_args(args)
    params = default_params(Path.cwd())
    ppo, options = params.ppo, model_options(params)
    policy_init = args.work / POLICY_DIR
    tokenizer = load_tokenizer(policy_init)
    tokenizer.pad_token = PAD_TOKEN
    policy = load_causal_lm(policy_init, **options)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    reward_model = scoring_model(policy_init, seed=workload.seed, options=options)
    value_model = scoring_model(policy_init, seed=workload.seed + 1, options=options)
    steps = workload.steps + 1
    dataset = prompt_dataset(
        tokenizer, bench_prompts(workload.batch_size * steps), max_prompt_tokens=params.prepare.max_prompt_tokens
    )
    record = StepRecord("trl_ppo", vars(workload), note="trl.experimental.ppo.PPOTrainer, separate critic")
    timer, generated_tokens = PhaseTimer(), []
    with tempfile.TemporaryDirectory() as output_dir:
        config = PPOConfig(
            **trl_training_arguments(workload, params, output_dir),
            num_mini_batches=1,
            num_ppo_epochs=workload.epochs,
            total_episodes=workload.batch_size * steps,
            local_rollout_forward_batch_size=workload.batch_size,  # one generate call per batch, as ours
            num_sample_generations=0,
            response_length=workload.max_new_tokens,
            stop_token="eos",
            temperature=ppo.temperature,
            kl_coef=ppo.kl_coef,
            kl_estimator="k1",
            cliprange=ppo.clip_range,
            cliprange_value=ppo.clip_range_value,
            vf_coef=ppo.value_loss_coef,
            gamma=ppo.gamma,
            lam=ppo.gae_lambda,
            whiten_rewards=False,
            weight_decay=ppo.weight_decay,
            lr_scheduler_type="constant",
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # TRL copies the policy, frozen
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=dataset,
            callbacks=[step_recorder(timer, record, generated_tokens, args)],
        )
        # TRL shuffles its prompts; ours takes them in order, so each step gets the same batch.
        trainer.dataloader = DataLoader(
            dataset, batch_size=workload.batch_size, shuffle=False, collate_fn=trainer.data_collator, drop_last=True
        )
        instrument(trainer_module, trainer.reward_model, timer, generated_tokens, tokenizer.eos_token_id)
        trainer.train()
    record.write(args.out)


if __name__ == "__main__":
    main()
