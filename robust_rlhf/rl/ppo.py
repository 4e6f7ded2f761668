"""PPO on a robust reward: rollout -> score heads -> aggregate -> KL-shaped reward -> GAE ->
whiten -> minibatch epochs of clipped losses -> log (Ziegler et al. 2019; docs/method.md#the-robust-objective).

Actor and critic are DeepSpeed engines; the reference policy and the reward model are frozen. The
critic is a separate model, or (`ppo.value_model: shared`) a value head on the actor's backbone, in
which case the actor engine wraps a `PolicyWithValueHead` and there is no critic engine. Under
`ppo.lora` actor and critic train adapters, and the reference is the actor with them disabled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robust_rlhf.config import AggregationParams, LoRAParams, MethodParams, PPOParams
from robust_rlhf.generation import (
    decode,
    encode_prompts,
    forward_response,
    response_inputs,
    response_logits_to_keep,
    response_logprobs,
    sample,
    sample_responses,
    truncated,
)
from robust_rlhf.lora import AdaptersDisabled, add_lora
from robust_rlhf.reward.metrics import head_disagreement, head_shares
from robust_rlhf.reward.scoring import RewardModels, every_aggregation, method_rewards
from robust_rlhf.rl.gae import gae
from robust_rlhf.rl.kl import kl_k1, sequence_kl
from robust_rlhf.rl.losses import kl_shaped_rewards, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss
from robust_rlhf.rl.normalization import RewardNormalizer
from robust_rlhf.runtime.distributed import gather_from_ranks, gathered_for_generation
from robust_rlhf.runtime.guards import Diverged, check_finite


@dataclass
class Rollout:
    """What the PPO update reads of one rollout. Token tensors are (B, Tq) for queries and (B, T) for
    responses."""

    query_ids: torch.Tensor  # (B, Tq) left-padded
    query_mask: torch.Tensor  # (B, Tq)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (B, T) under the actor that sampled
    values: torch.Tensor  # (B, T) critic values at sampling time
    advantages: torch.Tensor  # (B, T) whitened
    returns: torch.Tensor  # (B, T) value targets


class ValueModel(nn.Module):
    """Critic: a causal-LM backbone with a scalar head giving V(s_t) at every position."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # start from V = 0: no early bias in the advantages
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()  # (B, L)


