"""A PPO stage killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted
run ends; a state from another run (an upstream reward model changed) is discarded and the run equals
a clean one; a NaN reward and every divergence guard stop the stage with exit 2 naming the step, and
keep the last good checkpoint; the same params and seed give the same run twice."""

import csv
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from robust_rlhf.runtime.checkpoint import read_checkpoints
from tests.conftest import kill_after_checkpoint, run_stage, stage_command, tiny_params, write_params

STEPS, EVERY = 6, 2


def ppo_paths(pipeline_run, out, reward=None):
    return {
        "method": "brme",
        "seed": "0",
        "data": pipeline_run["data"],
        "policy_init": pipeline_run["policy_init"],
        "reward": reward or pipeline_run["reward"],
        "ensemble": pipeline_run["ensemble"],
        "policy": out / "policy",
        "steps": out / "steps.csv",
        "metrics": out / "metrics.json",
        "resume": out / ".policy.resume",
        "live": out / "live",
    }


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def kill_ppo(params, paths, at_least_step):
    return kill_after_checkpoint(stage_command("ppo", params, **paths), paths["resume"] / "state.json", at_least_step)


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
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["final"]
        == json.loads((out / "metrics.json").read_text())["final"]
    )


def test_killed_run_resumes_and_ends_like_the_uninterrupted_one(pipeline_run, uninterrupted, tmp_path):
    params, out = uninterrupted
    paths = ppo_paths(pipeline_run, tmp_path)
    killed_at = kill_ppo(params, paths, at_least_step=EVERY)
    assert killed_at < STEPS and not paths["policy"].exists()  # nothing published for DVC to cache

    resumed = run_stage("ppo", params, **paths)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming ppo@brme-0 from step {killed_at} of {STEPS}" in resumed.stderr
    assert [int(row["step"]) for row in rows(paths["steps"])] == list(range(STEPS))
    assert [c["step"] for c in read_checkpoints(paths["policy"])] == list(range(EVERY, STEPS + 1, EVERY))
    assert not paths["resume"].exists()
    # engines, optimizer states, RNGs and the normaliser all came back: the same run as without the kill
    assert rows(paths["steps"]) == rows(out / "steps.csv")
    # DVCLive's summary ends on the last step, as without the kill, whatever step the killed process reached
    assert (paths["live"] / "metrics.json").read_text() == (out / "live" / "metrics.json").read_text()
    assert json.loads((out / "live" / "metrics.json").read_text())["step"] == STEPS - 1
    final = read_checkpoints(paths["policy"])[-1]["path"]
    expected, got = (load_file(str(root / final / "model.safetensors")) for root in (out / "policy", paths["policy"]))
    assert all((expected[name] == got[name]).all() for name in expected)


def changed_reward(pipeline_run, folder, change):
    """A copy of the session's BRME with `change` applied to every floating tensor of its weights."""
    shutil.copytree(pipeline_run["reward"], folder)
    weights = next(folder.rglob("*.safetensors"))
    tensors = load_file(str(weights))
    save_file(
        {
            name: change(tensor.float()).to(tensor.dtype) if tensor.is_floating_point() else tensor
            for name, tensor in tensors.items()
        },
        str(weights),
    )
    return folder


def final_weights(policy):
    return load_file(str(policy / read_checkpoints(policy)[-1]["path"] / "model.safetensors"))


def test_an_upstream_change_discards_the_state_and_the_run_equals_a_clean_one(pipeline_run, uninterrupted, tmp_path):
    params, _ = uninterrupted
    paths = ppo_paths(pipeline_run, tmp_path)
    killed_at = kill_ppo(params, paths, at_least_step=EVERY)
    # train_reward re-ran between the kill and the re-run: another reward model under the same path
    retrained = changed_reward(pipeline_run, tmp_path / "retrained", lambda tensor: tensor * 1.5)
    rerun = run_stage("ppo", params, **{**paths, "reward": retrained})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (
        f"discarding the resume state in {paths['resume']} (step {killed_at}): it is from another run "
        f"(changed: inputs.reward); starting over"
    ) in rerun.stderr
    assert "resuming" not in rerun.stderr
    clean = ppo_paths(pipeline_run, tmp_path / "clean", reward=retrained)
    (tmp_path / "clean").mkdir()
    assert run_stage("ppo", params, **clean).returncode == 0
    assert rows(paths["steps"]) == rows(clean["steps"])
    expected, got = final_weights(clean["policy"]), final_weights(paths["policy"])
    assert all((expected[name] == got[name]).all() for name in expected)


