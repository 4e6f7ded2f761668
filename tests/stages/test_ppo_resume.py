"""A PPO stage killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted
run ends; a resume with changed params is refused; a NaN reward stops the stage naming the step and
keeps the last good checkpoint; the same params and seed give the same run twice."""

import csv
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from robust_rlhf.checkpoint import read_checkpoints
from tests.conftest import kill_after_checkpoint, run_stage, stage_command, tiny_params, write_params

STEPS, EVERY = 6, 2


def ppo_paths(pipeline_run, out, reward=None):
    return {"method": "brme", "seed": "0", "data": pipeline_run["data"], "policy_init": pipeline_run["policy_init"],
            "reward": reward or pipeline_run["reward"], "ensemble": pipeline_run["ensemble"],
            "policy": out / "policy", "steps": out / "steps.csv", "metrics": out / "metrics.json"}


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def kill_ppo(params, paths, at_least_step):
    return kill_after_checkpoint(stage_command("ppo", params, **paths),
                                 paths["policy"].with_name(".policy.resume") / "state.json", at_least_step)


@pytest.fixture(scope="module")
def uninterrupted(pipeline_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    params = write_params(out / "params.yaml", tiny_params(**{"ppo.steps": STEPS, "ppo.checkpoint_every": EVERY}))
    result = run_stage("ppo", params, **ppo_paths(pipeline_run, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return params, out


def test_same_params_and_seed_give_the_same_run(pipeline_run, uninterrupted, tmp_path):
    params, out = uninterrupted
    result = run_stage("ppo", params, **ppo_paths(pipeline_run, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(tmp_path / "steps.csv") == rows(out / "steps.csv")
    assert json.loads((tmp_path / "metrics.json").read_text())["final"] == \
        json.loads((out / "metrics.json").read_text())["final"]


def test_killed_run_resumes_and_ends_like_the_uninterrupted_one(pipeline_run, uninterrupted, tmp_path):
    params, out = uninterrupted
    paths = ppo_paths(pipeline_run, tmp_path)
    killed_at = kill_ppo(params, paths, at_least_step=EVERY)
    assert killed_at < STEPS and not paths["policy"].exists()  # nothing published for DVC to cache

    # changed params make the saved state invalid: refused, naming the key, state kept
    changed = write_params(tmp_path / "changed.yaml", tiny_params(**{"ppo.steps": STEPS, "ppo.checkpoint_every": EVERY,
                                                                     "ppo.learning_rate": 5e-4}))
    refused = run_stage("ppo", changed, **paths)
    assert refused.returncode == 2 and "changed: ppo.learning_rate" in refused.stderr
    assert (tmp_path / ".policy.resume/state.json").exists()

    resumed = run_stage("ppo", params, **paths)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming ppo@brme-0 from step {killed_at} of {STEPS}" in resumed.stderr
    assert [int(row["step"]) for row in rows(paths["steps"])] == list(range(STEPS))
    assert [c["step"] for c in read_checkpoints(paths["policy"])] == list(range(EVERY, STEPS + 1, EVERY))
    assert not (tmp_path / ".policy.resume").exists()
    # engines, optimizer states, RNGs and the normaliser all came back: the same run as without the kill
    assert rows(paths["steps"]) == rows(out / "steps.csv")
    final = read_checkpoints(paths["policy"])[-1]["path"]
    expected, got = (load_file(str(root / final / "model.safetensors")) for root in (out / "policy", paths["policy"]))
    assert all((expected[name] == got[name]).all() for name in expected)


def test_nan_reward_stops_naming_the_step_and_keeps_the_last_checkpoint(pipeline_run, uninterrupted, tmp_path):
    params, _ = uninterrupted
    paths = ppo_paths(pipeline_run, tmp_path)
    killed_at = kill_ppo(params, paths, at_least_step=EVERY)
    # The reward model goes bad between the kill and the resume: every reward is NaN.
    broken = tmp_path / "reward"
    shutil.copytree(pipeline_run["reward"], broken)
    weights = next(broken.rglob("*.safetensors"))
    tensors = load_file(str(weights))
    save_file({name: tensor.float().fill_(float("nan")).to(tensor.dtype) if tensor.is_floating_point() else tensor
               for name, tensor in tensors.items()}, str(weights))
    result = run_stage("ppo", params, **{**paths, "reward": broken})
    assert result.returncode != 0
    assert f"reward_model/brme/mu is not finite at step {killed_at}" in result.stderr
    state = json.loads((tmp_path / ".policy.resume/state.json").read_text())
    assert state["step"] == killed_at and not paths["policy"].exists()


def test_a_shared_value_head_run_resumes_like_the_uninterrupted_one(pipeline_run, tmp_path):
    # one engine (actor + value head) instead of two: its checkpoint must bring the head back too
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"ppo.steps": STEPS, "ppo.checkpoint_every": EVERY,
                                                                   "ppo.value_model": "shared"}))
    (tmp_path / "full").mkdir()
    (tmp_path / "killed").mkdir()
    full = ppo_paths(pipeline_run, tmp_path / "full")
    assert (result := run_stage("ppo", params, **full)).returncode == 0, result.stderr[-3000:]
    paths = ppo_paths(pipeline_run, tmp_path / "killed")
    killed_at = kill_ppo(params, paths, at_least_step=EVERY)
    assert killed_at < STEPS and not paths["policy"].exists()
    resumed = run_stage("ppo", params, **paths)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming ppo@brme-0 from step {killed_at} of {STEPS}" in resumed.stderr
    assert rows(paths["steps"]) == rows(full["steps"])  # values, value loss and rewards included
    final = read_checkpoints(paths["policy"])[-1]["path"]
    expected, got = (load_file(str(root / final / "model.safetensors")) for root in (full["policy"], paths["policy"]))
    assert all((expected[name] == got[name]).all() for name in expected)
