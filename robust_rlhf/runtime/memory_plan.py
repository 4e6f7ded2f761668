"""The memory plan: each stage's estimated accelerator memory per device, from the params alone.

Pure byte counts (this module imports torch only; model shapes come from `model_shape`, which
imports transformers lazily and builds models on the meta device, so nothing is downloaded or
allocated). Sources:
- model states: Rajbhandari et al. 2020 (ZeRO), section 3.1 and figure 1: with mixed precision a
  trained model holds 2Ψ bytes of 16-bit weights, 2Ψ of 16-bit gradients and 12Ψ of fp32 Adam
  states (master weights, momentum, variance); stage 1 partitions the optimizer states over N_d
  devices, stage 2 also the gradients, stage 3 also the weights. For bf16/fp16 ZeRO-2/3 the plan
  takes DeepSpeed's own estimators (`estimate_zero{2,3}_model_states_mem_needs`), which also
  count the fp32 gradient partition (4Ψ/N_d) and, for ZeRO-3, the largest layer gathered in full;
- activations: Korthikanti et al. 2022 (Reducing activation recomputation), eq. 1: s·b·h·(34 +
  5·a·s/h) bytes per layer at 16 bits; the 5as/h term (the attention matrix) is dropped for fused
  attention (sdpa, flash), which never materialises it;
- KV cache: 2 · layers · kv_heads · head_dim · batch · tokens · bytes (keys and values per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
# The CUDA context, the caching allocator's fragmentation and NCCL buffers take memory no tensor
# accounts for: about 0.5-1 GiB of context plus fragmentation on an 80 GB part (PyTorch's memory
# notes). A fixed reserve, not a param: it is a property of the runtime, not of an experiment.
CUDA_RESERVE_GIB = 1.5
# Korthikanti et al. 2022, eq. 1: bytes per token per hidden unit of one transformer layer's saved
# activations at 16 bits (attention 11, MLP 19, two layer norms 4), attention matrix excluded.
ACTIVATION_BYTES_PER_TOKEN_HIDDEN = 34
# The same paper's attention-matrix term: 5 · heads · seq bytes per token (scores, softmax, dropout mask).
ATTENTION_MATRIX_BYTES = 5
# fp32 logits and their log-softmax are both alive in backward (logprobs.py gathers from log_softmax).
LOGIT_COPIES = 2


def bytes_per_element(precision: str) -> int:
    """Bytes of one weight or activation element under `deepspeed.precision`."""
    return 4 if precision == "fp32" else 2


def trained_model_states(
    num_params: int,
    *,
    trainable_params: int,
    precision: str,
    zero_stage: int,
    devices: int,
    offload_optimizer: bool,
    offload_param: bool,
    largest_layer_params: int,
) -> dict[str, float]:
    """Bytes per device of a trained model's weights, gradients and optimizer states (ZeRO, sec. 3.1).

    Args:
        num_params: Ψ, every weight of the model (frozen ones included).
        trainable_params: Ψ_t, the weights that carry gradients and Adam states (Ψ without LoRA;
            the adapters with it, whose frozen base weights count as weights only).
        precision: fp32 (4Ψ weights + 4Ψ grads + 8Ψ Adam m, v) or bf16/fp16 (2Ψ + 2Ψ + 12Ψ).
        zero_stage: 1 partitions optimizer states over `devices`, 2 also gradients, 3 also weights.
        offload_optimizer: the optimizer states (and with them the fp32 gradient partition) live in CPU memory.
        offload_param: ZeRO-3's weights live in CPU memory; only the gathered layer is on the device.
        largest_layer_params: the largest module's parameter count, gathered in full under ZeRO-3.
    """
    # DeepSpeed's estimators cover a fully trained 16-bit model; fp32, ZeRO-0/1 and LoRA (frozen base
    # weights) take the paper's counts below.
    if precision != "fp32" and zero_stage in (2, 3) and num_params == trainable_params:
        return deepspeed_model_states(
            num_params,
            precision=precision,
            zero_stage=zero_stage,
            devices=devices,
            offload_optimizer=offload_optimizer,
            offload_param=offload_param,
            largest_layer_params=largest_layer_params,
        )
    element = bytes_per_element(precision)
    optimizer_per_param = 8 if precision == "fp32" else 12
    weights = float(num_params * element)
    gradients = float(trainable_params * element)
    optimizer = float(trainable_params * optimizer_per_param)
    if zero_stage >= 1:
        optimizer /= devices
    if zero_stage >= 2:
        gradients /= devices
    if zero_stage >= 3:
        weights = weights / devices + 4 * largest_layer_params
    if offload_optimizer:
        optimizer = 0.0
    if offload_param and zero_stage == 3:
        weights = 4.0 * largest_layer_params
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer}


def deepspeed_model_states(
    num_params: int,
    *,
    precision: str,
    zero_stage: int,
    devices: int,
    offload_optimizer: bool,
    offload_param: bool,
    largest_layer_params: int,
) -> dict[str, float]:
    """DeepSpeed's own GPU estimate for bf16/fp16 ZeRO-2/3, split into weights, gradients, optimizer.

    ZeRO-2 (stage_1_and_2.estimate_zero2_model_states_mem_needs): 2Ψ + 18Ψ/N_d, where 18 = 2 (16-bit
    grads) + 4 (fp32 grads) + 4 (fp32 master) + 8 (Adam m, v); 2Ψ with the optimizer offloaded.
    ZeRO-3 (stage3.estimate_zero3_model_states_mem_needs): 4·L + 18Ψ/N_d, L the largest layer;
    4·L + 2Ψ/N_d with the optimizer offloaded, 4·L with the weights offloaded too.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    del precision  # DeepSpeed's estimators are for 16-bit weights only; the caller checks it
    if zero_stage == 2:
        _, total = estimate_zero2_model_states_mem_needs(
            num_params, num_gpus_per_node=devices, cpu_offload=offload_optimizer
        )
        weights = 2.0 * num_params
    else:
        _, total, largest = estimate_zero3_model_states_mem_needs(
            num_params,
            largest_layer_params,
            num_gpus_per_node=devices,
            cpu_offload=offload_optimizer,
            cpu_offload_params=offload_param and offload_optimizer,
        )
        weights = float(largest) + (0.0 if offload_param else 2.0 * num_params / devices)
    rest = max(float(total) - weights, 0.0)
    # The remainder splits as DeepSpeed's comment does: gradients 2 + 4 of the 18, optimizer 12.
    return {"weights": weights, "gradients": rest * 6 / 18, "optimizer": rest * 12 / 18}


