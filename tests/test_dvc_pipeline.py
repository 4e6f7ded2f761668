"""`dvc repro` end to end on the tiny profile, in a temp copy of the repo (repro rewrites dvc.lock)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from flows.pipeline import dvc_executable, stages_up_to_date
from tests.conftest import copy_repo

from tests.conftest import tiny_params

# Two methods (two ppo@ stages) show DVC's matrix, caching and invalidation; the session's `pipeline_run`
# fixture and the Prefect e2e test run the stages for every method.
METHODS = ("single", "brme")
PPO_STAGES = tuple(f"ppo@{method}-0" for method in METHODS)
STAGES = ("prepare", "train_reward", *PPO_STAGES, "evaluate", "report")


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run([dvc_executable(), *args], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def reproduced_repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    params = repo / "params.yaml"
    dropped = set(tiny_params()["methods"]) - set(METHODS)
    params.write_text("".join(line for line in params.read_text().splitlines(keepends=True)
                              if not (line.startswith("  ") and line.split(":")[0].strip() in dropped)))
    output = dvc(repo, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output
    return repo


def test_repro_runs_every_stage_and_writes_metrics(reproduced_repo):
    shown = json.loads(dvc(reproduced_repo, "metrics", "show", "--json"))
    text = json.dumps(shown)
    for name in ("prepare.json", "train_reward.json", "eval.json", *(f"eval/{m}.json" for m in METHODS)):
        assert name in text
    table = dvc(reproduced_repo, "metrics", "show", "metrics/eval")
    assert len([line for line in table.splitlines() if line.startswith("metrics/eval/")]) == len(PPO_STAGES)
    assert (reproduced_repo / "reports/report.html").stat().st_size > 10_000


def test_ppo_seeds_add_one_run_per_method_and_seed(reproduced_repo):
    params = reproduced_repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("ppo_seeds: [0]", "ppo_seeds: [0, 1]"))
    try:
        listed = dvc(reproduced_repo, "stage", "list", "--names-only").split()
    finally:
        params.write_text(original)
    assert {f"ppo@{method}-{seed}" for method in METHODS for seed in (0, 1)} <= set(listed)


def test_second_repro_does_nothing(reproduced_repo):
    output = dvc(reproduced_repo, "repro")
    assert "Data and pipelines are up to date" in output
    assert "Running stage" not in output


def test_the_flows_one_dvc_status_names_the_stages_it_may_skip(reproduced_repo):
    assert stages_up_to_date(reproduced_repo, STAGES) == set(STAGES)
    params = reproduced_repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("lambda: 0.5", "lambda: 0.25"))
    try:
        # report's own deps have not changed yet: evaluate's re-run will change them, which is why the flow
        # asks DVC about every stage after the first one that goes through `dvc repro`
        assert stages_up_to_date(reproduced_repo, STAGES) == {"prepare", "train_reward", "report"}
    finally:
        params.write_text(original)
    dvc_yaml = reproduced_repo / "dvc.yaml"
    pipeline = dvc_yaml.read_text()
    dvc_yaml.write_text("stages: [not a mapping")  # dvc status fails: the flow then skips nothing by itself
    try:
        assert stages_up_to_date(reproduced_repo, STAGES) == set()
    finally:
        dvc_yaml.write_text(pipeline)
    assert stages_up_to_date(reproduced_repo, STAGES) == set(STAGES)


def test_changing_lambda_reruns_exactly_the_ppo_runs_and_evaluate(reproduced_repo):
    params = reproduced_repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("lambda: 0.5", "lambda: 0.25"))
    try:
        output = dvc(reproduced_repo, "repro")
    finally:
        params.write_text(original)
    # Every PPO run logs the brme reward (which lambda defines), so every ppo@ stage depends on it.
    for stage in (*PPO_STAGES, "evaluate", "report"):
        assert f"Running stage '{stage}'" in output
    assert "Running stage 'prepare'" not in output and "Running stage 'train_reward'" not in output
