"""ppo with `launcher.num_gpus: 2`: the stage re-runs itself under the deepspeed launcher, two CPU ranks
over gloo, each rolling out its own prompts; rank 0 writes the outputs."""

import csv
import json

from tests.conftest import run_stage, tiny_params, write_params


def test_ppo_runs_data_parallel_on_two_cpu_processes(pipeline_run, tmp_path):
    params = write_params(
        tmp_path / "params.yaml", tiny_params(**{"launcher.num_gpus": 2, "ppo.steps": 2, "ppo.checkpoint_every": 1})
    )
    result = run_stage(
        "ppo",
        params,
        method="brme",
        seed="0",
        data=pipeline_run["data"],
        policy_init=pipeline_run["policy_init"],
        reward=pipeline_run["reward"],
        ensemble=pipeline_run["ensemble"],
        policy=tmp_path / "policy",
        steps=tmp_path / "steps.csv",
        metrics=tmp_path / "metrics.json",
        resume=tmp_path / ".policy.resume",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "launching stages.ppo on 2 processes" in output and "deepspeed.launcher.runner --num_gpus 2" in output
    rollout = tiny_params()["ppo"]["rollout_batch_size"]
    for rank in (0, 1):
        assert f"rank {rank}/2: {rollout} rollouts per step of the {2 * rollout}" in output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    with open(tmp_path / "steps.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [0, 1]
    assert (tmp_path / "policy").is_dir() and not (tmp_path / ".policy.resume").exists()
