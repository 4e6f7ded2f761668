"""The KL of the study's curves against the exact KL of two tiny models whose response space can be
enumerated (vocabulary 4, responses of at most 3 tokens), at temperature 1 and 0.7: the per-token
estimators summed over the response are unbiased; squaring the whole-sequence log-ratio is not.
Also: the log-probs stored at sampling are those of the distribution that was sampled."""

import itertools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from robust_rlhf.generation import forward_response, response_mask_from_ids, sample
from robust_rlhf.rl.kl import sequence_kl

VOCAB, EOS, PAD, LENGTH = 4, 0, 3, 3


def tiny_model(seed: int, scale: float) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper logits: a KL far from 0
        model.lm_head.weight.mul_(scale)
    return model


QUERY = torch.tensor([[1, 2, 1]])
QUERY_MASK = torch.ones_like(QUERY)


@torch.no_grad()
def sequence_logprob(model, responses: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    logprobs, _ = forward_response(
        model,
        QUERY.expand(len(responses), -1),
        QUERY_MASK.expand(len(responses), -1),
        responses,
        mask,
        temperature=temperature,
    )
    return (logprobs * mask).sum(dim=1)


def exact_kl(policy, reference, temperature: float) -> float:
    """Sum over every distinct response (tokens up to and including the first EOS, at most LENGTH)."""
    distinct = {}
    for tokens in itertools.product(range(VOCAB), repeat=LENGTH):
        ids = torch.tensor([tokens])
        mask = response_mask_from_ids(ids, EOS)
        distinct[tuple(ids[mask.bool()].tolist())] = (ids.masked_fill(mask == 0, PAD), mask)
    ids = torch.cat([value[0] for value in distinct.values()])
    mask = torch.cat([value[1] for value in distinct.values()])
    log_p, log_q = sequence_logprob(policy, ids, mask, temperature), sequence_logprob(reference, ids, mask, temperature)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # the enumeration is the whole space
    return float((log_p.exp() * (log_p - log_q)).sum())


@torch.no_grad()
def sampled_kl(policy, reference, temperature: float, num: int = 6000):
    torch.manual_seed(0)
    sampled = sample(
        policy,
        QUERY.expand(num, -1),
        QUERY_MASK.expand(num, -1),
        max_new_tokens=LENGTH,
        temperature=temperature,
        eos_token_id=EOS,
        pad_token_id=PAD,
        with_logprobs=True,
    )
    ref_logprobs, _ = forward_response(
        reference, QUERY.expand(num, -1), QUERY_MASK.expand(num, -1), sampled.ids, sampled.mask, temperature=temperature
    )
    return sampled, ref_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_summed_per_token_estimators_match_the_exact_kl(temperature):
    policy, reference = tiny_model(0, scale=40.0), tiny_model(1, scale=40.0)
    exact = exact_kl(policy, reference, temperature)
    sampled, ref_logprobs = sampled_kl(policy, reference, temperature)
    k1 = sequence_kl(sampled.logprobs, ref_logprobs, sampled.mask, estimator="k1")
    k3 = sequence_kl(sampled.logprobs, ref_logprobs, sampled.mask, estimator="k3")
    assert exact > 0.5
    for estimate in (k1, k3):
        standard_error = estimate.std().item() / len(estimate) ** 0.5
        assert abs(estimate.mean().item() - exact) < 4 * standard_error + 0.01 * exact
    assert (k3 >= 0).all()
    # the whole-sequence log-ratio squared, E[0.5 L^2] = 0.5 (Var L + (E L)^2), is not the KL
    whole_sequence = (0.5 * ((sampled.logprobs - ref_logprobs) * sampled.mask).sum(dim=1) ** 2).mean().item()
    assert abs(whole_sequence - exact) > 0.2 * exact


@torch.no_grad()
def test_stored_log_probs_are_those_of_the_tempered_sampling_distribution():
    """At T = 0.7 the stored log-probs equal log softmax(logits / T) of a full forward, and their
    empirical frequencies match: the probability of the most frequent response, sampled vs stored."""
    policy = tiny_model(0, scale=40.0)
    num = 6000
    torch.manual_seed(1)
    sampled = sample(
        policy,
        QUERY.expand(num, -1),
        QUERY_MASK.expand(num, -1),
        max_new_tokens=LENGTH,
        temperature=0.7,
        eos_token_id=EOS,
        pad_token_id=PAD,
        with_logprobs=True,
    )
    full, _ = forward_response(
        policy, QUERY.expand(num, -1), QUERY_MASK.expand(num, -1), sampled.ids, sampled.mask, temperature=0.7
    )
    assert torch.allclose(sampled.logprobs * sampled.mask, full * sampled.mask, atol=1e-4)
    keys = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(sampled.ids, sampled.mask)]
    most = max(set(keys), key=keys.count)
    frequency = keys.count(most) / num
    row = keys.index(most)
    stored = (sampled.logprobs[row] * sampled.mask[row]).sum().exp().item()
    assert frequency == pytest.approx(stored, abs=4 * (stored * (1 - stored) / num) ** 0.5)
    untempered, _ = forward_response(policy, QUERY, QUERY_MASK, sampled.ids[row : row + 1], sampled.mask[row : row + 1])
    assert abs((untempered * sampled.mask[row]).sum().exp().item() - frequency) > 0.05  # T = 1 would be wrong
