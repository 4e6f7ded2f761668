"""Reward-model quality on held-out preference pairs: pairwise accuracy, Bradley-Terry NLL, expected
calibration error (ECE) of P(chosen > rejected), and the reliability diagram behind it. Torch only.

Every function takes reward margins m = r(x, y_chosen) - r(x, y_rejected), shape (N,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_accuracy(margin: torch.Tensor) -> float:
    """Fraction of pairs where the chosen response scores strictly higher. (N,) -> float."""
    return float((margin > 0).float().mean())


def bt_nll(margin: torch.Tensor) -> float:
    """Bradley-Terry negative log-likelihood of the labels: mean -log sigmoid(m). (N,) -> float."""
    return float(-F.logsigmoid(margin).mean())


def reliability_bins(margin: torch.Tensor, *, num_bins: int = 10) -> list[dict[str, float]]:
    """Reliability diagram of p = sigmoid(m) for equal-width bins over [0, 1].

    Each pair enters twice, as (p, outcome 1) and (1 - p, outcome 0): with only the labelled order,
    every outcome would be 1 and calibration would reduce to mean confidence. Symmetrising is the
    usual way to calibrate a pairwise model. Empty bins are left out.
    Returns rows {bin, confidence, accuracy, count}.
    """
    p = torch.sigmoid(margin.double())
    confidence = torch.cat([p, 1 - p])
    outcome = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    index = torch.clamp((confidence * num_bins).long(), max=num_bins - 1)
    rows = []
    for b in range(num_bins):
        in_bin = index == b
        if in_bin.any():
            rows.append(
                {
                    "bin": b,
                    "confidence": float(confidence[in_bin].mean()),
                    "accuracy": float(outcome[in_bin].mean()),
                    "count": int(in_bin.sum()),
                }
            )
    return rows


def expected_calibration_error(margin: torch.Tensor, *, num_bins: int = 10) -> float:
    """ECE = sum_b (n_b / n) |accuracy_b - confidence_b| over the symmetrised reliability bins."""
    rows = reliability_bins(margin, num_bins=num_bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows)


def margin_report(margin: torch.Tensor, gold_margin: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy (vs the labels, and vs the gold order where gold scores differ), NLL and ECE."""
    report = {"accuracy": pairwise_accuracy(margin), "nll": bt_nll(margin), "ece": expected_calibration_error(margin)}
    if gold_margin is not None:
        decided = gold_margin != 0
        if decided.any():
            # sign, not `> 0`: a model tie must not count as agreeing when gold prefers the rejected one.
            agree = torch.sign(margin[decided]) == torch.sign(gold_margin[decided])
            report["gold_accuracy"] = float(agree.float().mean())
    return report


def head_disagreement(mu: torch.Tensor) -> torch.Tensor:
    """Per response, the population std of mu across the k heads (0 when k = 1). (N, k) -> (N,)."""
    return mu.std(dim=1, unbiased=False)


def relative_disagreement(mu: torch.Tensor) -> float:
    """Head disagreement relative to the spread of rewards across responses:
    mean_n std_i mu_ni / std_n (mean_i mu_ni). Near 0: the heads are one model; near 1: the heads
    disagree about a response as much as responses differ. (N, k) -> float."""
    spread = float(mu.mean(dim=1).std(unbiased=False))
    return float(head_disagreement(mu).mean()) / spread if spread > 0 else float("nan")


def head_shares(values: torch.Tensor, *, largest: bool = False) -> list[float]:
    """For each head, the share of rows on which it attains the min (or max) of `values` (N, k),
    ties to the lowest index (torch's argmin/argmax rule). -> k floats summing to 1."""
    winner = values.argmax(dim=1) if largest else values.argmin(dim=1)
    return (torch.bincount(winner, minlength=values.shape[1]).double() / max(values.shape[0], 1)).tolist()


def pair_sigma(sigma_chosen: torch.Tensor, sigma_rejected: torch.Tensor) -> torch.Tensor:
    """A pair's predicted label noise: mean over heads of sqrt(sigma_c^2 + sigma_r^2), the scale of
    its Thurstone margin. (N, k), (N, k) -> (N,)."""
    return torch.sqrt(sigma_chosen**2 + sigma_rejected**2).mean(dim=1)


def misranked_under_gold(margin: torch.Tensor, gold_margin: torch.Tensor) -> torch.Tensor:
    """Whether the model orders a pair against gold: sign(margin) != sign(gold margin) (a model tie
    counts as mis-ranked). Meaningful where gold decides (gold margin != 0). (N,), (N,) -> (N,) bool."""
    return torch.sign(margin) != torch.sign(gold_margin)
