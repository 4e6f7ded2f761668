"""Evaluation of a policy on held-out prompts: gold reward, proxy reward under every aggregation, KL
to the reference (DESIGN.md §4: k1 and the k2 estimator of Coste et al. over sampled responses)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from robust_rlhf.config import PPOParams
from robust_rlhf.generation import decode, encode_prompts, forward_response, sample_responses
from robust_rlhf.gold import gold_scores
from robust_rlhf.kl import kl_k1, kl_k2
from robust_rlhf.ppo import all_aggregations
from robust_rlhf.reward_model import score_texts


@torch.inference_mode()
def evaluate_policy(policy, ref_model, tokenizer, reward_model, reward_tokenizer, prompts: list[str], *,
                    samples_per_prompt: int, max_new_tokens: int, temperature: float, batch_size: int,
                    max_prompt_tokens: int, gold: str, ppo_config: PPOParams, seed: int, desc: str) -> dict:
    """Sample `samples_per_prompt` responses per prompt and score them. Returns means and the samples.

    KL uses the sequence log-ratio L = log pi(y|x) - log pi_ref(y|x), y ~ pi:
    `kl_k1` = E[L] (the usual estimate), `kl_k2` = E[0.5 L^2] (Coste et al.'s curve x-axis).
    """
    torch.manual_seed(seed)
    device = next(policy.parameters()).device
    expanded = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    responses: list[str] = []
    log_ratios: list[torch.Tensor] = []
    for start in tqdm(range(0, len(expanded), batch_size), desc=desc, unit="batch"):
        batch = expanded[start:start + batch_size]
        query_ids, query_mask = (t.to(device) for t in encode_prompts(tokenizer, batch, max_prompt_tokens=max_prompt_tokens))
        response_ids, response_mask = sample_responses(
            policy, query_ids, query_mask, max_new_tokens=max_new_tokens, temperature=temperature,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        logprobs, _ = forward_response(policy, query_ids, query_mask, response_ids, response_mask)
        ref_logprobs, _ = forward_response(ref_model, query_ids, query_mask, response_ids, response_mask)
        log_ratios.append((kl_k1(logprobs, ref_logprobs) * response_mask).sum(dim=1).cpu())
        responses += decode(tokenizer, response_ids, response_mask)
    log_ratio = torch.cat(log_ratios)
    gold = torch.tensor(gold_scores(gold, expanded, responses))
    scores = score_texts(reward_model, reward_tokenizer, expanded, responses, batch_size=batch_size)
    proxy = all_aggregations(scores["mu"], scores["sigma"], ppo_config)
    return {
        "metrics": {
            "gold": float(gold.mean()),
            "gold_std": float(gold.std(unbiased=False)),
            "proxy": {name: float(value.mean()) for name, value in proxy.items()},
            "kl_k1": float(log_ratio.mean()),
            "kl_k2": float(kl_k2(log_ratio, torch.zeros_like(log_ratio)).mean()),
            "response_chars": sum(map(len, responses)) / len(responses),
            "samples": len(responses),
        },
        "samples": [{"prompt": p, "response": r, "gold": g, "proxy": float(proxy[ppo_config.method][i])}
                    for i, (p, r, g) in enumerate(zip(expanded, responses, gold.tolist()))],
    }
