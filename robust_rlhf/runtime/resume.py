"""Resumable stages: after every checkpoint a stage saves what it needs to go on after a kill.

The resume folder is named by the stage's `--resume` argument (`.resume/<stage>/` in dvc.yaml),
outside every DVC output and dep, gitignored and dvcignored. It holds a DeepSpeed checkpoint per
engine (model, optimizer and scheduler states) under a tag per step, and `state.json`: the step,
the run's key, the RNG states and the stage's own state (e.g. logged rows). `state.json` is written
last and atomically, so it only ever names a step whose engine checkpoints are complete; a kill
during a save leaves the previous step valid. RNG states are stored as plain numbers (JSON).

A state is resumed only when it continues exactly the run the stage would start now: its key holds
the run's params, a content hash of every input the stage reads (models, data), of the code and the
library versions; `dvc repro --force` means start over. Anything else discards the state with one
log line. Nothing in a resume folder is unpickled: DeepSpeed's files load with
`torch.load(weights_only=True)` and an allow-list of the types DeepSpeed writes, finished phases are
safetensors; an unreadable or foreign file means starting over.

A stage that trains several models one after another (train_reward: stage1, stage2, member_0, ...)
uses `PhasedResume`: each finished phase's tensors sit in `<name>.safetensors`, and state.json names
the phase in progress and the position inside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from robust_rlhf.config import StageInputError
from robust_rlhf.runtime.atomic import atomic_write_json
from robust_rlhf.runtime.distributed import is_main_process

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
ALL_PHASES_DONE = "done"  # PhasedResume's phase once the last phase has finished
CODE_PACKAGES = ("robust_rlhf", "stages")  # the code a run's key hashes
KEYED_LIBRARIES = ("torch", "deepspeed", "transformers", "safetensors")  # versions that change the numbers


class ResumeRefused(StageInputError):
    """A resume state passed its checks but DeepSpeed could not load it; it is deleted, so the next
    run starts over."""


class _Unreadable(Exception):
    """A file of a resume state cannot be read safely."""


# --- what a saved run is ----------------------------------------------------------------------------


def tree_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder: every file's relative path and SHA-256, in sorted order."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_sha256() -> str:
    """SHA-256 over every .py file of the library and the stages: a resumed run runs the same code."""
    import importlib.util

    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        spec = importlib.util.find_spec(package)
        root = Path(next(iter(spec.submodule_search_locations)))
        for file in sorted(root.rglob("*.py")):
            digest.update(f"{package}/{file.relative_to(root).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in KEYED_LIBRARIES}


def run_key(params: dict, inputs: dict[str, Path]) -> dict:
    """What a saved state must match to be resumed: the run's params, the content of every input it
    reads (by SHA-256), the code and the library versions."""
    return {
        "params": params,
        "inputs": {name: tree_sha256(path) for name, path in sorted(inputs.items())},
        "code": code_sha256(),
        "libraries": library_versions(),
    }


def dvc_force_flag(argv: list[str]) -> bool:
    """Whether `argv` is a `dvc repro` or `dvc exp run` with --force/-f (alone or in a cluster: -sf)."""
    names = [os.path.basename(arg) for arg in argv]
    if "dvc" in names:
        rest = argv[names.index("dvc") + 1 :]
    elif "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "dvc":
        rest = argv[argv.index("-m") + 2 :]
    else:
        return False
    if not (rest[:1] == ["repro"] or rest[:2] == ["exp", "run"]):
        return False
    return any(
        arg == "--force" or (arg.startswith("-") and not arg.startswith("--") and "f" in arg[1:]) for arg in rest
    )


def force_requested(pid: int | None = None) -> bool:
    """Whether this process runs under a `dvc repro --force` (or `dvc exp run --force`): DVC runs a
    stage as a child of its own process and passes no flag down, so the ancestors' argv say it
    (Linux /proc; elsewhere False, and a resume is decided by the key alone)."""
    pid = os.getpid() if pid is None else pid
    for _ in range(16):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if dvc_force_flag([arg.decode(errors="replace") for arg in argv if arg]):
            return True
        if parent <= 1:
            return False
        pid = parent
    return False


# --- loading without unpickling ---------------------------------------------------------------------


def _deepspeed_checkpoint_types() -> list:
    """The non-tensor types DeepSpeed pickles into its checkpoints (ZeRO 0-3, fp32 and bf16: see
    torch.serialization.get_unsafe_globals_in_checkpoint): an enum and two plain records, rebuilt from
    their fields without running code of their own."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address, set]


