"""Evaluation of a policy on held-out prompts: gold reward and its facets, every method's proxy
reward, KL to the reference (the per-token k3 summed over the response), truncation."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from robust_rlhf.config import AggregationParams, MethodParams
from robust_rlhf.data.gold import GoldScorer, masked_token_mean
from robust_rlhf.generation import decode, encode_prompts, forward_response, sample, truncated
from robust_rlhf.reward.metrics import head_disagreement
from robust_rlhf.reward.scoring import RewardModels, method_rewards
from robust_rlhf.rl.kl import sequence_kl
from robust_rlhf.runtime.distributed import gathered_for_generation


@torch.inference_mode()
def evaluate_policy(
    policy,
    ref_model,
    tokenizer,
    reward_models: RewardModels,
    prompts: list[str],
    *,
    methods: dict[str, MethodParams],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    max_prompt_tokens: int,
    gold: GoldScorer,
    aggregation: AggregationParams,
    seed: int,
    desc: str,
) -> dict:
    """Sample `samples_per_prompt` responses per prompt and score them. Returns means and the samples.

    Rows are prompt-major (sample j of prompt i is row i * samples_per_prompt + j); the samples of a
    prompt share its prefill (`sample`'s prefix sharing). KL to the reference, both at the sampling
    temperature, is the per-token k3 summed over the response (`kl`, unbiased and >= 0; the study's
    one KL, also the PPO step log's `objective/kl`), with the k1 sum beside it. `proxy` holds every
    method's (unnormalised) reward of the same samples. Besides the means ("metrics") and the scored
    rows ("samples"), returns per-sample tensors: "gold", its "facets", "proxy", "kl", and each
    multi-head reward model's head "disagreement". The gold's fluency reads log p_init (at T = 1) of
    the sampled tokens: the sampler's own for the initial policy, the reference forward's otherwise.
    """
    torch.manual_seed(seed)
    device = next(policy.parameters()).device
    expanded = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    prompts_per_batch = max(1, batch_size // samples_per_prompt)
    responses: list[str] = []
    kl_k3_sums, kl_k1_sums, cut = [], [], []
    fluency: list[float] = []  # mean log p_init of each response's sampled tokens, for the gold
    is_reference = policy is ref_model
    for start in tqdm(range(0, len(prompts), prompts_per_batch), desc=desc, unit="batch"):
        batch = prompts[start : start + prompts_per_batch]
        query_ids, query_mask = (
            t.to(device) for t in encode_prompts(tokenizer, batch, max_prompt_tokens=max_prompt_tokens)
        )
        # The policy's log-probs come with the sample (the sampler's logits): one forward less per batch. The
        # initial policy is the reference itself: its KL is 0 by definition, no forward needed.
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
                samples_per_query=samples_per_prompt,
            )
        ids, mask = sampled.ids, sampled.mask
        queries = [t.repeat_interleave(samples_per_prompt, dim=0) for t in (query_ids, query_mask)]
        if is_reference:
            ref_logprobs = sampled.logprobs
        else:
            ref_logprobs, _ = forward_response(ref_model, *queries, ids, mask, temperature=temperature)
        kl_k3_sums.append(sequence_kl(sampled.logprobs, ref_logprobs, mask, estimator="k3").cpu())
        kl_k1_sums.append(sequence_kl(sampled.logprobs, ref_logprobs, mask, estimator="k1").cpu())
        if temperature != 1.0:  # the gold's fluency is the untempered initial policy's
            ref_logprobs, _ = forward_response(ref_model, *queries, ids, mask)
        fluency += masked_token_mean(ref_logprobs, mask).tolist()
        cut.append(truncated(ids, mask, tokenizer.eos_token_id).cpu())
        responses += decode(tokenizer, ids, mask)
    kl = torch.cat(kl_k3_sums)
    facets = {
        name: torch.tensor(values) for name, values in gold.facets(expanded, responses, mean_logprobs=fluency).items()
    }
    gold_reward = facets.pop("gold")
    scores = reward_models.score(expanded, responses, batch_size=batch_size)
    proxy = method_rewards(scores, methods, aggregation)
    disagreement = {kind: head_disagreement(mu) for kind, (mu, _) in scores.items() if mu.shape[1] > 1}
    mean_kl = float(kl.mean())
    return {
        "gold": gold_reward,
        "facets": facets,
        "proxy": proxy,
        "disagreement": disagreement,
        "kl": kl,
        "metrics": {
            "gold": float(gold_reward.mean()),
            "gold_std": float(gold_reward.std(unbiased=False)),
            "facets": {name: float(values.mean()) for name, values in facets.items()},
            "proxy": {name: float(value.mean()) for name, value in proxy.items()},
            "disagreement": {kind: float(value.mean()) for kind, value in disagreement.items()},
            "kl": mean_kl,
            "kl_k1": float(torch.cat(kl_k1_sums).mean()),
            "sqrt_kl": math.sqrt(max(mean_kl, 0.0)),
            "truncated": float(torch.cat(cut).float().mean()),
            "response_chars": sum(map(len, responses)) / len(responses),
            "samples": len(responses),
        },
        "samples": [
            {"prompt": p, "response": r, "gold": g, **{f"proxy/{n}": float(v[i]) for n, v in proxy.items()}}
            for i, (p, r, g) in enumerate(zip(expanded, responses, gold_reward.tolist()))
        ],
    }
