"""The memory plan's formulas on hand-computed values, against DeepSpeed's own estimators, and on
every profile and feature combination."""

import pytest

from robust_rlhf.config import Params, StageInputError
from robust_rlhf.runtime.memory_plan import (
    GIB,
    check_stage_fits,
    kv_cache_bytes,
    layer_activation_bytes,
    model_shape,
    plan_stages,
    trained_model_states,
    training_activation_bytes,
)
from tests.conftest import REPO, tiny_params

PSI = 1000


def states(**overrides):
    arguments = dict(
        trainable_params=PSI, precision="fp32", zero_stage=0, devices=1,
        offload_optimizer=False, offload_param=False, largest_layer_params=10,
    )  # fmt: skip
    return trained_model_states(PSI, **(arguments | overrides))


def test_model_states_follow_zero_section_3_1():
    # fp32: 4 + 4 + 8 bytes per weight; bf16 (ZeRO-0/1, the paper's mixed precision): 2 + 2 + 12.
    assert states() == {"weights": 4000, "gradients": 4000, "optimizer": 8000}
    assert states(precision="bf16") == {"weights": 2000, "gradients": 2000, "optimizer": 12000}
    # Stage 1 partitions the optimizer states over 4 devices; fp32 stage 2 also the gradients.
    assert states(precision="bf16", zero_stage=1, devices=4) == {"weights": 2000, "gradients": 2000, "optimizer": 3000}
    assert states(zero_stage=2, devices=4) == {"weights": 4000, "gradients": 1000, "optimizer": 2000}
    # fp32 stage 3: the weights too, plus the largest layer gathered (4 bytes x 10).
    assert states(zero_stage=3, devices=2) == {"weights": 2040, "gradients": 2000, "optimizer": 4000}
    assert states(zero_stage=3, devices=2, offload_optimizer=True, offload_param=True)["weights"] == 40
    assert states(zero_stage=1, offload_optimizer=True)["optimizer"] == 0


def test_lora_carries_gradients_and_adam_states_for_the_adapters_only():
    assert states(precision="bf16", trainable_params=10) == {"weights": 2000, "gradients": 20, "optimizer": 120}


@pytest.mark.parametrize("devices", [1, 4])
def test_16_bit_zero_2_and_3_are_deepspeeds_estimates(devices):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    zero2 = states(precision="bf16", zero_stage=2, devices=devices)
    assert sum(zero2.values()) == pytest.approx(estimate_zero2_model_states_mem_needs(PSI, devices, 1, False)[1])
    # DeepSpeed's 18 = the paper's 2 (16-bit grads) + 12 (Adam) + 4: the fp32 gradient partition it keeps.
    paper = states(precision="bf16", zero_stage=1, devices=devices)
    assert sum(zero2.values()) == pytest.approx(2 * PSI + (2 + 12 + 4) * PSI / devices)
    assert paper["optimizer"] == 12 * PSI / devices
    zero3 = states(precision="fp16", zero_stage=3, devices=devices)
    _, expected, _ = estimate_zero3_model_states_mem_needs(PSI, 10, devices, 1, False, False)
    assert sum(zero3.values()) == pytest.approx(expected) == pytest.approx(40 + 18 * PSI / devices)
    offloaded = states(precision="bf16", zero_stage=2, devices=devices, offload_optimizer=True)
    assert sum(offloaded.values()) == pytest.approx(2 * PSI)


def test_kv_cache_and_activations_by_hand():
    # 2 (k, v) x 2 layers x 2 kv heads x 16 head dim x 3 sequences x 10 tokens x 4 bytes.
    assert kv_cache_bytes(layers=2, kv_heads=2, head_dim=16, batch=3, tokens=10, precision="fp32") == 15360
    # s b h 34 at 16 bits = 4 x 2 x 8 x 34; eager attention adds 5 a s / h = 5 x 2 x 4 / 8 = 5 -> 39.
    layer = dict(tokens=4, batch=2, hidden=8, heads=2)
    assert layer_activation_bytes(**layer, precision="bf16", fused=True) == 2176
    assert layer_activation_bytes(**layer, precision="bf16", fused=False) == 2496
    assert layer_activation_bytes(**layer, precision="fp32", fused=True) == 4352
    full = training_activation_bytes(layers=3, **layer, vocab=5, precision="bf16", fused=True, checkpointing=False)
    assert full == 3 * 2176 + 2 * 2 * 4 * 5 * 4
    # Checkpointed: each layer's input (2 s b h bytes at 16 bits) + one layer recomputed.
    kept = training_activation_bytes(layers=3, **layer, vocab=5, precision="bf16", fused=True, checkpointing=True)
    assert kept == 3 * 2 * 4 * 2 * 8 + 2176 + 2 * 2 * 4 * 5 * 4


