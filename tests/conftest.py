"""Shared fixtures: the tiny profile's params, a tiny tokenizer and policy, and one `dvc repro` of the
tiny profile (every stage's CLI in a subprocess) that the per-stage and the DVC end-to-end tests inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    import torch

from robust_rlhf.runtime.threads import configure_threads

configure_threads()  # before any test imports torch (the suite's OMP_NUM_THREADS=1 is kept)
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests are offline by design: a hub call fails at once instead of after the hub client's network
# retries (23 s for the hub-path test). Set before any test imports huggingface_hub, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


TINY_PROFILE = REPO / "profiles" / "tiny.yaml"
# Every test in these folders runs a stage's CLI or the whole pipeline in subprocesses (seconds to
# minutes each): all are `slow`, so a new file there cannot be forgotten by `make test-fast`. Slow tests
# elsewhere carry @pytest.mark.slow themselves.
SLOW_FOLDERS = ("e2e", "stages")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(item.path).resolve().relative_to(REPO / "tests").parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


class PlainEngine:
    """The slice of a DeepSpeed engine the training loops use, on plain torch (no process group needed)."""

    def __init__(self, module: torch.nn.Module, *, lr: float = 1e-2) -> None:
        import torch

        self.module, self.device = module, torch.device("cpu")
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self):
        self.module.train()

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad()


def tiny_params(**overrides) -> dict:
    """The `tiny` profile (profiles/tiny.yaml) with dotted-key overrides, e.g. {"ppo.steps": 2}."""
    params = yaml.safe_load(TINY_PROFILE.read_text())
    assert params["profile"] == "tiny"
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


def tiny_section(dotted: str, **overrides) -> dict:
    """One section of the tiny profile (e.g. `deepspeed`, `launcher`) with keyword overrides, to build that
    section's model alone: every field is required, so a test states only what it varies."""
    section = tiny_params()
    for key in dotted.split("."):
        section = section[key]
    return {**section, **overrides}


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def copy_repo(destination: Path) -> Path:
    """A new git repo in `destination` holding this checkout's files with the tiny profile as its
    params.yaml (bench/checkout.py): `dvc repro` rewrites dvc.lock, metrics and plots, so end-to-end
    tests never run in the checkout."""
    from bench.checkout import copy_checkout

    return copy_checkout(destination, TINY_PROFILE)


def run_stage(stage: str, params: Path, **paths: Path) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` with --params and the given path flags; return the result."""
    return subprocess.run(stage_command(stage, params, **paths), cwd=REPO, capture_output=True, text=True, timeout=600)


def stage_command(stage: str, params: Path, **args) -> list[str]:
    """argv of `python -m stages.<stage>` with --params and the given flags (paths or values)."""
    command = [sys.executable, "-m", f"stages.{stage}", "--params", str(params)]
    for name, value in args.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def kill_after_checkpoint(command: list[str], state: Path, at_least_step: int) -> int:
    """Run `command`, SIGKILL it once it has written a resume `state` (state.json) of its own naming a
    step >= at_least_step, and return that step (a kill before the first checkpoint has nothing to
    resume from)."""
    step_before = json.loads(state.read_text())["step"] if state.exists() else -1
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            step = json.loads(state.read_text())["step"] if state.exists() else -1
            if step > step_before and step >= at_least_step:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the stage finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return json.loads(state.read_text())["step"]


def run_stage_ok(stage: str, params: Path, **paths: Path) -> subprocess.CompletedProcess:
    result = run_stage(stage, params, **paths)
    assert result.returncode == 0, f"stage {stage} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> dict[str, Path]:
    """One `dvc repro` of the tiny profile (prepare -> train_reward -> ppo@<every method>-0 -> evaluate ->
    report, each stage's CLI in a subprocess as dvc.yaml writes it) in a copy of the repo, once per
    session: the per-stage tests inspect its outputs, tests/e2e/test_dvc_pipeline.py its DVC state (and
    puts back what it changes). One run for both: they used to run the pipeline twice."""
    from flows.pipeline import dvc_executable, pipeline_stages

    root = copy_repo(tmp_path_factory.mktemp("pipeline"))
    result = subprocess.run(
        [dvc_executable(), "repro"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    for stage in pipeline_stages(root):
        assert f"Running stage '{stage}'" in result.stdout, f"{stage} did not run:\n{result.stdout[-4000:]}"
    # The paths dvc.yaml gives each stage, relative to the copy.
    return {
        "root": root,
        "params": root / "params.yaml",
        "data": root / "data",
        "policy_init": root / "models/policy_init",
        "reward": root / "models/reward",
        "ensemble": root / "models/reward_ensemble",
        "policies": root / "models/policy",
        "reliability": root / "plots/reward_reliability",
        "steps": root / "plots/ppo",
        "table": root / "metrics/eval",
        "curves": root / "plots/eval_curves",
        "best_of_n": root / "plots/best_of_n",
        "samples": root / "reports/eval_samples.jsonl",
        "metrics": root / "metrics",
        "report": root / "reports/report.html",
        "live": root / "live",
    }


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from robust_rlhf.data.task import tokenizer_corpus
    from robust_rlhf.models import build_tiny_tokenizer

    return build_tiny_tokenizer(tokenizer_corpus())


@pytest.fixture(scope="session")
def tiny_policy(tiny_tokenizer):
    from robust_rlhf.models import build_tiny_policy

    return build_tiny_policy(tiny_tokenizer, seed=0, attn_implementation="sdpa").eval()
