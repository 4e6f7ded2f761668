import torch

from robust_rlhf.generation import encode_prompts, forward_response, response_mask_from_ids, sample, sample_responses


def test_response_mask_keeps_first_eos_and_drops_the_rest():
    eos = 9
    ids = torch.tensor([[4, 5, 9, 6, 9], [9, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(response_mask_from_ids(ids, eos), expected)


def test_sampled_logprobs_match_a_separate_forward(tiny_policy, tiny_tokenizer):
    """Left padding must not shift positions: the log-probs of one padded batch equal each row alone."""
    prompts = ["Write a short review of the library.", "Give your honest opinion of a long flight today."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    assert (query_mask[0] == 0).any() or (query_mask[1] == 0).any()  # one row is padded
    torch.manual_seed(0)
    response_ids, response_mask = sample_responses(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=6,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    with torch.no_grad():
        batched, _ = forward_response(tiny_policy, query_ids, query_mask, response_ids, response_mask)
        for row, prompt in enumerate(prompts):
            ids, mask = encode_prompts(tiny_tokenizer, [prompt], max_prompt_tokens=32)
            alone, _ = forward_response(
                tiny_policy, ids, mask, response_ids[row : row + 1], response_mask[row : row + 1]
            )
            keep = response_mask[row].bool()
            torch.testing.assert_close(batched[row][keep], alone[0][keep], atol=1e-4, rtol=1e-4)


def test_response_logprobs_equal_a_slice_of_the_full_logits(tiny_policy, tiny_tokenizer):
    """forward_response runs the LM head on the response columns only; the naive reference slices
    the full sequence's logits at Tq - 1 .. L - 2."""
    from robust_rlhf.logprobs import entropy_from_logits, logprobs_of_labels

    prompts = ["Write a short review of the library.", "Give your honest opinion of a long flight today."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    torch.manual_seed(1)
    response_ids, response_mask = sample_responses(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=5,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    with torch.no_grad():
        logprobs, entropy = forward_response(
            tiny_policy, query_ids, query_mask, response_ids, response_mask, with_entropy=True
        )
        attention_mask = torch.cat([query_mask, response_mask], dim=1)
        full = tiny_policy(
            input_ids=torch.cat([query_ids, response_ids], dim=1),
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(dim=1) - 1).clamp_min(0),
        ).logits
        naive = full[:, query_ids.shape[1] - 1 : -1].float()
    assert logprobs.shape == response_ids.shape
    torch.testing.assert_close(logprobs, logprobs_of_labels(naive, response_ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, entropy_from_logits(naive), atol=1e-5, rtol=1e-5)


def test_generates_own_logprobs_and_hidden_states_equal_a_separate_forward(tiny_policy, tiny_tokenizer):
    """The rollout takes the old log-probs (and a shared value head's input) from generate instead of a
    second forward; both must be what a full forward over [query; response] gives, padded rows included."""
    prompts = ["Write a short review of the library.", "Give your honest opinion of a long flight today.", "Say hello."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    torch.manual_seed(2)
    sampled = sample(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=7,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        with_logprobs=True,
        with_hidden=True,
    )
    torch.manual_seed(2)
    ids, mask = sample_responses(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=7,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    assert torch.equal(sampled.ids, ids) and torch.equal(sampled.mask, mask)  # same draw, same tokens
    with torch.no_grad():
        expected, _ = forward_response(tiny_policy, query_ids, query_mask, sampled.ids, sampled.mask)
        attention_mask = torch.cat([query_mask, sampled.mask], dim=1)
        full = tiny_policy(
            input_ids=torch.cat([query_ids, sampled.ids], dim=1),
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(dim=1) - 1).clamp_min(0),
            output_hidden_states=True,
        )
        hidden = full.hidden_states[-1][:, query_ids.shape[1] - 1 : -1]
    keep = sampled.mask.bool()
    assert sampled.logprobs.shape == sampled.ids.shape and sampled.last_hidden.shape == (
        *sampled.ids.shape,
        hidden.shape[-1],
    )
    torch.testing.assert_close(sampled.logprobs[keep], expected[keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sampled.last_hidden[keep], hidden[keep], atol=1e-4, rtol=1e-4)
    assert (sampled.logprobs[keep] < 0).all()


def test_prefix_shared_samples_are_query_major_and_their_logprobs_equal_a_full_forward(tiny_policy, tiny_tokenizer):
    """Several samples per query run the query once and repeat its KV cache; the log-probs stored at
    T = 0.7 must still be those of a full forward at T = 0.7 on the repeated, left-padded queries."""
    prompts = ["Write a short review of the library.", "Say hello."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    assert (query_mask == 0).any()  # the short prompt is left-padded
    torch.manual_seed(3)
    sampled = sample(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=6,
        temperature=0.7,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        with_logprobs=True,
        samples_per_query=3,
    )
    assert sampled.ids.shape[0] == 6
    repeated_ids, repeated_mask = query_ids.repeat_interleave(3, dim=0), query_mask.repeat_interleave(3, dim=0)
    with torch.no_grad():
        expected, _ = forward_response(
            tiny_policy, repeated_ids, repeated_mask, sampled.ids, sampled.mask, temperature=0.7
        )
    keep = sampled.mask.bool()
    torch.testing.assert_close(sampled.logprobs[keep], expected[keep], atol=1e-4, rtol=1e-4)
    assert len({tuple(row.tolist()) for row in sampled.ids[:3]}) > 1  # three draws, not one copied


def test_draw_tokens_samples_the_softmax_at_temperature_and_never_a_zero_probability_id():
    """Inverse-CDF draws from softmax(logits / T): logits log(0.5, 0.3, 0.2, 0) at T = 1 give those
    frequencies (4 sigma of 20,000 draws: +-0.014), id 3 never, and each draw's log-prob is log p."""
    from robust_rlhf.generation import draw_tokens

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(20_000, 4)
    torch.manual_seed(0)
    tokens, logprobs = draw_tokens(logits, temperature=1.0)
    frequencies = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(frequencies, probs, atol=0.014, rtol=0)
    assert frequencies[3] == 0
    torch.testing.assert_close(logprobs, probs.log()[tokens])
    # T = 2 flattens them to sqrt(p) / sum sqrt(p) = 0.707, 0.548, 0.447 over 1.702: 0.4154, 0.3218, 0.2628, 0
    tokens, logprobs = draw_tokens(logits, temperature=2.0)
    flat = torch.tensor([0.4154, 0.3218, 0.2628, 0.0])
    torch.testing.assert_close(torch.bincount(tokens, minlength=4).float() / len(tokens), flat, atol=0.014, rtol=0)
    torch.testing.assert_close(logprobs, flat.log()[tokens], atol=1e-3, rtol=0)