def test_nan_reward_stops_with_exit_2_naming_the_step(pipeline_run, uninterrupted, tmp_path):
    params, _ = uninterrupted
    broken = changed_reward(pipeline_run, tmp_path / "reward", lambda tensor: tensor.fill_(float("nan")))
    paths = ppo_paths(pipeline_run, tmp_path, reward=broken)
    result = run_stage("ppo", params, **paths)
    assert result.returncode == 2, result.stderr[-3000:]  # the flow does not retry what fails alike every time
    assert "stage ppo: ppo: reward_model/brme/mu is not finite at step 0" in result.stderr
    assert "Traceback" not in result.stderr and not paths["policy"].exists()


# Each guard, pushed to fire: (param overrides, the step it fires at, what the message names). Step 0's
# rollout comes from the initial policy itself, so its KL is exactly 0 and max_kl fires at step 1.
GUARDS = [
    ({"ppo.guards.max_kl": 1e-9}, 1, "the KL to the reference is"),
    ({"ppo.guards.min_entropy": 100.0}, 0, "the policy's entropy collapsed to"),
    ({"ppo.guards.max_weight_norm_ratio": 1.0 + 1e-12}, 0, "the weights' norm is"),
    ({"ppo.learning_rate": 1.0}, 0, "the weights"),  # the largest the params allow: Adam moves every weight by ~1
    # A reward-hacking warning stops through the same path: step 1's KL slope is > 0 (step 0's KL is 0).
    (
        {"ppo.monitor.stop_on_warning": True, "ppo.monitor.thresholds.kl_growth": 1e-9},
        1,
        "reward-hacking warning at step 1: kl_growth",
    ),
]


@pytest.mark.parametrize(
    "overrides, step, named", GUARDS, ids=["kl", "entropy", "weight_norm", "lr_1", "monitor_warning"]
)
def test_a_divergence_guard_stops_the_run_and_keeps_the_last_good_checkpoint(
    pipeline_run, tmp_path, overrides, step, named
):
    params = write_params(
        tmp_path / "params.yaml",
        tiny_params(**{"ppo.steps": STEPS, "ppo.checkpoint_every": 1, "ppo.resume_every": 1, **overrides}),
    )
    paths = ppo_paths(pipeline_run, tmp_path)
    result = run_stage("ppo", params, **paths)
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if line.startswith("stage ppo: "))
    assert f"ppo@brme-0: {named}" in line and f"step {step}" in line and "Traceback" not in result.stderr
    assert not paths["policy"].exists()  # nothing published
    kept = read_checkpoints(paths["resume"] / "policy") if step else []
    assert [c["step"] for c in kept] == list(range(1, step + 1))  # every step before the diverged one
    for checkpoint in kept:
        weights = load_file(str(paths["resume"] / "policy" / checkpoint["path"] / "model.safetensors"))
        assert all(tensor.isfinite().all() for tensor in weights.values())
    if "reward-hacking" in named:  # the warnings JSON names the signal, where the run stopped
        fired = json.loads((paths["resume"] / "policy" / "monitor.json").read_text())["fired"]
        assert list(fired) == ["kl_growth"] and fired["kl_growth"]["step"] == step


def test_a_shared_value_head_run_resumes_like_the_uninterrupted_one(pipeline_run, tmp_path):
    # one engine (actor + value head) instead of two: its checkpoint must bring the head back too
    params = write_params(
        tmp_path / "params.yaml",
        tiny_params(**{"ppo.steps": STEPS, "ppo.checkpoint_every": EVERY, "ppo.value_model": "shared"}),
    )
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
