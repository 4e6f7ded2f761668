import pytest
import torch

from robust_rlhf.config import StageInputError
from robust_rlhf.generation import encode_prompts, forward_response, response_mask_from_ids, sample, sample_responses
from robust_rlhf.runtime.guards import Diverged


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


def test_draw_tokens_raises_on_logits_that_are_not_finite():
    """A NaN (or +inf) logit makes its row's softmax NaN, and a search over a NaN CDF returns the last id:
    that must be an error, not a token. A -inf logit is a zero probability and stays allowed."""

    from robust_rlhf.generation import draw_tokens

    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, float("nan"), 1.0], [0.0, float("-inf"), 1.0]])
    with pytest.raises(Diverged, match=r"logits were not finite .* rows \[1\]"):
        draw_tokens(logits, temperature=1.0)
    with pytest.raises(Diverged, match="not finite"):
        draw_tokens(torch.tensor([[0.0, float("inf")]]), temperature=1.0)
    tokens, logprobs = draw_tokens(logits[[0, 2]], temperature=1.0)
    assert tokens[1] != 1 and torch.isfinite(logprobs).all()


class ForcedEos(torch.nn.Module):
    """The tiny policy with its logits edited per call (call 0 is the prefill, call k feeds step k - 1's
    token): a row whose EOS step is this call can draw only EOS (probability 1), every other row anything
    but EOS. Records the ids fed to each call."""

    def __init__(self, model, eos_token_id: int, eos_steps: list[int]) -> None:
        super().__init__()
        self.model, self.config, self.eos, self.eos_steps = model, model.config, eos_token_id, eos_steps
        self.fed: list[torch.Tensor] = []

    def forward(self, **inputs):
        self.fed.append(inputs["input_ids"])
        output = self.model(**inputs)
        step, logits = len(self.fed) - 1, output.logits.clone()
        for row, eos_step in enumerate(self.eos_steps):
            if eos_step == step:
                logits[row, :, :] = float("-inf")
                logits[row, :, self.eos] = 0.0
            else:
                logits[row, :, self.eos] = float("-inf")
        output.logits = logits
        return output


