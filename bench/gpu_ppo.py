"""The GPU benchmark (issue 17): our own `ppo_step` (the code the `ppo` stage runs) on a ~0.5B-parameter model with
random weights, in bf16 with ZeRO-2, with full fine-tuning and with LoRA adapters (`ppo.lora`), each in its own
process; it prints generation tokens/s against the memory-bandwidth bound, training MFU against the GPU's bf16
peak, and peak memory.

    python -m bench.gpu_ppo             # on a GPU: Qwen2.5-0.5B's shape, under 8 minutes on one H100-class GPU
    python -m bench.gpu_ppo --reduced   # a tiny shape on whatever accelerator there is (the default without a
                                        # GPU): the same code and table in about a minute, peaks n/a on a CPU

Nothing comes from the hub: the policy is a decoder of Qwen2.5-0.5B's shape (24 layers, hidden 896, MLP 4864,
14 query and 2 KV heads, 151,936-token vocabulary, tied embeddings, biased attention: 494M parameters) with random
weights, and its tokenizer a word-level vocabulary of the same size (`w4 w5 ...`: the tokens are random anyway,
and every sampled id decodes to one word the reward model reads back as one token). The reward model is a BRME on a copy
of the same backbone with random heads (bench/workload.py); the critic is a separate copy (ppo.value_model:
separate). The models and engines are built through the params (the tiny profile with this bench's sizes) and
the library's own builders (`build_ppo_models`), so a change there (LoRA, ZeRO options) is what is measured.

Budget of the full mode (estimated; no GPU run exists yet): each variant's process imports, loads four 0.5B
models and builds its engines (~1 min), then runs 1 warm-up and 3 measured PPO steps of 32 rollouts x (128 prompt
+ 256 response tokens), ~10-15 s each on an H100 (decode is ~256 x ~25 ms: transformers' generate is bound by
kernel launches at this size); building the random model and reward model once takes ~1 min. Two variants:
~5 minutes; each child is stopped after --child-timeout seconds (200) so that the whole stays under 8 minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bench.measure import run_measured
from bench.table import Row, render

REPO = Path(__file__).resolve().parents[1]
TINY_PROFILE = REPO / "profiles" / "tiny.yaml"
VARIANTS = ("full", "lora")
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
GENERATION, SCORING, TRAINING = "generation", "reward scoring", "training"
ROLLOUT_FORWARDS = "rollout forwards (reference, critic) and rest"
BYTES_PER_BF16 = 2
GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """A decoder's shape (Llama / Qwen2 layout)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class Workload:
    """One PPO step's sizes; micro-batches accumulate into one optimizer step per epoch."""

    steps: int  # measured; one warm-up step runs first
    batch_size: int  # rollouts per step
    micro_batch_size: int
    epochs: int
    prompt_tokens: int
    response_tokens: int


QWEN25_05B = Shape(
    vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2
)
FULL = Workload(steps=3, batch_size=32, micro_batch_size=8, epochs=1, prompt_tokens=128, response_tokens=256)
# Small enough for a CPU in seconds a step (bf16 on a CPU without AVX-512 bf16 is ~10x slower than fp32).
REDUCED_SHAPE = Shape(vocab_size=1000, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4, num_kv_heads=2)
REDUCED = Workload(steps=1, batch_size=4, micro_batch_size=2, epochs=1, prompt_tokens=16, response_tokens=16)


@dataclass(frozen=True)
class GPUSpec:
    name: str
    hbm_bytes_per_second: float
    bf16_flops: float  # dense tensor-core peak (no sparsity)


