"""`dvc repro` end to end on the tiny profile, in the temp copy of the repo where the session's
`pipeline_run` ran it (repro rewrites dvc.lock): caching, invalidation, the flow's status query, a
killed stage."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from flows.pipeline import dvc_executable, stages_up_to_date
from robust_rlhf.config import RESUME_ROOT, resume_folder_of
from robust_rlhf.runtime.resume import prune_finished
from tests.conftest import REPO, tiny_params

# The session's `pipeline_run` (tests/conftest.py) is this module's `dvc repro`: every method, seed 0. A test
# that changes the copy's params or outputs puts both back before it ends, for the per-stage tests.
METHODS = tuple(tiny_params()["methods"])
PPO_STAGES = tuple(f"ppo@{method}-0" for method in METHODS)
STAGES = ("prepare", "train_reward", *PPO_STAGES, "evaluate", "report")


def dvc(repo: Path, *args: str, with_stderr: bool = False) -> str:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run([dvc_executable(), *args], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr if with_stderr else result.stdout


def kill_once_state_is_written(repo: Path, args: list[str], state: Path) -> None:
    """Start `dvc <args>` and SIGKILL dvc and its stage once the stage has written its resume `state`."""
    process = subprocess.Popen(
        [dvc_executable(), *args],
        cwd=repo,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not state.exists():
            assert process.poll() is None, "the stage finished before it could be killed"
            assert time.monotonic() < deadline, "no resume state within 300 s"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def reproduced_repo(pipeline_run) -> Path:
    """The copy of the repo in which `pipeline_run` ran `dvc repro` once, every stage running (it checks)."""
    return pipeline_run["root"]


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
    params.write_text(original.replace("brme_lambda: 0.5", "brme_lambda: 0.25"))
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


def test_changing_lambda_invalidates_exactly_the_ppo_runs_and_evaluate(reproduced_repo):
    # dvc status names the stages whose own params changed; repro then runs those and what reads their
    # outputs (report reads evaluate's), which is DVC's part and not re-run here (it cost two minutes).
    params = reproduced_repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("brme_lambda: 0.5", "brme_lambda: 0.25"))
    try:
        status = json.loads(dvc(reproduced_repo, "status", "--json"))
    finally:
        params.write_text(original)
    # Every PPO run logs the brme reward (which lambda defines), so every ppo@ stage depends on it.
    assert set(status) == {*PPO_STAGES, "evaluate"}
    for stage, changes in status.items():
        assert changes == [{"changed deps": {"params.yaml": {"aggregation": "modified"}}}], stage
    report_deps = yaml.safe_load((reproduced_repo / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    assert "metrics/eval.json" in report_deps
    assert json.loads(dvc(reproduced_repo, "status", "--json")) == {}


def test_every_resume_folder_is_outside_dvc_and_git():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert f"--resume {resume_folder_of('train_reward')}" in stages["train_reward"]["cmd"]
    assert f"--resume {resume_folder_of('ppo@${item.method}-${item.seed}')}" in stages["ppo"]["cmd"]
    for ignore in (".gitignore", ".dvcignore"):
        assert f"/{RESUME_ROOT}/" in (REPO / ignore).read_text().splitlines()


def test_a_killed_stage_leaves_nothing_dvc_sees_and_force_starts_it_over(reproduced_repo, monkeypatch):
    repo, stage = reproduced_repo, "ppo@brme-0"
    dvc(repo, "repro")  # the outputs params.yaml asks for (an earlier test may have left others)
    folder, policy = repo / resume_folder_of(stage), repo / "models/policy/brme-seed0"
    kill_once_state_is_written(repo, ["repro", "-f", "-s", stage], folder / "state.json")
    assert folder.is_dir() and not policy.exists()

    # A plain repro restores the run from DVC's run cache: evaluate does not re-run, dvc.lock knows
    # nothing of the state, and the next stage that runs (or the flow, or `make run`) removes it.
    output = dvc(repo, "repro")
    assert "Running stage" not in output and f"Stage '{stage}' is cached" in output and policy.is_dir()
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
    paths = [entry["path"] for stage_lock in locked for kind in ("deps", "outs") for entry in stage_lock.get(kind, [])]
    assert paths and not [path for path in paths if path.startswith(RESUME_ROOT)]
    assert json.loads(dvc(repo, "status", "--json")) == {}
    monkeypatch.chdir(repo)  # the state names its outputs as dvc.yaml does, relative to the repo
    assert prune_finished(repo / RESUME_ROOT, keep=repo / resume_folder_of("ppo@single-0")) == [folder]

    # `dvc repro -f` after a kill starts over: the state is discarded, the run equals the cached one.
    cached = policy_hash(repo, stage)
    kill_once_state_is_written(repo, ["repro", "-f", "-s", stage], folder / "state.json")
    output = dvc(repo, "repro", "-f", "-s", stage, with_stderr=True)
    assert f"discarding the resume state in {resume_folder_of(stage)}" in output
    assert "dvc was run with --force; starting over" in output and "resuming" not in output
    assert not folder.exists() and policy_hash(repo, stage) == cached


def policy_hash(repo: Path, stage: str) -> str:
    """The hash dvc.lock records for the stage's policy checkpoints."""
    outs = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"]
    (policy,) = [out for out in outs if out["path"].startswith("models/policy/")]
    return policy["md5"]
