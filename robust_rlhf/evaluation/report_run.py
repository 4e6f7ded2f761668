"""The run of stage `report`: the files evaluate, train_reward and every stage wrote, read into
`ReportInputs` and rendered (robust_rlhf/evaluation/report.py). Loads no model."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from robust_rlhf.config import Params, policy_run_name
from robust_rlhf.evaluation.report import ReportInputs, render_report
from robust_rlhf.runtime.atomic import atomic_write_text, read_jsonl

CURVE_FILE = re.compile(r"^(?P<method>\w+)-seed(?P<seed>\d+)$")


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def stage_seconds(stage_metrics: Path, methods: list[str], seeds: list[int]) -> dict[str, float]:
    """Wall seconds of each stage's last run, from the `wall_seconds` every stage writes."""
    files = {
        "prepare": stage_metrics / "prepare.json",
        "train_reward": stage_metrics / "train_reward.json",
        **{
            f"ppo@{method}-{seed}": stage_metrics / "ppo" / f"{policy_run_name(method, seed)}.json"
            for method in methods
            for seed in seeds
        },
        "evaluate": stage_metrics / "eval.json",
    }
    return {
        stage: float(json.loads(path.read_text())["wall_seconds"]) for stage, path in files.items() if path.exists()
    }


def run_report(
    params: Params,
    *,
    table: Path,
    eval_metrics: Path,
    curves: Path,
    best_of_n: Path,
    reward_metrics: Path,
    samples: Path,
    stage_metrics: Path,
    report: Path,
) -> dict:
    """Read evaluate's and train_reward's outputs and every stage's metrics, write the HTML report."""
    comparison = {
        method: json.loads((table / f"{method}.json").read_text())
        for method in params.methods
        if (table / f"{method}.json").exists()
    }
    curve_runs: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(curves.glob("*.csv")):
        match = CURVE_FILE.match(path.stem)
        if match and match["method"] in comparison:
            curve_runs.setdefault(match["method"], {})[int(match["seed"])] = _csv_rows(path)
    inputs = ReportInputs(
        profile=params.profile,
        methods={name: method.model_dump() for name, method in params.methods.items()},
        comparison=comparison,
        evaluation=json.loads(eval_metrics.read_text()),
        curves=curve_runs,
        best_of_n={
            method: _csv_rows(best_of_n / f"{method}.csv")
            for method in comparison
            if (best_of_n / f"{method}.csv").exists()
        },
        reward_metrics=json.loads(reward_metrics.read_text()),
        stage_seconds=stage_seconds(stage_metrics, list(params.methods), params.ppo_seeds),
        samples=read_jsonl(samples),
        notes=[f"Methods in params but not evaluated: {', '.join(sorted(set(params.methods) - set(comparison)))}"]
        if set(params.methods) - set(comparison)
        else [],
    )
    atomic_write_text(report, render_report(inputs))
    return {
        "methods": len(comparison),
        "report_bytes": report.stat().st_size,
        "pipeline_seconds": sum(inputs.stage_seconds.values()),
    }
