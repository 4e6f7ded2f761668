"""A sweep as DVC experiments: one queued `dvc exp run` per (method, lambda, seed), run by DVC's queue
with bounded concurrency, compared in one table.

    python -m flows.sweep --methods brme,single --lambdas 0.2,0.5,0.8 --seeds 0,1 [--max-parallel 2]

Each point narrows params.yaml to one method and one PPO seed (`-S ~methods.<other>`,
`-S ppo_seeds=[s]`) and, for methods whose aggregation reads it, sets `aggregation.brme_lambda`; lambda is
not varied for the others, where it changes nothing. Stages whose inputs a point does not change
(prepare, train_reward) come from DVC's run cache, so only PPO, evaluate and report re-run. Every run
stays a DVC experiment: `dvc exp show` lists them, `dvc exp apply <name>` brings one into the
workspace. The flow publishes the comparison as a table artifact and logs each experiment's output.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from flows.pipeline import dvc_executable, run_logger, stage_environment
from robust_rlhf.config import AggregationParams, Params, load_params

# Aggregations that read aggregation.brme_lambda (robust_rlhf/reward/aggregation.py); for the others a lambda
# sweep would train identical policies.
LAMBDA_AGGREGATIONS = frozenset({"brme"})
# The comparison table's columns, from metrics/eval/<method>.json.
TABLE_METRICS = ("gold", "gold_gain", "win_rate", "proxy", "proxy_gain", "sqrt_kl")


@dataclass(frozen=True)
class SweepPoint:
    method: str
    lam: float | None  # None: the method's aggregation does not read lambda
    seed: int

    def experiment_name(self, sweep_id: str) -> str:
        """A DVC experiment name (a git ref component: no dots)."""
        lam = "" if self.lam is None else "-l" + f"{self.lam:g}".replace(".", "p").replace("-", "m")
        return f"{sweep_id}-{self.method}{lam}-s{self.seed}"


def sweep_points(params: Params, methods: list[str], lambdas: list[float], seeds: list[int]) -> list[SweepPoint]:
    """Every (method, lambda, seed) combination, lambda only where the method's aggregation uses it.
    Raises ValueError naming an unknown method or a lambda that `aggregation.brme_lambda` refuses."""
    unknown = sorted(set(methods) - set(params.methods))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; params.yaml has {sorted(params.methods)}")
    bad = [lam for lam in lambdas if not _valid_lambda(params, lam)]
    if bad:
        raise ValueError(f"aggregation.brme_lambda must be in [0, 1], got {bad}")
    points = []
    for method in methods:
        uses_lambda = params.methods[method].aggregation in LAMBDA_AGGREGATIONS
        for lam in (lambdas or [None]) if uses_lambda else [None]:
            points.extend(SweepPoint(method, lam, seed) for seed in seeds)
    return points


def _valid_lambda(params: Params, lam: float) -> bool:
    # config.py's range, the one check of lambda, before any experiment is queued.
    try:
        AggregationParams.model_validate({**params.aggregation.model_dump(), "brme_lambda": lam})
    except ValidationError:
        return False
    return True


def set_param_overrides(params: Params, point: SweepPoint) -> list[str]:
    """`dvc exp run -S` overrides that narrow params.yaml to this point."""
    overrides = [f"~methods.{other}" for other in params.methods if other != point.method]
    overrides.append(f"ppo_seeds=[{point.seed}]")
    if point.lam is not None:
        overrides.append(f"aggregation.brme_lambda={point.lam}")
    return overrides


def parse_queue_status(text: str) -> dict[str, str]:
    """`dvc queue status` -> {experiment name: status} (Queued, Running, Success, Failed)."""
    statuses = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", cells[0]):
            statuses[cells[1]] = cells[-1]
    return statuses


def experiment_rows(exp_show: list[dict], names: set[str]) -> dict[str, dict]:
    """{experiment name: {"params": ..., "metrics": {file: data}}} from `dvc exp show --json`."""
    rows = {}
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs", []):
                if rev.get("name") in names and rev.get("data"):
                    data = rev["data"]
                    rows[rev["name"]] = {
                        "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                        "metrics": {path: entry.get("data", {}) for path, entry in data.get("metrics", {}).items()},
                    }
    return rows


def comparison_row(point: SweepPoint, name: str, status: str, experiment: dict | None) -> dict:
    """One table row: the point, its DVC status and the method's gold/proxy/KL from evaluate."""
    row: dict[str, object] = {
        "experiment": name,
        "method": point.method,
        "lambda": "-" if point.lam is None else point.lam,
        "seed": point.seed,
        "status": status,
    }
    metrics = (experiment or {}).get("metrics", {}).get(f"metrics/eval/{point.method}.json", {})
    for key in TABLE_METRICS:
        value = metrics.get(key)
        row[key] = round(value, 4) if isinstance(value, (int, float)) else "-"
    return row


