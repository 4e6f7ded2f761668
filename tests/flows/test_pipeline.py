"""The Prefect flow: task logic through `.fn()`, and whole flow runs under a test Prefect server."""

import math

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from flows.pipeline import StageFailed, _retry_unless_bad_params, flatten, pipeline, pipeline_stages, run_stage, \
    stage_metrics_paths
from tests.conftest import REPO, copy_repo, tiny_params


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("prefect_home")
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_stages_in_run_order():
    methods = list(tiny_params()["methods"])
    assert pipeline_stages(REPO) == ["prepare", "train_reward", *(f"ppo@{m}" for m in methods), "evaluate"]
    assert pipeline_stages(REPO, ["brme"]) == ["prepare", "train_reward", "ppo@brme", "evaluate"]
    with pytest.raises(ValueError, match="unknown methods"):
        pipeline_stages(REPO, ["nope"])


def test_metrics_paths_resolve_foreach_entries():
    assert stage_metrics_paths(REPO, "ppo@brme") == ["metrics/ppo/brme.json"]
    assert stage_metrics_paths(REPO, "prepare") == ["metrics/prepare.json"]
    assert set(stage_metrics_paths(REPO, "evaluate")) == {"metrics/eval.json", "metrics/eval"}


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}


class _State:
    def __init__(self, error):
        self.error = error

    def result(self, raise_on_failure=True):
        return self.error


def test_bad_params_are_not_retried_but_other_failures_are():
    assert not _retry_unless_bad_params(None, None, _State(StageFailed("prepare", 2, "bad key")))
    assert _retry_unless_bad_params(None, None, _State(StageFailed("prepare", 1, "killed")))
    assert _retry_unless_bad_params(None, None, _State(OSError("disk")))


def test_failing_stage_raises_with_its_exit_code(tmp_path, prefect_server):
    repo = copy_repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["label_noise"] = 0.9  # out of range: the stage refuses it with exit code 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(StageFailed, match="prepare.label_noise") as raised:
        run_stage.fn("prepare", str(repo))
    assert raised.value.stage_exit_code == 2


def test_flow_runs_every_stage_then_finds_them_up_to_date(tmp_path, prefect_server):
    repo = copy_repo(tmp_path)
    first = pipeline(repo=str(repo), methods=["single", "brme"])
    assert list(first) == ["prepare", "train_reward", "ppo@single", "ppo@brme", "evaluate"]
    assert not any(result["skipped"] for result in first.values())
    assert math.isfinite(first["evaluate"]["metrics"]["brme/gold"])
    assert first["ppo@brme"]["metrics"]["method"] == "brme"
    # evaluate covers the methods this run trained and names the ones it did not.
    assert {"single/gold", "brme/gold"} <= set(first["evaluate"]["metrics"])
    not_run = [k for k in first["evaluate"]["metrics"] if k.startswith("methods_not_run")]
    assert not_run == ["methods_not_run"]
    assert first["evaluate"]["metrics"]["methods_not_run"] == [m for m in tiny_params()["methods"]
                                                               if m not in ("single", "brme")]
    second = pipeline(repo=str(repo), methods=["single", "brme"])
    assert all(result["skipped"] for result in second.values())


def test_flow_refuses_bad_params_before_running_a_stage(tmp_path, prefect_server):
    repo = copy_repo(tmp_path)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("lambda: 0.5", "lambda: 7"))
    with pytest.raises(Exception, match="ppo.robust.lambda"):
        pipeline(repo=str(repo))
    assert not (repo / "data").exists()
