"""End to end through a real Prefect server, as a user runs it: `prefect server start` on a free loopback
port in a temp PREFECT_HOME, a process work pool with a worker, the pipeline deployed on it by
`python -m flows.serve --work-pool`, a run of the tiny profile triggered through the API, its task
runs and artifacts read back through the API; then `python -m flows.serve` serving the deployments
with the params' schedule. Every process it starts is stopped at the end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from robust_rlhf.runtime.launcher import free_port
from tests.conftest import copy_repo, tiny_params

BIN = Path(sys.executable).parent
STAGES = ["prepare", "train_reward", "ppo@brme-0", "evaluate", "report"]


def wait_until(condition, timeout: float, what: str, interval: float = 1.0, log: Path | None = None):
    """`condition()`'s first truthy value within `timeout` s; else fail, with the tail of `log` (a worker's or
    server's output) so that a hang names where it hung."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    tail = f":\n{log.read_text(errors='replace')[-5000:]}" if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def prefect_api(tmp_path):
    """A `prefect server start` of our own; yields (api url, env for processes that talk to it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect_home"),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DS_ACCELERATOR="cpu",
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    )
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes = [server]
    try:
        wait_until(
            lambda: healthy(url) or server.poll() is not None, 180, "the Prefect server", log=tmp_path / "server.log"
        )
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        yield url, env, processes
    finally:
        for process in reversed(processes):
            stop(process)
        log.close()


def test_deployed_pipeline_runs_on_a_work_pool_worker_and_serves_with_its_schedule(tmp_path, prefect_api):
    url, env, processes = prefect_api
    (tmp_path / "repo").mkdir()
    repo = copy_repo(tmp_path / "repo")

    def cli(*args: str) -> str:
        result = subprocess.run(list(args), env=env, cwd=repo, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    cli(str(BIN / "prefect"), "work-pool", "create", "tiny-pool", "--type", "process")
    out = cli(
        sys.executable,
        "-m",
        "flows.serve",
        "--repo",
        str(repo),
        "--work-pool",
        "tiny-pool",
        "--no-schedule",
        "--methods",
        "brme",
    )
    assert "deployed robust-rlhf-pipeline/pipeline on work pool tiny-pool" in out
    worker_log = open(tmp_path / "worker.log", "w")
    processes.append(
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "tiny-pool", "--limit", "1"],
            env=env,
            cwd=repo,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )

    def run_through_the_api():
        """Trigger the deployment, wait for the worker to finish it; its task runs and artifacts."""
        with temporary_settings({PREFECT_API_URL: url}):
            flow_run = run_deployment("robust-rlhf-pipeline/pipeline", timeout=0)
            with get_client(sync_client=True) as client:
                final = wait_until(
                    lambda: (run := client.read_flow_run(flow_run.id)).state.is_final() and run,
                    900,
                    "the flow run",
                    interval=2,
                )
                assert final.state.is_completed(), (tmp_path / "worker.log").read_text()[-5000:]
                task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
                )
        assert sorted(run.name for run in task_runs) == sorted(STAGES)
        assert all(run.state.is_completed() for run in task_runs)
        return {artifact.key: artifact for artifact in artifacts}

    by_key = run_through_the_api()
    assert {
        "prepare-metrics",
        "train-reward-metrics",
        "ppo-brme-0-metrics",
        "evaluate-metrics",
        "report-metrics",
        "robust-rlhf-report",
        "reward-hacking-warnings",
    } == set(by_key)
    assert "| brme-seed0 |" in by_key["reward-hacking-warnings"].data  # the ppo run's monitor warnings
    assert not any("up to date" in by_key[key].description for key in by_key if key.endswith("-metrics"))
    # a stage's table artifact is its metrics, flattened; evaluate's holds both its metrics file and folder
    evaluated = json.loads((repo / "metrics/eval.json").read_text())
    per_method = json.loads((repo / "metrics/eval/brme.json").read_text())
    rows = by_key["evaluate-metrics"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {"metric": "brme/gold", "value": per_method["gold"]} in rows
    assert {"metric": "initial/gold", "value": evaluated["initial"]["gold"]} in rows
    assert math.isfinite(per_method["gold"])
    # evaluate covers the method this run trained and names the ones it did not
    assert evaluated["runs_not_evaluated"] == [f"{m}-seed0" for m in tiny_params()["methods"] if m != "brme"]
    # the markdown artifact links the report and holds the method's headline row
    assert by_key["robust-rlhf-report"].type == "markdown"
    assert (repo / "reports/report.html").resolve().as_uri() in by_key["robust-rlhf-report"].data
    assert f"| brme | {per_method['gold']:.3f} |" in by_key["robust-rlhf-report"].data
    assert (repo / "reports/report.html").exists()

    # A second run: DVC finds every stage up to date, so each task finishes at once and says so.
    again = run_through_the_api()
    assert all("(up to date, not re-run)" in again[key].description for key in again if key.endswith("-metrics"))
    assert json.loads((repo / "metrics/eval.json").read_text()) == evaluated

    # Served from this machine: the pipeline on params' cron, the sweep on demand.
    serve_log = open(tmp_path / "serve.log", "w")
    processes.append(
        subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--repo", str(repo)],
            env=env,
            cwd=repo,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    with temporary_settings({PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:

            def served():
                # the serve process re-registers both deployments, the pipeline now with a schedule
                try:
                    pipeline = client.read_deployment_by_name("robust-rlhf-pipeline/pipeline")
                    sweep = client.read_deployment_by_name("robust-rlhf-sweep/sweep")
                except ObjectNotFound:
                    return None
                return (pipeline, sweep) if pipeline.schedules else None

            pipeline, sweep = wait_until(served, 120, "the served deployments", interval=2, log=tmp_path / "serve.log")
    assert [schedule.schedule.cron for schedule in pipeline.schedules] == ["0 3 * * *"]
    assert pipeline.parameters == {"repo": str(repo), "methods": None}
    assert sweep.schedules == []