def frozen_weights(num_params: int, *, precision: str, zero_stage: int, devices: int) -> float:
    """Bytes per device of a frozen model: its weights at `precision`, partitioned under ZeRO-3."""
    weights = float(num_params * bytes_per_element(precision))
    return weights / devices if zero_stage == 3 else weights


def kv_cache_bytes(*, layers: int, kv_heads: int, head_dim: int, batch: int, tokens: int, precision: str) -> float:
    """Generation's KV cache: 2 (keys, values) · layers · kv_heads · head_dim · batch · tokens · bytes."""
    return float(2 * layers * kv_heads * head_dim * batch * tokens * bytes_per_element(precision))


def layer_activation_bytes(*, tokens: int, batch: int, hidden: int, heads: int, precision: str, fused: bool) -> float:
    """Saved activations of one transformer layer for backward (Korthikanti et al. 2022, eq. 1).

    s·b·h·(34 + 5·a·s/h) bytes at 16 bits, doubled at fp32; the 5as/h term only when the attention
    matrix is materialised (eager attention; sdpa and flash attention recompute it).
    """
    per_token_hidden = ACTIVATION_BYTES_PER_TOKEN_HIDDEN + (
        0 if fused else ATTENTION_MATRIX_BYTES * heads * tokens / hidden
    )
    return tokens * batch * hidden * per_token_hidden * bytes_per_element(precision) / 2


def training_activation_bytes(
    *,
    layers: int,
    tokens: int,
    batch: int,
    hidden: int,
    heads: int,
    vocab: int,
    precision: str,
    fused: bool,
    checkpointing: bool,
) -> float:
    """Activations of one micro-batch's forward/backward: the layers' plus the logits (B·T·V·4, fp32
    log-softmax, twice: logits and log-probabilities). With gradient checkpointing only each layer's
    input (2·s·b·h bytes at 16 bits) is kept, plus one layer's activations recomputed in backward."""
    one_layer = layer_activation_bytes(
        tokens=tokens, batch=batch, hidden=hidden, heads=heads, precision=precision, fused=fused
    )
    if checkpointing:
        kept = layers * tokens * batch * hidden * bytes_per_element(precision) + one_layer
    else:
        kept = layers * one_layer
    return kept + LOGIT_COPIES * batch * tokens * vocab * 4


