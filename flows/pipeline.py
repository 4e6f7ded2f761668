"""The DVC pipeline as a Prefect flow: one task run per DVC stage, in dependency order.

    python -m flows.pipeline [--repo .] [--methods brme,single]

Each task runs `dvc repro -s <stage>` in a subprocess, so DVC alone decides what is up to date (no
second cache that could go stale), streams the stage's output into the Prefect log, and publishes
the stage's metrics as a table artifact. Without PREFECT_API_URL, Prefect starts an ephemeral
server for the run; with it set (e.g. http://127.0.0.1:4200/api after `prefect server start`), the
run shows in that server's UI. Flows only orchestrate: no training logic lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path

import psutil
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from robust_rlhf.config import load_params, resume_folder_of
from robust_rlhf.runtime.live import LIVE_ROOT

PARAMS_ERROR_EXIT_CODE = 2  # what a stage exits with when params.yaml is invalid (stages/cli.py)


class FlowTimedOut(RuntimeError):
    """The flow ran past `orchestration.flow_timeout_minutes`; the stage running then was stopped."""


class StageFailed(RuntimeError):
    """`dvc repro -s <stage>` failed; `stage_exit_code` is the stage command's own exit code, None when
    DVC failed before or around it (a lock held, an unknown stage)."""

    def __init__(self, stage: str, dvc_exit_code: int, stage_exit_code: int | None, tail: str) -> None:
        super().__init__(
            f"stage {stage} failed: dvc repro exited with {dvc_exit_code}, the stage command "
            f"with {stage_exit_code}; last output lines:\n{tail}"
        )
        self.stage, self.dvc_exit_code, self.stage_exit_code = stage, dvc_exit_code, stage_exit_code


def dvc_executable() -> str:
    """The `dvc` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def stage_environment() -> dict[str, str]:
    """This process's environment with this Python's bin first on PATH, so the `python -m stages.x` in
    dvc.yaml is the interpreter running the flow even when the venv is not activated; unbuffered, so
    the stage's prints reach the log as they happen."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return env


def pipeline_stages(repo: Path, methods: list[str] | None = None) -> list[str]:
    """Stage names in run order: prepare, train_reward, ppo@<method>-<seed> for each method and PPO
    seed, evaluate, report."""
    params = load_params(repo / "params.yaml")
    chosen = list(params.methods) if methods is None else methods
    unknown = sorted(set(chosen) - set(params.methods))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; params.yaml has {sorted(params.methods)}")
    return [
        "prepare",
        "train_reward",
        *(f"ppo@{method}-{seed}" for method in chosen for seed in params.ppo_seeds),
        "evaluate",
        "report",
    ]


def stage_metrics_paths(repo: Path, stage: str) -> list[str]:
    """The metrics files `dvc.yaml` declares for `stage`; for a matrix entry `ppo@<method>-<seed>`,
    with ${item.method} and ${item.seed} resolved. DVCLive's summaries are left out: they repeat the
    stage's step log for `dvc exp show` mid-run, and the flow publishes each number once."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    group, _, key = stage.partition("@")
    definition = stages[group]
    method, _, seed = key.rpartition("-")
    paths = []
    for entry in definition.get("metrics", []):
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        if Path(path).parts[0] == LIVE_ROOT:
            continue
        paths.append(path.replace("${item.method}", method).replace("${item.seed}", seed))
    return paths