def safe_torch_load(path: str | Path, map_location=None):
    """torch.load with weights_only=True: tensors, containers, numbers and strings, plus the allow-listed
    DeepSpeed types; a pickle that names anything else is refused, never run."""
    with torch.serialization.safe_globals(_deepspeed_checkpoint_types()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _check_readable(folder: Path, engines: list[str], tag: str) -> None:
    """Every file the engines' checkpoints would load, read safely once before anything is restored
    (so a bad file leaves the fresh engines untouched)."""
    for name in engines:
        checkpoint = folder / name / tag
        files = sorted(checkpoint.rglob("*.pt")) if checkpoint.is_dir() else []
        if not files:
            raise _Unreadable(f"{checkpoint}: no checkpoint files")
        for file in files:
            try:
                safe_torch_load(file, map_location="cpu")
            except Exception as error:  # noqa: BLE001 - torch raises many types for a foreign or corrupt file
                raise _Unreadable(f"{file}: {type(error).__name__}: {str(error).splitlines()[0][:200]}") from None
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises its own and OS errors
            raise _Unreadable(f"{file}: {type(error).__name__}: {error}") from None


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


def load_state(folder: Path, key: dict, *, engines_of: Callable[[dict], list[str]]) -> dict | None:
    """The saved state to go on from, or None to start over. A state is discarded (with one log line,
    and its folder removed) when dvc runs with --force, when it was saved by a run with another key,
    or when any of its files cannot be read safely; `engines_of(state)` names the engine checkpoints
    the state must hold. Every rank decides alike (the same files), and waits for the removal."""
    if not folder.exists():
        return None
    state = None
    try:
        if force_requested():
            reason = "dvc was run with --force"
        elif not (folder / STATE_FILE).exists():
            reason = "it holds no state.json (killed before its first checkpoint)"
        else:
            state = json.loads((folder / STATE_FILE).read_text())
            changed = differing_keys(state["key"], key)
            reason = f"it is from another run (changed: {', '.join(changed)})" if changed else None
            if reason is None:
                _check_readable(folder, engines_of(state), state["tag"])
    except _Unreadable as error:
        reason = f"resume state unreadable: {error}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = f"resume state unreadable: {folder / STATE_FILE}: {type(error).__name__}: {error}"
    if reason is None:
        return state
    step = f" (step {state['step']})" if isinstance(state, dict) and isinstance(state.get("step"), int) else ""
    logger.info("discarding the resume state in %s%s: %s; starting over", folder, step, reason)
    _wait_for_main_process()  # no rank is still reading when the folder goes
    if is_main_process():
        shutil.rmtree(folder, ignore_errors=True)
    _wait_for_main_process()
    return None


def save_state(folder: Path, engines: dict, *, step: int, key: dict, stage_state: dict, outputs: list[Path]) -> None:
    """Checkpoint every engine under tag `step_<step>`, then write state.json naming that step, then
    drop older tags. `outputs` are the stage's outputs: once they all exist the state is stale
    (`prune_finished`)."""
    tag = f"step_{step}"
    for name, engine in engines.items():
        engine.save_checkpoint(str(folder / name), tag=tag)  # every rank: ZeRO shards its states
    if not is_main_process():
        return
    atomic_write_json(
        folder / STATE_FILE,
        {
            "step": step,
            "tag": tag,
            "key": key,
            "rng": rng_state(),
            "stage": stage_state,
            "outputs": [str(path) for path in outputs],
        },
    )
    for name in engines:
        for old in (folder / name).glob("step_*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def restore_engines(folder: Path, engines: dict, state: dict) -> None:
    """Load every engine's model, optimizer and scheduler states of the saved step (without
    unpickling), then the RNGs."""
    for name, engine in engines.items():
        engine.checkpoint_engine.load = safe_torch_load  # every file DeepSpeed reads goes through it
        try:
            loaded, _ = engine.load_checkpoint(
                str(folder / name), tag=state["tag"], load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if loaded is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint {state['tag']}")
        except Exception as error:  # noqa: BLE001 - a checkpoint from another model raises anything
            if is_main_process():
                shutil.rmtree(folder, ignore_errors=True)
            raise ResumeRefused(
                f"resume state unreadable: {folder / name}: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:200] if str(error) else ''}; it was deleted, "
                f"so the next run starts over"
            ) from None
    set_rng_state(state["rng"])


def prune_finished(root: Path, keep: Path) -> list[Path]:
    """Remove the resume folders under `root` (other than `keep`) whose stage outputs all exist: DVC
    restored that stage from its cache, or it finished, so the state can never be resumed. Returns
    the folders removed (on the main process; the other ranks leave it to that one)."""
    removed = []
    if not is_main_process():
        return removed
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder == keep or not (folder / STATE_FILE).is_file():
            continue
        try:
            outputs = [Path(path) for path in json.loads((folder / STATE_FILE).read_text())["outputs"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge
        if outputs and all(path.exists() for path in outputs):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.info("removed resume state of finished stages: %s", ", ".join(str(path) for path in removed))
    return removed


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

    def __init__(self, folder: Path, key: dict, phases: list[str], outputs: list[Path]) -> None:
        self.folder, self.key, self.phases, self.outputs = folder, key, phases, outputs
        # consumed (set to None) once training goes on from it
        self.saved = load_state(
            folder,
            key,
            engines_of=lambda state: [state["stage"]["phase"]] if state["stage"]["position"] is not None else [],
        )
        stage = self.saved["stage"] if self.saved else {"phase": phases[0], "position": None, "losses": {}}
        self.phase, self.position, self.losses = stage["phase"], stage["position"], stage["losses"]

    def finished(self, phase: str) -> bool:
        """Whether `phase` ended before this run started (its results are in the folder)."""
        return self.phase not in self.phases[: self.phases.index(phase) + 1]

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
        save_state(
            self.folder,
            {phase: engine},
            step=self._finished_micro_batches() + micro_batches,
            key=self.key,
            stage_state=self._stage_state(),
            outputs=self.outputs,
        )

    def finish(self, phase: str, losses: list[float], tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Record a finished phase: its tensors (one file per name), its losses, then the next phase
        as the one to run; its engine checkpoint is no longer needed."""
        if is_main_process():
            for name, named_tensors in tensors.items():
                save_tensors(self.folder / f"{name}.safetensors", named_tensors)
        self.losses[phase] = losses
        following = self.phases.index(phase) + 1
        self.phase, self.position = (self.phases + [ALL_PHASES_DONE])[following], None
        save_state(
            self.folder,
            {},
            step=self._finished_micro_batches(),
            key=self.key,
            stage_state=self._stage_state(),
            outputs=self.outputs,
        )
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
