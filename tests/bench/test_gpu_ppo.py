"""bench/gpu_ppo.py: its FLOP and bandwidth counts on hand-computed cases, the GPU table, the full shape's size,
and (slow) the reduced mode end to end on the CPU, so the GPU benchmark cannot rot where no GPU is."""

import argparse
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench.gpu_ppo import (
    FULL,
    QWEN25_05B,
    REDUCED,
    attention_training_flops,
    decode_bound_tokens_per_second,
    decode_bytes_per_step,
    gpu_spec,
    linear_training_flops,
    model_training_flops,
    random_policy,
    table_rows,
    word_tokenizer,
)
from tests.conftest import REPO


def test_a_trained_linear_layer_costs_6_in_out_a_token_and_a_frozen_one_4():
    # forward 2 * 3 * 4 = 24; input gradient 24; weight gradient 24 when trained
    assert linear_training_flops(3, 4, weight_trained=True) == 72
    assert linear_training_flops(3, 4, weight_trained=False) == 48


def test_attention_costs_12_layers_width_length_a_token():
    assert attention_training_flops(num_layers=2, attention_width=8, seq_len=5) == 12 * 2 * 8 * 5


def test_model_flops_count_the_head_only_at_the_kept_positions_and_frozen_weights_at_4():
    body, head = nn.Linear(3, 4), nn.Linear(4, 10)  # the head's out_features is the vocabulary
    body.weight.requires_grad_(False)
    model = nn.Sequential(body, head)
    flops = model_training_flops(
        model, sequences=2, seq_len=5, head_positions=3, vocab_size=10, num_layers=1, attention_width=4
    )
    # body 4*3*4 * 5 positions * 2 rows = 480; head 6*4*10 * 3 * 2 = 1440; attention 12*1*4*5 * 5 * 2 = 2400
    assert flops == 480 + 1440 + 2400


def test_lora_adapters_are_counted_beside_their_frozen_base():
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["proj"]))
    flops = model_training_flops(
        model, sequences=1, seq_len=1, head_positions=1, vocab_size=1000, num_layers=0, attention_width=8
    )
    assert flops == 4 * 8 * 8 + 6 * 8 * 2 + 6 * 2 * 8  # frozen base, then A (8 -> 2) and B (2 -> 8) trained


def test_decoding_reads_the_weights_once_and_every_rows_kv_cache():
    # 1000 weight bytes + 2 rows * 3 positions * (K, V) * 2 layers * 1 KV head * 4 dims * 2 bytes
    step = decode_bytes_per_step(
        weight_bytes=1000, batch_size=2, context_tokens=3, num_layers=2, num_kv_heads=1, head_dim=4
    )
    assert step == 1000 + 192
    assert decode_bound_tokens_per_second(batch_size=2, bytes_per_step=step, hbm_bytes_per_second=1192e3) == 2000


@pytest.mark.parametrize(
    ("device", "name", "tbps", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 3.35, 989),
        ("NVIDIA H100 PCIe", "H100 PCIe", 2.0, 756),
        ("NVIDIA H200", "H200 SXM", 4.8, 989),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 2.039, 312),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 1.935, 312),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB", 1.555, 312),
        ("NVIDIA L40S", "L40S", 0.864, 362),
        ("NVIDIA L4", "L4", 0.3, 121),
    ],
)
def test_gpu_specs_match_the_device_names_torch_reports(device, name, tbps, tflops):
    spec = gpu_spec(device)
    assert spec.name == name
    assert (spec.hbm_bytes_per_second, spec.bf16_flops) == (pytest.approx(tbps * 1e12), pytest.approx(tflops * 1e12))


def test_an_unlisted_gpu_needs_both_flags_and_flags_override_the_table():
    assert gpu_spec("Tesla T4") is None and gpu_spec(None) is None
    assert gpu_spec("Tesla T4", hbm_tbps=0.32) is None
    given = gpu_spec("Tesla T4", hbm_tbps=0.32, peak_tflops=65)
    assert (given.hbm_bytes_per_second, given.bf16_flops) == (0.32e12, 65e12)
    assert gpu_spec("NVIDIA H100 80GB HBM3", peak_tflops=500).bf16_flops == 500e12


