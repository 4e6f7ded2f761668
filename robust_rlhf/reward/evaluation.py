"""Reward models on held-out pairs: quality, and whether their uncertainty carries information
(docs/method.md, "Is the uncertainty real?"). Every figure comes with a cluster-bootstrap interval
over the split's distinct prompts.

Per reward model with several heads (the BRME's Gaussian heads, the ensemble's members):
- accuracy vs the (noisy) labels and vs the gold order, per head and for the `mean`, `min` (and,
  for the BRME, `nominal`) aggregates;
- the NLL of the labels with the model's own predictive: the BRME's heads' Thurstone
  probabilities (sigma included) averaged over heads, the members' sigmoids averaged over members;
- in-distribution head disagreement relative to the spread of rewards across responses;
- AUROC of the pair's head disagreement (and, for the BRME, of its sigma) for the pairs that the
  model's mean ranks against gold;
- the share of responses on which each head is nominal (smallest sigma) and on which it is the min;
- off-distribution: disagreement on shifted responses over disagreement on the val responses.
"""

from __future__ import annotations

import torch

from robust_rlhf.reward.aggregation import min_reward, nominal_reward
from robust_rlhf.reward.losses import thurstone_probability
from robust_rlhf.reward.metrics import (
    expected_calibration_error,
    head_disagreement,
    head_shares,
    misranked_under_gold,
    pair_sigma,
    relative_disagreement,
    reliability_bins,
)
from robust_rlhf.reward.scoring import RewardModels
from robust_rlhf.statistics import ClusterBootstrap, auroc

Scores = dict[str, tuple[torch.Tensor, torch.Tensor]]
# An AUROC from fewer pairs of either class than this has no interval worth printing (a bootstrap
# resample then often lacks a class, and the percentile interval collapses).
MIN_AUROC_CLASS = 10


def evaluate_reward_models(
    models: RewardModels,
    splits: dict[str, list[dict]],
    shift: list[dict],
    *,
    noise_floor: float,
    bootstrap: ClusterBootstrap,
    batch_size: int,
    likelihood_scales: dict[str, torch.Tensor] | None = None,
    reliability_split: str = "val",
) -> tuple[dict, list[dict]]:
    """Report per split (and for the shifted responses), and the reliability-diagram rows of
    `reliability_split`. Pairs carry prompt, chosen, rejected and, when known, gold_chosen/gold_rejected;
    `shift` rows carry prompt and response. `likelihood_scales[kind]` (k,) undoes a standardisation
    for the likelihoods: the members' NLL, ECE and reliability are those of their own (raw) margins."""
    scales = likelihood_scales or {}
    report: dict = {}
    reliability: list[dict] = []
    in_distribution: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for split, pairs in splits.items():
        prompts = [pair["prompt"] for pair in pairs]
        chosen = models.score(prompts, [pair["chosen"] for pair in pairs], batch_size=batch_size)
        rejected = models.score(prompts, [pair["rejected"] for pair in pairs], batch_size=batch_size)
        gold_margin = (
            torch.tensor([pair["gold_chosen"] - pair["gold_rejected"] for pair in pairs])
            if pairs and "gold_chosen" in pairs[0]
            else None
        )
        report[split] = split_report(
            chosen, rejected, gold_margin, prompts, noise_floor=noise_floor, bootstrap=bootstrap, scales=scales
        )
        if split == reliability_split:
            for kind, (mu_chosen, _) in chosen.items():
                margin = ((mu_chosen - rejected[kind][0]) * scales.get(kind, 1.0)).mean(dim=1)
                reliability += [{"reward_model": kind, **row} for row in reliability_bins(margin)]
                in_distribution[kind] = (torch.cat([mu_chosen, rejected[kind][0]]), prompts + prompts)
    if shift and in_distribution:
        shift_prompts = [row["prompt"] for row in shift]
        shifted = models.score(shift_prompts, [row["response"] for row in shift], batch_size=batch_size)
        report["shift"] = {
            "responses": len(shift),
            **{
                kind: {
                    "disagreement_ratio": bootstrap.ratio_two_samples(
                        head_disagreement(shifted[kind][0]),
                        shift_prompts,
                        head_disagreement(in_distribution[kind][0]),
                        in_distribution[kind][1],
                    ).as_dict()
                }
                for kind in in_distribution
                if shifted[kind][0].shape[1] > 1
            },
        }
    return report, reliability


def split_report(
    chosen: Scores,
    rejected: Scores,
    gold_margin: torch.Tensor | None,
    prompts: list[str],
    *,
    noise_floor: float,
    bootstrap: ClusterBootstrap,
    scales: dict[str, torch.Tensor],
) -> dict:
    """Every reward model's figures on one split's pairs (see the module docstring)."""
    report: dict = {"pairs": len(prompts), "prompts": len(set(prompts))}
    for kind, (mu_chosen, sigma_chosen) in chosen.items():
        mu_rejected, sigma_rejected = rejected[kind]
        if kind == "single":
            report[kind] = margin_intervals(
                mu_chosen[:, 0] - mu_rejected[:, 0], gold_margin, prompts, bootstrap=bootstrap
            )
            continue
        report[kind] = heads_intervals(
            mu_chosen,
            sigma_chosen,
            mu_rejected,
            sigma_rejected,
            gold_margin,
            prompts,
            with_sigma=kind == "brme",
            noise_floor=noise_floor,
            bootstrap=bootstrap,
            scale=scales.get(kind),
        )
    return report


