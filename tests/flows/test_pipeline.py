"""The Prefect flow: task logic through `.fn()`, and real flow runs under a test Prefect server."""

import os
import re
import time
from pathlib import Path

import psutil
import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.pipeline import (
    FlowTimedOut,
    StageFailed,
    flatten,
    pipeline,
    pipeline_stages,
    retry_delays,
    run_stage,
    stage_metrics_paths,
)
from robust_rlhf.config import resume_folder_of
from robust_rlhf.runtime.live import LIVE_ROOT
from tests.conftest import REPO, copy_repo, tiny_params


def with_params(repo, **overrides):
    """Rewrite the copy's params.yaml with dotted-key overrides (see tests/conftest.py:tiny_params)."""
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(**overrides), sort_keys=False))
    return repo


def test_stages_in_run_order(tmp_path):
    repo = copy_repo(tmp_path)  # its params.yaml is the tiny profile
    methods = list(tiny_params()["methods"])
    assert pipeline_stages(repo) == ["prepare", "train_reward", *(f"ppo@{m}-0" for m in methods), "evaluate", "report"]
    assert pipeline_stages(repo, ["brme"]) == ["prepare", "train_reward", "ppo@brme-0", "evaluate", "report"]
    with_params(repo, ppo_seeds=[3, 1])
    assert pipeline_stages(repo, ["brme", "single"])[2:6] == [
        "ppo@brme-3",
        "ppo@brme-1",
        "ppo@single-3",
        "ppo@single-1",
    ]
    with pytest.raises(ValueError, match="unknown methods"):
        pipeline_stages(repo, ["nope"])


def test_metrics_paths_resolve_matrix_entries():
    assert stage_metrics_paths(REPO, "ppo@kl_dro-12") == ["metrics/ppo/kl_dro-seed12.json"]
    assert stage_metrics_paths(REPO, "report") == ["metrics/report.json"]
    assert stage_metrics_paths(REPO, "prepare") == ["metrics/prepare.json"]
    assert stage_metrics_paths(REPO, "train_reward") == ["metrics/train_reward.json"]
    assert set(stage_metrics_paths(REPO, "evaluate")) == {"metrics/eval.json", "metrics/eval"}
    # DVCLive's summaries are left out because they sit under LIVE_ROOT: every stage's --live folder does.
    live_folders = re.findall(r"--live (\S+)", (REPO / "dvc.yaml").read_text())
    assert len(live_folders) == 2 and all(folder.startswith(f"{LIVE_ROOT}/") for folder in live_folders)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}


@pytest.mark.slow
def test_bad_params_fail_the_stage_naming_the_key(tmp_path):
    # out of range: prepare refuses it before any work, with exit code 2
    repo = with_params(copy_repo(tmp_path), **{"prepare.label_noise": 0.9})
    with pytest.raises(StageFailed, match="prepare.label_noise") as raised:
        run_stage.fn("prepare", str(repo))
    assert isinstance(raised.value, RuntimeError)
    assert "stage prepare failed" in str(raised.value)
    assert raised.value.stage_exit_code == 2 and raised.value.dvc_exit_code != 0


@pytest.mark.slow
def test_retries_skip_bad_params_but_cover_other_failures(tmp_path, prefect_server):
    """Prefect's own retry machinery: exit code 2 runs once, a DVC-level failure runs 1 + 2 retries."""
    repo = with_params(copy_repo(tmp_path), **{"prepare.label_noise": 0.9})
    fast = run_stage.with_options(retry_delay_seconds=0)

    @flow
    def attempts():
        bad_params = fast("prepare", str(repo), return_state=True)
        unknown_stage = fast("no_such_stage", str(repo), return_state=True)
        return bad_params, unknown_stage

    bad_params, unknown_stage = attempts()
    with get_client(sync_client=True) as client:
        run_counts = [
            client.read_task_run(state.state_details.task_run_id).run_count for state in (bad_params, unknown_stage)
        ]
    assert bad_params.is_failed() and unknown_stage.is_failed()
    assert unknown_stage.result(raise_on_failure=False).stage_exit_code is None
    assert run_counts == [1, 3]


@pytest.mark.slow
def test_flow_refuses_bad_params_before_running_a_stage(tmp_path, prefect_server):
    repo = with_params(copy_repo(tmp_path), **{"aggregation.brme_lambda": 7})
    with pytest.raises(Exception, match="aggregation.brme_lambda"):
        pipeline(repo=str(repo))
    assert not (repo / "data").exists()


def test_retry_delays_double():
    assert retry_delays(10, 3) == [10, 20, 40]
    assert retry_delays(5, 0) == []


@pytest.mark.slow
def test_a_stage_running_past_the_deadline_is_stopped(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path)
    # The stage blocks on a FIFO nobody writes (tests/flows/blocking_site): it cannot finish first, on any machine.
    fifo = tmp_path / "block"
    os.mkfifo(fifo)
    monkeypatch.setenv("ROBUST_RLHF_TEST_BLOCK", str(fifo))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent / "blocking_site"), os.environ.get("PYTHONPATH", "")])
    )
    started = time.time()
    with pytest.raises(FlowTimedOut, match="while stage prepare ran; it was stopped"):
        run_stage.fn("prepare", str(repo), deadline=started + 4)
    assert time.time() - started < 40  # stopped, not waited for
    assert not (repo / "data").exists()  # outputs are published only when a stage completes
    assert not [
        p
        for p in psutil.process_iter(["cmdline", "cwd"])
        if "stages.prepare" in " ".join(p.info["cmdline"] or []) and p.info["cwd"] == str(repo)
    ]  # the stage dvc ran is gone too


@pytest.mark.slow
def test_flow_timeout_from_params_fails_the_run_without_retries(tmp_path, prefect_server):
    repo = with_params(
        copy_repo(tmp_path), **{"orchestration.flow_timeout_minutes": 0.01, "orchestration.retry_delay_seconds": 0}
    )
    state = pipeline(repo=str(repo), methods=["single"], return_state=True)
    assert state.is_failed()
    with pytest.raises(FlowTimedOut, match="flow timeout reached"):
        state.result()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [(run.name, run.run_count) for run in task_runs] == [("prepare", 1)]


@pytest.mark.slow
def test_a_stage_found_up_to_date_loses_a_killed_runs_resume_state(tmp_path, prefect_server):
    # DVC restored the stage from its cache (or it finished): the state can never be resumed.
    repo = copy_repo(tmp_path)
    state = repo / resume_folder_of("train_reward") / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    result = run_stage.fn("train_reward", str(repo), up_to_date=True)
    assert result["skipped"] and not state.parent.exists()