def test_the_full_shape_is_qwen25_05b_sized_and_the_workloads_split_into_micro_batches():
    tokenizer = word_tokenizer(40)
    with torch.device("meta"):
        policy = random_policy(QWEN25_05B, tokenizer, seed=0)
    # Qwen2.5-0.5B has 494,032,768 parameters; the o_proj bias adds 896 a layer
    assert sum(p.numel() for p in policy.parameters()) == 494_032_768 + 24 * 896
    for workload in (FULL, REDUCED):
        assert workload.batch_size % workload.micro_batch_size == 0


def gpu_record(**overrides) -> dict:
    """A variant's record as run_variant writes it, with round numbers: 2 steps on an H100."""
    step = {
        "wall_seconds": 10.0,
        "seconds": {"generation": 4.0, "reward scoring": 1.0, "training": 2.0, "rollout forwards": 3.0},
        "generated_tokens": 8000,
        "decode_bytes_per_step": 1e9,
        "update_flops": 1e15,
        "rows": 32,
    }
    return {
        "device": "NVIDIA H100 80GB HBM3",
        "parameters": {"actor": {"total": 10, "trainable": 10}},
        "steps": [step, step],
        "peak_memory_bytes": 8 * 2**30,
        "device_memory_bytes": 80 * 2**30,
        "peak_rss_mb": 1000.0,
        **overrides,
    }


def test_the_table_gives_tokens_per_second_against_the_bound_mfu_and_memory():
    args = argparse.Namespace(hbm_tbps=None, peak_tflops=None)
    rows = {row.benchmark: row for row in table_rows({"full": gpu_record(), "lora": "Traceback\nBoom"}, args)}
    generation = rows["full: generation tokens/s vs HBM bound"]
    # 8000 tokens / 4 s = 2000 tok/s; bound 32 rows * 3.35e12 B/s / 1e9 B = 107,200 tok/s
    assert (generation.ours, generation.baseline) == ("2,000", "107,200")
    assert generation.ratio == pytest.approx(2000 / 107_200)
    mfu = rows["full: training TFLOP/s vs bf16 peak (MFU)"]
    assert (mfu.ours, mfu.baseline, mfu.ratio) == ("500", "989", pytest.approx(500 / 989))
    assert rows["full: peak memory vs the device's, GiB"].ratio == pytest.approx(0.1)
    assert rows["lora: FAILED"].note == "Boom"


def test_on_a_cpu_the_peaks_are_not_available():
    args = argparse.Namespace(hbm_tbps=None, peak_tflops=None)
    record = gpu_record(device="cpu", peak_memory_bytes=None, device_memory_bytes=None)
    rows = {row.benchmark: row for row in table_rows({"full": record}, args)}
    assert rows["full: generation tokens/s vs HBM bound"].baseline == "n/a"
    assert rows["full: training TFLOP/s vs bf16 peak (MFU)"].ratio is None
    assert rows["full: peak memory vs the device's, GiB"].ours == "n/a"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "lora"])  # lora: needs build_ppo_models to apply ppo.lora
def test_the_reduced_mode_runs_our_ppo_step_and_prints_the_table(tmp_path, variant):
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_ppo", "--reduced", "--variants", variant, "--work", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (tmp_path / "reduced" / f"{variant}.log").read_text() if (tmp_path / "reduced").exists() else ""
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{log[-3000:]}"
    assert f"{variant}: training TFLOP/s vs bf16 peak (MFU)" in result.stdout
    record = json.loads((tmp_path / "reduced" / f"{variant}.json").read_text())
    (step,) = record["steps"]
    assert step["generated_tokens"] == REDUCED.batch_size * REDUCED.response_tokens  # generate runs to its longest row
    assert step["update_flops"] > 0 and all(seconds >= 0 for seconds in step["seconds"].values())
    actor = record["parameters"]["actor"]
    assert (actor["trainable"] < actor["total"]) == (variant == "lora")