@dataclass(frozen=True)
class StageMemory:
    """One stage's peak bytes per device, by kind; `total` is their sum."""

    stage: str
    devices: int
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def shortfall_gib(memory: StageMemory, device_memory_gib: float) -> float:
    """GiB the stage lacks on a device of `device_memory_gib` after the CUDA reserve (<= 0: it fits)."""
    return memory.total / GIB + CUDA_RESERVE_GIB - device_memory_gib


# The published config.json values of the hub models our profiles name, for planning offline when the
# hub cache lacks them (read from each model's config.json on the hub; only the shape-defining keys).
PUBLISHED_CONFIGS: dict[str, dict] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": dict(
        model_type="llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
    ),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        model_type="qwen2", num_hidden_layers=24, hidden_size=896, intermediate_size=4864,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": dict(
        model_type="llama", num_hidden_layers=24, hidden_size=2048, intermediate_size=8192,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True,
    ),
    "HuggingFaceTB/SmolLM2-360M-Instruct": dict(
        model_type="llama", num_hidden_layers=32, hidden_size=960, intermediate_size=2560,
        num_attention_heads=15, num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True,
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ),
    "sentence-transformers/all-MiniLM-L6-v2": dict(
        model_type="bert", num_hidden_layers=6, hidden_size=384, intermediate_size=1536,
        num_attention_heads=12, vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: exact parameter counts (meta-device build) and its shape."""

    num_params: int  # the causal LM (or the encoder, for an encoder-only backbone)
    backbone_params: int  # without the LM head (the critic's and a reward model's backbone)
    layer_params: int  # one transformer layer (the first of the backbone's layer list)
    largest_layer_params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    linear_shapes: tuple[tuple[str, int, int], ...]  # (module name, in, out) of every nn.Linear

    def backbone_params_of(self, layers: int | None) -> int:
        """The backbone's parameters with only its first `layers` layers (None: all; ppo.critic_layers)."""
        return self.backbone_params - (self.layers - (layers or self.layers)) * self.layer_params

    def lora_params(self, rank: int, target_modules: list[str]) -> int:
        """Ψ_t of LoRA adapters (Hu et al. 2021): r · (in + out) per adapted linear layer;
        `all-linear` is peft's every linear layer but the output head."""
        return sum(
            rank * (fan_in + fan_out)
            for name, fan_in, fan_out in self.linear_shapes
            if ("all-linear" in target_modules and not name.endswith("lm_head"))
            or name.rsplit(".", 1)[-1] in target_modules
        )


def model_config(spec: str, *, trust_remote_code: bool):
    """A transformers config for a model spec without downloading: tiny-random, a package or local
    folder (a GGUF file's own metadata), the hub cache, else PUBLISHED_CONFIGS."""
    from transformers import AutoConfig, LlamaConfig

    from robust_rlhf.models import TINY_LLAMA_SHAPE, TINY_POLICY, TINY_VOCAB_SIZE, resolve_model_source

    if spec == TINY_POLICY:
        return LlamaConfig(vocab_size=TINY_VOCAB_SIZE, tie_word_embeddings=True, **TINY_LLAMA_SHAPE)
    source, gguf_file = resolve_model_source(spec)
    try:
        return AutoConfig.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if spec in PUBLISHED_CONFIGS:
            values = dict(PUBLISHED_CONFIGS[spec])
            return AutoConfig.for_model(values.pop("model_type"), **values)
        raise FileNotFoundError(
            f"memory plan: model {spec!r} is neither local nor in the hub cache, and its shape is not in"
            f" robust_rlhf/runtime/memory_plan.py PUBLISHED_CONFIGS; the plan needs its config"
            f" (a local folder or the hub cache): {error}"
        ) from None


def model_shape(spec: str, *, trust_remote_code: bool) -> ModelShape:
    """Count a model's parameters exactly by building it on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    config = model_config(spec, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        # A folder's config names its architectures: an encoder (BertModel) has no causal LM head.
        architectures = getattr(config, "architectures", None) or ["ForCausalLM"]
        causal = any(name.endswith("ForCausalLM") for name in architectures)
        full = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code) if causal else backbone

    def count(model) -> int:
        return sum({id(p): p.numel() for p in model.parameters()}.values())  # tied weights once

    heads = config.num_attention_heads
    return ModelShape(
        num_params=count(full),
        backbone_params=count(backbone),
        layer_params=layer_params(backbone, config.num_hidden_layers),
        largest_layer_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in full.modules()),
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
        linear_shapes=tuple(
            (name, m.in_features, m.out_features) for name, m in full.named_modules() if isinstance(m, torch.nn.Linear)
        ),
    )


def layer_params(backbone, layers: int) -> int:
    """Parameters of the backbone's first transformer layer (the first ModuleList as long as its layer
    count), or the backbone's mean per layer when it has no such list (ALBERT shares one layer)."""
    import torch

    stack = next((m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers), None)
    if stack is None:
        return sum({id(p): p.numel() for p in backbone.parameters()}.values()) // layers
    return sum(p.numel() for p in stack[0].parameters())


