"""Reward aggregations over the heads of an ensemble: one registry, each a pure function of (mu, sigma).

docs/method.md#aggregations. Every function takes mu, sigma of shape (B, k) and returns (B,).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

AggregationFn = Callable[..., torch.Tensor]


def _check(mu: torch.Tensor, sigma: torch.Tensor) -> None:
    if mu.ndim != 2 or mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma must both be (B, k); got {tuple(mu.shape)} and {tuple(sigma.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError("reward aggregation got a NaN or inf in mu or sigma")


def single_reward(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`single`: the reward of a one-head reward model (ordinary RLHF). mu: (B, 1) -> (B,)."""
    _check(mu, sigma)
    if mu.shape[1] != 1:
        raise ValueError(f"`single` needs a one-head reward model; got k = {mu.shape[1]}")
    return mu[:, 0]


def mean_reward(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`mean` (Coste et al. 2023): (1/k) sum_i mu_i. (B, k) -> (B,)."""
    _check(mu, sigma)
    return mu.mean(dim=1)


def min_reward(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`min`, worst-case optimisation (WCO, Coste et al. 2023): min_i mu_i. (B, k) -> (B,)."""
    _check(mu, sigma)
    return mu.min(dim=1).values


def uwo_reward(mu: torch.Tensor, sigma: torch.Tensor, *, uwo_coef: float) -> torch.Tensor:
    """`uwo`, uncertainty-weighted optimisation (Coste et al. 2023): mean_i mu_i - c * var_i mu_i.

    The variance is the population variance (1/k) sum_i (mu_i - mean)^2, as in Coste et al.
    (B, k) -> (B,).
    """
    _check(mu, sigma)
    return mu.mean(dim=1) - uwo_coef * mu.var(dim=1, unbiased=False)


def nominal_reward(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`nominal` (BRME, docs/method.md#brme): per sample, the mean of the head with the smallest sigma.

    i* = argmin_i sigma_i(x, y); r_nominal = mu_{i*}(x, y). Ties go to the lowest head index
    (torch.argmin's rule), so the result is deterministic. (B, k) -> (B,).
    """
    _check(mu, sigma)
    best_head = sigma.argmin(dim=1, keepdim=True)  # (B, 1)
    return mu.gather(1, best_head).squeeze(1)


def brme_reward(mu: torch.Tensor, sigma: torch.Tensor, *, brme_lambda: float) -> torch.Tensor:
    """`brme`, the robust reward of docs/method.md#the-robust-objective: lambda * r_nominal + (1 - lambda) * min_i mu_i.

    Our convention: lambda = 1 is nominal-only, lambda = 0 is worst-case-only; its range [0, 1] is
    checked once, by `aggregation.brme_lambda` in robust_rlhf/config.py. (B, k) -> (B,).
    """
    return brme_lambda * nominal_reward(mu, sigma) + (1.0 - brme_lambda) * min_reward(mu, sigma)


def kl_dro_reward(mu: torch.Tensor, sigma: torch.Tensor, *, kl_dro_beta: float) -> torch.Tensor:
    """`kl_dro`, the pessimistic log-mean-exp over heads (docs/method.md#baselines, KL-DRO lens).

    -beta * log (1/k) sum_i exp(-mu_i / beta); -> min_i mu_i as beta -> 0 and -> mean as
    beta -> inf. Computed with logsumexp for stability. (B, k) -> (B,).
    """
    _check(mu, sigma)
    if kl_dro_beta <= 0:  # a division by zero, not only a range: kept next to the division
        raise ValueError(f"kl_dro beta must be > 0; got {kl_dro_beta}")
    k = mu.shape[1]
    return -kl_dro_beta * (torch.logsumexp(-mu / kl_dro_beta, dim=1) - math.log(k))


AGGREGATIONS: dict[str, AggregationFn] = {
    "single": single_reward,
    "mean": mean_reward,
    "min": min_reward,
    "uwo": uwo_reward,
    "nominal": nominal_reward,
    "brme": brme_reward,
    "kl_dro": kl_dro_reward,
}


def aggregate_rewards(
    name: str, mu: torch.Tensor, sigma: torch.Tensor, *, brme_lambda: float, uwo_coef: float, kl_dro_beta: float
) -> torch.Tensor:
    """Dispatch to the aggregation `name`, passing only the coefficient it uses; the coefficients are
    params.yaml's `aggregation:` section, by the same names. (B, k) -> (B,)."""
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown reward aggregation {name!r}; known: {sorted(AGGREGATIONS)}")
    if name == "brme":
        return brme_reward(mu, sigma, brme_lambda=brme_lambda)
    if name == "uwo":
        return uwo_reward(mu, sigma, uwo_coef=uwo_coef)
    if name == "kl_dro":
        return kl_dro_reward(mu, sigma, kl_dro_beta=kl_dro_beta)
    return AGGREGATIONS[name](mu, sigma)
