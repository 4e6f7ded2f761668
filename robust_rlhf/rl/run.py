"""The PPO run of stage `ppo@<method>-<seed>`: its models, the resumable outer loop, checkpoints.

One PPO iteration (rollout, scoring, GAE, the clipped updates) is `ppo.ppo_step`; this module owns
what is around it: building the engines once, the reference moments of the reward normaliser, the
guards after each step, policy checkpoints every `ppo.checkpoint_every` steps, and the resume state
(robust_rlhf/runtime/resume.py) every `ppo.resume_every` steps.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from robust_rlhf.card import CARD_FILE, card_facts, model_card
from robust_rlhf.config import MethodParams, Params, PretrainedRewardModelParams, StageInputError
from robust_rlhf.generation import for_sampling
from robust_rlhf.models import (
    TooFewLayers,
    cut_config,
    disable_dropout,
    enable_gradient_checkpointing,
    load_backbone,
    load_causal_lm,
    load_tokenizer,
    model_options,
)
from robust_rlhf.reward.metrics import head_disagreement
from robust_rlhf.reward.pretrained import (
    affine_from_state,
    fit_mixture_affine,
    mixture_key,
    used_reward_models,
    write_affine,
)
from robust_rlhf.reward.scoring import RewardModels, load_reward_models
from robust_rlhf.rl.monitor import MONITOR_FILE, RewardHackingMonitor
from robust_rlhf.rl.normalization import RewardNormalizer
from robust_rlhf.rl.ppo import (
    build_actor_critic,
    policy_module,
    policy_state_dict,
    ppo_step,
    rank_sampling_seed,
    reference_policy,
    reference_reward_moments,
    reference_scores,
    rollout_prompts,
)
from robust_rlhf.runtime.atomic import atomic_write_json, atomic_write_text, publish_directory, read_jsonl
from robust_rlhf.runtime.checkpoint import read_checkpoints, save_policy_checkpoint
from robust_rlhf.runtime.distributed import (
    frozen_model,
    full_state_dict,
    init_distributed,
    is_main_process,
    mean_over_ranks,
    rank,
    seed_everything,
    training_engine,
    weight_norm,
)
from robust_rlhf.runtime.guards import check_finite, check_no_warning, check_ppo_step
from robust_rlhf.runtime.live import LiveLog
from robust_rlhf.runtime.memory_plan import check_stage_fits
from robust_rlhf.runtime.metrics import StepLog
from robust_rlhf.runtime.resume import load_state, prune_finished, restore_engines, run_key, save_state
from robust_rlhf.runtime.small_batch_linear import kernel_in_use

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOPaths:
    data: Path  # holds ppo_prompts.jsonl
    policy_init: Path
    reward: Path
    ensemble: Path
    policy: Path  # the checkpoints, published when the run ends
    steps: Path  # the per-step log (a DVC plot)
    resume: Path  # the resume state while the run runs
    live: Path | None = None  # DVCLive's folder: the latest step's scalars, for `dvc exp show` mid-run


@dataclass
class PPOModels:
    tokenizer: object
    actor: object  # a DeepSpeed engine
    critic: object | None  # a DeepSpeed engine; None with a shared value head
    ref_model: torch.nn.Module
    reward_models: RewardModels


def build_ppo_models(
    params: Params,
    paths: PPOPaths,
    *,
    world_size: int,
    pretrained: Mapping[str, PretrainedRewardModelParams] = {},  # noqa: B006 - read only
) -> PPOModels:
    """Actor and critic engines, the frozen reference policy and the frozen reward models (with the
    `pretrained` ones a mixture names). Under `ppo.lora` the reference is the actor engine's module with its
    adapters disabled, not an engine of its own."""
    config, remote, options = params.ppo, params.models.trust_remote_code, model_options(params)

    def trained(model: torch.nn.Module, learning_rate: float):
        return training_engine(
            model,
            deepspeed=params.deepspeed,
            micro_batch_size=config.micro_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            world_size=world_size,
            learning_rate=learning_rate,
            weight_decay=config.weight_decay,
            lr_schedule=config.lr_schedule,
            total_steps=config.optimizer_steps,
        )

    def checkpointed(model: torch.nn.Module) -> torch.nn.Module:
        return enable_gradient_checkpointing(model) if config.gradient_checkpointing else model

    def frozen(model: torch.nn.Module) -> torch.nn.Module:
        return frozen_model(
            model, deepspeed=params.deepspeed, micro_batch_size=config.micro_batch_size, world_size=world_size
        )

    if config.critic_layers is not None:  # refuse a depth the policy lacks before any weights load
        try:
            cut_config(paths.policy_init, config.critic_layers, trust_remote_code=remote)
        except TooFewLayers as error:
            raise StageInputError(f"ppo.critic_layers: {error} ({paths.policy_init})") from None

    def critic_backbone() -> torch.nn.Module:
        backbone = load_backbone(paths.policy_init, **options, num_layers=config.critic_layers)
        if config.critic_layers is not None:
            logger.info("critic: the policy's first %d layers and a value head", backbone.config.num_hidden_layers)
        return checkpointed(disable_dropout(backbone))

    tokenizer = load_tokenizer(paths.policy_init, trust_remote_code=remote)
    actor_module, critic_module = build_actor_critic(
        lambda: checkpointed(
            disable_dropout(
                for_sampling(
                    load_causal_lm(paths.policy_init, **options), small_batch_linear=params.models.small_batch_linear
                )
            )
        ),
        critic_backbone,
        config.value_model,
        lora=config.lora,
    )
    actor = trained(actor_module, config.learning_rate)
    critic = None if critic_module is None else trained(critic_module, config.critic_learning_rate)
    if config.lora.enabled:  # the initial policy is the actor without its adapters: one copy of the weights
        ref_model = reference_policy(actor)
    else:
        ref_model = frozen(disable_dropout(load_causal_lm(paths.policy_init, **options)))
    reward_models = load_reward_models(paths.reward, paths.ensemble, **options, prepare=frozen, pretrained=pretrained)
    return PPOModels(tokenizer, actor, critic, ref_model, reward_models)


def run_ppo(params: Params, *, method: str, seed: int, paths: PPOPaths) -> dict:
    """Train the initial policy with PPO on `method`'s reward; return the run's metrics."""
    config, method_params = params.ppo, params.methods[method]
    name = f"ppo@{method}-{seed}"
    check_stage_fits(params, "ppo")  # before any model loads: refuse a run that cannot fit
    # The run's seed drives the critic's head init, sampling and minibatch order; data and reward
    # models come from `seed`, shared by every run.
    seed_everything(seed)
    world_size = init_distributed()
    pretrained = used_reward_models({method: method_params}, params.reward_models)
    models = build_ppo_models(params, paths, world_size=world_size, pretrained=pretrained)
    reward_model_specs = {name: spec.model_dump() for name, spec in pretrained.items()}
    mixture = method_params.reward_model == "mixture"
    actor, critic = models.actor, models.critic
    prompts = [row["prompt"] for row in read_jsonl(paths.data / "ppo_prompts.jsonl")]
    max_prompt_tokens = params.prepare.max_prompt_tokens
    normalizer = RewardNormalizer(config.reward_normalization)
    # A run killed after a checkpoint goes on from it (engines, RNGs, normaliser and step log) when
    # it is exactly this run: the same params, inputs, code and libraries.
    prune_finished(paths.resume.parent, keep=paths.resume)
    key = run_key(
        {
            "seed": seed,
            "method": method_params.model_dump(exclude_defaults=True),  # a non-mixture's key as before members
            "ppo": config.model_dump(exclude={"resume_every", "guards"}),
            "aggregation": params.aggregation.model_dump(),
            "deepspeed": params.deepspeed.model_dump(),
            "attn_implementation": params.models.attn_implementation,  # kernels differ in rounding
            "small_batch_linear": kernel_in_use(params.models.small_batch_linear),
            "max_prompt_tokens": max_prompt_tokens,
            "world_size": world_size,
            # A mixture's centring samples come from `seed`, and its members' specs are part of the run.
            **({"mixture_seed": params.seed, "reward_models": reward_model_specs} if mixture else {}),
        },
        {
            "prompts": paths.data / "ppo_prompts.jsonl",
            "policy_init": paths.policy_init,
            "reward": paths.reward,
            "ensemble": paths.ensemble,
            **{f"reward_models/{n}": Path(s.source) for n, s in pretrained.items() if Path(s.source).is_dir()},
        },
    )
    engines = {"actor": actor} if critic is None else {"actor": actor, "critic": critic}
    saved = load_state(paths.resume, key, engines_of=lambda state: list(engines))
    initial_weight_norm = weight_norm(actor)  # before any resumed weights: the guard compares with the init
    # The series is DVC's plot of the CSV; DVCLive's folder gets only the summary (one writer per number).
    step_log = StepLog(paths.steps, live=None if paths.live is None else LiveLog(paths.live, series=False))
    monitor = None
    if saved is None:
        scores = None
        if config.reward_normalization == "reference" or mixture:
            scores = initial_scores(params, models, prompts, fixed_seed=mixture)
            if mixture:  # centred on these samples, then normalised (reference) like any other reward
                models.reward_models.mixtures[mixture_key(method_params.members)] = affine = fit_mixture_affine(
                    scores, method_params.members
                )
                scores = models.reward_models.with_mixtures(scores)
                logger.info("%s: mixture affine on the initial policy's samples: %s", name, affine)
            if config.reward_normalization == "reference":
                normalizer.reference_mean, normalizer.reference_std = reference_reward_moments(
                    scores, method_params, aggregation=params.aggregation
                )
        if config.monitor.enabled:
            monitor = start_monitor(params, models, prompts, paths.data, normalizer, method_params, scores)
        first_step = 0
    else:
        restore_engines(paths.resume, engines, saved)
        models.reward_models.mixtures.update(affine_from_state(saved["stage"].get("reward_affine")))
        normalizer.load_state(saved["stage"]["normalizer"])
        if config.monitor.enabled:
            monitor = start_monitor(params, None, prompts, paths.data, normalizer, method_params, None)
            monitor.load_state(saved["stage"]["monitor"])
        step_log.restore(saved["stage"]["step_log"])
        first_step = saved["step"]
        logger.info("resuming %s from step %d of %d (%s)", name, first_step, config.steps, paths.resume)
    run_dir = paths.resume / "policy"
    affines = list(models.reward_models.mixtures.values())
    if affines and is_main_process():  # published with the policy: evaluate scores with the same affine
        run_dir.mkdir(parents=True, exist_ok=True)
        write_affine(run_dir, affines[0])
    this_rank = rank()
    if world_size > 1:
        logger.info(
            "rank %d/%d: %d rollouts per step of the %d in each global batch",
            this_rank,
            world_size,
            config.rollout_batch_size,
            config.rollout_batch_size * world_size,
        )
    metrics: dict[str, float] = step_log.rows[-1] if step_log.rows else {}
    for step in tqdm(range(first_step, config.steps), desc=name, unit="step", initial=first_step, total=config.steps):
        batch_prompts = rollout_prompts(
            prompts, step=step, rank=this_rank, world_size=world_size, rollout_batch_size=config.rollout_batch_size
        )
        if this_rank > 0:  # rank 0 keeps the single-process stream; the others get their own, per step
            seed_everything(rank_sampling_seed(seed, rank=this_rank, step=step))
        metrics = mean_over_ranks(
            ppo_step(
                step,
                actor,
                critic,
                models.ref_model,
                models.reward_models,
                models.tokenizer,
                batch_prompts,
                method=method_params,
                normalizer=normalizer,
                config=config,
                aggregation=params.aggregation,
                max_prompt_tokens=max_prompt_tokens,
            )
        )
        # A diverged step is never checkpointed: the last checkpoint stays the last good one.
        check_ppo_step(
            metrics,
            weight_norm=weight_norm(actor),
            initial_weight_norm=initial_weight_norm,
            guards=config.guards,
            phase=name,
            step=step,
        )
        if critic is not None:
            check_finite("critic weights", torch.tensor(weight_norm(critic)), phase=name, step=step)
        warnings = []
        if monitor is not None:
            signals, warnings = monitor.observe(step, metrics)
            metrics = {**metrics, **signals}
            for warning in warnings if is_main_process() else []:
                logger.warning(
                    "%s: reward-hacking warning at step %d: %s = %.4g crossed its threshold %g",
                    name,
                    step,
                    warning["signal"],
                    warning["value"],
                    warning["threshold"],
                )
        if is_main_process():
            step_log.log(step, metrics)
        if warnings and config.monitor.stop_on_warning:
            if is_main_process():
                atomic_write_json(run_dir / MONITOR_FILE, monitor.summary())
            check_no_warning(warnings, phase=name)  # before this step's checkpoint: the last one stays good
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            state = policy_state_dict(full_state_dict(actor))
            if is_main_process():
                save_policy_checkpoint(policy_module(actor), models.tokenizer, state, run_dir, done)
            # Engines with optimizer states are GBs: saved every `resume_every` steps, not every checkpoint.
            if done % config.resume_every == 0 and done < config.steps:
                save_state(
                    paths.resume,
                    engines,
                    step=done,
                    key=key,
                    outputs=[paths.policy],
                    stage_state={
                        "normalizer": normalizer.state(),
                        "step_log": step_log.rows,
                        "reward_affine": asdict(affines[0]) if affines else None,
                        **({"monitor": monitor.state()} if monitor is not None else {}),
                    },
                )
    if is_main_process():
        if monitor is not None:
            atomic_write_json(run_dir / MONITOR_FILE, monitor.summary())
        # The final policy's card; evaluate has not run yet, so `stages.export_policy` adds the study's numbers.
        final = run_dir / read_checkpoints(run_dir)[-1]["path"]
        atomic_write_text(final / CARD_FILE, model_card(card_facts(params, method, seed)))
        publish_directory(run_dir, paths.policy)
        shutil.rmtree(paths.resume, ignore_errors=True)
    return {
        "method": method,
        "seed": seed,
        "reward_model": method_params.reward_model,
        "aggregation": method_params.aggregation,
        "steps": config.steps,
        "world_size": world_size,
        "value_model": config.value_model,
        "reward_normalization": {
            "mode": config.reward_normalization,
            "reference_mean": normalizer.reference_mean,
            "reference_std": normalizer.reference_std,
        },
        **({"reward_affine": asdict(affines[0])} if affines else {}),
        "final": metrics,
    }


def initial_scores(params: Params, models: PPOModels, prompts: list[str], *, fixed_seed: bool) -> dict:
    """Every reward model's scores of the initial policy's samples for the PPO prompts. With `fixed_seed`
    (a mixture, centred on them) they are drawn from params `seed`, not the run's: every PPO seed of a
    method fits the same affine, and the run's own random stream is left as it was."""

    def sampled() -> dict:
        return reference_scores(
            models.ref_model,
            models.reward_models,
            models.tokenizer,
            prompts,
            config=params.ppo,
            max_prompt_tokens=params.prepare.max_prompt_tokens,
        )

    if not fixed_seed:
        return sampled()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(params.seed)  # sampling draws from torch's generators alone
        return sampled()