class PolicyWithValueHead(nn.Module):
    """Actor with a shared-backbone critic: the causal LM and a scalar head on its final hidden state
    (as TRL's former `AutoModelForCausalLMWithValueHead`). `forward` returns the logits and the
    values of the last `logits_to_keep` positions."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at the start, as the separate critic's
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids, attention_mask, position_ids, logits_to_keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            output_hidden_states=True,
        )
        return output.logits, self.values(output.hidden_states[-1][:, -logits_to_keep:])

    def values(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """V from the final hidden states: (B, L, H) -> (B, L)."""
        return self.value_head(last_hidden).squeeze(-1).float()


def build_actor_critic(
    load_policy, load_backbone, value_model: str, *, lora: LoRAParams
) -> tuple[nn.Module, nn.Module | None]:
    """The actor module and the critic module (None when the value head shares the actor's backbone).
    `load_policy()` / `load_backbone()` load fresh copies of the initial policy and of its backbone.
    With `lora.enabled` each of them carries its own adapters and only those (and the value heads,
    added after, so never frozen) train."""
    if lora.enabled:
        load_policy = _adapted(load_policy, lora)
        load_backbone = _adapted(load_backbone, lora)
    if value_model == "shared":
        return PolicyWithValueHead(load_policy()), None
    return load_policy(), ValueModel(load_backbone())


def _adapted(load, lora: LoRAParams):
    return lambda: add_lora(load(), lora)


def reference_policy(actor) -> nn.Module:
    """Under `ppo.lora`, the reference policy: the actor's own causal LM with its adapters disabled, i.e.
    the initial policy, with no second copy of its weights."""
    return AdaptersDisabled(policy_module(actor))


def policy_module(actor) -> nn.Module:
    """The causal LM inside an actor engine (without the shared value head, if any)."""
    module = actor.module
    return module.policy if isinstance(module, PolicyWithValueHead) else module


def policy_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The causal LM's part of an actor's state dict (keys of `PolicyWithValueHead.policy`, unprefixed)."""
    if not any(key.startswith("value_head.") for key in state):
        return state
    return {key.removeprefix("policy."): value for key, value in state.items() if key.startswith("policy.")}


def response_logprobs_and_values(
    actor, query_ids, query_mask, response_ids, response_mask, *, with_entropy: bool = False, temperature: float = 1.0
):
    """One forward of a `PolicyWithValueHead` engine over [query; response]: log-probs (B, T), entropy
    (B, T) or None, and V of the state before each response token (B, T), as `forward_response` and
    `response_values` give them from two models."""
    logits, values = actor(
        **response_inputs(query_ids, query_mask, response_ids, response_mask),
        logits_to_keep=response_logits_to_keep(response_ids),
    )
    return (
        *response_logprobs(logits, response_ids, with_entropy=with_entropy, temperature=temperature),
        values[:, :-1],
    )


def response_values(critic, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
    """V of the state before each response token: the critic at column Tq - 1 + t. -> (B, T)."""
    values = critic(**response_inputs(query_ids, query_mask, response_ids, response_mask))
    return values[:, query_ids.shape[1] - 1 : -1]


def check_scores_finite(scores: dict[str, tuple[torch.Tensor, torch.Tensor]], *, step: int) -> None:
    """Stop naming the reward model whose mu or sigma (B, k) broke, before anything aggregates them."""
    for kind, (mu, sigma) in scores.items():
        check_finite(f"reward_model/{kind}/mu", mu, phase="ppo", step=step)
        check_finite(f"reward_model/{kind}/sigma", sigma, phase="ppo", step=step)


@torch.inference_mode()
def reference_scores(
    policy,
    reward_models: RewardModels,
    tokenizer,
    prompts: list[str],
    *,
    config: PPOParams,
    max_prompt_tokens: int,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every reward model's (mu, sigma) (N, heads) on the initial policy's samples for `prompts`,
    sampled in rollout-sized batches: what the `reference` normalisation's moments and a mixture's
    centring are fitted on."""
    device = next(policy.parameters()).device
    batches = []
    for start in range(0, len(prompts), config.rollout_batch_size):
        batch = prompts[start : start + config.rollout_batch_size]
        query_ids, query_mask = (
            t.to(device) for t in encode_prompts(tokenizer, batch, max_prompt_tokens=max_prompt_tokens)
        )
        with gathered_for_generation(policy):
            response_ids, response_mask = sample_responses(
                policy,
                query_ids,
                query_mask,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        scores = reward_models.score(batch, decode(tokenizer, response_ids, response_mask), batch_size=len(batch))
        check_scores_finite(scores, step=0)
        batches.append(scores)
    return {kind: tuple(torch.cat([scores[kind][i] for scores in batches]) for i in range(2)) for kind in batches[0]}


def reference_reward_moments(
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]], method: MethodParams, *, aggregation: AggregationParams
) -> tuple[float, float]:
    """Mean and (population) std of a method's reward on the initial policy's samples' `scores` (the
    `reference` normalisation); std 1 for a single sample."""
    reward = method_rewards(scores, {"reference": method}, aggregation)["reference"]
    return float(reward.mean()), float(reward.std(unbiased=False)) if reward.numel() > 1 else 1.0


def rollout_prompts(prompts: list[str], *, step: int, rank: int, world_size: int, rollout_batch_size: int) -> list[str]:
    """The prompts rank `rank` rolls out at `step`: the set is read in order, cycling, one
    `rollout_batch_size` block per (step, rank), so a run is a pure function of params and seed and
    ranks never share a block within a step."""
    start = ((step * world_size + rank) * rollout_batch_size) % len(prompts)
    return [prompts[(start + i) % len(prompts)] for i in range(rollout_batch_size)]


def rank_sampling_seed(seed: int, *, rank: int, step: int) -> int:
    """A sampling seed for data-parallel rank > 0 at `step`: distinct per (seed, rank, step) and the same
    after a resume, without touching rank 0's stream (which equals a single-process run's)."""
    return (seed * 1_000_003 + rank * 10_007 + step) % 2**31


def ppo_step(
    step: int,
    actor,
    critic,
    ref_model,
    reward_models: RewardModels,
    tokenizer,
    prompts: list[str],
    *,
    method: MethodParams,
    normalizer: RewardNormalizer,
    config: PPOParams,
    aggregation: AggregationParams,
    max_prompt_tokens: int,
) -> dict[str, float]:
    """One PPO iteration on `prompts` optimising `method`'s reward. `actor`, `critic` are DeepSpeed
    engines; `critic` is None when the actor carries the value head (`PolicyWithValueHead`). Returns
    the step's metrics."""
    device = actor.device
    shared_value_head = critic is None
    # 1. Rollout with the current policy. The old log-probs (and a shared head's input) come from
    # the sampler's own pass, not a second forward of the actor.
    actor.eval()
    query_ids, query_mask = (
        t.to(device) for t in encode_prompts(tokenizer, prompts, max_prompt_tokens=max_prompt_tokens)
    )
    with gathered_for_generation(policy_module(actor)):
        try:
            sampled = sample(
                policy_module(actor),
                query_ids,
                query_mask,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                with_logprobs=True,
                with_hidden=shared_value_head,
            )
        except Diverged as error:  # the policy's logits broke: name the step, keep the last good checkpoint
            raise Diverged(f"ppo: rollout at step {step}: {error}; the last checkpoint is the last good one") from None
    response_ids, response_mask, logprobs = sampled.ids, sampled.mask, sampled.logprobs
    responses = decode(tokenizer, response_ids, response_mask)
    with torch.inference_mode():
        # The reference at the sampling temperature too (as TRL): the KL penalty compares the same
        # tempered distributions the ratio does.
        ref_logprobs, _ = forward_response(
            ref_model, query_ids, query_mask, response_ids, response_mask, temperature=config.temperature
        )
        if shared_value_head:
            values = actor.module.values(sampled.last_hidden)
        else:
            values = response_values(critic.module, query_ids, query_mask, response_ids, response_mask)
    # 2. Score with every reward model's heads, 3. aggregate (this method's, and every other for the log).
    scores = reward_models.score(prompts, responses, batch_size=len(prompts))
    check_scores_finite(scores, step=step)
    raw_reward = method_rewards(scores, {"optimised": method}, aggregation)["optimised"]
    check_finite("reward/optimised", raw_reward, phase="ppo", step=step)
    # `running` moments see every rank's rewards, so all ranks normalise alike; the other modes need none.
    population = gather_from_ranks(raw_reward) if normalizer.mode == "running" else None
    reward = normalizer(raw_reward, population=population).to(device)
    # 4. KL-shaped per-token reward, 5. GAE, 6. whiten.
    mask = response_mask.to(logprobs.dtype)
    kl_per_token = kl_k1(logprobs, ref_logprobs)
    token_rewards = kl_shaped_rewards(reward, kl_per_token, mask, kl_coef=config.kl_coef)
    advantages, returns = gae(token_rewards, values, mask, gamma=config.gamma, lam=config.gae_lambda)
    rollout = Rollout(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs.clone(),
        values=values.clone(),
        advantages=masked_whiten(advantages, mask),
        returns=returns.clone(),
    )
    # 7. Minibatch epochs of clipped policy and value losses.
    update = ppo_update(step, actor, critic, rollout, config)
    # 8. Log: the reward under every aggregation, not only the one optimised.
    kl_k1_sum = (kl_per_token * mask).sum(dim=1)
    metrics = {
        **{f"reward/{name}": float(value.mean()) for name, value in every_aggregation(scores, aggregation).items()},
        "reward/optimised": float(raw_reward.mean()),
        "reward/normalised": float(reward.mean()),
        # `objective/kl` is the study's one KL (evaluate's too): the per-token k3 summed over the response.
        "objective/kl": float(sequence_kl(logprobs, ref_logprobs, mask, estimator="k3").mean()),
        "objective/kl_k1": float(kl_k1_sum.mean()),
        "objective/kl_penalty": float(-config.kl_coef * kl_k1_sum.mean()),
        "response/truncated": float(truncated(response_ids, response_mask, tokenizer.eos_token_id).float().mean()),
        **head_usage(scores),
        "response/length": float(mask.sum(dim=1).mean()),
        **update,
    }
    return metrics


def head_usage(scores: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """How the multi-head reward models see a batch: the BRME's mean sigma, each model's mean head
    disagreement, and the share of samples on which each head is the min (and, for the BRME, nominal:
    the smallest sigma), so a reader sees whether one head or member decides the robust rewards."""
    usage = {"reward_model/brme/mean_sigma": float(scores["brme"][1].mean())}
    for kind, (mu, sigma) in scores.items():
        if mu.shape[1] < 2:
            continue
        usage[f"reward_model/{kind}/head_disagreement"] = float(head_disagreement(mu).mean())
        usage.update({f"reward_model/{kind}/min_share_{i}": share for i, share in enumerate(head_shares(mu))})
        if kind == "brme":
            usage.update({f"reward_model/brme/nominal_share_{i}": share for i, share in enumerate(head_shares(sigma))})
    return usage


def ppo_update(step: int, actor, critic, rollout: Rollout, config: PPOParams) -> dict[str, float]:
    """`ppo_epochs` passes over the rollout in shuffled micro-batches; DeepSpeed accumulates
    `gradient_accumulation_steps` micro-batches per optimizer step. Returns mean losses and stats."""
    actor.train()
    if critic is not None:
        critic.train()
    totals: dict[str, float] = {}
    batch_size = rollout.response_ids.shape[0]
    # Minibatch order is a function of the run's seed (torch.manual_seed at stage start) and the step.
    generator = torch.Generator().manual_seed((torch.initial_seed() * 1_000_003 + step) % 2**63)
    for _ in range(config.ppo_epochs):
        for rows in torch.randperm(batch_size, generator=generator).split(config.micro_batch_size):
            mask = rollout.response_mask[rows]
            batch = (rollout.query_ids[rows], rollout.query_mask[rows], rollout.response_ids[rows], mask)

            def policy_loss_of(logprobs, rows=rows, mask=mask):
                loss, clip_fraction = ppo_policy_loss(
                    logprobs, rollout.logprobs[rows], rollout.advantages[rows], mask, clip_range=config.clip_range
                )
                check_finite("loss/policy", loss, phase="ppo", step=step)
                return loss, clip_fraction

            def value_loss_of(values, rows=rows, mask=mask):
                loss, clip_fraction = ppo_value_loss(
                    values, rollout.values[rows], rollout.returns[rows], mask, clip_range_value=config.clip_range_value
                )
                check_finite("loss/value", loss, phase="ppo", step=step)
                return loss, clip_fraction

            if critic is None:  # shared backbone: one forward gives both, one backward trains both
                logprobs, entropy, values = response_logprobs_and_values(
                    actor, *batch, with_entropy=True, temperature=config.temperature
                )
                policy_loss, clip_fraction = policy_loss_of(logprobs)
                value_loss, value_clip_fraction = value_loss_of(values)
                actor.backward(policy_loss + config.value_loss_coef * value_loss)
                actor.step()
            else:
                logprobs, entropy = forward_response(actor, *batch, with_entropy=True, temperature=config.temperature)
                policy_loss, clip_fraction = policy_loss_of(logprobs)
                actor.backward(policy_loss)
                actor.step()
                value_loss, value_clip_fraction = value_loss_of(response_values(critic, *batch))
                critic.backward(value_loss)
                critic.step()

            with torch.no_grad():
                approx_kl_old = masked_mean(0.5 * (logprobs - rollout.logprobs[rows]) ** 2, mask)
                batch_stats = {
                    "loss/policy": policy_loss,
                    "loss/value": value_loss,
                    "policy/clipfrac": clip_fraction,
                    "critic/clipfrac": value_clip_fraction,
                    "policy/entropy": masked_mean(entropy, mask),
                    "policy/approx_kl_to_old": approx_kl_old,
                }
            for key, value in batch_stats.items():
                totals[key] = totals.get(key, 0.0) + value.item()
    num_batches = config.ppo_epochs * len(torch.arange(batch_size).split(config.micro_batch_size))
    return {key: value / num_batches for key, value in totals.items()}
