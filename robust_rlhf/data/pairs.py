"""Preference pairs for the synthetic-gold task: sample two responses per prompt from the initial
policy, score both with the gold scorer, label them as Coste et al. (2023) do (docs/study.md#task-and-gold)."""

from __future__ import annotations

import math
import random
from collections import Counter

import torch
from tqdm import tqdm

from robust_rlhf.data.gold import GoldScorer, masked_token_mean
from robust_rlhf.generation import decode, encode_prompts, sample, sample_responses
from robust_rlhf.runtime.distributed import gathered_for_generation


def label_pair(gold_a: float, gold_b: float, *, mode: str, label_noise: float, rng: random.Random) -> tuple[bool, bool]:
    """Decide whether response a is the chosen one. Returns (a_wins, flipped).

    argmax_flip: the higher gold score wins (ties go to a), then the label is flipped with
    probability `label_noise` (Coste et al. 2023 flip 25%).
    bt_sample: a wins with probability sigmoid(gold_a - gold_b) (Bradley-Terry noise); never "flipped".
    """
    if mode == "argmax_flip":
        flipped = rng.random() < label_noise
        return (gold_a >= gold_b) != flipped, flipped
    if mode == "bt_sample":
        return rng.random() < 1.0 / (1.0 + math.exp(-(gold_a - gold_b))), False
    raise ValueError(f"unknown label_mode {mode!r}")


def sample_preference_pairs(
    policy,
    tokenizer,
    prompts: list[str],
    *,
    gold: GoldScorer,
    label_mode: str,
    label_noise: float,
    seed: int,
    max_prompt_tokens: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    desc: str,
) -> tuple[list[dict], list[dict]]:
    """Two sampled responses per prompt, gold-labelled. Returns (pairs, rejects).

    A pair whose two responses are the same text carries no preference: it is rejected with the
    reason `chosen_equals_rejected`, counted, and kept in the rejects, never dropped silently.
    The gold's fluency reads the sampler's own log-probs of the sampled tokens (`policy` is the
    initial policy): no second forward.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs, rejects = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch_prompts = prompts[start : start + batch_size]
        query_ids, query_mask = encode_prompts(tokenizer, batch_prompts, max_prompt_tokens=max_prompt_tokens)
        # Both responses of a prompt in one pass that shares the prompt's prefill; rows alternate a, b.
        with gathered_for_generation(policy):
            sampled = sample(
                policy,
                query_ids,
                query_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                with_logprobs=True,
                samples_per_query=2,
            )
        both = decode(tokenizer, sampled.ids, sampled.mask)
        scores = gold(
            [prompt for prompt in batch_prompts for _ in range(2)],
            both,
            mean_logprobs=masked_token_mean(sampled.logprobs, sampled.mask).tolist(),
        )
        texts, (gold_a, gold_b) = [both[0::2], both[1::2]], (scores[0::2], scores[1::2])
        for offset, prompt in enumerate(batch_prompts):
            row_number = start + offset
            a, b = texts[0][offset], texts[1][offset]
            if a == b:
                rejects.append({"row": row_number, "reason": "chosen_equals_rejected", "prompt": prompt, "response": a})
                continue
            a_wins, flipped = label_pair(
                gold_a[offset], gold_b[offset], mode=label_mode, label_noise=label_noise, rng=rng
            )
            chosen, rejected = (a, b) if a_wins else (b, a)
            gold_chosen, gold_rejected = (
                (gold_a[offset], gold_b[offset]) if a_wins else (gold_b[offset], gold_a[offset])
            )
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "gold_chosen": gold_chosen,
                    "gold_rejected": gold_rejected,
                    "label_flipped": flipped,
                }
            )
    return pairs, rejects


def sample_shifted_responses(
    policy,
    tokenizer,
    prompts: list[str],
    *,
    seed: int,
    max_prompt_tokens: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    desc: str,
) -> list[dict]:
    """One response per prompt from `policy` at a (high) `temperature`: responses off the training
    distribution, on which the reward models' head disagreement is measured. Rows {prompt, response}."""
    torch.manual_seed(seed)
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch_prompts = prompts[start : start + batch_size]
        query_ids, query_mask = encode_prompts(tokenizer, batch_prompts, max_prompt_tokens=max_prompt_tokens)
        with gathered_for_generation(policy):
            response_ids, response_mask = sample_responses(
                policy,
                query_ids,
                query_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        rows += [
            {"prompt": prompt, "response": response}
            for prompt, response in zip(batch_prompts, decode(tokenizer, response_ids, response_mask))
        ]
    return rows


def preference_stats(pairs: list[dict]) -> dict[str, float]:
    """Counts and label quality of a split: among pairs whose gold scores differ, how often the chosen
    one really has the higher gold score (1 - label noise, when labels are argmax_flip)."""
    if not pairs:
        return {"pairs": 0}
    decided = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    agree = sum(p["gold_chosen"] > p["gold_rejected"] for p in decided)
    return {
        "pairs": len(pairs),
        "gold_ties": len(pairs) - len(decided),
        "gold_agreement": agree / len(decided) if decided else float("nan"),
        "flipped_fraction": sum(p["label_flipped"] for p in pairs) / len(pairs),
        "mean_chosen_chars": sum(len(p["chosen"]) for p in pairs) / len(pairs),
        "mean_rejected_chars": sum(len(p["rejected"]) for p in pairs) / len(pairs),
    }


def reject_counts(rejects: list[dict]) -> dict[str, int]:
    return dict(Counter(r["reason"] for r in rejects))
