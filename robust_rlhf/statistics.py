"""Statistics for the study's claims: cluster-bootstrap intervals and AUROC. Torch only.

Rows that share a prompt are not independent draws, so every interval resamples *clusters* (the
distinct prompts) with replacement and keeps all rows of a drawn cluster (the cluster bootstrap,
Davison & Hinkley 1997 §3.8). Percentile intervals at the given level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.estimate, "ci_low": self.low, "ci_high": self.high}

    def excludes(self, value: float) -> bool:
        """Whether `value` lies outside the interval (the interval decides, not the point)."""
        return value < self.low or value > self.high


def cluster_ids(labels: Sequence) -> torch.Tensor:
    """Integer cluster ids 0..C-1 for row labels (e.g. each row's prompt), in order of first appearance."""
    index: dict = {}
    return torch.tensor([index.setdefault(label, len(index)) for label in labels], dtype=torch.long)


def cluster_bootstrap_weights(clusters: torch.Tensor, *, num_resamples: int, seed: int) -> torch.Tensor:
    """(R, N) row weights of R cluster-bootstrap resamples: each resample draws C clusters with
    replacement, and a row's weight is how often its cluster was drawn.

    Args:
        clusters: (N,) integer cluster id of each row, ids 0..C-1.
    """
    num_clusters = int(clusters.max()) + 1 if clusters.numel() else 0
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, max(num_clusters, 1), (num_resamples, num_clusters), generator=generator)
    counts = torch.zeros(num_resamples, max(num_clusters, 1), dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    return counts[:, clusters]


def percentile_interval(estimate: float, replicates: torch.Tensor, *, level: float) -> Interval:
    """Percentile interval of bootstrap `replicates` (R,) at `level` (e.g. 0.95); NaN replicates
    (a resample on which the statistic is undefined) are left out."""
    finite = replicates[torch.isfinite(replicates)].double()
    if finite.numel() == 0:
        return Interval(estimate, float("nan"), float("nan"))
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(finite, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return Interval(estimate, low, high)


def bootstrap_mean(
    values: torch.Tensor, clusters: torch.Tensor, *, num_resamples: int, seed: int, level: float = 0.95
) -> Interval:
    """Mean of `values` (N,) with a cluster-bootstrap interval: each replicate is the weighted mean
    sum_n w_rn v_n / sum_n w_rn under that resample's row weights."""
    values = values.double()
    weights = cluster_bootstrap_weights(clusters, num_resamples=num_resamples, seed=seed)
    replicates = (weights @ values) / weights.sum(dim=1)
    return percentile_interval(float(values.mean()), replicates, level=level)


def bootstrap_ratio_of_means(
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    clusters: torch.Tensor,
    *,
    num_resamples: int,
    seed: int,
    level: float = 0.95,
) -> Interval:
    """mean(numerator) / mean(denominator) over the same rows (N,), resampled together by cluster."""
    numerator, denominator = numerator.double(), denominator.double()
    weights = cluster_bootstrap_weights(clusters, num_resamples=num_resamples, seed=seed)
    replicates = (weights @ numerator) / (weights @ denominator)
    return percentile_interval(float(numerator.mean() / denominator.mean()), replicates, level=level)


def bootstrap_statistic(
    statistic: Callable[[torch.Tensor], float],
    clusters: torch.Tensor,
    *,
    num_resamples: int,
    seed: int,
    level: float = 0.95,
) -> Interval:
    """Any statistic of the rows with a cluster-bootstrap interval. `statistic(rows)` takes a (M,)
    long tensor of row indices (repeats allowed) and returns a float; the estimate is its value on
    every row once."""
    weights = cluster_bootstrap_weights(clusters, num_resamples=num_resamples, seed=seed).long()
    all_rows = torch.arange(clusters.numel())
    replicates = torch.tensor(
        [statistic(torch.repeat_interleave(all_rows, row_weights)) for row_weights in weights], dtype=torch.float64
    )
    return percentile_interval(statistic(all_rows), replicates, level=level)


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `score` (N,) for predicting `positive` (N,) bool: the probability
    that a random positive scores higher than a random negative, ties counted half (Mann-Whitney U
    / (n_pos n_neg)). 1 is a perfect signal, 0.5 a useless one; NaN without both classes."""
    positive = positive.bool()
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    # Mid-ranks handle ties: U = sum of the positives' ranks - n_pos (n_pos + 1) / 2.
    ranks = _midranks(score.double())
    u_statistic = float(ranks[positive].sum()) - num_pos * (num_pos + 1) / 2.0
    return u_statistic / (num_pos * num_neg)


def _midranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, values.numel() + 1, dtype=values.dtype)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(unique.numel(), dtype=values.dtype).scatter_add_(0, inverse, ranks)
    counts = torch.zeros(unique.numel(), dtype=values.dtype).scatter_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def bootstrap_ratio_two_samples(
    numerator: torch.Tensor,
    numerator_clusters: torch.Tensor,
    denominator: torch.Tensor,
    denominator_clusters: torch.Tensor,
    *,
    num_resamples: int,
    seed: int,
    level: float = 0.95,
) -> Interval:
    """mean(numerator) / mean(denominator) for two independent samples (e.g. off- and
    in-distribution responses), each resampled by its own clusters."""
    numerator, denominator = numerator.double(), denominator.double()
    top = cluster_bootstrap_weights(numerator_clusters, num_resamples=num_resamples, seed=seed)
    bottom = cluster_bootstrap_weights(denominator_clusters, num_resamples=num_resamples, seed=seed + 1)
    replicates = ((top @ numerator) / top.sum(dim=1)) / ((bottom @ denominator) / bottom.sum(dim=1))
    return percentile_interval(float(numerator.mean() / denominator.mean()), replicates, level=level)


@dataclass(frozen=True)
class ClusterBootstrap:
    """The interval settings of one study (params `statistics:`), applied to rows labelled by cluster
    (e.g. each row's prompt); labels are renumbered per call, so a subset of rows resamples only the
    clusters it has."""

    num_resamples: int
    level: float
    seed: int

    def mean(self, values: torch.Tensor, labels: Sequence) -> Interval:
        return bootstrap_mean(
            values, cluster_ids(labels), num_resamples=self.num_resamples, seed=self.seed, level=self.level
        )

    def statistic(self, statistic: Callable[[torch.Tensor], float], labels: Sequence) -> Interval:
        return bootstrap_statistic(
            statistic, cluster_ids(labels), num_resamples=self.num_resamples, seed=self.seed, level=self.level
        )

    def ratio_two_samples(
        self,
        numerator: torch.Tensor,
        numerator_labels: Sequence,
        denominator: torch.Tensor,
        denominator_labels: Sequence,
    ) -> Interval:
        return bootstrap_ratio_two_samples(
            numerator,
            cluster_ids(numerator_labels),
            denominator,
            cluster_ids(denominator_labels),
            num_resamples=self.num_resamples,
            seed=self.seed,
            level=self.level,
        )


@dataclass(frozen=True)
class Comparison:
    """A paired difference with its bootstrap interval and two-sided bootstrap p-value; `adjusted_p`
    is filled in by a multiplicity correction over a family of comparisons."""

    estimate: float
    low: float
    high: float
    p_value: float
    adjusted_p: float | None = None

    def as_dict(self) -> dict[str, float]:
        row = {"value": self.estimate, "ci_low": self.low, "ci_high": self.high, "p_value": self.p_value}
        if self.adjusted_p is not None:
            row["p_holm"] = self.adjusted_p
        return row


def bootstrap_p_value(replicates: torch.Tensor, *, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of `null`: 2 min(P*(d <= null), P*(d >= null)) over the replicates,
    each count + 1 over R + 1 so that it is never 0 (Davison & Hinkley 1997, eq. 4.11)."""
    finite = replicates[torch.isfinite(replicates)].double()
    count = finite.numel()
    below = (int((finite <= null).sum()) + 1) / (count + 1)
    above = (int((finite >= null).sum()) + 1) / (count + 1)
    return min(1.0, 2.0 * min(below, above))


def paired_difference(
    treatment: torch.Tensor, control: torch.Tensor, *, num_resamples: int, seed: int, level: float = 0.95
) -> Comparison:
    """Mean of treatment - control paired by (seed, prompt, sample), with a two-level bootstrap:
    prompts resampled as clusters (every sample of a drawn prompt stays), and PPO seeds resampled as
    replicates when there are two or more.

    Args:
        treatment: (K, P, S) scores of K seeds x P prompts x S samples (same prompts and sampling
            seeds as the control: common random numbers).
        control: (K, P, S), or (1, P, S) for a control without seeds (the initial policy).
    """
    treatment, control = treatment.double(), control.double()
    difference = (treatment - control).mean(dim=2)  # (K, P): per seed and prompt
    num_seeds, num_prompts = difference.shape
    generator = torch.Generator().manual_seed(seed)
    prompt_draws = torch.randint(0, num_prompts, (num_resamples, num_prompts), generator=generator)
    prompt_weights = torch.zeros(num_resamples, num_prompts, dtype=torch.float64).scatter_add_(
        1, prompt_draws, torch.ones_like(prompt_draws, dtype=torch.float64)
    )
    if num_seeds > 1:
        seed_draws = torch.randint(0, num_seeds, (num_resamples, num_seeds), generator=generator)
        seed_weights = torch.zeros(num_resamples, num_seeds, dtype=torch.float64).scatter_add_(
            1, seed_draws, torch.ones_like(seed_draws, dtype=torch.float64)
        )
    else:
        seed_weights = torch.ones(num_resamples, 1, dtype=torch.float64)
    # replicate r: sum_k sum_p w_rk v_rp d_kp / (sum_k w_rk * sum_p v_rp)
    replicates = torch.einsum("rk,kp,rp->r", seed_weights, difference, prompt_weights) / (
        seed_weights.sum(dim=1) * prompt_weights.sum(dim=1)
    )
    interval = percentile_interval(float(difference.mean()), replicates, level=level)
    return Comparison(interval.estimate, interval.low, interval.high, bootstrap_p_value(replicates))


def student_t_quantile(probability: float, df: int) -> float:
    """The `probability` quantile of Student's t with `df` degrees of freedom: bisection on its CDF,
    0.5 + int_0^t f(x) dx by Simpson's rule, f(x) = Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2)) *
    (1 + x^2 / df)^(-(df+1)/2). Accurate to ~1e-6 for df >= 1 and probabilities in [0.0005, 0.9995]."""
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float, intervals: int = 4096) -> float:
        x = torch.linspace(0.0, t, intervals + 1, dtype=torch.float64)
        density = torch.exp(log_norm - (df + 1) / 2 * torch.log1p(x**2 / df))
        weights = torch.ones_like(x)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return 0.5 + float((weights * density).sum()) * t / (3 * intervals)

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def expanded_interval(
    estimate: float, low: float, high: float, *, replicates: int, level: float
) -> tuple[float, float]:
    """A percentile interval of a mean over `replicates` units widened to the t interval's small-sample
    width (Hesterberg 2015, the "expanded percentile interval"): each side scaled by
    sqrt(n / (n - 1)) * t_{n-1} / z at the interval's level. A bootstrap over n = 5 units is otherwise
    ~0.63 of the t interval's width (its variance shrunk by (n - 1) / n, z where t_4 belongs)."""
    tail = 1.0 - (1.0 - level) / 2.0
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(tail, dtype=torch.float64)))
    factor = math.sqrt(replicates / (replicates - 1)) * student_t_quantile(tail, replicates - 1) / z
    return estimate - factor * (estimate - low), estimate + factor * (high - estimate)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979): sorted ascending, p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j)),
    returned in the input order. Controls the family-wise error rate at any dependence."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
