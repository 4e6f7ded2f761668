"""Reward-model losses: Bradley-Terry (BRME stage 1) and the two stage-2 losses of our reconstruction.

Import-light on purpose (torch only) so the math is testable without DeepSpeed or transformers.
See ../shared/PAPER.md §2 for what is the paper's and what is our reconstruction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, PAPER.md §2 stage 1.

    L_BT = -mean log sigmoid(r(x, y_chosen) - r(x, y_rejected)).

    Args:
        reward_chosen: (B,) rewards of the preferred responses.
        reward_rejected: (B,) rewards of the dispreferred responses.
    Returns:
        scalar loss.
    """
    # logsigmoid is the numerically stable form of log(sigmoid(.)) for large margins.
    return -F.logsigmoid(reward_chosen - reward_rejected).mean()


def gaussian_nll_loss(
    mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor
) -> torch.Tensor:
    """BRME stage-2 loss `gaussian_nll` (our reconstruction, PAPER.md §2): MSE with a learned sigma.

    Per head i and response n: 0.5 * ((r_hat_n - mu_ni) / sigma_ni)^2 + log sigma_ni, averaged over
    responses with head i's bootstrap weights, then averaged over heads.

    Args:
        mu: (N, k) head means.
        sigma: (N, k) head standard deviations, > 0.
        target: (N,) stage-1 reward r_hat of each response.
        sample_weight: (N, k) bootstrap counts of each response for each head.
    Returns:
        scalar loss.
    """
    per_item = 0.5 * ((target[:, None] - mu) / sigma) ** 2 + torch.log(sigma)  # (N, k)
    return _bootstrap_mean(per_item, sample_weight)


def bt_sampled_loss(
    mu_chosen: torch.Tensor,
    sigma_chosen: torch.Tensor,
    mu_rejected: torch.Tensor,
    sigma_rejected: torch.Tensor,
    eps_chosen: torch.Tensor,
    eps_rejected: torch.Tensor,
    sample_weight: torch.Tensor,
) -> torch.Tensor:
    """BRME stage-2 loss `bt_sampled` (our reconstruction, PAPER.md §2): BT on reparameterised samples.

    r_i = mu_i + sigma_i * eps, eps ~ N(0, 1); the BT loss -log sigmoid(r_chosen - r_rejected) is
    averaged over the S noise samples, over pairs with head i's bootstrap weights, then over heads.

    Args:
        mu_chosen, sigma_chosen, mu_rejected, sigma_rejected: (B, k).
        eps_chosen, eps_rejected: (S, B, k) standard normal noise, drawn by the caller so the
            function stays pure.
        sample_weight: (B, k) bootstrap counts of each pair for each head.
    Returns:
        scalar loss.
    """
    r_chosen = mu_chosen + sigma_chosen * eps_chosen  # (S, B, k)
    r_rejected = mu_rejected + sigma_rejected * eps_rejected
    per_item = -F.logsigmoid(r_chosen - r_rejected).mean(dim=0)  # (B, k)
    return _bootstrap_mean(per_item, sample_weight)


def _bootstrap_mean(per_item: torch.Tensor, sample_weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over items per head, then plain mean over heads. per_item, sample_weight: (N, k)."""
    per_head = (per_item * sample_weight).sum(dim=0) / sample_weight.sum(dim=0).clamp_min(1e-12)
    return per_head.mean()


def preference_probability(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """P(chosen > rejected) under Bradley-Terry: sigmoid(r_chosen - r_rejected). Shapes broadcast."""
    return torch.sigmoid(reward_chosen - reward_rejected)
