"""The quantities of the overoptimization study (docs/study.md; Gao et al. 2023, Coste et al. 2023):
best-of-n gold reward and its analytic KL, win rate against the initial policy, spread over seeds."""

from __future__ import annotations

import math

import torch


def best_of_n_kl(n: int) -> float:
    """log n - (n - 1) / n (Gao et al. 2023, eq. 2): an upper bound on KL(best-of-n || initial policy)
    (Beirami et al. 2024), exact only when the picker's reward has no ties."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_expected_gold(gold: torch.Tensor, proxy: torch.Tensor, n: int) -> float:
    """Expected gold reward of the response that `proxy` ranks highest among n of the N samples per
    prompt, averaged over prompts (`best_of_n_per_prompt`'s mean)."""
    return float(best_of_n_per_prompt(gold, proxy, n).mean())


def best_of_n_per_prompt(value: torch.Tensor, proxy: torch.Tensor, n: int) -> torch.Tensor:
    """Per prompt, the expected `value` (gold, or any quantity of a sample) of the response that
    `proxy` ranks highest among a uniform random n-subset of its N samples: the unbiased estimator
    over all n-subsets. value, proxy: [prompts, N] -> [prompts].

    Sorted by proxy ascending, the sample at rank r (0-based) is the best of a uniform random
    n-subset with probability C(r, n - 1) / C(N, n). Samples tied on proxy share the mean of their
    value (the pick among ties is uniform), so the estimate does not depend on order.
    """
    if value.shape != proxy.shape or value.dim() != 2:
        raise ValueError(
            f"value and proxy must both be [prompts, N]; got {tuple(value.shape)} and {tuple(proxy.shape)}"
        )
    samples = value.shape[1]
    if not 1 <= n <= samples:
        raise ValueError(f"best-of-n needs 1 <= n <= N = {samples}, got n = {n}")
    if not (torch.isfinite(value).all() and torch.isfinite(proxy).all()):
        raise ValueError("best-of-n got a NaN or inf reward")
    weights = torch.tensor([math.comb(rank, n - 1) for rank in range(samples)], dtype=torch.float64)
    weights /= math.comb(samples, n)
    per_prompt = []
    for prompt_value, prompt_proxy in zip(value.double(), proxy.double()):
        order = torch.argsort(prompt_proxy, stable=True)
        sorted_proxy, sorted_value = prompt_proxy[order], prompt_value[order].clone()
        for tied_value in torch.unique(sorted_proxy):
            tied = sorted_proxy == tied_value
            sorted_value[tied] = sorted_value[tied].mean()
        per_prompt.append((weights * sorted_value).sum())
    return torch.stack(per_prompt)


def best_of_n_grid(samples: int) -> list[int]:
    """The n of a best-of-n curve up to N = `samples`: 1, 2, 3, 4, 6, 8, 12, ... (powers of 2 and 1.5
    times them), then N: about two points per doubling of n."""
    grid = {samples}
    power = 1
    while power <= samples:
        grid.update(value for value in (power, power * 3 // 2) if 1 <= value <= samples)
        power *= 2
    return sorted(grid)


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