def margin_intervals(
    margin: torch.Tensor,
    gold_margin: torch.Tensor | None,
    prompts: list[str],
    *,
    bootstrap: ClusterBootstrap,
    pair_nll: torch.Tensor | None = None,
    likelihood_scale: float | torch.Tensor = 1.0,
) -> dict:
    """Accuracy vs labels and vs gold, and the labels' NLL (Bradley-Terry on `likelihood_scale` x the
    margin unless `pair_nll` (N,) is given), each with its interval; the ECE of sigmoid(scaled margin)."""
    scaled = margin.double() * likelihood_scale
    nll = -torch.nn.functional.logsigmoid(scaled) if pair_nll is None else pair_nll
    result = {
        "accuracy": bootstrap.mean((margin > 0).double(), prompts).as_dict(),
        "nll": bootstrap.mean(nll, prompts).as_dict(),
        "ece": expected_calibration_error(scaled),
    }
    if gold_margin is not None:
        decided = gold_margin != 0
        if decided.any():
            agree = (~misranked_under_gold(margin[decided], gold_margin[decided])).double()
            result["gold_accuracy"] = bootstrap.mean(agree, _subset(prompts, decided)).as_dict()
    return result


def heads_intervals(
    mu_chosen,
    sigma_chosen,
    mu_rejected,
    sigma_rejected,
    gold_margin,
    prompts: list[str],
    *,
    with_sigma: bool,
    noise_floor: float,
    bootstrap: ClusterBootstrap,
    scale: torch.Tensor | None = None,
) -> dict:
    """A k-head reward model's figures on one split; mu_*, sigma_* (N, k); `scale` (k,) maps standardised
    margins back to each head's own for the likelihoods."""
    margins = mu_chosen - mu_rejected  # (N, k)
    scale = torch.ones(margins.shape[1], dtype=torch.float64) if scale is None else scale.double()
    if with_sigma:
        probabilities = thurstone_probability(
            mu_chosen, sigma_chosen, mu_rejected, sigma_rejected, noise_floor=noise_floor
        ).double()
    else:
        probabilities = torch.sigmoid(margins.double() * scale)
    tiny = torch.finfo(torch.float64).tiny
    report: dict = {
        "heads": {
            f"head_{i}": margin_intervals(
                margins[:, i],
                gold_margin,
                prompts,
                bootstrap=bootstrap,
                pair_nll=-probabilities[:, i].clamp_min(tiny).log(),
                likelihood_scale=float(scale[i]),
            )
            for i in range(margins.shape[1])
        }
    }
    aggregates = {
        "mean": margins.mean(dim=1),
        "min": min_reward(mu_chosen, sigma_chosen) - min_reward(mu_rejected, sigma_rejected),
    }
    if with_sigma:
        aggregates["nominal"] = nominal_reward(mu_chosen, sigma_chosen) - nominal_reward(mu_rejected, sigma_rejected)
    # An aggregate's likelihood is in the heads' typical units: their mean scale.
    report["aggregates"] = {
        name: margin_intervals(margin, gold_margin, prompts, bootstrap=bootstrap, likelihood_scale=float(scale.mean()))
        for name, margin in aggregates.items()
    }
    report["predictive_nll"] = bootstrap.mean(-probabilities.mean(dim=1).clamp_min(tiny).log(), prompts).as_dict()
    responses_mu = torch.cat([mu_chosen, mu_rejected])
    responses_prompts = prompts + prompts
    report["relative_disagreement"] = bootstrap.statistic(
        lambda rows: relative_disagreement(responses_mu[rows]), responses_prompts
    ).as_dict()
    report["min_share"] = head_shares(responses_mu)
    if with_sigma:
        responses_sigma = torch.cat([sigma_chosen, sigma_rejected])
        report["nominal_share"] = head_shares(responses_sigma)
        report["mean_sigma"] = float(responses_sigma.mean())
    if gold_margin is not None and bool((gold_margin != 0).any()):
        decided = gold_margin != 0
        misranked = misranked_under_gold(margins.mean(dim=1)[decided], gold_margin[decided])
        signals = {"disagreement": margins.std(dim=1, unbiased=False)[decided]}
        if with_sigma:
            signals["sigma"] = pair_sigma(sigma_chosen, sigma_rejected)[decided]
        report["misranked_pairs"] = int(misranked.sum())
        enough = min(int(misranked.sum()), int((~misranked).sum())) >= MIN_AUROC_CLASS
        for name, signal in signals.items():
            report[f"auroc_{name}_misranked"] = (
                bootstrap.statistic(
                    lambda rows, signal=signal: auroc(signal[rows], misranked[rows]), _subset(prompts, decided)
                ).as_dict()
                if enough
                else {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
            )
    return report


def _subset(labels: list, keep: torch.Tensor) -> list:
    return [label for label, kept in zip(labels, keep.tolist()) if kept]
