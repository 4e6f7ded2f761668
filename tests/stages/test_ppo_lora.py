"""The ppo stage with `ppo.lora.enabled` (tiny profile; ZeRO-0 fp32, and ZeRO-3 bf16 as on a GPU): it
runs through the CLI, each checkpoint holds the adapters and a merged model that transformers loads as
the policy evaluate reads, and the merged model equals the initial policy with the saved adapters
applied by peft."""

import pytest
import torch

from robust_rlhf.lora import ADAPTER_DIR
from robust_rlhf.models import load_causal_lm
from robust_rlhf.runtime.checkpoint import read_checkpoints
from tests.conftest import tiny_params, write_params
from tests.stages.test_ppo import run_ppo


@pytest.mark.parametrize(
    ("value_model", "zero_stage", "precision", "critic_layers"),
    [
        ("separate", 0, "fp32", None),
        ("shared", 0, "fp32", None),
        ("separate", 3, "bf16", None),
        ("separate", 3, "bf16", 1),
    ],
)
def test_ppo_with_lora_saves_adapters_and_a_loadable_merged_policy(
    pipeline_run, tmp_path, value_model, zero_stage, precision, critic_layers
):
    from peft import PeftModel

    overrides = {
        "ppo.steps": 2,
        "ppo.lora.enabled": True,
        "ppo.value_model": value_model,
        "ppo.critic_layers": critic_layers,
        "deepspeed.zero_stage": zero_stage,
        "deepspeed.precision": precision,
    }
    params = write_params(tmp_path / "params.yaml", tiny_params(**overrides))
    result = run_ppo(pipeline_run, tmp_path, params)
    assert result.returncode == 0, result.stderr[-3000:]
    if critic_layers is not None:  # a cut critic with adapters, sharded under ZeRO-3
        assert f"critic: the policy's first {critic_layers} layers and a value head" in result.stderr
    checkpoints = read_checkpoints(tmp_path / "p")
    assert [c["step"] for c in checkpoints] == [1, 2]
    folder = tmp_path / "p" / checkpoints[-1]["path"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (folder / ADAPTER_DIR).iterdir()}
    merged = load_causal_lm(folder, attn_implementation="sdpa", dtype=torch.float32).eval()
    initial = load_causal_lm(pipeline_run["policy_init"], attn_implementation="sdpa", dtype=torch.float32).eval()
    adapted = PeftModel.from_pretrained(
        load_causal_lm(pipeline_run["policy_init"], attn_implementation="sdpa", dtype=torch.float32),
        folder / ADAPTER_DIR,
    ).eval()
    input_ids = torch.randint(3, merged.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = merged(input_ids=input_ids).logits.float()
        assert torch.isfinite(logits).all()
        if precision == "fp32":  # in bf16 the merged weights are rounded once more than W + BA applied live
            torch.testing.assert_close(logits, adapted(input_ids=input_ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits, initial(input_ids=input_ids).logits, atol=1e-4)  # the adapters trained
