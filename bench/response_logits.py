"""Before/after of the one library change the PPO profile called for: `forward_response` runs the
LM head on the response columns only (`logits_to_keep`), where it ran it on every column and
sliced. Both paths on the default policy, same batch, same process, inference and fwd+bwd."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.timing import median_seconds
from bench.workload import POLICY_DIR, bench_prompts, default_params


def full_sequence_logprobs(model, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
    """The code before the change: logits at every column, then the response slice. (B, T)."""
    from robust_rlhf.generation import response_inputs
    from robust_rlhf.logprobs import logprobs_of_labels

    logits = model(**response_inputs(query_ids, query_mask, response_ids, response_mask)).logits
    return logprobs_of_labels(logits[:, query_ids.shape[1] - 1 : -1, :].float(), response_ids)


def response_forward_times(
    work: Path, *, batch_size: int, response_len: int, max_prompt_tokens: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median seconds of `forward_response` (after) and the full-sequence path (before), under
    inference_mode (the rollout's reference pass) and as forward + backward (the update)."""
    from robust_rlhf.generation import encode_prompts, forward_response
    from robust_rlhf.models import load_causal_lm, load_tokenizer, model_options

    model = load_causal_lm(work / POLICY_DIR, **model_options(default_params(Path.cwd())))
    tokenizer = load_tokenizer(work / POLICY_DIR)
    query_ids, query_mask = encode_prompts(tokenizer, bench_prompts(batch_size), max_prompt_tokens=max_prompt_tokens)
    response_ids = torch.randint(
        0, len(tokenizer), (batch_size, response_len), generator=torch.Generator().manual_seed(0)
    )
    response_mask = torch.ones_like(response_ids)
    inputs = (query_ids, query_mask, response_ids, response_mask)
    paths = {
        "after": lambda: forward_response(model, *inputs)[0],
        "before": lambda: full_sequence_logprobs(model, *inputs),
    }

    def inference(path):
        def run():
            with torch.inference_mode():
                path()

        return run

    def training(path):
        def run():
            model.zero_grad(set_to_none=True)
            path().sum().backward()

        return run

    return {
        name: {"inference": median_seconds(inference(path), repeats), "train": median_seconds(training(path), repeats)}
        for name, path in paths.items()
    }