def _dvc(repo: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [dvc_executable(), *args], cwd=repo, env=stage_environment(), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
    return result


@task(task_run_name="queue {name}", cache_policy=NO_CACHE)
def queue_experiment(repo: str, name: str, overrides: list[str]) -> str:
    """`dvc exp run --queue -n <name> -S ...`: the experiment waits in DVC's queue."""
    arguments = ["exp", "run", "--queue", "-n", name]
    for override in overrides:
        arguments += ["-S", override]
    run_logger().info("dvc %s", " ".join(arguments))
    return _dvc(repo, *arguments).stdout.strip()


@task(task_run_name="run the queue ({max_parallel} at once)", cache_policy=NO_CACHE)
def run_queue(repo: str, max_parallel: int) -> dict[str, str]:
    """Run every queued experiment, `max_parallel` at a time (DVC's queue workers), until none is
    left; return each experiment's final status."""
    result = _dvc(repo, "exp", "run", "--run-all", "--jobs", str(max_parallel), check=False)
    run_logger().info(
        "dvc exp run --run-all --jobs %d exited with %d\n%s",
        max_parallel,
        result.returncode,
        (result.stdout + result.stderr)[-3000:],
    )
    return parse_queue_status(_dvc(repo, "queue", "status").stdout)


@task(task_run_name="collect {name}", cache_policy=NO_CACHE)
def collect_experiment(repo: str, name: str, status: str) -> str:
    """Log the experiment's own output (`dvc queue logs`) so each run's stages show in the UI."""
    logs = _dvc(repo, "queue", "logs", name, check=False)
    logger = run_logger()
    logger.info("experiment %s: %s\n%s", name, status, (logs.stdout + logs.stderr)[-6000:])
    if status != "Success":
        logger.error("experiment %s did not succeed (%s); see `dvc queue logs %s`", name, status, name)
    return status


def _sweep_id() -> str:
    return f"sweep{datetime.now():%Y%m%d%H%M%S}"


@flow(name="robust-rlhf-sweep", flow_run_name=lambda: _sweep_id())
def sweep(
    repo: str = ".",
    methods: list[str] | None = None,
    lambdas: list[float] | None = None,
    seeds: list[int] | None = None,
    max_parallel: int | None = None,
) -> list[dict]:
    """Queue one DVC experiment per (method, lambda, seed), run the queue with at most `max_parallel`
    at once (default: orchestration.sweep_max_parallel), and publish the comparison table.

    Defaults: every method in params.yaml, lambda = the params' value, seeds = `ppo_seeds`.
    """
    params = load_params(Path(repo) / "params.yaml")
    points = sweep_points(
        params,
        methods or list(params.methods),
        lambdas or [params.aggregation.brme_lambda],
        seeds or list(params.ppo_seeds),
    )
    sweep_id = _sweep_id()
    names = {point: point.experiment_name(sweep_id) for point in points}
    for point, name in names.items():
        queue_experiment(repo, name, set_param_overrides(params, point))
    statuses = run_queue(repo, max_parallel or params.orchestration.sweep_max_parallel)
    for name in names.values():
        collect_experiment(repo, name, statuses.get(name, "Missing"))
    shown = json.loads(_dvc(repo, "exp", "show", "--json", "--no-pager").stdout)
    experiments = experiment_rows(shown, set(names.values()))
    table = [
        comparison_row(point, name, statuses.get(name, "Missing"), experiments.get(name))
        for point, name in names.items()
    ]
    create_table_artifact(
        key=re.sub(r"[^a-z0-9-]", "-", f"{sweep_id}-comparison"),
        table=table,
        description=f"Sweep {sweep_id}: gold and proxy reward per DVC experiment "
        "(metrics/eval/<method>.json); `dvc exp show` has every metric.",
    )
    failed = [row["experiment"] for row in table if row["status"] != "Success"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(table)} experiments failed: {failed}; see `dvc queue logs <name>`")
    return table


def _floats(text: str | None) -> list[float] | None:
    return [float(x) for x in text.split(",")] if text else None


def _ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".")
    parser.add_argument("--methods", default=None, help="comma-separated; default: every method in params.yaml")
    parser.add_argument("--lambdas", default=None, help="comma-separated aggregation.brme_lambda values")
    parser.add_argument("--seeds", default=None, help="comma-separated PPO seeds; default: ppo_seeds")
    parser.add_argument("--max-parallel", type=int, default=None, help="experiments at once (DVC queue workers)")
    args = parser.parse_args(argv)
    table = sweep(
        repo=str(Path(args.repo).resolve()),
        methods=args.methods.split(",") if args.methods else None,
        lambdas=_floats(args.lambdas),
        seeds=_ints(args.seeds),
        max_parallel=args.max_parallel,
    )
    columns = list(table[0]) if table else []
    print("\t".join(columns))
    for row in table:
        print("\t".join(str(row[column]) for column in columns))


if __name__ == "__main__":
    main()
