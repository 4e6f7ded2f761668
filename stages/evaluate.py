"""DVC stage `evaluate`: every method's policy checkpoints (every PPO seed) and the initial policy on
held-out prompts, under the gold scorer and the proxy reward models, with KL to the reference (the
initial policy); the best-of-n study from the initial policy; the paired comparisons
(robust_rlhf/evaluation/run.py).

Writes one metrics file per method to --table (so `dvc metrics show` has a row per method), the
initial policy's metrics and the comparisons to --metrics, gold/proxy-vs-sqrt(KL) curves per method
and seed to --curves, best-of-n curves per method to --best-of-n, and every scored response to
--samples.
"""

from __future__ import annotations

from pathlib import Path

from robust_rlhf.config import Params
from robust_rlhf.evaluation.run import EvaluatePaths, run_evaluate
from stages.cli import stage_main


def run(
    params: Params,
    *,
    data: Path,
    policy_init: Path,
    policies: Path,
    reward: Path,
    ensemble: Path,
    table: Path,
    curves: Path,
    best_of_n: Path,
    samples: Path,
) -> dict:
    return run_evaluate(
        params, EvaluatePaths(data, policy_init, policies, reward, ensemble, table, curves, best_of_n, samples)
    )


def main(argv: list[str] | None = None) -> None:
    stage_main(
        "evaluate",
        run,
        ["data", "policy_init", "policies", "reward", "ensemble", "table", "curves", "best_of_n", "samples"],
        argv,
    )


if __name__ == "__main__":
    main()