def test_rows_after_eos_are_fed_pad_and_decoding_stops_once_every_row_has_ended(tiny_policy, tiny_tokenizer):
    """Rows end at steps 0, 1 and 3 of 8: each is fed pad after its EOS, its ids are pad and its mask and
    log-probs 0 from then on, and decoding stops after step 3 (1 prefill + 3 decode calls, 4 columns)."""
    prompts = ["Write a short review of the library.", "Say hello.", "Give your honest opinion of a long flight."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    eos, pad, eos_steps = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id, [0, 1, 3]
    assert eos != pad
    model = ForcedEos(tiny_policy, eos, eos_steps)
    torch.manual_seed(4)
    sampled = sample(
        model,
        query_ids,
        query_mask,
        max_new_tokens=8,
        temperature=1.0,
        eos_token_id=eos,
        pad_token_id=pad,
        with_logprobs=True,
    )
    assert len(model.fed) == 4 and sampled.ids.shape == (3, 4)  # not 8 calls, not 8 columns
    for row, eos_step in enumerate(eos_steps):
        assert sampled.ids[row, eos_step] == eos
        assert (sampled.ids[row, :eos_step] != eos).all() and (sampled.ids[row, :eos_step] != pad).all()
        assert (sampled.ids[row, eos_step + 1 :] == pad).all()
        assert sampled.mask[row].tolist() == [1] * (eos_step + 1) + [0] * (3 - eos_step)
        assert (sampled.logprobs[row, eos_step:] == 0).all()  # EOS had probability 1; after it, masked
        assert (sampled.logprobs[row, :eos_step] < 0).all()
        for call in range(eos_step + 2, len(model.fed)):  # call k feeds step k - 1's token; EOS is fed once
            assert model.fed[call][row, 0] == pad


def test_prefix_shared_samples_return_the_hidden_states_of_a_full_forward(tiny_policy, tiny_tokenizer):
    """With 3 samples per query the query's hidden state is computed once and repeated; every row's
    states must still be the last layer's output of a full forward over [query; response] at the
    positions before each response token (Tq - 1 .. L - 2), padded query included."""
    prompts = ["Write a short review of the library.", "Say hello."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    assert (query_mask == 0).any()
    torch.manual_seed(5)
    sampled = sample(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=6,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        with_hidden=True,
        samples_per_query=3,
    )
    repeated_ids, repeated_mask = query_ids.repeat_interleave(3, dim=0), query_mask.repeat_interleave(3, dim=0)
    attention_mask = torch.cat([repeated_mask, sampled.mask], dim=1)
    with torch.no_grad():
        full = tiny_policy(
            input_ids=torch.cat([repeated_ids, sampled.ids], dim=1),
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(dim=1) - 1).clamp_min(0),
            output_hidden_states=True,
        )
    expected = full.hidden_states[-1][:, query_ids.shape[1] - 1 : -1]
    assert sampled.last_hidden.shape == expected.shape and expected.shape[0] == 6
    for row in range(6):  # every sample of every query
        keep = sampled.mask[row].bool()
        assert keep.any()
        torch.testing.assert_close(sampled.last_hidden[row][keep], expected[row][keep], atol=1e-4, rtol=1e-4)
    assert len({tuple(row.tolist()) for row in sampled.ids[:3]}) > 1  # three draws, so three sets of states


def sliding_window_policy(kind: str, tokenizer):
    """A tiny random model whose cache layers are sliding-window ones: Qwen2 with `use_sliding_window`
    (its layers from `max_window_layers` on slide), Mistral with a non-null `sliding_window`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    options = {
        "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
        "mistral": dict(sliding_window=4),
    }[kind]
    config = AutoConfig.for_model(kind, vocab_size=len(tokenizer), **shape, **options)
    return AutoModelForCausalLM.from_config(config).eval()


def test_sample_refuses_sliding_window_models_before_any_forward(tiny_policy, tiny_tokenizer):
    """Without the check, both models sampled a left-padded batch (window 4) with stored log-probs up to 0.1 off a
    full forward's: `sample` must refuse them before the prefill. The full-attention tiny Llama still samples."""

    prompts = ["Write a short review of the library.", "Say hello."]
    query_ids, query_mask = encode_prompts(tiny_tokenizer, prompts, max_prompt_tokens=32)
    ids = dict(eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    calls = []
    for kind in ("qwen2", "mistral"):
        model = sliding_window_policy(kind, tiny_tokenizer)
        model.register_forward_pre_hook(lambda module, args: calls.append(module))
        with pytest.raises(StageInputError, match="models.policy: .*full-attention .*DynamicSlidingWindowLayer"):
            sample(model, query_ids, query_mask, max_new_tokens=3, temperature=1.0, **ids)
    assert calls == []  # refused before any forward
    sampled = sample(tiny_policy, query_ids, query_mask, max_new_tokens=3, temperature=1.0, **ids)
    assert sampled.ids.shape[0] == 2 and (sampled.mask[:, 0] == 1).all()


def test_shared_prefix_is_the_leading_real_tokens_all_rows_share_and_the_rest_keeps_positions():
    from robust_rlhf.generation import shared_prefix_length, split_shared_prefix

    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [0, 5, 6, 7, 9, 9], [5, 6, 7, 1, 2, 3]])  # 0: left padding
    mask = (ids != 0).long()
    assert shared_prefix_length(ids, mask) == 3  # [5, 6, 7]; row 0 keeps its last token, 8
    split = split_shared_prefix(ids, mask, 3)
    assert split.prefix_ids.tolist() == [[5, 6, 7]]
    assert split.rest_ids.tolist() == [[0, 0, 8], [0, 9, 9], [1, 2, 3]]
    assert split.rest_positions.tolist() == [[0, 0, 3], [0, 3, 4], [3, 4, 5]]  # as in the full rows
    assert split.attention_mask.tolist() == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]]
    # Every row keeps at least one query token: a row that is all prefix caps the length.
    assert shared_prefix_length(torch.tensor([[5, 6, 7], [5, 6, 8]]), torch.ones(2, 3, dtype=torch.long)) == 2
    assert shared_prefix_length(torch.tensor([[0, 5], [5, 6]]), torch.tensor([[0, 1], [1, 1]])) == 0
    assert shared_prefix_length(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)) == 0  # one row
    assert shared_prefix_length(torch.tensor([[4, 6, 7], [5, 6, 7]]), torch.ones(2, 3, dtype=torch.long)) == 0
    unchanged = split_shared_prefix(ids, mask, 0)
    assert torch.equal(unchanged.rest_ids, ids) and torch.equal(unchanged.attention_mask, mask)
    right_padded = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    assert shared_prefix_length(right_padded, (right_padded != 0).long()) == 0  # only left padding is split
    with pytest.raises(ValueError, match="do not share 4 leading tokens"):
        split_shared_prefix(ids, mask, 4)


def test_a_prefix_split_is_exact_unless_the_rope_frequencies_depend_on_the_call():
    from types import SimpleNamespace

    from robust_rlhf.generation import prefix_split_is_exact

    assert prefix_split_is_exact(SimpleNamespace())
    assert prefix_split_is_exact(SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    assert prefix_split_is_exact(SimpleNamespace(rope_parameters={"rope_type": "llama3", "factor": 8.0}))
    assert not prefix_split_is_exact(SimpleNamespace(rope_parameters={"rope_type": "dynamic", "factor": 2.0}))
    assert not prefix_split_is_exact(SimpleNamespace(rope_scaling={"type": "longrope"}))
    per_layer_type = {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "dynamic"}}
    assert not prefix_split_is_exact(SimpleNamespace(rope_parameters=per_layer_type))


SHARED_PROMPTS = [
    "Write a short review of the library.",
    "Write a short review of a long flight today, please.",
    "Write a short note.",
]


