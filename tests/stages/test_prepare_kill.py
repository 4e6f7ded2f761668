"""prepare killed with SIGKILL mid-run leaves no output for DVC to cache and starts over cleanly; a
token in the environment reaches no output or log."""

import hashlib
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, tiny_params, write_params

SECRET = "hf_SENTINELtoken0123456789"


def prepare_command(tmp_path, params):
    return [
        sys.executable,
        "-m",
        "stages.prepare",
        "--params",
        str(params),
        "--data",
        str(tmp_path / "data"),
        "--policy",
        str(tmp_path / "policy"),
        "--metrics",
        str(tmp_path / "prepare.json"),
    ]


def tree_digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_prepare_killed_midway_leaves_nothing_and_reruns_cleanly(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    env = dict(os.environ, HF_TOKEN=SECRET, HUGGING_FACE_HUB_TOKEN=SECRET)
    killed = subprocess.Popen(
        prepare_command(tmp_path, params),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # kill once the policy is published and the pairs are being sampled
    deadline = time.time() + 300
    while not (tmp_path / "policy").exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert killed.poll() is None, "prepare finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "data").exists() and not (tmp_path / "prepare.json").exists()

    rerun = subprocess.run(prepare_command(tmp_path, params), cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]
    first = tree_digest(tmp_path / "data")

    # the same as a run that was never interrupted
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    subprocess.run(prepare_command(fresh, params), cwd=REPO, env=env, check=True, capture_output=True)
    assert tree_digest(fresh / "data") == first

    # no token in any output, metric or log line
    logs = rerun.stdout + rerun.stderr
    assert SECRET not in logs
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
