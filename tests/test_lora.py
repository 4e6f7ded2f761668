"""Tests for robust_rlhf.lora: the adapted model equals its base at init, the base is reachable with the
adapters off after they have trained, the merge is W + (alpha / r) B A, and a saved folder loads back
(merged, through transformers; adapters, through peft) as the model that was trained."""

import pytest
import torch

from robust_rlhf.config import LoRAParams
from robust_rlhf.lora import ADAPTER_DIR, AdaptersDisabled, add_lora, is_adapted, merged_state_dict, save_adapted
from robust_rlhf.models import build_tiny_policy, load_causal_lm
from robust_rlhf.rl.ppo import (
    PolicyWithValueHead,
    ValueModel,
    build_actor_critic,
    policy_module,
    policy_state_dict,
    reference_policy,
)
from tests.conftest import PlainEngine

LORA = LoRAParams(enabled=True, rank=4, alpha=8.0, target_modules=["all-linear"])


@pytest.fixture
def input_ids(tiny_tokenizer):
    return torch.randint(0, len(tiny_tokenizer), (3, 9), generator=torch.Generator().manual_seed(0))


def trained_one_step(model, input_ids):
    """`model` after one SGD step on its LM loss: the adapters (its only trainable weights) move."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    return model.eval()


def test_adapted_model_equals_its_base_at_init(tiny_tokenizer, tiny_policy, input_ids):
    adapted = add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), LORA).eval()
    assert is_adapted(adapted) and not is_adapted(tiny_policy)
    # peft starts B at zero: not close, equal
    assert torch.equal(adapted(input_ids=input_ids).logits, tiny_policy(input_ids=input_ids).logits)


def test_only_the_adapters_train(tiny_tokenizer):
    adapted = add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), LORA)
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # all-linear: every projection of every layer, not the (tied) output head
    layers = adapted.config.num_hidden_layers
    assert len(trainable) == 2 * 7 * layers and not any("lm_head" in name for name in trainable)
    assert not any(isinstance(m, torch.nn.Dropout) for name, m in adapted.named_modules() if "lora_dropout" in name)


def test_adapters_disabled_is_the_base_after_training(tiny_tokenizer, tiny_policy, input_ids):
    adapted = trained_one_step(
        add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), LORA), input_ids
    )
    base_logits = tiny_policy(input_ids=input_ids).logits
    assert not torch.allclose(adapted(input_ids=input_ids).logits, base_logits, atol=1e-3)
    reference = AdaptersDisabled(adapted)(input_ids=input_ids).logits
    assert torch.equal(reference, base_logits)
    assert not reference.requires_grad  # inference mode: no graph through the actor's weights
    # the adapters are back on afterwards
    assert not torch.allclose(adapted(input_ids=input_ids).logits, base_logits, atol=1e-3)


def test_merge_is_w_plus_scaled_b_a():
    state = {
        "base_model.model.layer.base_layer.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "base_model.model.layer.base_layer.bias": torch.tensor([0.5, -0.5]),
        "base_model.model.layer.lora_A.default.weight": torch.tensor([[1.0, 2.0]]),  # (r=1, in=2)
        "base_model.model.layer.lora_B.default.weight": torch.tensor([[3.0], [-1.0]]),  # (out=2, r=1)
        "base_model.model.norm.weight": torch.tensor([2.0, 2.0]),
    }
    merged = merged_state_dict(state, scaling=0.5)
    assert set(merged) == {"layer.weight", "layer.bias", "norm.weight"}
    # B A = [[3, 6], [-1, -2]]; W + 0.5 B A
    assert torch.equal(merged["layer.weight"], torch.tensor([[2.5, 3.0], [-0.5, 0.0]]))
    assert torch.equal(merged["layer.bias"], torch.tensor([0.5, -0.5]))
    fan_in_fan_out = merged_state_dict(state, scaling=0.5, fan_in_fan_out=True)
    assert torch.equal(fan_in_fan_out["layer.weight"], torch.tensor([[2.5, -0.5], [3.0, 0.0]]))


def test_saved_folder_loads_back_as_the_trained_model(tiny_tokenizer, input_ids, tmp_path):
    from peft import PeftModel

    adapted = trained_one_step(
        add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), LORA), input_ids
    )
    expected = adapted(input_ids=input_ids).logits
    save_adapted(adapted, adapted.state_dict(), tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / ADAPTER_DIR).iterdir()}
    merged = load_causal_lm(tmp_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    torch.testing.assert_close(merged(input_ids=input_ids).logits, expected, atol=1e-5, rtol=1e-5)
    reloaded = PeftModel.from_pretrained(
        build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), tmp_path / ADAPTER_DIR
    ).eval()
    torch.testing.assert_close(reloaded(input_ids=input_ids).logits, expected, atol=1e-6, rtol=1e-6)


def test_actor_critic_under_lora_train_adapters_and_value_heads(tiny_tokenizer):
    def policy():
        return build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa")

    def backbone():
        return build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa").model

    actor, critic = build_actor_critic(policy, backbone, "separate", lora=LORA)
    assert is_adapted(actor) and isinstance(critic, ValueModel) and is_adapted(critic.backbone)
    trainable = {name for name, p in critic.named_parameters() if p.requires_grad}
    assert {"value_head.weight", "value_head.bias"} <= trainable
    assert all(".lora_" in name for name in trainable - {"value_head.weight", "value_head.bias"})
    shared, none = build_actor_critic(policy, backbone, "shared", lora=LORA)
    assert none is None and isinstance(shared, PolicyWithValueHead) and is_adapted(shared.policy)
    assert shared.value_head.weight.requires_grad and shared.value_head.bias.requires_grad
    # the shared actor's checkpoint state is the peft model's, with the value head dropped
    state = policy_state_dict(shared.state_dict())
    assert set(state) == set(shared.policy.state_dict())
    off = LoRAParams(enabled=False, rank=4, alpha=8.0, target_modules=["all-linear"])
    plain, _ = build_actor_critic(policy, backbone, "separate", lora=off)
    assert not is_adapted(plain) and all(p.requires_grad for p in plain.parameters())


def test_reference_policy_is_the_actor_without_adapters(tiny_tokenizer):
    actor = PolicyWithValueHead(add_lora(build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa"), LORA))
    reference = reference_policy(PlainEngine(actor))
    assert reference.adapted is policy_module(PlainEngine(actor))  # the same weights, not a copy
