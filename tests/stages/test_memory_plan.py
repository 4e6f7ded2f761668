"""The memory-plan command, and prepare/ppo refusing at start a run that cannot fit a device."""

import subprocess
import sys

from tests.conftest import REPO, TINY_PROFILE, run_stage, tiny_params, write_params


def memory_plan(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stages.memory_plan", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_plan_prints_every_stage_and_exits_2_when_one_does_not_fit():
    fits = memory_plan("--params", str(TINY_PROFILE), "--device-memory-gib", "80")
    assert fits.returncode == 0, fits.stderr
    for stage in ("prepare", "train_reward", "ppo", "evaluate"):
        assert stage in fits.stdout
    unchecked = memory_plan("--params", str(TINY_PROFILE))
    assert unchecked.returncode == 0 and "no check" in unchecked.stdout
    short = memory_plan("--params", str(REPO / "params.yaml"), "--device-memory-gib", "2", "--devices", "2")
    assert short.returncode == 2 and "short by" in short.stdout


def test_prepare_and_ppo_refuse_before_loading_any_model(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"launcher.device_memory_gib": 0.0001}))
    missing = tmp_path / "absent"  # never read: the check comes first, so no load fails on it
    prepare = run_stage(
        "prepare", params, data=tmp_path / "data", policy=tmp_path / "policy", metrics=tmp_path / "m.json"
    )
    assert prepare.returncode == 2 and "prepare needs ~" in prepare.stderr and "short by" in prepare.stderr
    assert not (tmp_path / "policy").exists()
    ppo = run_stage(
        "ppo", params, method="brme", seed=0, data=missing, policy_init=missing, reward=missing, ensemble=missing,
        policy=tmp_path / "policy", steps=tmp_path / "steps.csv", metrics=tmp_path / "m.json", resume=tmp_path / "r",
    )  # fmt: skip
    assert ppo.returncode == 2 and "ppo needs ~" in ppo.stderr and "short by" in ppo.stderr, ppo.stderr
