"""Low-rank adapters (LoRA, Hu et al. 2021) through the `peft` library: `ppo.lora`, `train_reward.lora`.

A linear layer W becomes W + (alpha / r) B A with A (r, in) and B (out, r); only A and B train. peft
starts B at zero, so an adapted model equals its base exactly before the first update. The base model
stays reachable inside the adapted one: `AdaptersDisabled` runs it with the adapters switched off,
which is how PPO's reference policy shares the actor's pretrained weights instead of copying them.
A checkpoint holds the adapters (peft's format) and the merged weights W + (alpha / r) B A in the
base model's own format, which anything that reads a transformers model loads unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from robust_rlhf.config import LoRAParams

ADAPTER_DIR = "adapter"  # where a checkpoint folder keeps the adapters (peft's save_pretrained)
_PEFT_PREFIX = "base_model.model."  # where a PeftModel's state dict puts the base model's keys


def add_lora(model: nn.Module, lora: LoRAParams) -> nn.Module:
    """`model` wrapped by peft with adapters on `lora.target_modules`; every base weight frozen.

    Dropout on the adapters is 0: PPO turns dropout off so that a policy equals itself between the
    rollout and the update (robust_rlhf/models.py `disable_dropout`), and the adapters must too."""
    from peft import LoraConfig, get_peft_model

    # `all-linear` is peft's own keyword (every linear layer but the output head), passed as a string.
    targets = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    return get_peft_model(model, config)


def is_adapted(model: nn.Module) -> bool:
    """Whether `model` is a peft model (adapters on a base)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


class AdaptersDisabled(nn.Module):
    """A peft model seen with its adapters off: exactly its base model, without gradients.

    PPO's reference policy under `ppo.lora`: the actor's own module, so the pretrained weights live
    once. Forward and generate run under `disable_adapter()` and inference mode, so running the
    reference inside the actor's DeepSpeed engine records no graph and never reaches its optimizer."""

    def __init__(self, adapted: nn.Module) -> None:
        super().__init__()
        self.adapted = adapted

    @property
    def config(self):
        return self.adapted.config

    @torch.inference_mode()
    def forward(self, *args, **kwargs):
        with self.adapted.disable_adapter():
            return self.adapted(*args, **kwargs)

    @torch.inference_mode()
    def generate(self, *args, **kwargs):
        with self.adapted.disable_adapter():
            return self.adapted.generate(*args, **kwargs)


def merged_state_dict(
    state: dict[str, torch.Tensor], *, scaling: float, fan_in_fan_out: bool = False, adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """The base model's state dict with each adapted weight merged: W' = W + scaling * B A.

    `state` is a PeftModel's state dict (keys `base_model.model.<path>.base_layer.weight`,
    `<path>.lora_A.<adapter>.weight` (r, in), `<path>.lora_B.<adapter>.weight` (out, r)); the result
    has the base model's keys (`<path>.weight`). The product is formed in float32 and cast to W's dtype;
    `fan_in_fan_out` layers (GPT-2's Conv1D) store W as (in, out), so they add (B A)^T."""
    merged = {}
    for key, value in state.items():
        if f".lora_A.{adapter}." in key or f".lora_B.{adapter}." in key:
            continue
        name = key.removeprefix(_PEFT_PREFIX)
        if name.endswith(".base_layer.weight"):
            layer = key.removesuffix(".base_layer.weight")
            a, b = state[f"{layer}.lora_A.{adapter}.weight"], state[f"{layer}.lora_B.{adapter}.weight"]
            delta = scaling * (b.float() @ a.float())
            value = (value.float() + (delta.T if fan_in_fan_out else delta)).to(value.dtype)
        merged[name.replace(".base_layer.", ".")] = value
    return merged


def save_merged(model: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write a peft `model` whose full state dict is `state` into `folder` merged: the base model's
    transformers format (safetensors), which loads without peft."""
    config = model.peft_config["default"]
    merged = merged_state_dict(state, scaling=config.lora_alpha / config.r, fan_in_fan_out=config.fan_in_fan_out)
    model.get_base_model().save_pretrained(folder, state_dict=merged, safe_serialization=True)


def save_adapted(model: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write a peft `model` whose full state dict is `state` into `folder`: the merged weights
    (`save_merged`) and the adapters alone under `folder / ADAPTER_DIR`."""
    save_merged(model, state, folder)
    # peft picks the adapters' entries out of the full state dict itself (get_peft_model_state_dict).
    model.save_pretrained(folder / ADAPTER_DIR, state_dict=state, safe_serialization=True)
