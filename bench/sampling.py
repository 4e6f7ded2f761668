"""Sampling-only work (prepare's pairs, evaluate, best-of-n) against the machine's limits: our `sample`
(the library's own decode loop) against transformers' `generate` doing the same job as `sample` did
before (dynamic KV cache, `multinomial`, log-probs from the stored logits), at several batch sizes on
the default policy, in this process; plus the machine's fp32 matmul peak and memory read bandwidth,
measured in the same run, which bound what any sampler can reach here.

FLOPs as bench/flops.py counts them, padded positions included (the matmuls run on them): the prefill
over every query column (for ours, the prefix all queries share once), each decode step over every row
until the last row's EOS (`padded_tokens`); a decode step must read every weight once, whatever the
batch, and each row's KV cache (bench/gpu_ppo.py's decode_bytes_per_step, fp32 here).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from pathlib import Path

BYTES_PER_FP32 = 4
TORCH_MATMUL = "ours, torch matmul"  # our sampler with torch's matmul for every linear (no small-batch kernel)


@dataclass(frozen=True)
class SamplingRun:
    rows: int  # sequences sampled in one call (queries x samples per query)
    seconds: float
    generated_tokens: int  # response tokens up to and including EOS (the useful work; padding left out)
    flops: float  # of the matmuls, by `sampling_flops` over `padded_tokens` (the work done)


def padded_tokens(query_mask, response_mask, *, shared_prefix: int = 0) -> tuple[int, int]:
    """(prefilled, decoded) positions the matmuls run on, padding included: each query once, (Q, Tq) (the
    query is shared by its samples, not run per sample), less the `shared_prefix` tokens every query
    starts with that ours runs once for the batch (Q - 1 times S fewer; 0 for `generate`), and every row
    at each of the T sampled columns, (B, T), a row that ended included until the last one does. Exact for
    `generate` up to Q positions (it prefills Tq - 1 columns and runs the last per row); ours runs one
    decode step fewer (its first token comes from the prefill's logits), so its share of the peak reads
    ~1/T high."""
    queries = query_mask.shape[0]
    return query_mask.numel() - (queries - 1) * shared_prefix, response_mask.numel()


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square fp32 `torch.mm` (2 n^3 FLOPs each), after one warm-up: the machine's
    practical dense peak with torch's threads as set."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return repeats * 2 * size**3 / (time.perf_counter() - started)


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of summing a large fp32 tensor (each byte read once per pass), after one warm-up."""
    import torch

    data = torch.ones(megabytes * 2**20 // BYTES_PER_FP32)
    data.sum()
    started = time.perf_counter()
    for _ in range(repeats):
        data.sum()
    return repeats * data.numel() * BYTES_PER_FP32 / (time.perf_counter() - started)


def generate_baseline(
    model, query_ids, query_mask, *, max_new_tokens, temperature, eos_token_id, pad_token_id, samples
):
    """What `sample` did with transformers' `generate`: its dynamic cache prefilled once and repeated per
    sample, `multinomial` draws, the sampled tokens' log-probs from the stored logits afterwards."""
    import torch
    from transformers import DynamicCache

    from robust_rlhf.generation import response_mask_from_ids
    from robust_rlhf.logprobs import logprobs_of_labels

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        positions = (query_mask.cumsum(dim=1) - 1).clamp_min(0)
        model(
            input_ids=query_ids[:, :-1], attention_mask=query_mask[:, :-1], position_ids=positions[:, :-1], cache=cache
        )
        cache.batch_repeat_interleave(samples)
        query_ids, query_mask = query_ids.repeat_interleave(samples, 0), query_mask.repeat_interleave(samples, 0)
        output = model.generate(
            input_ids=query_ids,
            attention_mask=query_mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
            cache=cache,
        )
        ids = output.sequences[:, query_ids.shape[1] :]
        mask = response_mask_from_ids(ids, eos_token_id)
        logprobs_of_labels(torch.stack(output.logits, dim=1).float() / temperature, ids)
    return mask


def sampling_runs(
    policy_dir: Path,
    prompts: list[str],
    rows_list: list[int],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
    small_batch_linear: bool,
    profile_to: Path | None = None,
) -> tuple[dict[str, list[SamplingRun]], dict[int, float]]:
    """Each implementation at each batch (`rows` sequences: rows / 2 queries x 2 samples, as prepare's
    pairs), the same queries, one warm-up call first; ours and the baseline alternate per batch. Ours runs
    the small-batch kernel under `small_batch_linear` (params `models.small_batch_linear`), and then also
    runs with torch's matmul ("ours, torch matmul") at the batches the kernel takes (<= its MAX_ROWS). Also
    returns, per batch, the least bytes one decode step must read (the weights once, each row's KV
    cache at the mean context, taken as the prompt limit + half the response). With
    `profile_to`, one more call of each at the largest batch runs under torch.profiler, its top ops
    written to `<profile_to>/sampling_<name>_top_ops.txt`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.flops import linear_weights, sampling_flops
    from bench.gpu_ppo import decode_bytes_per_step
    from robust_rlhf.generation import encode_prompts, for_sampling, sample, shared_prefix_length
    from robust_rlhf.runtime.small_batch_linear import MAX_ROWS

    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    body, head = linear_weights(model, model.config.vocab_size)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    kernel_model = for_sampling(copy.deepcopy(model), small_batch_linear=True) if small_batch_linear else model

    def ours(query_ids, query_mask, policy=kernel_model):
        return sample(
            policy, query_ids, query_mask, max_new_tokens=max_new_tokens, temperature=1.0, with_logprobs=True,
            samples_per_query=2, **ids,
        ).mask  # fmt: skip

    def baseline(query_ids, query_mask):
        return generate_baseline(
            model, query_ids, query_mask, max_new_tokens=max_new_tokens, temperature=1.0, samples=2, **ids
        )

    implementations = {"ours": ours, "generate": baseline}
    if kernel_model is not model:
        implementations[TORCH_MATMUL] = functools.partial(ours, policy=model)
    runs: dict[str, list[SamplingRun]] = {name: [] for name in implementations}
    warm_ids, warm_mask = encode_prompts(tokenizer, prompts[:2], max_prompt_tokens=max_prompt_tokens)
    for run in implementations.values():
        run(warm_ids, warm_mask)
    for rows in rows_list:
        query_ids, query_mask = encode_prompts(tokenizer, prompts[: rows // 2], max_prompt_tokens=max_prompt_tokens)
        for name, run in implementations.items():
            if name == TORCH_MATMUL and rows > MAX_ROWS:  # the kernel does not run there: the same work
                continue
            torch.manual_seed(0)
            started = time.perf_counter()
            mask = run(query_ids, query_mask)
            seconds = time.perf_counter() - started
            tokens = int(mask.sum())
            shared = shared_prefix_length(query_ids, query_mask) if name != "generate" else 0
            prefilled, decoded = padded_tokens(query_mask, mask, shared_prefix=shared)
            flops = sampling_flops(
                body_weights=body, head_weights=head, prefill_tokens=prefilled, decoded_tokens=decoded
            )
            runs[name].append(SamplingRun(rows, seconds, tokens, flops))
            print(f"sampling {name} {rows} rows: {seconds:.2f} s, {tokens} tokens", flush=True)
    if profile_to is not None:
        from bench.ppo_workload import finish_profile, start_profile

        query_ids, query_mask = encode_prompts(
            tokenizer, prompts[: max(rows_list) // 2], max_prompt_tokens=max_prompt_tokens
        )
        for name, run in implementations.items():
            if name == TORCH_MATMUL:
                continue
            profiler = start_profile()
            run(query_ids, query_mask)
            finish_profile(profiler, profile_to / f"sampling_{name}_top_ops.txt")
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    step_bytes = {
        rows: decode_bytes_per_step(
            weight_bytes=sum(p.numel() for p in model.parameters()) * BYTES_PER_FP32,
            batch_size=rows,
            context_tokens=max_prompt_tokens + max_new_tokens / 2,
            num_layers=config.num_hidden_layers,
            num_kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            bytes_per_value=BYTES_PER_FP32,
        )
        for rows in rows_list
    }
    return runs, step_bytes
