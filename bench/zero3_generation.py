"""ZeRO-3 sampling, naive against `gathered_for_generation` (issue 17): the hooks' per-layer, per-token
fetch and release against one gather per rollout, same model, same process, same tokens.

`python -m bench.zero3_generation` times the tiny test policy and a random Llama of 4 layers x 256
hidden; `--reduced` the tiny one with a few tokens (the test). Run as its own process: it initialises
DeepSpeed (CPU accelerator without a GPU). DeepSpeed keeps tensors under 1e5 elements gathered for good
(`stage3_param_persistence_threshold`), which covers every tensor of these small models; the bench sets
it to 0 so that they are fetched as a real model's (e.g. SmolLM's 576 x 576 projections) are.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import median_seconds


def _zero3_module(model: torch.nn.Module) -> torch.nn.Module:
    from robust_rlhf.config import DeepSpeedParams
    from robust_rlhf.runtime.distributed import deepspeed_config, initialize_engine

    config = deepspeed_config(
        deepspeed=DeepSpeedParams(
            zero_stage=3, precision="fp32", gradient_clipping=1.0, offload_optimizer="none", offload_param="none"
        ),
        micro_batch_size=1,
        gradient_accumulation_steps=1,
        world_size=1,
        learning_rate=None,
    )
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return initialize_engine(model.eval().requires_grad_(False), config).module


def sampling_times(model: torch.nn.Module, tokenizer, *, max_new_tokens: int, repeats: int) -> dict[str, float]:
    """Median seconds of one sampled batch (4 prompts) under ZeRO-3: `naive` and `gathered`; the two
    draws with one seed must give the same tokens."""
    from robust_rlhf.generation import sample
    from robust_rlhf.runtime.distributed import gathered_for_generation

    module = _zero3_module(model)
    query = torch.randint(3, len(tokenizer), (4, 8), generator=torch.Generator().manual_seed(0))

    def draw(target):
        torch.manual_seed(1)
        return sample(
            target,
            query,
            torch.ones_like(query),
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            eos_token_id=tokenizer.eos_token_id,  # both draws stop where the same seed makes them stop
            pad_token_id=tokenizer.pad_token_id,
        ).ids

    def gathered():
        with gathered_for_generation(module) as target:
            return draw(target)

    if not torch.equal(draw(module), gathered()):
        raise AssertionError("gathered sampling drew other tokens than the naive one")
    return {"naive": median_seconds(lambda: draw(module), repeats), "gathered": median_seconds(gathered, repeats)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="the tiny model only, 4 tokens, 1 repeat")
    args = parser.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    from robust_rlhf.models import build_tiny_policy, build_tiny_tokenizer
    from robust_rlhf.runtime.distributed import init_distributed

    init_distributed()
    tokenizer = build_tiny_tokenizer(["the cat sat on the mat", "hello world", "a b c d e f g"] * 20)
    tokens, repeats = (4, 1) if args.reduced else (32, 3)
    models = {"tiny": lambda: build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa")}
    if not args.reduced:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
        models["llama_4x256"] = lambda: (torch.manual_seed(0), LlamaForCausalLM(config))[1]
    results = {}
    for name, build in models.items():
        times = sampling_times(build(), tokenizer, max_new_tokens=tokens, repeats=repeats)
        results[name] = times
        print(
            f"{name}: {tokens} tokens, naive {times['naive']:.3f} s, gathered {times['gathered']:.3f} s, "
            f"naive/gathered {times['naive'] / times['gathered']:.2f}x",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
