"""DVC stage `report`: reports/report.html from what the other stages wrote (no model is loaded).

Reads the comparison table (--table), the initial policy's metrics (--eval-metrics), the PPO
checkpoint curves (--curves, one CSV per method and seed), the best-of-n curves (--best-of-n), the
reward-model metrics (--reward-metrics), the scored samples (--samples) and every stage's wall time
(--stage-metrics, the metrics folder).
"""

from __future__ import annotations

from robust_rlhf.evaluation.report_run import run_report
from stages.cli import stage_main


def main(argv: list[str] | None = None) -> None:
    stage_main(
        "report",
        run_report,
        ["table", "eval_metrics", "curves", "best_of_n", "reward_metrics", "samples", "stage_metrics", "report"],
        argv,
    )


if __name__ == "__main__":
    main()