def test_shapes_count_parameters_exactly_without_downloading(tiny_tokenizer):
    from robust_rlhf.models import build_tiny_policy

    tiny = model_shape("tiny-random", trust_remote_code=False)
    model = build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa")
    assert tiny.num_params == sum(p.numel() for p in model.parameters())
    assert (tiny.layers, tiny.hidden, tiny.kv_heads, tiny.head_dim) == (2, 64, 2, 16)
    # Offline and not cached: the published config.json (Qwen2.5-0.5B: 494,032,768 weights, tied).
    qwen = model_shape("Qwen/Qwen2.5-0.5B-Instruct", trust_remote_code=False)
    assert qwen.num_params == 494_032_768 and qwen.kv_heads == 2 and qwen.vocab == 151_936
    llama = model_shape("meta-llama/Meta-Llama-3-8B-Instruct", trust_remote_code=False)
    assert llama.num_params == 8_030_261_248
    with pytest.raises(FileNotFoundError, match="no-such/model.*needs its config"):
        model_shape("no-such/model", trust_remote_code=False)


def test_lora_parameters_are_rank_times_fan_in_plus_fan_out():
    tiny = model_shape("tiny-random", trust_remote_code=False)
    # Per layer: q 64->64, k 64->32, v 64->32, o 64->64, gate 64->128, up 64->128, down 128->64.
    per_layer = 128 + 96 + 96 + 128 + 192 + 192 + 192
    assert tiny.lora_params(2, ["all-linear"]) == 2 * 2 * per_layer
    assert tiny.lora_params(2, ["q_proj"]) == 2 * 2 * 128


def test_a_critic_cut_to_its_first_layers_plans_the_weights_of_those_layers():
    tiny = model_shape("tiny-random", trust_remote_code=False)
    # One layer: the 7 linear layers above (q 64x64, k, v 64x32, o 64x64, gate, up 64x128, down 128x64)
    # and its two RMSNorms of 64.
    assert tiny.layer_params == 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 2 * 64
    assert tiny.backbone_params_of(1) == tiny.backbone_params - tiny.layer_params
    assert tiny.backbone_params_of(None) == tiny.backbone_params_of(2) == tiny.backbone_params
    full, cut = plan()["ppo"], plan(**{"ppo.critic_layers": 1})["ppo"]
    # fp32, ZeRO-0: 4 bytes of weights and of gradients, 8 of Adam states for each critic parameter cut.
    assert full.weights - cut.weights == 4 * tiny.layer_params
    assert full.optimizer - cut.optimizer == 8 * tiny.layer_params


def plan(**overrides) -> dict:
    return {m.stage: m for m in plan_stages(Params.model_validate(tiny_params(**overrides)))}


def test_every_profile_plans_and_each_feature_moves_its_term():
    from robust_rlhf.config import load_params

    for path in [REPO / "params.yaml", REPO / "profiles" / "tiny.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]:
        assert {m.stage for m in plan_stages(load_params(path))} == {"prepare", "train_reward", "ppo", "evaluate"}
    base = plan()["ppo"]
    bf16 = plan(**{"deepspeed.precision": "bf16"})["ppo"]
    assert bf16.weights < base.weights
    sharded = plan(**{"deepspeed.precision": "bf16", "deepspeed.zero_stage": 3, "launcher.num_gpus": 4})["ppo"]
    assert sharded.devices == 4 and sharded.optimizer < bf16.optimizer / 3
    lora = plan(**{"ppo.lora.enabled": True})["ppo"]
    assert lora.gradients < base.gradients / 2 and lora.weights < base.weights  # and no reference copy
    long = {"ppo.micro_batch_size": 8, "ppo.rollout_batch_size": 8, "ppo.max_new_tokens": 200}
    checkpointed = plan(**long, **{"ppo.gradient_checkpointing": True})["ppo"]
    assert checkpointed.activations < plan(**long)["ppo"].activations
    offload = plan(**{"deepspeed.zero_stage": 2, "deepspeed.offload_optimizer": "cpu"})["ppo"]
    assert offload.optimizer == 0
    hub = plan(**{"models.policy": "HuggingFaceTB/SmolLM2-1.7B-Instruct"})["ppo"]
    assert hub.total > 10 * GIB  # 1.7 B weights trained in fp32: 16 bytes each at least


def test_a_stage_that_cannot_fit_is_refused_naming_the_shortfall():
    params = Params.model_validate(tiny_params(**{"launcher.device_memory_gib": 0.0001}))
    with pytest.raises(StageInputError, match=r"ppo needs ~\d+\.\d GiB per device.*short by"):
        check_stage_fits(params, "ppo")
    check_stage_fits(Params.model_validate(tiny_params()), "ppo")  # null on the CPU: no check
    check_stage_fits(Params.model_validate(tiny_params(**{"launcher.device_memory_gib": 80.0})), "ppo")
