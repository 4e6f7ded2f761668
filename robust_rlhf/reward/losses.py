"""Reward-model losses: Bradley-Terry (BRME stage 1), the stage-2 losses of our reconstruction and
the anchored-ensemble prior (docs/method.md; the paper's own stage-2 recipe is not public).

Import-light on purpose (torch only) so the math is testable without DeepSpeed or transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, docs/method.md#brme, stage 1.

    L_BT = -mean log sigmoid(r(x, y_chosen) - r(x, y_rejected)).

    Args:
        reward_chosen: (B,) rewards of the preferred responses.
        reward_rejected: (B,) rewards of the dispreferred responses.
    Returns:
        scalar loss.
    """
    # logsigmoid is the numerically stable form of log(sigmoid(.)) for large margins.
    return -F.logsigmoid(reward_chosen - reward_rejected).mean()


def bradley_terry_heads_loss(
    reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, sample_weight: torch.Tensor
) -> torch.Tensor:
    """Bradley-Terry NLL of M reward heads at once, head m on its own bootstrap weights (bagging):
    -log sigmoid(r_chosen - r_rejected) per pair and head, the weighted mean over pairs per head,
    then the mean over heads. With all weights 1 and M = 1 it is `bradley_terry_loss`.

    Args:
        reward_chosen, reward_rejected, sample_weight: (B, M).
    Returns:
        scalar loss.
    """
    return _bootstrap_mean(-F.logsigmoid(reward_chosen - reward_rejected), sample_weight)


def thurstone_probability(
    mu_chosen: torch.Tensor,
    sigma_chosen: torch.Tensor,
    mu_rejected: torch.Tensor,
    sigma_rejected: torch.Tensor,
    *,
    noise_floor: float,
) -> torch.Tensor:
    """P(chosen > rejected) when each reward is Gaussian (Thurstone 1927, case III):

    P = Phi((mu_c - mu_r) / sqrt(sigma_c^2 + sigma_r^2 + s0^2)), s0 = `noise_floor`.

    Shapes broadcast; a larger sigma pulls P toward 1/2, which is how sigma explains label noise.
    """
    return torch.special.ndtr(_thurstone_z(mu_chosen, sigma_chosen, mu_rejected, sigma_rejected, noise_floor))


def thurstone_nll_loss(
    mu_chosen: torch.Tensor,
    sigma_chosen: torch.Tensor,
    mu_rejected: torch.Tensor,
    sigma_rejected: torch.Tensor,
    sample_weight: torch.Tensor,
    *,
    noise_floor: float,
) -> torch.Tensor:
    """BRME stage-2 loss `thurstone` (our reconstruction): the heads' Gaussian rewards fitted to the
    preference labels. Per head i and pair n, -log Phi(z_ni) with z as in `thurstone_probability`,
    averaged over pairs with head i's bootstrap weights, then over heads.

    Unlike regressing the stage-1 reward, the optimum is not shared by every head: each head sees
    its own resample, and sigma_i(x, y) grows where the labels disagree with any mean.

    Args:
        mu_chosen, sigma_chosen, mu_rejected, sigma_rejected: (B, k).
        sample_weight: (B, k) bootstrap counts of each pair for each head.
    Returns:
        scalar loss.
    """
    z = _thurstone_z(mu_chosen, sigma_chosen, mu_rejected, sigma_rejected, noise_floor)
    # log_ndtr is exact far into the tail, where a mis-ranked confident pair costs ~ z^2 / 2.
    return _bootstrap_mean(-torch.special.log_ndtr(z), sample_weight)


def _thurstone_z(mu_chosen, sigma_chosen, mu_rejected, sigma_rejected, noise_floor: float) -> torch.Tensor:
    return (mu_chosen - mu_rejected) / torch.sqrt(sigma_chosen**2 + sigma_rejected**2 + noise_floor**2)


def gaussian_nll_loss(
    mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor
) -> torch.Tensor:
    """BRME stage-2 loss `gaussian_nll`: MSE onto the stage-1 reward with a learned sigma.

    Per head i and response n: 0.5 * ((r_hat_n - mu_ni) / sigma_ni)^2 + log sigma_ni, averaged over
    responses with head i's bootstrap weights, then averaged over heads.

    Degenerate with a frozen backbone (docs/method.md): r_hat is itself a linear map of the features
    every head sees, so mu_i = r_hat for every head and every resample, and sigma sits at its floor.
    Kept selectable to show that, never the default.

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
    """BRME stage-2 loss `bt_sampled` (our reconstruction): the Bradley-Terry marginal likelihood
    over Gaussian rewards, by Monte Carlo.

    r_i,s = mu_i + sigma_i * eps_s, eps_s ~ N(0, 1); per head and pair
    -log (1/S) sum_s sigmoid(r_chosen,s - r_rejected,s), then the bootstrap-weighted mean over pairs
    and the mean over heads. The log sits outside the mean: averaging -log sigmoid over samples
    instead makes a larger sigma always cost more (Jensen), so sigma would sit at its floor.

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
    log_likelihood = torch.logsumexp(F.logsigmoid(r_chosen - r_rejected), dim=0) - math.log(eps_chosen.shape[0])
    return _bootstrap_mean(-log_likelihood, sample_weight)


def anchor_penalty(
    weights: list[torch.Tensor], anchors: list[torch.Tensor], *, prior_std: float, num_items: int
) -> torch.Tensor:
    """The anchored-ensemble prior term (Pearce et al. 2018), per training item.

    Head i's MAP under a Gaussian prior N(anchor_i, prior_std^2 I) centred on its own random anchor
    adds 0.5 * ||(theta_i - anchor_i) / prior_std||^2 to the summed NLL; divided by the N training
    items it sits beside a mean NLL. Summed over parameter groups, averaged over heads (as the
    stage-2 losses average over heads).

    Args:
        weights, anchors: matching lists of (k, ...) tensors, dim 0 the head.
        prior_std: per-element prior standard deviation, > 0.
        num_items: N, the training items the NLL averages over.
    Returns:
        scalar penalty.
    """
    per_head = sum(((w - a) ** 2).flatten(1).sum(dim=1) for w, a in zip(weights, anchors))  # (k,)
    return 0.5 * per_head.mean() / (prior_std**2 * num_items)


def l2_penalty(weight: torch.Tensor, *, l2_coef: float) -> torch.Tensor:
    """0.5 * lambda * ||w_m||^2 averaged over the M heads of a (M, H) weight: the Gaussian prior
    N(0, 1 / (lambda N)) per weight beside a mean NLL over N items (ridge / MAP logistic regression)."""
    return 0.5 * l2_coef * weight.pow(2).sum(dim=1).mean()


def _bootstrap_mean(per_item: torch.Tensor, sample_weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over items per head, then plain mean over heads. per_item, sample_weight: (N, k)."""
    per_head = (per_item * sample_weight).sum(dim=0) / sample_weight.sum(dim=0).clamp_min(1e-12)
    return per_head.mean()


def preference_probability(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """P(chosen > rejected) under Bradley-Terry: sigmoid(r_chosen - r_rejected). Shapes broadcast."""
    return torch.sigmoid(reward_chosen - reward_rejected)
