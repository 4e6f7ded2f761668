"""The one model loader: builds the tiny test models, materialises the initial policy, and loads
saved models back (safetensors only; `trust_remote_code` only when params turn it on)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

TINY_POLICY = "tiny-random"
# Small enough that a PPO step takes well under a second on one CPU core.
TINY_LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
TINY_VOCAB_SIZE = 384


def build_tiny_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer trained locally on `corpus` (no hub), with pad/eos/bos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE, special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", padding_side="left")


def build_tiny_policy(tokenizer, seed: int):
    """A randomly initialised tiny Llama causal LM sized to `tokenizer`, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=True, **TINY_LLAMA_SHAPE)
    return LlamaForCausalLM(config)


def materialise_policy(name: str, out_dir: Path, *, seed: int, corpus: list[str], trust_remote_code: bool) -> None:
    """Write the initial policy and its tokenizer to `out_dir` as safetensors.

    `tiny-random` builds the tiny test model; anything else goes to transformers'
    `from_pretrained`, which reads a local directory or, given a hub name, the hub.
    """
    if name == TINY_POLICY:
        tokenizer = build_tiny_tokenizer(corpus)
        model = build_tiny_policy(tokenizer, seed)
    else:
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        model = load_causal_lm(name, trust_remote_code=trust_remote_code)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_tokenizer(name_or_dir: str | Path, *, trust_remote_code: bool = False, padding_side: str = "left"):
    """Load a tokenizer; give it a pad token (eos) if it has none, since batched generation needs one."""
    from transformers import AutoTokenizer

    _log_remote_code(name_or_dir, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(name_or_dir: str | Path, *, trust_remote_code: bool = False):
    """Load a causal LM from safetensors only, in fp32 (DeepSpeed casts for bf16/fp16)."""
    from transformers import AutoModelForCausalLM

    _log_remote_code(name_or_dir, trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(
        str(name_or_dir), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32
    )


def load_backbone(name_or_dir: str | Path, *, trust_remote_code: bool = False):
    """Load a bare backbone (no LM head) from safetensors only, in fp32."""
    from transformers import AutoModel

    _log_remote_code(name_or_dir, trust_remote_code)
    return AutoModel.from_pretrained(
        str(name_or_dir), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32
    )


def _log_remote_code(name_or_dir, trust_remote_code: bool) -> None:
    if trust_remote_code:
        logger.warning("trust_remote_code is ON for %s: code from that model will run", name_or_dir)