def flatten(metrics: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a/b': 1}."""
    flat: dict[str, object] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def read_stage_metrics(repo: Path, stage: str) -> dict[str, object]:
    """Every metric the stage wrote, flattened; a metrics folder contributes one prefix per file."""
    metrics: dict[str, object] = {}
    for relative in stage_metrics_paths(repo, stage):
        path = repo / relative
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            prefix = f"{file.stem}/" if path.is_dir() else ""
            metrics.update(flatten(json.loads(file.read_text()), prefix))
    return metrics


def stages_up_to_date(repo: Path, stages: list[str], timeout_seconds: float = 120) -> set[str]:
    """Those of `stages` that `dvc status` finds up to date (deps, params and outs as dvc.lock records them), asked
    once for the whole pipeline: one DVC start instead of one per stage. Empty when dvc status fails,
    so every stage then goes through `dvc repro -s` and DVC reports the problem there."""
    try:
        result = subprocess.run(
            [dvc_executable(), "status", "--json"],
            cwd=repo,
            env=stage_environment(),
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
        )
        changed = json.loads(result.stdout or "null") if result.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        changed = None
    if not isinstance(changed, dict):
        return set()
    return set(stages) - set(changed)


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures; a stage that rejected params.yaml or its input data fails the same
    way every time, and a flow past its timeout has no time left."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, FlowTimedOut):
        return False
    return not (isinstance(error, StageFailed) and error.stage_exit_code == PARAMS_ERROR_EXIT_CODE)


def retry_delays(first_delay_seconds: float, retries: int) -> list[float]:
    """Exponential backoff: first, 2 x first, 4 x first, ... (Prefect adds the jitter)."""
    return [first_delay_seconds * 2**attempt for attempt in range(retries)]


def _stop_process_tree(process: subprocess.Popen, grace_seconds: float = 30) -> None:
    """SIGTERM dvc and everything it started (the stage, its ranks), SIGKILL what is left after a
    grace period. dvc stays in the flow's process group, so a worker that cancels the flow run
    stops the stage too."""
    try:
        parent = psutil.Process(process.pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace_seconds)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


def run_logger():
    """The Prefect run's logger; a module logger when a task is called as `.fn(...)` outside a flow
    (tests, benchmarks)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(
    task_run_name="{stage}",
    retries=2,
    retry_delay_seconds=retry_delays(10, 2),
    retry_jitter_factor=0.2,
    retry_condition_fn=_retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def run_stage(stage: str, repo: str, deadline: float | None = None, up_to_date: bool = False) -> dict:
    """`dvc repro -s <stage>` in `repo`, its output streamed to the run log. Returns
    {"stage", "skipped" (DVC found it up to date), "metrics"}; raises StageFailed on failure and
    FlowTimedOut when `deadline` (a time.time() value) passes while it runs. `up_to_date`: the flow's
    `dvc status` already found the stage up to date, and no stage before it ran since, so no
    `dvc repro` is started for it."""
    logger = run_logger()
    if deadline is not None and time.time() >= deadline:
        raise FlowTimedOut(f"flow timeout reached before stage {stage} started")
    if up_to_date:
        logger.info("Stage '%s' didn't change (dvc status), skipping", stage)
        shutil.rmtree(Path(repo) / resume_folder_of(stage), ignore_errors=True)
        return _published(stage, repo, skipped=True)
    command = [dvc_executable(), "repro", "-s", stage]
    logger.info("running %s", " ".join(command))
    tail: deque[str] = deque(maxlen=40)
    skipped = False  # DVC found the stage up to date (or restored it from its run cache)
    with subprocess.Popen(
        command,
        cwd=repo,
        env=stage_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        watchdog, timed_out = None, threading.Event()

        def stop_at_deadline() -> None:
            timed_out.set()
            _stop_process_tree(process)

        if deadline is not None:
            watchdog = threading.Timer(max(0.0, deadline - time.time()), stop_at_deadline)
            watchdog.daemon = True
            watchdog.start()
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                logger.info(line)
                skipped |= line.startswith((f"Stage '{stage}' didn't change", f"Stage '{stage}' is cached"))
        process.wait()
        if watchdog is not None:
            watchdog.cancel()
    output = "\n".join(tail)
    # Decided by the watchdog, not the exit code: dvc may exit 0 after forwarding SIGTERM to the stage.
    if timed_out.is_set():
        raise FlowTimedOut(
            f"flow timeout reached while stage {stage} ran; it was stopped (its outputs are "
            f"written atomically, a re-run resumes or starts it over)"
        )
    if process.returncode != 0:
        # DVC reports "failed to reproduce '<stage>': failed to run: <cmd>, exited with <code>"; the
        # last such line is DVC's, earlier ones could be the stage's own output.
        exited = re.findall(r"exited with (-?\d+)", output)
        raise StageFailed(stage, process.returncode, int(exited[-1]) if exited else None, output)
    # Up to date now, by a run or restored from DVC's run cache: a killed run's state is of no use.
    shutil.rmtree(Path(repo) / resume_folder_of(stage), ignore_errors=True)
    return _published(stage, repo, skipped=skipped)


def _published(stage: str, repo: str, *, skipped: bool) -> dict:
    """The stage's metrics as a table artifact, and the task's result."""
    metrics = read_stage_metrics(Path(repo), stage)
    create_table_artifact(
        key=re.sub(r"[^a-z0-9-]", "-", f"{stage}-metrics".lower()),
        table=[{"metric": name, "value": value} for name, value in metrics.items()],
        description=f"Metrics of DVC stage `{stage}`" + (" (up to date, not re-run)" if skipped else ""),
    )
    return {"stage": stage, "skipped": skipped, "metrics": metrics}


def _flow_run_name() -> str:
    return f"robust-rlhf-{datetime.now():%Y%m%d-%H%M%S}"


def report_markdown(repo: Path) -> str:
    """A markdown artifact for the UI: where the HTML report is and the headline table of the study."""
    report = (repo / "reports" / "report.html").resolve()
    lines = [
        "# robust-rlhf report",
        "",
        f"The full report (plots, samples, reward-model metrics): [{report}]({report.as_uri()})",
        "",
    ]
    table = sorted((repo / "metrics" / "eval").glob("*.json"))
    if table:
        lines += [
            "| method | gold | gold gain | win rate | proxy gain | sqrt KL | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for path in table:
            row = json.loads(path.read_text())
            cells = [row.get(key) for key in ("gold", "gold_gain", "win_rate", "proxy_gain", "sqrt_kl")]
            lines.append(
                f"| {path.stem} | "
                + " | ".join("-" if v is None else f"{v:.3f}" for v in cells)
                + f" | {row.get('seeds', '-')} |"
            )
    return "\n".join(lines)


def warnings_markdown(repo: Path) -> str | None:
    """The PPO runs' reward-hacking warnings as a markdown table, read from the `monitor.json` each
    ppo stage wrote beside its checkpoints (published runs, and runs a warning stopped, still in their
    resume folder). None when no run wrote one."""
    files = sorted((repo / "models" / "policy").glob("*/monitor.json"))
    stopped = sorted((repo / ".resume").glob("ppo@*/policy/monitor.json"))
    if not files and not stopped:
        return None
    lines = [
        "# Reward-hacking early warnings",
        "",
        "| run | signal | step | value | threshold |",
        "|---|---|---|---|---|",
    ]
    for path, run in [
        *((f, f.parent.name) for f in files),
        *((f, f"{f.parent.parent.name} (stopped)") for f in stopped),
    ]:
        fired = json.loads(path.read_text()).get("fired", {})
        for signal, warning in fired.items():
            lines.append(
                f"| {run} | {signal} | {warning['step']} | {warning['value']:.4g} | {warning['threshold']:g} |"
            )
        if not fired:
            lines.append(f"| {run} | none fired | - | - | - |")
    return "\n".join(lines)


@flow(name="robust-rlhf-pipeline", flow_run_name=_flow_run_name)
def pipeline(repo: str = ".", methods: list[str] | None = None) -> dict[str, dict]:
    """prepare -> train_reward -> ppo@<method>-<seed>... -> evaluate -> report, one task each, each
    after the last.

    params.yaml is validated first, so a bad value fails the flow at once, before any stage runs. Its
    `orchestration:` section sets the retries (exponential backoff with jitter) and the flow's
    timeout; the last task publishes a markdown artifact linking the HTML report.
    """
    stages = pipeline_stages(Path(repo), methods)
    orchestration = load_params(Path(repo) / "params.yaml").orchestration
    deadline = (
        None if orchestration.flow_timeout_minutes is None else time.time() + 60 * orchestration.flow_timeout_minutes
    )
    stage_task = run_stage.with_options(
        retries=orchestration.task_retries,
        retry_delay_seconds=retry_delays(orchestration.retry_delay_seconds, orchestration.task_retries) or 0,
    )
    # One `dvc status` up front: a stage it found up to date needs no `dvc repro` of its own, until a stage
    # before it goes through `dvc repro` (which may run it or restore it from the run cache, changing a later
    # stage's deps); from then on DVC is asked stage by stage.
    up_to_date = stages_up_to_date(Path(repo), stages)
    results, ask_dvc = {}, False
    try:
        for stage in stages:
            known_up_to_date = stage in up_to_date and not ask_dvc
            results[stage] = stage_task(stage, repo, deadline, up_to_date=known_up_to_date)
            ask_dvc |= not known_up_to_date
    finally:  # a run stopped by its warning fails the flow: its warnings are what the UI must show
        warnings = warnings_markdown(Path(repo))
        if warnings is not None and any(stage.startswith("ppo@") for stage in stages):
            create_markdown_artifact(
                key="reward-hacking-warnings",
                markdown=warnings,
                description="Reward-hacking early warnings of the PPO runs (ppo.monitor)",
            )
    if "report" in results:
        create_markdown_artifact(
            key="robust-rlhf-report",
            markdown=report_markdown(Path(repo)),
            description="The study's report and headline table",
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="the repository holding dvc.yaml and params.yaml")
    parser.add_argument("--methods", default=None, help="comma-separated subset of params.yaml's methods")
    args = parser.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    results = pipeline(repo=str(Path(args.repo).resolve()), methods=methods)
    for stage, result in results.items():
        print(f"{stage}: {'up to date' if result['skipped'] else 'ran'}")


if __name__ == "__main__":
    main()