def full_forward(model, query_ids, query_mask, response_ids, response_mask, *, temperature=1.0):
    """Log-probs of the response tokens and the last hidden states before them, from one plain forward
    over [query; response] (no cache, no shared prefix): what the shared-prefix paths must reproduce."""
    from robust_rlhf.logprobs import logprobs_of_labels

    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    with torch.no_grad():
        output = model(
            input_ids=torch.cat([query_ids, response_ids], dim=1),
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(dim=1) - 1).clamp_min(0),
            output_hidden_states=True,
        )
    columns = slice(query_ids.shape[1] - 1, -1)
    logprobs = logprobs_of_labels(output.logits[:, columns].float() / temperature, response_ids)
    return logprobs, output.hidden_states[-1][:, columns]


def test_forward_response_runs_a_shared_prefix_once_without_gradients_and_matches_a_full_forward(
    tiny_policy, tiny_tokenizer
):
    from robust_rlhf.generation import shared_prefix_length

    query_ids, query_mask = encode_prompts(tiny_tokenizer, SHARED_PROMPTS, max_prompt_tokens=32)
    assert shared_prefix_length(query_ids, query_mask) >= 3 and (query_mask == 0).any()
    torch.manual_seed(4)
    response_ids, response_mask = sample_responses(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=6,
        temperature=1.0,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    response_ids, response_mask = response_ids.clone(), response_mask.clone()  # not inference tensors
    expected, _ = full_forward(tiny_policy, query_ids, query_mask, response_ids, response_mask, temperature=0.8)
    calls = []
    hook = tiny_policy.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        with torch.no_grad():
            shared, _ = forward_response(
                tiny_policy, query_ids, query_mask, response_ids, response_mask, temperature=0.8
            )
        assert len(calls) == 2  # the prefix pass, then the rest
        calls.clear()
        with_grad, _ = forward_response(
            tiny_policy, query_ids, query_mask, response_ids, response_mask, temperature=0.8
        )
        assert len(calls) == 1 and with_grad.requires_grad  # training runs the plain forward
    finally:
        hook.remove()
    keep = response_mask.bool()
    torch.testing.assert_close(shared[keep], expected[keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_grad.detach()[keep], expected[keep], atol=1e-4, rtol=1e-4)


def test_sampling_through_a_shared_prefix_keeps_the_log_probs_and_hidden_states_of_a_full_forward(
    tiny_policy, tiny_tokenizer
):
    query_ids, query_mask = encode_prompts(tiny_tokenizer, SHARED_PROMPTS, max_prompt_tokens=32)
    torch.manual_seed(5)
    sampled = sample(
        tiny_policy,
        query_ids,
        query_mask,
        max_new_tokens=7,
        temperature=0.9,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        with_logprobs=True,
        with_hidden=True,
        samples_per_query=2,
    )
    repeated_ids, repeated_mask = query_ids.repeat_interleave(2, dim=0), query_mask.repeat_interleave(2, dim=0)
    logprobs, hidden = full_forward(
        tiny_policy, repeated_ids, repeated_mask, sampled.ids, sampled.mask, temperature=0.9
    )
    keep = sampled.mask.bool()
    torch.testing.assert_close(sampled.logprobs[keep], logprobs[keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sampled.last_hidden[keep], hidden[keep], atol=1e-4, rtol=1e-4)


def test_forward_response_runs_the_plain_forward_where_a_prefix_pass_would_not_be_exact_or_safe(
    tiny_policy, tiny_tokenizer, monkeypatch
):
    """One forward, not two, for: a sliding-window model; a RoPE chosen per call; a ZeRO-3 partitioned model
    (each forward all-gathers collectively, and the ranks' own prompts would decide apart whether to run a
    prefix pass); a model that leaves the cache empty. The log-probs stay those of a full forward."""
    query_ids, query_mask = encode_prompts(tiny_tokenizer, SHARED_PROMPTS, max_prompt_tokens=32)
    response_ids = torch.full((3, 4), tiny_tokenizer.pad_token_id + 1)
    response_mask = torch.ones_like(response_ids)

    def forwards(model) -> int:
        calls = []
        hook = model.register_forward_hook(lambda module, args, output: calls.append(1))
        try:
            with torch.no_grad():
                logprobs, _ = forward_response(model, query_ids, query_mask, response_ids, response_mask)
        finally:
            hook.remove()
        expected, _ = full_forward(model, query_ids, query_mask, response_ids, response_mask)
        torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=1e-4)
        return len(calls)

    assert forwards(tiny_policy) == 2  # the shared prefix, then the rest
    assert forwards(sliding_window_policy("mistral", tiny_tokenizer)) == 1
    with monkeypatch.context() as patch:
        patch.setattr(tiny_policy.config, "rope_parameters", {"rope_type": "dynamic", "factor": 2.0}, raising=False)
        assert forwards(tiny_policy) == 1
    with monkeypatch.context() as patch:
        patch.setattr(next(tiny_policy.parameters()), "ds_id", 0, raising=False)
        assert forwards(tiny_policy) == 1
    with monkeypatch.context() as patch:
        patch.setattr("robust_rlhf.generation.run_shared_prefix", lambda model, split, cache: model(split.prefix_ids))
        assert forwards(tiny_policy) == 2  # the prefix pass ran and filled nothing: the plain forward follows
