"""DVC stage `train_reward`: the BRME reward model (stage 1 Bradley-Terry, stage 2 k Gaussian heads)
and the ensemble baseline's members, under DeepSpeed (robust_rlhf/reward/run.py, docs/method.md).

Reads the preference splits and the shifted responses from --data and, when
`models.reward_backbone` is `policy`, the initial policy from --policy. Writes the BRME to --reward,
the ensemble to --ensemble, the reward models' metrics (val and test, with intervals) to --metrics
and reliability diagrams (one CSV per reward model) to --reliability. Its resume state lives in
--resume while it runs (robust_rlhf/runtime/resume.py). With --live, every phase's loss per micro-batch
goes to that DVCLive folder as it trains (robust_rlhf/runtime/live.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_rlhf.config import Params
from robust_rlhf.reward.run import RewardPaths, run_train_reward
from stages.cli import stage_main


def run(
    params: Params,
    *,
    data: Path,
    policy: Path,
    reward: Path,
    ensemble: Path,
    reliability: Path,
    resume: Path,
    live: Path | None = None,
) -> dict:
    return run_train_reward(params, RewardPaths(data, policy, reward, ensemble, reliability, resume, live))


def main(argv: list[str] | None = None) -> None:
    def live_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--live", type=Path, default=None, help="DVCLive folder for the training losses")

    stage_main(
        "train_reward",
        run,
        ["data", "policy", "reward", "ensemble", "reliability", "resume"],
        argv,
        extra_args=live_arg,
    )


if __name__ == "__main__":
    main()
