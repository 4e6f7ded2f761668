"""PPO losses and masked statistics (Schulman et al. 2017; Ziegler et al. 2019 for the RLHF form).

Shapes: (B, T) over response tokens, with a (B, T) mask that is 1 on real response tokens.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over positions where mask is 1. (B, T), (B, T) -> scalar."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to zero mean, unit variance over masked positions; masked-out positions become 0.

    Used on advantages before the policy loss (as in Ziegler et al. 2019 and TRL). (B, T) -> (B, T).
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate objective, PPO eq. 7, as a loss to minimise.

    ratio = exp(log pi - log pi_old); loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).
    Returns (loss, clip_fraction), the fraction of tokens where the clipped term was the active one.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return loss, clip_fraction


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in OpenAI baselines' PPO2 and Ziegler et al. 2019).

    V_clip = V_old + clip(V - V_old, -eps_v, eps_v);
    loss = 0.5 * mean(max((V - R)^2, (V_clip - R)^2)). Returns (loss, value_clip_fraction).
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clip_fraction = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clip_fraction


def kl_shaped_rewards(
    sequence_reward: torch.Tensor, kl_per_token: torch.Tensor, mask: torch.Tensor, *, kl_coef: float
) -> torch.Tensor:
    """Per-token PPO rewards: -beta * KL_t on every token, plus the sequence reward on the last one.

    Ziegler et al. 2019 eq. 2. sequence_reward: (B,); kl_per_token, mask: (B, T) -> (B, T).
    """
    rewards = -kl_coef * kl_per_token * mask.to(kl_per_token.dtype)
    last_index = (mask.sum(dim=1).long() - 1).clamp_min(0)  # (B,) index of each response's last token
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0]), last_index] += sequence_reward
    return rewards