def start_monitor(
    params: Params,
    models: PPOModels | None,
    prompts: list[str],
    data: Path,
    normalizer: RewardNormalizer,
    method: MethodParams,
    scores: dict | None,
) -> RewardHackingMonitor:
    """The run's reward-hacking monitor with its baselines: the heads' disagreement on the val pairs and
    the method's reference moments. On a resume (`models` None) the baselines come from the state.
    `scores` are the initial policy's samples' scores when the run drew them (reference normalisation,
    a mixture); otherwise they are drawn here from params `seed` under a forked RNG (`initial_scores`),
    so the run's own random stream (and so its rollouts) is the one it has without the monitor."""
    config = params.ppo.monitor
    in_distribution: dict[str, float] = {}
    reference = (0.0, 1.0)
    if models is not None:
        in_distribution = val_disagreement(
            models.reward_models, read_jsonl(data / "prefs_val.jsonl"), batch_size=params.ppo.rollout_batch_size
        )
        if params.ppo.reward_normalization == "reference":
            reference = (normalizer.reference_mean, normalizer.reference_std)
        else:
            if scores is None:
                scores = initial_scores(params, models, prompts, fixed_seed=True)
            reference = reference_reward_moments(scores, method, aggregation=params.aggregation)
    return RewardHackingMonitor(
        thresholds=config.thresholds.model_dump(),
        window=config.window,
        in_distribution=in_distribution,
        reference=reference,
    )


def val_disagreement(reward_models: RewardModels, pairs: list[dict], *, batch_size: int) -> dict[str, float]:
    """Each multi-head reward model's in-distribution disagreement: the mean over the val pairs' chosen
    and rejected responses of the heads' std of mu (`head_disagreement`)."""
    prompts = [pair["prompt"] for pair in pairs] * 2
    responses = [pair["chosen"] for pair in pairs] + [pair["rejected"] for pair in pairs]
    scores = reward_models.score(prompts, responses, batch_size=batch_size)
    return {kind: float(head_disagreement(mu).mean()) for kind, (mu, _) in scores.items() if mu.shape[1] >= 2}
