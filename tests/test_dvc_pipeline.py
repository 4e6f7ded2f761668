"""`dvc repro` end to end on the tiny profile, in a temp copy of the repo (repro rewrites dvc.lock)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

STAGES = ("prepare", "train_reward", "ppo", "evaluate")


def copy_repo(destination: Path) -> Path:
    """Copy the files git knows (tracked and untracked-not-ignored) and commit them in a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=destination, check=True, capture_output=True)
    return destination


def dvc(repo: Path, *args: str) -> str:
    executable = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run([executable, *args], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def reproduced_repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    output = dvc(repo, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output
    return repo


def test_repro_runs_every_stage_and_writes_metrics(reproduced_repo):
    shown = json.loads(dvc(reproduced_repo, "metrics", "show", "--json"))
    text = json.dumps(shown)
    for name in ("prepare.json", "train_reward.json", "ppo.json", "eval.json"):
        assert name in text
    evaluation = json.loads((reproduced_repo / "metrics/eval.json").read_text())
    assert set(evaluation) >= {"initial", "final", "gain"}


def test_second_repro_does_nothing(reproduced_repo):
    output = dvc(reproduced_repo, "repro")
    assert "Data and pipelines are up to date" in output
    assert "Running stage" not in output


def test_changing_lambda_reruns_exactly_ppo_and_evaluate(reproduced_repo):
    params = reproduced_repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("lambda: 0.5", "lambda: 0.25"))
    try:
        output = dvc(reproduced_repo, "repro")
    finally:
        params.write_text(original)
    assert "Running stage 'ppo'" in output and "Running stage 'evaluate'" in output
    assert "Running stage 'prepare'" not in output and "Running stage 'train_reward'" not in output
