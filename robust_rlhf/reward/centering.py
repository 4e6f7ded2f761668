"""Centring and scaling reward models before they are aggregated, and the anchors of the BRME's
stage-2 heads (docs/method.md). Torch only.

A Bradley-Terry or Thurstone likelihood sees only reward differences, so each trained reward model
carries an arbitrary offset (and, for members trained apart, its own scale). Aggregations across
models (min, uwo, kl_dro, nominal) mix those offsets unless each model is first put on a common
footing: here an affine map fitted on the reference responses (the responses the models were
trained on), folded into the last linear layer so that every later score is already centred.
"""

from __future__ import annotations

import math

import torch

# Each Gaussian head starts believing every reward carries this much noise; the data move it.
SIGMA_START = 0.5


def centring_affine(rewards: torch.Tensor, *, scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per model m, the offset and scale that map its rewards on the reference responses to mean 0
    (and, with `scale`, population std 1): r' = (r - offset_m) / scale_m.

    Args:
        rewards: (N, M) rewards of N reference responses under M models.
    Returns:
        offset (M,), scale (M,) (ones without `scale`; a zero spread keeps scale 1).
    """
    offset = rewards.mean(dim=0)
    if not scale:
        return offset, torch.ones_like(offset)
    spread = rewards.std(dim=0, unbiased=False)
    return offset, torch.where(spread > 0, spread, torch.ones_like(spread))


def fold_affine(
    weight: torch.Tensor, bias: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear layer whose outputs are (w.h + b - offset) / scale. weight (M, H), bias, offset,
    scale (M,) -> weight (M, H), bias (M,)."""
    return weight / scale[:, None], (bias - offset) / scale


def feature_rms(features: torch.Tensor) -> float:
    """sqrt(mean_n ||h_n - mean h||^2) of pooled features (N, H): the scale that turns a prior on a
    head's output into a per-weight prior (Var(delta_w . h) = std_w^2 ||h||^2 for isotropic delta_w)."""
    return float((features - features.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt())


def anchored_heads(
    stage1_weight: torch.Tensor,
    stage1_bias: torch.Tensor,
    features: torch.Tensor,
    *,
    num_heads: int,
    prior_scale: float,
    sigma_min: float,
    seed: int,
) -> tuple[dict[str, torch.Tensor], float]:
    """Random anchors of k Gaussian heads around the stage-1 head (anchored ensembles, Pearce et al.
    2018), and the per-weight prior std.

    prior_std = prior_scale * std_n(r_hat(h_n)) / feature_rms(h): the prior moves a head's reward on
    the training responses by about `prior_scale` times the spread of the stage-1 reward.
    mu_weight_i = w_stage1 + prior_std * eps_i, mu_bias_i = b_stage1; s_weight_i = prior_std * eps'_i;
    s_bias such that every head starts at sigma = `SIGMA_START` (a start only: the biases are free).

    Args:
        stage1_weight: (1, H), stage1_bias: (1,) of the stage-1 Bradley-Terry head.
        features: (N, H) pooled features of the training responses.
    Returns:
        anchors {mu_weight (k, H), mu_bias (k,), s_weight (k, H), s_bias (k,)}, prior_std.
    """
    stage1_reward = features @ stage1_weight[0] + stage1_bias[0]
    prior_std = prior_scale * float(stage1_reward.std(unbiased=False)) / max(feature_rms(features), 1e-12)
    generator = torch.Generator().manual_seed(seed)
    hidden = features.shape[1]
    s_start = _softplus_inverse(SIGMA_START - sigma_min)
    anchors = {
        "mu_weight": stage1_weight.expand(num_heads, hidden)
        + prior_std * torch.randn(num_heads, hidden, generator=generator),
        "mu_bias": stage1_bias.expand(num_heads).clone(),
        "s_weight": prior_std * torch.randn(num_heads, hidden, generator=generator),
        "s_bias": torch.full((num_heads,), s_start),
    }
    return anchors, prior_std


def _softplus_inverse(value: float) -> float:
    """x with softplus(x) = value > 0."""
    return value + math.log(-math.expm1(-value))
