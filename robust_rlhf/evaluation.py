"""Evaluation of a policy on held-out prompts: gold reward, every method's proxy reward, KL to the
reference (DESIGN.md §4: k1 and the k2 estimator of Coste et al. over sampled responses)."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from robust_rlhf.config import MethodParams, PPOParams
from robust_rlhf.generation import decode, encode_prompts, forward_response, sample
from robust_rlhf.gold import GoldScorer, masked_token_mean
from robust_rlhf.kl import kl_k1, kl_k2
from robust_rlhf.reward_metrics import head_disagreement
from robust_rlhf.reward_scoring import RewardModels, method_rewards


@torch.inference_mode()
def evaluate_policy(policy, ref_model, tokenizer, reward_models: RewardModels, prompts: list[str], *,
                    methods: dict[str, MethodParams], samples_per_prompt: int, max_new_tokens: int,
                    temperature: float, batch_size: int, max_prompt_tokens: int, gold: GoldScorer, ppo_config: PPOParams,
                    seed: int, desc: str) -> dict:
    """Sample `samples_per_prompt` responses per prompt and score them. Returns means and the samples.

    KL uses the sequence log-ratio L = log pi(y|x) - log pi_ref(y|x), y ~ pi:
    `kl_k1` = E[L] (the usual estimate), `kl_k2` = E[0.5 L^2] (Coste et al.'s curve x-axis, as sqrt).
    `proxy` holds every method's (unnormalised) reward of the same samples. Besides the means
    ("metrics") and the scored rows ("samples"), returns the per-sample "gold" tensor, "proxy"
    tensors and each multi-head reward model's head "disagreement" (prompt-major: sample j of
    prompt i is row i * samples_per_prompt + j). The gold's fluency reads log p_init of the sampled
    tokens: generate's own for the initial policy, the KL reference forward's otherwise.
    """
    torch.manual_seed(seed)
    device = next(policy.parameters()).device
    expanded = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    responses: list[str] = []
    log_ratios: list[torch.Tensor] = []
    fluency: list[float] = []  # mean log p_init of each response's sampled tokens, for the gold
    for start in tqdm(range(0, len(expanded), batch_size), desc=desc, unit="batch"):
        batch = expanded[start:start + batch_size]
        query_ids, query_mask = (t.to(device) for t in encode_prompts(tokenizer, batch, max_prompt_tokens=max_prompt_tokens))
        # The policy's log-probs come with the sample (generate's logits): one forward less per batch. The
        # initial policy is the reference itself: its log-ratio is 0 by definition, no forward needed.
        is_reference = policy is ref_model
        sampled = sample(policy, query_ids, query_mask, max_new_tokens=max_new_tokens, temperature=temperature,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, with_logprobs=True)
        response_ids, response_mask = sampled.ids, sampled.mask
        if is_reference:
            ref_logprobs = sampled.logprobs
            log_ratios.append(torch.zeros(len(batch)))
        else:
            ref_logprobs, _ = forward_response(ref_model, query_ids, query_mask, response_ids, response_mask)
            log_ratios.append((kl_k1(sampled.logprobs, ref_logprobs) * response_mask).sum(dim=1).cpu())
        fluency += masked_token_mean(ref_logprobs, response_mask).tolist()
        responses += decode(tokenizer, response_ids, response_mask)
    log_ratio = torch.cat(log_ratios)
    gold_reward = torch.tensor(gold(expanded, responses, mean_logprobs=fluency))
    scores = reward_models.score(expanded, responses, batch_size=batch_size)
    proxy = method_rewards(scores, methods, ppo_config)
    disagreement = {kind: head_disagreement(mu) for kind, (mu, _) in scores.items() if mu.shape[1] > 1}
    kl2 = float(kl_k2(log_ratio, torch.zeros_like(log_ratio)).mean())
    return {
        "gold": gold_reward,
        "proxy": proxy,
        "disagreement": disagreement,
        "metrics": {
            "gold": float(gold_reward.mean()),
            "gold_std": float(gold_reward.std(unbiased=False)),
            "proxy": {name: float(value.mean()) for name, value in proxy.items()},
            "kl_k1": float(log_ratio.mean()),
            "kl_k2": kl2,
            "sqrt_kl": math.sqrt(kl2),
            "response_chars": sum(map(len, responses)) / len(responses),
            "samples": len(responses),
        },
        "samples": [{"prompt": p, "response": r, "gold": g, **{f"proxy/{n}": float(v[i]) for n, v in proxy.items()}}
                    for i, (p, r, g) in enumerate(zip(expanded, responses, gold_reward.tolist()))],
    }
