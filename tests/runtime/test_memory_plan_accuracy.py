"""The plan against what torch really allocates on the CPU: the live tensor bytes (torch.profiler's
memory profile, the curve behind export_memory_timeline) of the tiny profile's actor training step,
AdamW at ppo's micro-batch and sequence length, against the plan's trained-model states plus one
micro-batch's activations. Tensors, not RSS: torch and DeepSpeed's own hundreds of MB would drown a
model of 0.1-1 M weights."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action

from robust_rlhf.config import Params
from robust_rlhf.logprobs import logprobs_of_labels
from robust_rlhf.models import TINY_LLAMA_SHAPE, TINY_VOCAB_SIZE
from robust_rlhf.runtime.memory_plan import trained_model_states, training_activation_bytes
from tests.conftest import tiny_params


def peak_tensor_bytes(profiler) -> int:
    """The peak of live CPU tensor bytes over the profiled region (allocations minus frees, in time order)."""
    live = peak = 0
    for _, action, (key, _), size in profiler._memory_profile().timeline:
        if key.device.type != "cpu":
            continue
        live += size if action in (Action.PREEXISTING, Action.CREATE) else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("width", [1, 4])  # the tiny-random shape, and the same Llama 4x wider (1.3 M weights)
def test_the_plan_is_within_30_percent_of_the_measured_peak(width):
    from transformers import LlamaConfig, LlamaForCausalLM

    params = Params.model_validate(tiny_params())
    config = params.ppo
    tokens = params.prepare.max_prompt_tokens + config.max_new_tokens
    shape = {**TINY_LLAMA_SHAPE, "hidden_size": 64 * width, "intermediate_size": 128 * width}
    llama = LlamaConfig(vocab_size=TINY_VOCAB_SIZE, tie_word_embeddings=True, attn_implementation="sdpa", **shape)
    torch.manual_seed(0)
    ids = torch.randint(0, TINY_VOCAB_SIZE, (config.micro_batch_size, tokens))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        model = LlamaForCausalLM(llama)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
        for _ in range(2):  # the second step has Adam's states allocated
            loss = -logprobs_of_labels(model(ids).logits.float(), ids).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    measured = peak_tensor_bytes(prof)
    num_params = sum(p.numel() for p in model.parameters())
    states = trained_model_states(
        num_params, trainable_params=num_params, precision=params.deepspeed.precision,
        zero_stage=params.deepspeed.zero_stage, devices=1, offload_optimizer=False, offload_param=False,
        largest_layer_params=0,
    )  # fmt: skip
    activations = training_activation_bytes(
        layers=llama.num_hidden_layers, tokens=tokens, batch=config.micro_batch_size, hidden=llama.hidden_size,
        heads=llama.num_attention_heads, vocab=TINY_VOCAB_SIZE, precision=params.deepspeed.precision, fused=True,
        checkpointing=False,
    )  # fmt: skip
    estimate = sum(states.values()) + activations
    print(f"width {width}: {num_params} weights, plan {estimate / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB")
    assert abs(estimate - measured) / measured <= 0.3
