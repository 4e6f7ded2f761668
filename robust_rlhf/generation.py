"""Batched sampling from a causal LM and the log-probabilities of its responses.

Prompts are left-padded so every row's response starts at the same column; decoding uses a KV cache
allocated once per call (see `sample`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from robust_rlhf.logprobs import entropy_from_logits, logprobs_of_labels
from robust_rlhf.runtime.distributed import zero3_partitioned
from robust_rlhf.runtime.guards import Diverged
from robust_rlhf.runtime.small_batch_linear import use_small_batch_linears

logger = logging.getLogger(__name__)


def for_sampling(model: torch.nn.Module, *, small_batch_linear: bool) -> torch.nn.Module:
    """`model`, a policy that will sample, with its linear layers on the small-batch kernel when
    `small_batch_linear` (params `models.small_batch_linear`; robust_rlhf/runtime/small_batch_linear.py: a
    no-grad product of at most its MAX_ROWS rows, as a decode step's; training keeps torch's matmul)."""
    if small_batch_linear and (changed := use_small_batch_linears(model)):
        logger.info("models.small_batch_linear: %d linear layers on the small-batch kernel", changed)
    return model


def format_prompt(tokenizer, prompt: str) -> str:
    """Render a user prompt through the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def encode_prompts(tokenizer, prompts: list[str], *, max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise formatted prompts, left-padded and left-truncated. Returns ids, mask: (B, Tq)."""
    tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the response
    batch = tokenizer(
        [format_prompt(tokenizer, p) for p in prompts],
        return_tensors="pt",
        padding=True,
        padding_side="left",
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=False,
    )
    return batch["input_ids"], batch["attention_mask"]


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on response tokens up to and including the first EOS, 0 after it. (B, T) -> (B, T) long."""
    is_eos = (response_ids == eos_token_id).long()
    eos_seen_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before t
    return (eos_seen_before == 0).long()


def truncated(response_ids: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Whether each response was cut by the length limit: no EOS among its real tokens. (B, T) -> (B,) bool."""
    return ~((response_ids == eos_token_id) & response_mask.bool()).any(dim=1)


@dataclass
class SampledResponses:
    """What one batched sampling pass yields. Token tensors are (B, T)."""

    ids: torch.Tensor  # response tokens; pad after the first EOS
    mask: torch.Tensor  # 1 up to and including the first EOS
    logprobs: torch.Tensor | None = None  # log pi(token) under the sampling model, from the sampler's own logits
    last_hidden: torch.Tensor | None = None  # (B, T, H) final hidden state of the state before each token


@torch.inference_mode()
def sample(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    with_logprobs: bool = False,
    with_hidden: bool = False,
    samples_per_query: int = 1,
) -> SampledResponses:
    """Sample `samples_per_query` responses per query with a preallocated KV cache; rows are
    query-major (sample j of query i is row i * samples_per_query + j).

    Pure ancestral sampling from softmax(logits / temperature) (top_k = 0, top_p = 1, no minimum
    length; `draw_tokens`; nothing from `model.generation_config`, e.g. a repetition penalty,
    applies), so the stored log-probs are those of the distribution sampled, as PPO's ratio and the
    KL estimators assume. A row that emitted EOS is fed pad from then on, and decoding stops once
    every row has emitted EOS.

    The loop is ours rather than transformers' `generate` because the profile of prepare's pair
    sampling (64 queries x 2 samples x 32 tokens, SmolLM2-135M, 2 CPU cores) spent 36% of its time
    in `cat`, growing the dynamic KV cache every step, 11% in `multinomial`'s exponential draws over
    the whole vocabulary and 17% turning the stored (B, T, V) logits into log-probs afterwards, and
    only 23% in the model's matmuls. Here the cache is allocated once (transformers' StaticCache), a
    token costs one uniform draw, and each step keeps only its token's log-prob.

    With several samples per query the query is run once and its KV cache repeated. The leading
    tokens every query shares (a chat template's system prompt) are run once for the whole batch
    (`split_shared_prefix`): at prepare's 64 queries (24 of their ~41 tokens shared) the prefill
    took 2.4 s instead of 5.5 s, of a ~20 s call.

    `with_logprobs` returns the sampled tokens' log-probs at `temperature`: the numbers of
    `forward_response(..., temperature)` on the result, up to float rounding of cached vs
    full-sequence attention (0 after a row's EOS, where the mask is 0). `with_hidden` returns the
    last layer's hidden state at each step's input position (the query's last column, then each
    fed-back token): the state a value head reads before each response token.
    """
    from transformers import DynamicCache, StaticCache

    rows, query_length = query_ids.shape[0] * samples_per_query, query_ids.shape[1]
    prefill_cache = DynamicCache(config=model.config)
    check_full_attention(prefill_cache)
    length = shared_prefix_length(query_ids, query_mask) if prefix_split_is_exact(model.config) else 0
    split = split_shared_prefix(query_ids, query_mask, length)
    run_shared_prefix(model, split, prefill_cache)
    output = model(
        input_ids=split.rest_ids,
        attention_mask=split.attention_mask,
        position_ids=split.rest_positions,
        cache=prefill_cache,
        use_cache=True,
        logits_to_keep=1,
        output_hidden_states=with_hidden,
    )
    query_mask, positions = split.attention_mask, split.rest_positions  # the cache's column order from here on
    cache = StaticCache(config=model.config, max_cache_len=query_length + max_new_tokens)
    for layer, (keys, values) in enumerate(zip(*_cache_tensors(prefill_cache))):
        cache.update(
            keys.repeat_interleave(samples_per_query, dim=0), values.repeat_interleave(samples_per_query, dim=0), layer
        )
    del prefill_cache
    attention_mask = torch.cat(
        [query_mask.repeat_interleave(samples_per_query, dim=0), query_mask.new_ones(rows, max_new_tokens)], dim=1
    )
    next_position = positions[:, -1:].repeat_interleave(samples_per_query, dim=0) + 1
    logits = output.logits[:, -1].repeat_interleave(samples_per_query, dim=0)
    hidden = [output.hidden_states[-1][:, -1:].repeat_interleave(samples_per_query, dim=0)] if with_hidden else []
    finished = torch.zeros(rows, dtype=torch.bool, device=query_ids.device)
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        token, logprob = draw_tokens(logits, temperature)
        tokens.append(token.masked_fill(finished, pad_token_id))
        logprobs.append(logprob.masked_fill(finished, 0.0))  # after EOS: masked out, kept finite
        token = tokens[-1]
        finished |= token == eos_token_id
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        output = model(
            input_ids=token[:, None],
            attention_mask=attention_mask[:, : query_length + step + 1],
            position_ids=next_position + step,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=with_hidden,
        )
        logits = output.logits[:, -1]
        if with_hidden:
            hidden.append(output.hidden_states[-1][:, -1:])
    response_ids = torch.stack(tokens, dim=1)
    response_mask = response_mask_from_ids(response_ids, eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, pad_token_id)
    sampled = SampledResponses(response_ids, response_mask)
    if with_logprobs:
        sampled.logprobs = torch.stack(logprobs, dim=1)
    if with_hidden:
        sampled.last_hidden = torch.cat(hidden, dim=1)
    return sampled


def check_full_attention(cache) -> None:
    """Raise unless every layer of a DynamicCache built from the model's config is a plain full-attention
    layer: `sample` copies the prefill's keys and values into a StaticCache, which is right only for those.
    A sliding-window layer keeps only its last `window - 1` positions (copied, they gave log-probs up to 0.1
    off a full forward's on a left-padded batch: tiny Mistral and Qwen2, window 4), a linear-attention layer
    keeps a recurrent state rather than keys and values, a KV-sharing layer nothing. The layer classes are
    what transformers dispatched from the config (`layer_types`, else a non-null `sliding_window`, which
    Qwen2 nulls when `use_sliding_window` is off), so the check costs nothing per step."""
    other = other_than_full_attention(cache)
    if other:
        from robust_rlhf.config import StageInputError  # a params problem: exit 2, no retry

        raise StageInputError(
            f"models.policy: sampling supports only full-attention models: this model's cache has "
            f"{', '.join(other)} layers (sliding-window, linear-attention or shared-KV), whose prefill cannot be "
            "copied into a StaticCache (a model with a sliding window is refused even when a response would fit "
            "inside the window)"
        )


def other_than_full_attention(cache) -> list[str]:
    """The class names of a DynamicCache's layers that are not plain full-attention layers (`DynamicLayer`)."""
    from transformers.cache_utils import DynamicLayer

    return sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})


def draw_tokens(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / temperature) by inversion of its CDF: the first id
    whose cumulative probability exceeds u * total, u ~ U[0, 1) (one draw per row; a zero-probability
    id is never chosen, since its CDF equals its predecessor's). Returns the ids (B,) and their
    log-probabilities (B,). (B, V) logits in any float dtype; the arithmetic is fp32.

    Raises Diverged (exit 2, no retry) when a row has no distribution to draw from: a NaN or +inf logit, or
    every logit -inf, makes the row's softmax NaN, and the search over a NaN CDF would silently return the
    last id. A -inf logit alone is a zero probability."""
    scaled = logits.float()  # no copy when already fp32
    if temperature != 1.0:  # x / 1.0 == x: skip a (B, V) pass (5 ms a step at 128 rows x 49k)
        scaled = scaled / temperature
    probs = torch.softmax(scaled, dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]  # (B, 1): 1 up to rounding, NaN iff any of the row's probabilities is
    # One reduction and one host sync per step (the decode loop syncs on its EOS check anyway).
    if not bool(torch.isfinite(total).all()):
        rows = (~torch.isfinite(total[:, 0])).nonzero().flatten().tolist()
        raise Diverged(f"sampling: logits were not finite (NaN or inf) in rows {rows}: no distribution to sample")
    threshold = torch.rand(cdf.shape[0], 1, device=cdf.device) * total
    token = torch.searchsorted(cdf, threshold, right=True).clamp_max(cdf.shape[1] - 1).squeeze(1)
    return token, probs.gather(1, token[:, None]).squeeze(1).log()


def _cache_tensors(cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each layer's key and value tensors of a filled DynamicCache."""
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def sample_responses(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    samples_per_query: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample` for callers that need only the tokens. Returns response ids and mask, (B, T)."""
    sampled = sample(
        model,
        query_ids,
        query_mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        samples_per_query=samples_per_query,
    )
    return sampled.ids, sampled.mask


def forward_response(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (and optionally entropies) of the response tokens under `model` at
    `temperature` (softmax(logits / T), the distribution a sampler at T draws from, as TRL does).

    One forward over [query; response]; the logits at column Tq - 1 + t predict response token t.
    Position ids follow the attention mask so left padding does not shift positions (as in
    `generate`). Without gradients, the leading query tokens every row shares run once, in a pass of
    their own whose keys and values every row reads (`shared_prefix_response_inputs`). Returns
    logprobs (B, T) and entropy (B, T) or None.
    """
    logits = model(
        **shared_prefix_response_inputs(model, query_ids, query_mask, response_ids, response_mask),
        logits_to_keep=response_logits_to_keep(response_ids),
    ).logits
    return response_logprobs(logits, response_ids, with_entropy=with_entropy, temperature=temperature)


def response_logits_to_keep(response_ids: torch.Tensor) -> int:
    """How many last positions must reach the LM head: columns Tq - 1 .. L - 1, the last then dropped.
    The same as `logits[:, Tq - 1 : -1]` of the full logits, without the (B, Tq, V) query logits,
    which cost ~1/5 of a small model's forward (and its backward) at a 49k vocabulary."""
    return response_ids.shape[1] + 1


def response_logprobs(
    kept_logits: torch.Tensor, response_ids: torch.Tensor, *, with_entropy: bool = False, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the response tokens at `temperature`, and entropies or None, from the logits
    of the last `response_logits_to_keep` positions."""
    logits = kept_logits[:, :-1, :].float() / temperature  # (B, T, V): column t predicts response token t
    return logprobs_of_labels(logits, response_ids), entropy_from_logits(logits) if with_entropy else None


def response_inputs(query_ids, query_mask, response_ids, response_mask) -> dict[str, torch.Tensor]:
    """Model inputs of [query; response]: ids, attention mask and position ids that follow the mask
    (left padding does not shift positions, as in `generate`)."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def decode(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Response texts without padding or special tokens."""
    return [
        tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).strip()
        for ids, mask in zip(response_ids, response_mask)
    ]


@dataclass(frozen=True)
class SharedPrefixSplit:
    """Left-padded queries (B, Tq) as the S leading real tokens every row shares and the rest of each row.
    Row i, [pad_i | prefix | rest_i], becomes [prefix | pad_i | rest_i]: the same tokens at the same
    positions, each attending to the same ones, so a model computes the same function of it (up to float
    rounding), with the prefix run once instead of B times."""

    prefix_ids: torch.Tensor  # (1, S)
    rest_ids: torch.Tensor  # (B, Tq - S): each row without its prefix, still left-padded
    rest_positions: torch.Tensor  # (B, Tq - S): the position ids those tokens had in the full rows
    attention_mask: torch.Tensor  # (B, Tq): [1 x S | the rest's mask], the cache's columns in order

    @property
    def length(self) -> int:
        return self.prefix_ids.shape[1]


def shared_prefix_length(query_ids: torch.Tensor, query_mask: torch.Tensor) -> int:
    """S: how many leading real tokens all left-padded rows share, at most the shortest row's length - 1
    (every row keeps its last query token, whose logits give the first response token). 0 for one row,
    where nothing is shared, and for a mask that is not left padding ([0 ... 0 1 ... 1] in every row)."""
    if query_ids.shape[0] < 2 or not bool((query_mask[:, 1:] >= query_mask[:, :-1]).all()):
        return 0
    lengths = query_mask.sum(dim=1)
    limit = int(lengths.min()) - 1
    if limit < 1:
        return 0
    starts = query_ids.shape[1] - lengths  # first real column of each (left-padded) row
    columns = starts[:, None] + torch.arange(limit, device=query_ids.device)
    leading = query_ids.gather(1, columns)  # (B, limit): each row's first `limit` real tokens
    agree = (leading == leading[:1]).all(dim=0)
    return int(agree.long().cumprod(dim=0).sum())  # length of the run of columns where all rows agree


def split_shared_prefix(query_ids: torch.Tensor, query_mask: torch.Tensor, length: int) -> SharedPrefixSplit:
    """Split left-padded queries into their first `length` shared real tokens and the rest (see
    SharedPrefixSplit); `length` at most `shared_prefix_length`'s (ValueError otherwise). Length 0 gives the
    rows unchanged."""
    if length and length > shared_prefix_length(query_ids, query_mask):
        raise ValueError(f"the rows do not share {length} leading tokens with one left over each")
    positions = (query_mask.cumsum(dim=1) - 1).clamp_min(0)
    starts = query_ids.shape[1] - query_mask.sum(dim=1, keepdim=True)
    columns = torch.arange(query_ids.shape[1] - length, device=query_ids.device).expand(query_ids.shape[0], -1)
    kept = torch.where(columns < starts, columns, columns + length)  # skip each row's prefix columns
    rest_mask = query_mask.gather(1, kept)
    return SharedPrefixSplit(
        prefix_ids=query_ids[:1, int(starts[0]) : int(starts[0]) + length],
        rest_ids=query_ids.gather(1, kept),
        rest_positions=positions.gather(1, kept),
        attention_mask=torch.cat([rest_mask.new_ones(rest_mask.shape[0], length), rest_mask], dim=1),
    )


# RoPE variants whose frequencies a forward chooses from its own longest position (transformers'
# dynamic NTK and LongRoPE): a prefix pass (positions < S) and the rest could get different ones.
PER_CALL_ROPE_TYPES = frozenset({"dynamic", "longrope"})


def prefix_split_is_exact(config) -> bool:
    """Whether a model with this config computes, on a SharedPrefixSplit run as two passes, what it computes
    on the plain rows (up to float rounding): attention that reads only the position ids and the mask. False
    for a RoPE whose frequencies depend on the call (PER_CALL_ROPE_TYPES). Sliding-window and other
    non-full-attention layers are refused by the callers through their cache's layers."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    per_layer_type = rope and all(isinstance(value, dict) for value in rope.values())
    types = {spec.get("rope_type", spec.get("type")) for spec in (rope.values() if per_layer_type else [rope])}
    return not types & PER_CALL_ROPE_TYPES


def run_shared_prefix(model, split: SharedPrefixSplit, cache) -> None:
    """Run the shared prefix once (batch 1) into `cache`, an empty DynamicCache, and expand its keys and
    values to the split's rows (views, no copy: the next forward's update concatenates them). Nothing
    when the prefix is empty; the cache stays empty when the model does not fill it."""
    if split.length == 0:
        return
    model(
        input_ids=split.prefix_ids,
        position_ids=torch.arange(split.length, device=split.prefix_ids.device)[None],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    rows = split.rest_ids.shape[0]
    for layer in cache.layers:
        if layer.keys is None:  # a model that ignores `cache`
            return
        layer.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
        layer.values = layer.values.expand(rows, *layer.values.shape[1:])


def shared_prefix_response_inputs(model, query_ids, query_mask, response_ids, response_mask) -> dict:
    """`response_inputs` for `model`, its queries' shared prefix run first into a cache passed along
    (SharedPrefixSplit): the model's inputs for [rest of query; response] with that cache. Plain
    `response_inputs` when nothing is shared, when gradients are on, when the split is not exact for the
    model (`prefix_split_is_exact`; layers that are not all full attention), when its parameters are
    ZeRO-3 partitions (each forward all-gathers collectively, and the ranks' prompts decide apart whether
    there is a prefix pass), and when the model left the prefix's cache empty.

    Without gradients it saves what it skips: the reference's forward over 8 rollouts (SmolLM2-135M,
    24 of ~41 query tokens shared, 32 response tokens) took 0.9x the plain forward's time, over 64
    evaluation rows 0.75x. With gradients it cost more than it saved (1.1x at PPO's 4-row
    micro-batches): the prefix pass's backward computes a second full-size gradient of every weight,
    which costs the same whatever the number of rows."""
    from transformers import DynamicCache

    plain = response_inputs(query_ids, query_mask, response_ids, response_mask)
    if torch.is_grad_enabled():  # the training forward: nothing more to compute
        return plain
    length = shared_prefix_length(query_ids, query_mask)
    module = getattr(model, "module", model)  # a DeepSpeed engine's model; its own `config` is DeepSpeed's
    if length == 0 or not prefix_split_is_exact(module.config) or zero3_partitioned(module):
        return plain
    cache = DynamicCache(config=module.config)
    if other_than_full_attention(cache):
        return plain
    split = split_shared_prefix(query_ids, query_mask, length)
    run_shared_prefix(model, split, cache)
    if cache.get_seq_length() != length:
        return plain
    response_positions = plain["position_ids"][:, query_ids.shape[1] :]
    return {
        "input_ids": torch.cat([split.rest_ids, response_ids], dim=1),
        "attention_mask": torch.cat([split.attention_mask, response_mask], dim=1),
        "position_ids": torch.cat([split.rest_positions, response_positions], dim=1),
        "cache": cache,
        "use_cache": True,
    }
