"""Resumable stages: after every checkpoint a stage saves what it needs to go on after a kill.

The resume folder sits beside the stage's output (`.<output>.resume/`), outside anything DVC caches.
It holds a DeepSpeed checkpoint per engine (model, optimizer and scheduler states) under a tag per
step, and `state.json`: the step, the params the run was started with, the RNG states and the
stage's own state (e.g. logged rows). `state.json` is written last and atomically, so it only ever
names a step whose engine checkpoints are complete; a kill during a save leaves the previous step
valid. RNG states are stored as plain numbers (JSON), never pickled.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from robust_rlhf.atomic import atomic_write_json
from robust_rlhf.config import StageInputError
from robust_rlhf.distributed import is_main_process

STATE_FILE = "state.json"


class ResumeRefused(StageInputError):
    """A resume folder exists but was written with params that make it invalid for this run."""


def resume_folder(output: Path) -> Path:
    """Where the resume state of a stage writing `output` lives."""
    return output.with_name(f".{output.name}.resume")


def rng_state() -> dict:
    """Python's and torch's (CPU, and CUDA when present) RNG states as JSON-serialisable lists."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def differing_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, f"{name}.")
        elif a != b:
            keys.append(name)
    return keys


def load_state(folder: Path, run_params: dict) -> dict | None:
    """The saved state, or None when there is nothing to resume. Raises ResumeRefused, naming the
    differing params, when the saved run was started with other params."""
    path = folder / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    changed = differing_keys(state["params"], run_params)
    if changed:
        raise ResumeRefused(f"{folder} holds a run interrupted at step {state['step']} with other params "
                            f"(changed: {', '.join(changed)}); restore those params to resume it, or delete "
                            f"{folder} to start over")
    return state


def save_state(folder: Path, engines: dict, *, step: int, run_params: dict, stage_state: dict) -> None:
    """Checkpoint every engine under tag `step_<step>`, then write state.json naming that step, then
    drop older tags."""
    tag = f"step_{step}"
    for name, engine in engines.items():
        engine.save_checkpoint(str(folder / name), tag=tag)  # every rank: ZeRO shards its states
    if not is_main_process():
        return
    atomic_write_json(folder / STATE_FILE, {"step": step, "tag": tag, "params": run_params, "rng": rng_state(),
                                           "stage": stage_state})
    for name in engines:
        for old in (folder / name).glob("step_*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def restore_engines(folder: Path, engines: dict, state: dict) -> None:
    """Load every engine's model, optimizer and scheduler states of the saved step, then the RNGs."""
    for name, engine in engines.items():
        loaded, _ = engine.load_checkpoint(str(folder / name), tag=state["tag"], load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise ResumeRefused(f"{folder / name}: no DeepSpeed checkpoint {state['tag']}; delete {folder} to start over")
    set_rng_state(state["rng"])