def plan_stages(params, *, ppo_devices: int | None = None) -> list[StageMemory]:
    """Each stage's peak per device for `params` (a robust_rlhf.config.Params): prepare, train_reward,
    ppo, evaluate. ppo is data parallel over launcher.world_size devices (or `ppo_devices`); the other
    stages run as one process (robust_rlhf/runtime/launcher.py), so on one device."""
    ds, remote = params.deepspeed, params.models.trust_remote_code
    policy = model_shape(params.models.policy, trust_remote_code=remote)
    backbone_spec = params.models.reward_backbone
    reward = policy if backbone_spec == "policy" else model_shape(backbone_spec, trust_remote_code=remote)
    fused = params.models.attn_implementation != "eager"
    offload_opt, offload_par = ds.offload_optimizer == "cpu", ds.offload_param == "cpu"
    prompt = params.prepare.max_prompt_tokens

    def frozen(shape_params: int, devices: int) -> float:
        return frozen_weights(shape_params, precision=ds.precision, zero_stage=ds.zero_stage, devices=devices)

    def kv(batch: int, new_tokens: int) -> float:
        return kv_cache_bytes(
            layers=policy.layers, kv_heads=policy.kv_heads, head_dim=policy.head_dim,
            batch=batch, tokens=prompt + new_tokens, precision=ds.precision,
        )  # fmt: skip

    def trained(num: int, trainable: int, largest: int, devices: int) -> dict[str, float]:
        return trained_model_states(
            num, trainable_params=trainable, precision=ds.precision, zero_stage=ds.zero_stage, devices=devices,
            offload_optimizer=offload_opt, offload_param=offload_par, largest_layer_params=largest,
        )  # fmt: skip

    def activations(shape: ModelShape, batch: int, tokens: int, checkpointing: bool, vocab: int) -> float:
        return training_activation_bytes(
            layers=shape.layers, tokens=tokens, batch=batch, hidden=shape.hidden, heads=shape.heads,
            vocab=vocab, precision=ds.precision, fused=fused, checkpointing=checkpointing,
        )  # fmt: skip

    stages = []
    # prepare: the sampler (the initial policy, frozen; also the composite gold's fluency model) + its KV cache.
    sampler = frozen(policy.num_params, 1) if params.prepare.task == "synthetic_gold" else 0.0
    generation = kv(params.prepare.batch_size, params.prepare.max_new_tokens) if sampler else 0.0
    stages.append(StageMemory("prepare", 1, sampler, 0.0, 0.0, generation))

    # train_reward: the backbone fine-tuned (full or LoRA) at 2 x micro-batch sequences (pairs), or
    # frozen features: one no-grad forward (one layer's activations alive at a time).
    tr = params.train_reward
    batch = 2 * max(tr.stage1.micro_batch_size, tr.stage2.micro_batch_size)
    if tr.finetune_backbone:
        trainable = (
            reward.lora_params(tr.lora.rank, tr.lora.target_modules) if tr.lora.enabled else reward.backbone_params
        )
        states = trained(reward.backbone_params, trainable, reward.largest_layer_params, 1)
        acts = activations(reward, batch, tr.max_length, tr.gradient_checkpointing, vocab=0)
    else:
        states = {"weights": frozen(reward.backbone_params, 1), "gradients": 0.0, "optimizer": 0.0}
        acts = layer_activation_bytes(
            tokens=tr.max_length,
            batch=batch,
            hidden=reward.hidden,
            heads=reward.heads,
            precision=ds.precision,
            fused=fused,
        )
    stages.append(StageMemory("train_reward", 1, states["weights"], states["gradients"], states["optimizer"], acts))

    # Reward models ppo and evaluate load (reward/scoring.py load_reward_models): the BRME, its stage-1
    # model when stage 2 retrained the backbone, and the ensemble's members when each has its own backbone.
    reward_backbones = 1
    if tr.finetune_backbone:
        reward_backbones += tr.ensemble_size + (0 if tr.stage2.freeze_backbone else 1)

    # ppo: actor (+ separate critic) trained, reference frozen (free under LoRA: the actor without its
    # adapters), reward models frozen; peak = states + max(generation's KV cache, one micro-batch's training).
    pc = params.ppo
    devices = ppo_devices or params.launcher.world_size
    actor_trainable = policy.lora_params(pc.lora.rank, pc.lora.target_modules) if pc.lora.enabled else policy.num_params
    actor = trained(policy.num_params, actor_trainable, policy.largest_layer_params, devices)
    models = [actor]
    if pc.value_model == "separate":
        critic_params = policy.backbone_params_of(pc.critic_layers)
        critic_trainable = critic_params
        if pc.lora.enabled:  # a cut critic's adapters: the policy's, in proportion to the layers kept
            adapters = policy.lora_params(pc.lora.rank, pc.lora.target_modules)
            critic_trainable = adapters * (pc.critic_layers or policy.layers) // policy.layers
        models.append(trained(critic_params, critic_trainable, policy.largest_layer_params, devices))
    frozen_bytes = reward_backbones * frozen(reward.backbone_params, devices)
    if not pc.lora.enabled:
        frozen_bytes += frozen(policy.num_params, devices)
    tokens = prompt + pc.max_new_tokens
    train = activations(policy, pc.micro_batch_size, tokens, pc.gradient_checkpointing, vocab=policy.vocab)
    peak_acts = max(kv(pc.rollout_batch_size, pc.max_new_tokens), train)
    stages.append(
        StageMemory(
            "ppo", devices,
            sum(m["weights"] for m in models) + frozen_bytes,
            sum(m["gradients"] for m in models),
            sum(m["optimizer"] for m in models),
            peak_acts,
        )
    )  # fmt: skip

    # evaluate: one policy at a time + the reference + the reward models, and the KV cache.
    ev = params.evaluate
    weights = 2 * frozen(policy.num_params, 1) + reward_backbones * frozen(reward.backbone_params, 1)
    stages.append(StageMemory("evaluate", 1, weights, 0.0, 0.0, kv(ev.batch_size, ev.max_new_tokens)))
    return stages


