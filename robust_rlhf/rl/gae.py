"""Generalised advantage estimation (Schulman et al. 2016, eq. 11-16) over masked token sequences."""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by GAE for each response token.

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},
    where V_{t+1} and A_{t+1} count as 0 past the end of a response (mask 0). The mask must be a
    prefix of ones per row (a response ends once). Returns R_t = A_t + V_t as the value target.

    Args:
        rewards: (B, T) per-token rewards (KL penalty, plus the sequence reward on the last token).
        values: (B, T) critic values of the states before each response token.
        mask: (B, T) 1 on response tokens, 0 on padding after the end.
    Returns:
        advantages (B, T), returns (B, T); both 0 where mask is 0.
    """
    mask = mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    # A reverse-time loop over T, vectorised over the batch; T is the response length (tens to
    # hundreds), so this is not a hot spot next to the model forwards.
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns
