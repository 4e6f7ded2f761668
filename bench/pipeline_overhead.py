"""Pipeline overhead and memory on the tiny profile, in a temp copy of the repo (as the end-to-end
tests do: `dvc repro` rewrites dvc.lock, metrics and plots): each stage's wall time and peak RSS,
then a fully cached `dvc repro` and the Prefect flow over the cached stages."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import yaml

from bench.measure import Measured, run_measured

# `default`: the default profile's models (SmolLM2-135M, MiniLM) with every size cut, so that each
# stage's peak memory is that of the default models in a few minutes instead of the 37-minute run.
DEFAULT_MODELS_SMALL = {
    "prepare": {
        "num_train_pairs": 16,
        "num_val_pairs": 8,
        "num_test_pairs": 8,
        "num_ppo_prompts": 8,
        "num_eval_prompts": 4,
        "max_new_tokens": 16,
        "num_shift_samples": 16,
    },
    "train_reward": {"ensemble_size": 2, "stage1": {"epochs": 1}, "stage2": {"epochs": 1}},
    "ppo": {"steps": 1, "checkpoint_every": 1, "max_new_tokens": 16},
    "evaluate": {"samples_per_prompt": 1, "max_new_tokens": 16, "best_of_n": 2},
}


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied section by section (nested dicts merge, values replace)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def bench_repo(destination: Path, profile: str, methods: list[str], *, policy: str | None = None) -> Path:
    """A temp copy of this checkout whose params.yaml is the `tiny` profile or the default models
    cut small (`default`), with only `methods`; `policy`: another models.policy (e.g. the bench's
    de-quantised copy of the default one, so prepare does not de-quantise the GGUF again)."""
    from bench.checkout import REPO, copy_checkout

    repo = copy_checkout(destination, REPO / "profiles" / "tiny.yaml")
    if profile == "default":
        default = yaml.safe_load((REPO / "params.yaml").read_text())
        (repo / "params.yaml").write_text(yaml.safe_dump(merged(default, DEFAULT_MODELS_SMALL), sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["methods"] = {name: params["methods"][name] for name in methods}
    if policy is not None:
        params["models"]["policy"] = policy
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def run_stages(repo: Path, env: dict[str, str], logs: Path) -> dict[str, Measured]:
    """`dvc repro -s <stage>` for every stage in run order, each measured on its own."""
    from flows.pipeline import dvc_executable, pipeline_stages

    measured = {}
    for stage in pipeline_stages(repo):
        result = run_measured(
            [dvc_executable(), "repro", "-s", stage], cwd=repo, env=env, log=logs / f"{stage.replace('@', '_')}.log"
        )
        if result.returncode:
            raise RuntimeError(f"dvc repro -s {stage} failed ({result.returncode}):\n{result.output_tail}")
        measured[stage] = result
    return measured


def cached_repro_seconds(repo: Path, env: dict[str, str], repeats: int = 3) -> float:
    """Median wall time of a `dvc repro` with every stage up to date."""
    from flows.pipeline import dvc_executable

    times = [run_measured([dvc_executable(), "repro"], cwd=repo, env=env).wall_seconds for _ in range(repeats)]
    return statistics.median(times)


def flow_seconds(repo: Path, env: dict[str, str], logs: Path) -> tuple[float, float]:
    """(the flow run over cached stages against a running Prefect server, the whole
    `python -m flows.pipeline` command, which also starts Prefect's ephemeral server)."""
    in_server = run_measured(
        [sys.executable, "-m", "bench.flow_run", "--repo", str(repo)],
        cwd=Path.cwd(),
        env=env,
        log=logs / "flow_run.log",
    )
    if in_server.returncode:
        raise RuntimeError(f"flow run failed:\n{in_server.output_tail}")
    flow_run = float(in_server.output_tail.strip().splitlines()[-1].split()[-1])
    cli = run_measured(
        [sys.executable, "-m", "flows.pipeline", "--repo", str(repo)],
        cwd=Path.cwd(),
        env=env,
        log=logs / "flow_cli.log",
    )
    if cli.returncode:
        raise RuntimeError(f"python -m flows.pipeline failed:\n{cli.output_tail}")
    return flow_run, cli.wall_seconds


def bench_env(prefect_home: Path) -> dict[str, str]:
    """The environment the flow gives its stages (this venv's bin first on PATH, so dvc.yaml's
    `python` is this interpreter), with a throwaway PREFECT_HOME and no telemetry."""
    from flows.pipeline import stage_environment

    return stage_environment() | {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