def available_memory_gib(device_memory_gib: float | None) -> float | None:
    """launcher.device_memory_gib, else the GPU's own memory, else None (the CPU: no check)."""
    if device_memory_gib is not None:
        return device_memory_gib
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GIB
    return None


def check_stage_fits(params, stage: str) -> None:
    """Raise StageInputError naming the stage and the shortfall when it cannot fit a device."""
    from robust_rlhf.config import StageInputError

    available = available_memory_gib(params.launcher.device_memory_gib)
    if available is None:
        return
    try:
        memory = next(m for m in plan_stages(params) if m.stage == stage)
    except FileNotFoundError as error:  # a model whose config is nowhere: say so, exit 2 (stages/cli.py)
        raise StageInputError(str(error)) from None
    short = shortfall_gib(memory, available)
    if short > 0:
        raise StageInputError(
            f"{stage} needs ~{memory.total / GIB + CUDA_RESERVE_GIB:.1f} GiB per device (with"
            f" {CUDA_RESERVE_GIB} GiB reserved for the CUDA context), {available:.1f} GiB available: short by"
            f" {short:.1f} GiB; try more devices (launcher.num_gpus), deepspeed.zero_stage 3, bf16,"
            f" offload, LoRA, gradient checkpointing or smaller batches (python -m stages.memory_plan)"
        )
