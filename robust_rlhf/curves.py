"""The quantities of the overoptimization study (PAPER.md §4; Gao et al. 2023, Coste et al. 2023):
best-of-n gold reward and its analytic KL, win rate against the initial policy, spread over seeds."""

from __future__ import annotations

import math

import torch


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || initial policy) = log n - (n - 1) / n (Gao et al. 2023, eq. 2)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_expected_gold(gold: torch.Tensor, proxy: torch.Tensor, n: int) -> float:
    """Expected gold reward of the response that `proxy` ranks highest among n of the N samples per
    prompt, averaged over prompts: the unbiased estimator over all n-subsets of the N samples.

    gold, proxy: [prompts, N]. Sorted by proxy ascending, the sample at rank r (0-based) is the best
    of a uniform random n-subset with probability C(r, n - 1) / C(N, n). Samples tied on proxy share
    the mean of their gold (the pick among ties is uniform), so the estimate does not depend on order.
    """
    if gold.shape != proxy.shape or gold.dim() != 2:
        raise ValueError(f"gold and proxy must both be [prompts, N]; got {tuple(gold.shape)} and {tuple(proxy.shape)}")
    samples = gold.shape[1]
    if not 1 <= n <= samples:
        raise ValueError(f"best-of-n needs 1 <= n <= N = {samples}, got n = {n}")
    if not (torch.isfinite(gold).all() and torch.isfinite(proxy).all()):
        raise ValueError("best-of-n got a NaN or inf reward")
    weights = torch.tensor([math.comb(rank, n - 1) for rank in range(samples)], dtype=torch.float64)
    weights /= math.comb(samples, n)
    total = 0.0
    for prompt_gold, prompt_proxy in zip(gold.double(), proxy.double()):
        order = torch.argsort(prompt_proxy, stable=True)
        sorted_proxy, sorted_gold = prompt_proxy[order], prompt_gold[order].clone()
        for value in torch.unique(sorted_proxy):
            tied = sorted_proxy == value
            sorted_gold[tied] = sorted_gold[tied].mean()
        total += float((weights * sorted_gold).sum())
    return total / gold.shape[0]


def win_rate(new: torch.Tensor, old: torch.Tensor) -> float:
    """P(new > old) + 0.5 P(new == old) over paired gold scores (same prompt, same sample index)."""
    if new.shape != old.shape or new.numel() == 0:
        raise ValueError(f"win rate needs paired, non-empty scores; got {tuple(new.shape)} and {tuple(old.shape)}")
    return float(((new > old).double() + 0.5 * (new == old).double()).mean())


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of per-seed results."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))
