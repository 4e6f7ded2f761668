"""DVC stage `ppo@<method>-<seed>`: PPO of the initial policy on one method's reward (docs/method.md;
the methods are listed under `methods:` in params.yaml, the seeds under `ppo_seeds:`).

Reads --policy-init, --reward, --ensemble, --data (ppo_prompts.jsonl). Writes policy checkpoints
every `ppo.checkpoint_every` steps to --policy, per-step scalars (a DVC plot) to --steps and the
last step's scalars to --metrics and, after every step, to DVCLive's --live/metrics.json (for
`dvc exp show` mid-run). Its resume state lives in --resume while it runs (robust_rlhf/runtime/resume.py);
`ppo.guards` stop a diverged run (robust_rlhf/runtime/guards.py).
`ppo.monitor`'s reward-hacking warnings (robust_rlhf/rl/monitor.py) go to monitor.json beside the checkpoints.
The run itself is robust_rlhf/rl/run.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_rlhf.config import Params, ParamsError
from robust_rlhf.rl.run import PPOPaths, run_ppo
from stages.cli import stage_main


def run(
    params: Params,
    *,
    method: str,
    seed: int,
    data: Path,
    policy_init: Path,
    reward: Path,
    ensemble: Path,
    policy: Path,
    steps: Path,
    resume: Path,
    live: Path | None = None,
) -> dict:
    if method not in params.methods:
        raise ParamsError(f"--method {method!r} is not under `methods:` in params (known: {sorted(params.methods)})")
    if seed not in params.ppo_seeds:
        raise ParamsError(f"--seed {seed} is not in `ppo_seeds:` in params ({params.ppo_seeds})")
    return run_ppo(
        params,
        method=method,
        seed=seed,
        paths=PPOPaths(
            data=data,
            policy_init=policy_init,
            reward=reward,
            ensemble=ensemble,
            policy=policy,
            steps=steps,
            resume=resume,
            live=live,
        ),
    )


def main(argv: list[str] | None = None) -> None:
    def method_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--method", required=True, help="a name under `methods:` in params.yaml")
        parser.add_argument("--seed", required=True, type=int, help="this run's PPO seed (one of `ppo_seeds`)")
        parser.add_argument("--live", type=Path, default=None, help="DVCLive folder for the latest step's scalars")

    stage_main(
        "ppo",
        run,
        ["data", "policy_init", "reward", "ensemble", "policy", "steps", "resume"],
        argv,
        extra_args=method_arg,
        data_parallel=True,
    )


if __name__ == "__main__":
    main()
