import pytest
import torch

from robust_rlhf.config import Params, StageInputError
from robust_rlhf.models import (
    TooFewLayers,
    build_tiny_policy,
    check_attn_implementation,
    enable_gradient_checkpointing,
    first_layers,
    load_backbone,
    load_causal_lm,
    model_options,
)
from robust_rlhf.reward.model import BRMERewardModel, RewardModelConfig
from robust_rlhf.rl.ppo import PolicyWithValueHead, ValueModel
from tests.conftest import tiny_params


def _inputs(tokenizer, batch: int = 2, length: int = 6):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, len(tokenizer), (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0  # left padding, as the rollout has
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def _causal_lm_loss(model, inputs):
    input_ids, attention_mask, position_ids = inputs
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.square().mean()


def _value_loss(model, inputs):
    return model(*inputs).square().mean()


def _shared_head_loss(model, inputs):
    logits, values = model(*inputs, logits_to_keep=3)
    return logits.square().mean() + values.square().mean()


def _reward_loss(model, inputs):
    input_ids, attention_mask, _ = inputs
    pooled = model.pooled(input_ids, attention_mask)
    mu, sigma = model.heads(pooled)[:2]
    return model.bt_reward(pooled).square().mean() + mu.square().mean() + sigma.mean()


def _gradients(build, checkpoint, loss_of, inputs) -> tuple[dict[str, torch.Tensor], int]:
    """Every parameter's gradient after one forward + backward, and how often the first decoder layer's
    MLP ran."""
    model = build()
    hf_module = checkpoint(model)
    if hf_module is not None:
        enable_gradient_checkpointing(hf_module)
    model.train()
    layer_calls = []
    # transformers checkpoints a decoder layer's `forward`, not its `__call__` (its own hooks run once),
    # so count a module inside it; a pre-hook, since the non-reentrant recomputation stops as soon as
    # it has the tensors backward needs (torch.utils.checkpoint's early stop).
    first_mlp = next(m for name, m in model.named_modules() if name.endswith("layers.0.mlp"))
    first_mlp.register_forward_pre_hook(lambda *_: layer_calls.append(1))
    loss_of(model, inputs).backward()
    assert hf_module is None or hf_module.is_gradient_checkpointing
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, len(layer_calls)


def _builds(tokenizer):
    def policy():
        return build_tiny_policy(tokenizer, seed=0, attn_implementation="sdpa")

    def reward():
        config = RewardModelConfig(num_heads=2, sigma_min=0.01, max_length=16, pooling="last")
        return BRMERewardModel(policy().model, config, seed=0)

    return {
        "causal_lm": (policy, lambda m: m, _causal_lm_loss),
        "value_model": (lambda: ValueModel(policy().model), lambda m: m.backbone, _value_loss),
        "shared_value_head": (lambda: PolicyWithValueHead(policy()), lambda m: m.policy, _shared_head_loss),
        "reward_backbone": (reward, lambda m: m.backbone, _reward_loss),
    }


@pytest.mark.parametrize("kind", ["causal_lm", "value_model", "shared_value_head", "reward_backbone"])
def test_gradient_checkpointing_recomputes_and_keeps_every_gradient(tiny_tokenizer, kind):
    build, hf_module, loss_of = _builds(tiny_tokenizer)[kind]
    inputs = _inputs(tiny_tokenizer)
    plain, plain_calls = _gradients(build, lambda m: None, loss_of, inputs)
    checkpointed, checkpointed_calls = _gradients(build, hf_module, loss_of, inputs)
    # Recomputation runs each decoder layer's forward a second time inside backward.
    assert (plain_calls, checkpointed_calls) == (1, 2)
    assert plain.keys() == checkpointed.keys() and len(plain) == len(dict(build().named_parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_explicit_sdpa_gives_the_default_logits_bit_for_bit(tiny_tokenizer, tmp_path):
    # transformers picks sdpa for Llama and BERT when none is named: naming it changes nothing.
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, BertModel, LlamaForCausalLM

    input_ids, attention_mask, position_ids = _inputs(tiny_tokenizer)
    default = build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa")
    default.config._attn_implementation_internal = None  # as a config saved before the param existed
    default.save_pretrained(tmp_path / "llama", safe_serialization=True)
    assert LlamaForCausalLM.from_pretrained(tmp_path / "llama").config._attn_implementation == "sdpa"
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tiny_tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(tmp_path / "bert", safe_serialization=True)
    assert BertModel.from_pretrained(tmp_path / "bert").config._attn_implementation == "sdpa"
    with torch.no_grad():
        # `today`: the loaders' call before they named the kernel.
        for loader, auto, folder in (
            (load_causal_lm, AutoModelForCausalLM, "llama"),
            (load_backbone, AutoModel, "bert"),
        ):
            today = auto.from_pretrained(tmp_path / folder, dtype=torch.float32, use_safetensors=True).eval()
            explicit = loader(tmp_path / folder, attn_implementation="sdpa", dtype=torch.float32).eval()
            eager = loader(tmp_path / folder, attn_implementation="eager", dtype=torch.float32).eval()
            assert today.config._attn_implementation == explicit.config._attn_implementation == "sdpa"
            assert eager.config._attn_implementation == "eager"
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
            if folder == "llama":
                kwargs["position_ids"] = position_ids
            baseline = today(**kwargs)[0]  # the logits, or the last hidden state
            assert torch.equal(explicit(**kwargs)[0], baseline)
            # The kernel is really chosen: eager differs, by rounding only on the real tokens (the
            # padded query rows, all masked, are whatever each kernel makes of them).
            real = attention_mask.bool()
            assert not torch.equal(eager(**kwargs)[0], baseline)
            torch.testing.assert_close(eager(**kwargs)[0][real], baseline[real], rtol=1e-4, atol=1e-5)


def test_flash_attention_without_flash_attn_fails_naming_the_param():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        pytest.skip("flash-attn and CUDA are here: flash_attention_2 is allowed")
    with pytest.raises(StageInputError, match=r"models\.attn_implementation: flash_attention_2 cannot run here"):
        check_attn_implementation("flash_attention_2")
    with pytest.raises(StageInputError, match=r"models\.attn_implementation"):
        load_causal_lm("/nonexistent", attn_implementation="flash_attention_2", dtype=torch.float32)
    check_attn_implementation("sdpa")  # no error


def test_model_options_load_bf16_only_under_bf16_precision():
    fp32 = model_options(Params.model_validate(tiny_params()))
    assert fp32["dtype"] is torch.float32 and fp32["attn_implementation"] == "sdpa"
    params = tiny_params()
    params["deepspeed"]["precision"] = "bf16"
    assert model_options(Params.model_validate(params))["dtype"] is torch.bfloat16


def test_a_bf16_backbone_scores_with_the_fp32_heads(tiny_tokenizer):
    # train_reward evaluates its reward models as plain modules: a bf16 backbone feeds fp32 heads.
    config = RewardModelConfig(num_heads=2, sigma_min=0.01, max_length=16, pooling="last")
    backbone = build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa").model.to(torch.bfloat16)
    model = BRMERewardModel(backbone, config, seed=0).eval()
    input_ids, attention_mask, _ = _inputs(tiny_tokenizer)
    with torch.no_grad():
        scores = model(input_ids=input_ids, attention_mask=attention_mask)
    assert scores["mu"].dtype is torch.float32 and torch.isfinite(scores["mu"]).all()


def test_first_layers_cuts_the_layer_count_and_every_per_layer_list(tiny_policy):
    config = tiny_policy.config
    config_with_types = type(config).from_dict(
        {**config.to_dict(), "layer_types": ["full_attention"] * 2, "eos_token_id": [1, 2]}
    )
    cut = first_layers(config_with_types, 1)
    assert (cut.num_hidden_layers, cut.layer_types) == (1, ["full_attention"])
    assert cut.eos_token_id == [1, 2]  # as long as the layers, but token ids
    assert (config_with_types.num_hidden_layers, len(config_with_types.layer_types)) == (2, 2)  # not changed
    assert cut.hidden_size == config.hidden_size
    for asked in (0, 3):
        with pytest.raises(TooFewLayers, match=f"{asked} layers asked of a model with 2"):
            first_layers(config, asked)


def test_a_backbone_cut_to_its_first_layers_holds_the_policys_weights_of_those_layers(tiny_policy, tmp_path):
    tiny_policy.save_pretrained(tmp_path, safe_serialization=True)
    options = dict(attn_implementation="sdpa", dtype=torch.float32)
    full, cut = load_backbone(tmp_path, **options), load_backbone(tmp_path, **options, num_layers=1)
    assert (len(full.layers), len(cut.layers), cut.config.num_hidden_layers) == (2, 1, 1)
    full_state, cut_state = full.state_dict(), cut.state_dict()
    # Embeddings, layer 0 and the final norm come from the policy (none left at a random init), layer 1 is gone.
    assert set(cut_state) == {name for name in full_state if not name.startswith("layers.1.")}
    for name, value in cut_state.items():
        assert torch.equal(value, full_state[name]), name
    ids = torch.tensor([[5, 6, 7, 8]])
    hidden = cut(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert hidden.shape == (1, 4, full.config.hidden_size) and torch.isfinite(hidden).all()
