"""Policy checkpoints of a PPO run: `step_NNNNN/` folders (transformers format, safetensors) plus a
`checkpoints.json` manifest naming them in order, the last one being the final policy. A policy trained
with adapters (`ppo.lora`) is saved merged in that format, its adapters in `step_NNNNN/adapter/`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robust_rlhf.lora import is_adapted, save_adapted
from robust_rlhf.runtime.atomic import atomic_write_json

MANIFEST = "checkpoints.json"


def checkpoint_name(step: int) -> str:
    """Folder name of the policy after `step` PPO steps."""
    return f"step_{step:05d}"


def save_policy_checkpoint(model, tokenizer, state_dict: dict[str, torch.Tensor], run_dir: Path, step: int) -> None:
    """Write the policy after `step` steps into run_dir/step_NNNNN and add it to the manifest."""
    folder = run_dir / checkpoint_name(step)
    if is_adapted(model):  # the merged weights where a transformers model is expected, the adapters beside
        save_adapted(model, state_dict, folder)
    else:
        # A shallow copy: transformers' save_pretrained pops the keys of the dict it is given.
        model.save_pretrained(folder, state_dict=dict(state_dict), safe_serialization=True)
    tokenizer.save_pretrained(folder)
    steps = [entry["step"] for entry in read_checkpoints(run_dir)] if (run_dir / MANIFEST).exists() else []
    steps = sorted(set(steps) | {step})
    atomic_write_json(run_dir / MANIFEST, {"checkpoints": [{"step": s, "path": checkpoint_name(s)} for s in steps]})


def read_checkpoints(run_dir: Path) -> list[dict]:
    """[{step, path}] in step order; `path` is relative to run_dir."""
    return json.loads((Path(run_dir) / MANIFEST).read_text())["checkpoints"]