# Vendor datasheet figures, matched on torch.cuda.get_device_name() (every listed substring, case-insensitive),
# the more specific entries first ("NVIDIA H100 80GB HBM3" is the SXM part; "L4" is also in "L40S").
GPU_SPECS: tuple[tuple[tuple[str, ...], GPUSpec], ...] = (
    (("H100", "PCIe"), GPUSpec("H100 PCIe", 2.0e12, 756e12)),
    (("H100", "NVL"), GPUSpec("H100 NVL", 3.9e12, 835e12)),
    (("H100",), GPUSpec("H100 SXM", 3.35e12, 989e12)),
    (("H200", "NVL"), GPUSpec("H200 NVL", 4.8e12, 835e12)),
    (("H200",), GPUSpec("H200 SXM", 4.8e12, 989e12)),
    (("A100", "80GB", "PCIe"), GPUSpec("A100 80GB PCIe", 1.935e12, 312e12)),
    (("A100", "80GB"), GPUSpec("A100 80GB SXM", 2.039e12, 312e12)),
    (("A100",), GPUSpec("A100 40GB", 1.555e12, 312e12)),
    (("L40S",), GPUSpec("L40S", 0.864e12, 362e12)),
    (("L40",), GPUSpec("L40", 0.864e12, 181e12)),
    (("L4",), GPUSpec("L4", 0.3e12, 121e12)),
)


def gpu_spec(device_name: str | None, *, hbm_tbps: float | None = None, peak_tflops: float | None = None):
    """The GPUSpec of `device_name` from GPU_SPECS, with either figure replaced by a flag (TB/s, TFLOP/s);
    None when a figure is unknown (an unlisted GPU without both flags, or no GPU)."""
    known = None
    if device_name:
        name = device_name.lower()
        known = next((spec for keys, spec in GPU_SPECS if all(key.lower() in name for key in keys)), None)
    bandwidth = hbm_tbps * 1e12 if hbm_tbps is not None else known and known.hbm_bytes_per_second
    flops = peak_tflops * 1e12 if peak_tflops is not None else known and known.bf16_flops
    if not bandwidth or not flops:
        return None
    return GPUSpec(known.name if known else (device_name or "given"), bandwidth, flops)


# --- the figures (pure) ---------------------------------------------------------------------------------


def decode_bytes_per_step(
    *,
    weight_bytes: float,
    batch_size: int,
    context_tokens: float,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    bytes_per_value: int = BYTES_PER_BF16,
) -> float:
    """Memory bytes one decode step must read at least: every weight once (shared by the whole batch) plus each
    row's KV cache, K and V of every layer over `context_tokens` positions (bf16 unless told):
    W + B * T_ctx * 2 * l * n_kv * d_head * bytes_per_value."""
    kv_cache = batch_size * context_tokens * 2 * num_layers * num_kv_heads * head_dim * bytes_per_value
    return weight_bytes + kv_cache


def decode_bound_tokens_per_second(*, batch_size: int, bytes_per_step: float, hbm_bytes_per_second: float) -> float:
    """The memory-bandwidth bound of batched decoding: a step yields `batch_size` tokens and cannot take less
    than bytes_per_step / bandwidth seconds, so tokens/s <= B * bandwidth / bytes_per_step."""
    return batch_size * hbm_bytes_per_second / bytes_per_step


def linear_training_flops(in_features: int, out_features: int, *, weight_trained: bool) -> int:
    """FLOPs per token of one linear layer's forward and backward: 2 * in * out forward, as much again for the
    gradient of its input, and again for that of its weight when the weight is trained. So 6 * in * out
    trained (summed over the layers: Kaplan et al. 2020's 6N) and 4 * in * out frozen (LoRA's base weights,
    through which the adapters below still need the gradient)."""
    return (6 if weight_trained else 4) * in_features * out_features


def attention_training_flops(*, num_layers: int, attention_width: int, seq_len: int) -> int:
    """FLOPs per token of the attention itself (Q K^T and the weighted sum of V, 2 * 2 * L * d forward per
    layer), forward and backward: 12 * l * d * L (PaLM, Chowdhery et al. 2022, appendix B; causal masking
    not discounted, as there). Its matmuls act on activations, so LoRA does not change it."""
    return 12 * num_layers * attention_width * seq_len


