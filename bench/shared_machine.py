"""A machine shared with other work: one stage (`prepare` on the default models, sizes cut as in the
pipeline benchmark's `default` profile, the policy read from the bench's de-quantised copy so that no run
spends ~20 s de-quantising the GGUF) alone and next to one CPU-bound competitor (`while True: pass`),
with libgomp's default spinning (GOMP_SPINCOUNT=300000, what torch's threads did before the stages set
their own) and with the stages' own settings (robust_rlhf/runtime/threads.py). A contested run that takes
longer than `timeout_factor` x its alone time is stopped, and its ratio reads as at least that."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.measure import run_measured

LIBGOMP_DEFAULT_SPIN = "300000"  # libgomp's GOMP_SPINCOUNT when OMP_WAIT_POLICY is unset
SETTINGS = {"libgomp default spin": {"GOMP_SPINCOUNT": LIBGOMP_DEFAULT_SPIN}, "stages' settings": {}}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def prepare_command() -> list[str]:
    return [
        sys.executable, "-m", "stages.prepare", "--params", "params.yaml", "--data", "bench_out/data",
        "--policy", "bench_out/policy", "--metrics", "bench_out/prepare.json",
    ]  # fmt: skip


def timed_prepare(repo: Path, env: dict[str, str], log: Path, timeout: float | None) -> float | None:
    """Wall seconds of one prepare from scratch (no outputs, no resume state), None when stopped."""
    for leftover in ("bench_out", ".resume"):
        shutil.rmtree(repo / leftover, ignore_errors=True)
    result = run_measured(prepare_command(), cwd=repo, env=env, log=log, timeout=timeout)
    if result.returncode and result.wall_seconds < (timeout or float("inf")):
        raise RuntimeError(f"prepare failed ({result.returncode}):\n{result.output_tail}")
    return None if result.returncode else result.wall_seconds


def contention_times(repo: Path, env: dict[str, str], logs: Path, timeout_factor: float = 2.5) -> dict[str, dict]:
    """Per setting: prepare's seconds alone and next to the competitor (None: stopped at the timeout)."""
    base = {key: value for key, value in env.items() if key not in THREAD_VARIABLES}
    times: dict[str, dict] = {}
    for name, variables in SETTINGS.items():
        setting_env = base | variables
        tag = name.split()[0].strip("'")
        alone = timed_prepare(repo, setting_env, logs / f"prepare_{tag}_alone.log", timeout=None)
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            contested = timed_prepare(
                repo, setting_env, logs / f"prepare_{tag}_contested.log", timeout=timeout_factor * alone
            )
        finally:
            competitor.kill()
            competitor.wait()
        times[name] = {"alone": alone, "contested": contested, "timeout_factor": timeout_factor}
        print(f"shared machine, {name}: alone {alone:.1f} s, contested {contested}", flush=True)
    return times


def slowdown(entry: dict) -> tuple[float, bool]:
    """(contested / alone, whether that is a lower bound because the contested run was stopped)."""
    if entry["contested"] is None:
        return entry["timeout_factor"], True
    return entry["contested"] / entry["alone"], False
