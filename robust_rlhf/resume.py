"""Resumable stages: after every checkpoint a stage saves what it needs to go on after a kill.

The resume folder sits beside the stage's output (`.<output>.resume/`), outside anything DVC caches.
It holds a DeepSpeed checkpoint per engine (model, optimizer and scheduler states) under a tag per
step, and `state.json`: the step, the params the run was started with, the RNG states and the
stage's own state (e.g. logged rows). `state.json` is written last and atomically, so it only ever
names a step whose engine checkpoints are complete; a kill during a save leaves the previous step
valid. RNG states are stored as plain numbers (JSON), never pickled.

A stage that trains several models one after another (train_reward: stage1, stage2, member_0, ...)
uses `PhasedResume`: each finished phase's tensors sit in `<name>.safetensors`, and state.json names
the phase in progress and the position inside it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from robust_rlhf.atomic import atomic_write_json
from robust_rlhf.config import StageInputError
from robust_rlhf.distributed import is_main_process

STATE_FILE = "state.json"
ALL_PHASES_DONE = "done"  # PhasedResume's phase once the last phase has finished


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


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors, atomically (temp file beside `path`, fsync, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary))
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(path)


class PhasedResume:
    """The resume state of a stage that trains named phases in order, each on its own DeepSpeed engine.

    state.json's stage part: `phase` (the one in progress), `position` (how far that phase got at its
    last checkpoint, as its training loop reports it; None when it has not started) and `losses` (of
    every finished phase). Its step counts the micro-batches trained in the whole stage. Resuming puts
    back the saved RNG states just before training goes on: after the interrupted phase's engine is
    restored, or, when the run stopped between phases, before the next phase builds its model.
    """

    def __init__(self, folder: Path, run_params: dict, phases: list[str]) -> None:
        self.folder, self.run_params, self.phases = folder, run_params, phases
        self.saved = load_state(folder, run_params)  # consumed (set to None) once training goes on from it
        if self.saved is None:
            shutil.rmtree(folder, ignore_errors=True)  # a stale half-started folder: start over
        stage = self.saved["stage"] if self.saved else {"phase": phases[0], "position": None, "losses": {}}
        self.phase, self.position, self.losses = stage["phase"], stage["position"], stage["losses"]

    def finished(self, phase: str) -> bool:
        """Whether `phase` ended before this run started (its results are in the folder)."""
        return self.phase not in self.phases[:self.phases.index(phase) + 1]

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors a finished phase saved under `name`."""
        return load_file(str(self.folder / f"{name}.safetensors"))

    def start(self, phase: str) -> None:
        """Call before building `phase`'s model: a run stopped right before this phase gets its RNGs back."""
        if self.saved is not None and phase == self.phase and self.position is None:
            set_rng_state(self.saved["rng"])
            self.saved = None

    def restore(self, phase: str, engine) -> dict | None:
        """The position to go on from inside `phase`, with `engine` and the RNGs as they were there;
        None when the phase starts from its beginning."""
        if self.saved is None or phase != self.phase or self.position is None:
            return None
        restore_engines(self.folder, {phase: engine}, self.saved)
        self.saved = None
        return self.position

    def checkpoint(self, phase: str, engine, *, position: dict, micro_batches: int) -> None:
        """Save `engine` and the RNGs at `position` inside `phase` (`micro_batches` trained in it so far)."""
        self.phase, self.position = phase, position
        save_state(self.folder, {phase: engine}, step=self._finished_micro_batches() + micro_batches,
                   run_params=self.run_params, stage_state=self._stage_state())

    def finish(self, phase: str, losses: list[float], tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Record a finished phase: its tensors (one file per name), its losses, then the next phase
        as the one to run; its engine checkpoint is no longer needed."""
        if is_main_process():
            for name, named_tensors in tensors.items():
                save_tensors(self.folder / f"{name}.safetensors", named_tensors)
        self.losses[phase] = losses
        following = self.phases.index(phase) + 1
        self.phase, self.position = (self.phases + [ALL_PHASES_DONE])[following], None
        save_state(self.folder, {}, step=self._finished_micro_batches(), run_params=self.run_params,
                   stage_state=self._stage_state())
        if is_main_process():
            shutil.rmtree(self.folder / phase, ignore_errors=True)
        _wait_for_main_process()  # every rank reads the tensors the main process just wrote

    def remove(self) -> None:
        """Drop the folder once the stage's outputs are published."""
        if is_main_process():
            shutil.rmtree(self.folder, ignore_errors=True)

    def _finished_micro_batches(self) -> int:
        return sum(len(losses) for losses in self.losses.values())

    def _stage_state(self) -> dict:
        return {"phase": self.phase, "position": self.position, "losses": self.losses}


def _wait_for_main_process() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