def model_training_flops(
    model, *, sequences: int, seq_len: int, head_positions: int, vocab_size: int, num_layers: int, attention_width: int
) -> int:
    """FLOPs of one forward + backward of `model` over `sequences` rows of `seq_len` tokens: every linear
    layer (nn.Linear, LoRA's adapters included) at linear_training_flops, the output head (out_features ==
    vocab_size) only at the `head_positions` last positions (logits_to_keep), plus the attention. Elementwise
    work (norms, softmax, the loss) is left out, as in MFU's usual count."""
    from torch import nn

    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            positions = head_positions if module.out_features == vocab_size else seq_len
            per_token = linear_training_flops(
                module.in_features, module.out_features, weight_trained=module.weight.requires_grad
            )
            total += per_token * positions * sequences
    return (
        total
        + attention_training_flops(num_layers=num_layers, attention_width=attention_width, seq_len=seq_len)
        * seq_len
        * sequences
    )


# --- the workload ---------------------------------------------------------------------------------------


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of `vocab_size` ids: the special tokens, then `w<id>` for every other id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {f"w{index}": index for index in range(len(SPECIAL_TOKENS), vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
    )


def random_policy(shape: Shape, tokenizer, *, seed: int):
    """A causal LM of `shape` with random weights (transformers' own init), fp32. A Llama with biased attention
    projections: Qwen2 is that architecture (it biases q, k and v; `attention_bias` also biases o, 896 numbers a
    layer). Not Qwen2 itself: transformers loads a qwen2 folder's tokenizer as Qwen2's BPE, not the word-level
    one saved with it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        attention_bias=True,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config)


def bench_prompts(count: int, *, tokens: int, vocab_size: int) -> list[str]:
    """`count` prompts of exactly `tokens` words of the word tokenizer, fixed (no special tokens)."""
    first = len(SPECIAL_TOKENS)
    return [
        " ".join(f"w{first + (row * 7919 + column * 104729) % (vocab_size - first)}" for column in range(tokens))
        for row in range(count)
    ]


def bench_params(work: Path, workload: Workload, *, lora: bool):
    """The tiny profile with this bench's models, precision, ZeRO stage and sizes, written to `work` and
    validated as a stage validates params.yaml. Only the BRME is built (ensemble_size 0), one method."""
    from bench.workload import POLICY_DIR
    from robust_rlhf.config import load_params

    raw = yaml.safe_load(TINY_PROFILE.read_text())
    policy = str(work / POLICY_DIR)
    raw["profile"] = "bench-gpu-ppo"
    raw["models"] |= {"policy": policy, "reward_backbone": policy}
    raw["deepspeed"] |= {"zero_stage": 2, "precision": "bf16"}
    raw["methods"] = {"brme": {"reward_model": "brme", "aggregation": "brme"}}
    raw["train_reward"] |= {"ensemble_size": 0, "max_length": workload.prompt_tokens + workload.response_tokens}
    raw["prepare"]["max_prompt_tokens"] = workload.prompt_tokens
    raw["ppo"] |= {
        "steps": workload.steps + 1,
        "rollout_batch_size": workload.batch_size,
        "micro_batch_size": workload.micro_batch_size,
        "gradient_accumulation_steps": workload.batch_size // workload.micro_batch_size,
        "ppo_epochs": workload.epochs,
        "max_new_tokens": workload.response_tokens,
        "value_model": "separate",
        "gradient_checkpointing": False,  # MFU without recomputation
    }
    raw["ppo"]["lora"] = {**raw["ppo"]["lora"], "enabled": lora}
    path = work / f"params_{'lora' if lora else 'full'}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def build_models(work: Path, shape: Shape, workload: Workload) -> None:
    """The random policy (safetensors + tokenizer) and the BRME on its backbone, into `work`, once per shape."""
    from bench.workload import POLICY_DIR, build_reward_models
    from robust_rlhf.runtime.atomic import atomic_directory

    marker = work / "shape.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(shape):
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokenizer = word_tokenizer(shape.vocab_size)
    with atomic_directory(work / POLICY_DIR) as tmp:
        random_policy(shape, tokenizer, seed=0).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    build_reward_models(bench_params(work, workload, lora=False), work)
    marker.write_text(json.dumps(asdict(shape)))


# --- one variant, in its own process ---------------------------------------------------------------------


def synchronised(fn, timer, name: str, sync):
    """`fn` timed as phase `name`, the device drained before the phase starts and before it ends (CUDA runs
    asynchronously: without it a phase would be charged the kernels the one before it queued)."""

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        sync()
        with timer.phase(name):
            result = fn(*args, **kwargs)
            sync()
        return result

    return timed


def run_variant(work: Path, shape: Shape, workload: Workload, variant: str, out: Path) -> None:
    """Build the engines as the ppo stage does, run 1 + `workload.steps` PPO steps, write the record to `out`."""
    import torch

    import robust_rlhf.rl.ppo as ppo
    from bench.ppo_ours import build_engines
    from bench.timing import PhaseTimer
    from robust_rlhf.reward.scoring import RewardModels
    from robust_rlhf.rl.normalization import RewardNormalizer
    from robust_rlhf.runtime.distributed import seed_everything

    params = bench_params(work, workload, lora=variant == "lora")
    seed_everything(0)
    tokenizer, actor, critic, ref_model, reward_models = build_engines(params, work)
    cuda = actor.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    trained = {name: engine.module for name, engine in (("actor", actor), ("critic", critic))}
    parameters = {
        name: {
            "total": sum(p.numel() for p in module.parameters()),
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
        }
        for name, module in trained.items()
    }
    if variant == "lora" and parameters["actor"]["trainable"] == parameters["actor"]["total"]:
        raise SystemExit(
            "ppo.lora.enabled is set, but the actor trains all of its parameters: this checkout's "
            "build_ppo_models does not apply LoRA, so there is no LoRA variant to measure"
        )
    policy = ppo.policy_module(actor)
    weight_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    timer, generated, sample_untimed = PhaseTimer(), [], ppo.sample

    def sample(*args, **kwargs):  # the library's sample, noting how many tokens it generated
        sampled = sample_untimed(*args, **kwargs)
        generated.append(tuple(sampled.ids.shape))
        return sampled

    ppo.sample = synchronised(sample, timer, GENERATION, sync)
    ppo.ppo_update = synchronised(ppo.ppo_update, timer, TRAINING, sync)
    RewardModels.score = synchronised(RewardModels.score, timer, SCORING, sync)
    normalizer = RewardNormalizer(params.ppo.reward_normalization, reference_mean=0.0, reference_std=1.0)
    prompts = bench_prompts(
        workload.batch_size * (workload.steps + 1), tokens=workload.prompt_tokens, vocab_size=shape.vocab_size
    )
    steps = []
    for step in range(workload.steps + 1):
        timer.reset()
        generated.clear()
        batch = prompts[step * workload.batch_size : (step + 1) * workload.batch_size]
        sync()
        started = time.perf_counter()
        ppo.ppo_step(
            step,
            actor,
            critic,
            ref_model,
            reward_models,
            tokenizer,
            batch,
            method=params.methods["brme"],
            normalizer=normalizer,
            config=params.ppo,
            aggregation=params.aggregation,
            max_prompt_tokens=params.prepare.max_prompt_tokens,
        )
        sync()
        wall = time.perf_counter() - started
        (rows, response_tokens), *_ = generated
        seconds = dict(timer.totals)
        seconds[ROLLOUT_FORWARDS] = wall - sum(seconds.values())
        update_flops = workload.epochs * sum(
            model_training_flops(
                module,
                sequences=rows,
                seq_len=workload.prompt_tokens + response_tokens,
                head_positions=response_tokens + 1,
                vocab_size=shape.vocab_size,
                num_layers=shape.num_layers,
                attention_width=shape.num_heads * shape.head_dim,
            )
            for module in trained.values()
        )
        decode_bytes = decode_bytes_per_step(
            weight_bytes=weight_bytes,
            batch_size=rows,
            context_tokens=workload.prompt_tokens + response_tokens / 2,
            num_layers=shape.num_layers,
            num_kv_heads=shape.num_kv_heads,
            head_dim=shape.head_dim,
        )
        steps.append(
            {
                "wall_seconds": wall,
                "seconds": seconds,
                "generated_tokens": rows * response_tokens,
                "decode_bytes_per_step": decode_bytes,
                "update_flops": update_flops,
                "rows": rows,
            }
        )
        print(f"{variant} step {step}{' (warm-up)' if step == 0 else ''}: {wall:.2f} s {seconds}", flush=True)
    record = {
        "variant": variant,
        "device": torch.cuda.get_device_name() if cuda else str(actor.device),
        "shape": asdict(shape),
        "workload": asdict(workload),
        "parameters": parameters,
        "weight_bytes": weight_bytes,
        "steps": steps[1:],  # the warm-up step (first-call allocations, kernel selection) is not counted
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device_memory_bytes": torch.cuda.get_device_properties(actor.device).total_memory if cuda else None,
    }
    out.write_text(json.dumps(record, indent=2))


# --- the table ------------------------------------------------------------------------------------------


def summary(record: dict, spec: GPUSpec | None) -> dict:
    """A variant's figures over its measured steps: tokens/s and its bound, achieved FLOP/s and MFU."""
    steps = record["steps"]
    generation = sum(step["seconds"][GENERATION] for step in steps)
    training = sum(step["seconds"][TRAINING] for step in steps)
    tokens_per_second = sum(step["generated_tokens"] for step in steps) / generation
    achieved = sum(step["update_flops"] for step in steps) / training
    rows, decode_bytes = steps[0]["rows"], sum(step["decode_bytes_per_step"] for step in steps) / len(steps)
    bound = (
        decode_bound_tokens_per_second(
            batch_size=rows, bytes_per_step=decode_bytes, hbm_bytes_per_second=spec.hbm_bytes_per_second
        )
        if spec
        else None
    )
    phases = {name: sum(step["seconds"][name] for step in steps) / len(steps) for name in steps[0]["seconds"]}
    return {
        "step_seconds": sum(step["wall_seconds"] for step in steps) / len(steps),
        "phases": phases,
        "tokens_per_second": tokens_per_second,
        "bound_tokens_per_second": bound,
        "training_flops_per_second": achieved,
        "mfu": achieved / spec.bf16_flops if spec else None,
    }


NOTES = {
    "generation": "sampled tokens (rows x response length, prefill included) per second of `sample`; bound = rows x "
    "HBM bandwidth / (bf16 weights + the KV cache at the mean context), the least one decode step must read",
    "training": "FLOPs of the update (actor and critic, every epoch) over its wall time (forward, backward, "
    "optimizer step): per token 6 x in x out for a trained linear layer, 4 x in x out for a frozen one (LoRA's "
    "base), the LM head on the response positions only, + 12 l d L of attention (PaLM); MFU = that / the GPU's "
    "dense bf16 peak",
}


def table_rows(records: dict[str, dict | str], args: argparse.Namespace) -> list[Row]:
    """Per variant: step time and phases, tokens/s vs the bound, training FLOP/s vs the peak, peak memory; the
    formulas as notes of the first variant's rows. A failed variant is one row with its last log line."""
    rows, noted = [], set()

    def note(kind: str) -> str:
        if kind in noted:
            return ""
        noted.add(kind)
        return NOTES[kind]

    for variant, record in records.items():
        if isinstance(record, str):
            last = record.strip().splitlines()[-1] if record.strip() else "no output"
            rows.append(Row(f"{variant}: FAILED", "see note", note=last))
            continue
        spec = gpu_spec(record["device"], hbm_tbps=args.hbm_tbps, peak_tflops=args.peak_tflops)
        if record["peak_memory_bytes"] is None:  # DeepSpeed's CPU accelerator: no HBM, no tensor-core peak
            spec = None
        figures = summary(record, spec)
        params = record["parameters"]["actor"]
        split = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in figures["phases"].items())
        peak, device_memory = record["peak_memory_bytes"], record["device_memory_bytes"]
        rows += [
            Row(
                f"{variant}: PPO step, s",
                f"{figures['step_seconds']:.2f}",
                note=f"{variant}: {split}; the actor trains {params['trainable']:,} of {params['total']:,} parameters",
            ),
            Row(
                f"{variant}: generation tokens/s vs HBM bound",
                f"{figures['tokens_per_second']:,.0f}",
                f"{figures['bound_tokens_per_second']:,.0f}" if spec else "n/a",
                figures["tokens_per_second"] / figures["bound_tokens_per_second"] if spec else None,
                note=note("generation"),
            ),
            Row(
                f"{variant}: training TFLOP/s vs bf16 peak (MFU)",
                f"{figures['training_flops_per_second'] / 1e12:.3g}",
                f"{spec.bf16_flops / 1e12:.0f}" if spec else "n/a",
                figures["mfu"],
                note=note("training"),
            ),
            Row(
                f"{variant}: peak memory vs the device's, GiB",
                f"{peak / GIB:.1f}" if peak is not None else "n/a",
                f"{device_memory / GIB:.0f}" if device_memory else f"n/a (peak RSS {record['peak_rss_mb']:,.0f} MB)",
                peak / device_memory if peak is not None and device_memory else None,
            ),
        ]
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_ppo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reduced", action="store_true", help="the tiny shape (the default when no GPU is visible to torch)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "gpu_ppo", help="where the models are built")
    parser.add_argument("--hbm-tbps", type=float, default=None, help="HBM bandwidth, TB/s (overrides the table)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, TFLOP/s (overrides it)")
    parser.add_argument("--child-timeout", type=float, default=200.0, help="seconds before a variant is stopped")
    parser.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    reduced = args.reduced or not torch.cuda.is_available()
    shape, workload = (REDUCED_SHAPE, REDUCED) if reduced else (QWEN25_05B, FULL)
    work = args.work / ("reduced" if reduced else "full")
    if args.child:
        run_variant(work, shape, workload, args.child, args.out)
        return 0
    variants = [name for name in args.variants.split(",") if name]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    started = time.perf_counter()
    print(f"{'reduced' if reduced else 'full'} mode: {shape} x {workload}", flush=True)
    build_models(work, shape, workload)
    records: dict[str, dict | str] = {}
    for variant in variants:
        out, log = work / f"{variant}.json", work / f"{variant}.log"
        out.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "bench.gpu_ppo",
            "--child",
            variant,
            "--out",
            str(out),
            "--work",
            str(args.work),
        ]
        measured = run_measured(
            command + (["--reduced"] if reduced else []), cwd=REPO, log=log, timeout=args.child_timeout
        )
        print(f"{variant}: exit {measured.returncode} after {measured.wall_seconds:.0f} s (log: {log})", flush=True)
        if measured.returncode:
            records[variant] = measured.output_tail
        else:
            records[variant] = json.loads(out.read_text()) | {"peak_rss_mb": measured.peak_rss_mb}
    device = next((record["device"] for record in records.values() if isinstance(record, dict)), "none")
    print(render(table_rows(records, args)))
    print(f"device: {device}; total {time.perf_counter() - started:.0f} s")
    return 1 if any(isinstance(record, str) for record in records.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
