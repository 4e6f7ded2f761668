"""The shared-backbone critic (`ppo.value_model: shared`): one forward gives the policy's log-probs and
the values, and one backward of the summed loss trains both."""

import torch

from robust_rlhf.generation import encode_prompts, forward_response, response_inputs, sample_responses
from robust_rlhf.rl.ppo import PolicyWithValueHead, policy_state_dict, response_logprobs_and_values


def rollout(policy, tokenizer):
    prompts = ["Write a short review of the library.", "Say hello."]
    query_ids, query_mask = encode_prompts(tokenizer, prompts, max_prompt_tokens=32)
    torch.manual_seed(3)
    response_ids, response_mask = sample_responses(
        policy,
        query_ids,
        query_mask,
        max_new_tokens=5,
        temperature=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return query_ids, query_mask, response_ids, response_mask


def test_values_start_at_zero_and_logprobs_are_the_policys(tiny_policy, tiny_tokenizer):
    batch = rollout(tiny_policy, tiny_tokenizer)
    actor = PolicyWithValueHead(tiny_policy)
    with torch.no_grad():
        logprobs, entropy, values = response_logprobs_and_values(actor, *batch)
        expected, _ = forward_response(tiny_policy, *batch)
    assert entropy is None and values.shape == logprobs.shape == batch[2].shape
    assert torch.equal(values, torch.zeros_like(values))
    torch.testing.assert_close(logprobs, expected)


def test_values_read_the_final_hidden_state_before_each_response_token(tiny_policy, tiny_tokenizer):
    batch = rollout(tiny_policy, tiny_tokenizer)
    actor = PolicyWithValueHead(tiny_policy)
    with torch.no_grad():
        actor.value_head.weight.normal_(generator=torch.Generator().manual_seed(0))
        actor.value_head.bias.fill_(0.5)
        _, _, values = response_logprobs_and_values(actor, *batch)
        hidden = tiny_policy(**response_inputs(*batch), output_hidden_states=True).hidden_states[-1]
        query_len = batch[0].shape[1]
        expected = hidden[:, query_len - 1 : -1] @ actor.value_head.weight[0] + 0.5  # column Tq - 1 + t
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_one_backward_of_the_summed_loss_reaches_head_and_backbone(tiny_tokenizer):
    from robust_rlhf.models import build_tiny_policy

    policy = build_tiny_policy(tiny_tokenizer, seed=1, attn_implementation="sdpa")
    batch = [tensor.clone() for tensor in rollout(policy.eval(), tiny_tokenizer)]  # out of inference mode
    actor = PolicyWithValueHead(policy)
    logprobs, _, values = response_logprobs_and_values(actor, *batch)
    (logprobs.mean() + 0.1 * (values - 1.0).pow(2).mean()).backward()
    # By hand, at the zero-initialised head (V = 0 at all N = B * T positions): d/dV = 0.1 * 2 (0 - 1) / N
    # at each, so the bias gets -0.2 and the weight -0.2 * the mean final hidden state the head reads.
    with torch.no_grad():
        hidden = policy(**response_inputs(*batch), output_hidden_states=True).hidden_states[-1]
        read = hidden[:, batch[0].shape[1] - 1 : -1]  # (B, T, H): the state before each response token
    torch.testing.assert_close(actor.value_head.bias.grad, torch.tensor([-0.2]))
    torch.testing.assert_close(actor.value_head.weight.grad[0], -0.2 * read.mean(dim=(0, 1)), atol=1e-6, rtol=1e-5)
    assert all(p.grad is not None for p in policy.model.layers[-1].parameters())


def test_the_policy_checkpoint_leaves_the_value_head_out(tiny_policy):
    state = PolicyWithValueHead(tiny_policy).state_dict()
    policy_only = policy_state_dict(state)
    assert policy_only.keys() == tiny_policy.state_dict().keys()
    plain = tiny_policy.state_dict()
    assert policy_state_dict(plain) is plain  # a separate critic's actor is the policy already
