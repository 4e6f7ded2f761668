"""What every stage's `main()` shares: argv parsing, params validation, seeding, the summary line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from robust_rlhf.config import Params, ParamsError, StageInputError, load_params
from robust_rlhf.runtime.distributed import is_main_process, seed_everything
from robust_rlhf.runtime.launcher import launched_by_launcher, relaunch_under_deepspeed
from robust_rlhf.runtime.metrics import write_metrics


def stage_main(
    name: str,
    run: Callable[..., dict],
    path_args: list[str],
    argv: list[str] | None = None,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
    data_parallel: bool = False,
) -> None:
    """Parse `--params`, `--metrics` and the stage's own path arguments, validate params before any
    work, run the stage, write its metrics atomically and print a one-line summary.

    `run(params, **paths)` returns the metrics dict; every path argument reaches it as a Path, and
    every argument that `extra_args` adds reaches it by its name. A `data_parallel` stage with
    `launcher.world_size` > 1 re-runs itself under the deepspeed launcher (robust_rlhf/runtime/launcher.py).
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--metrics", required=True, type=Path, help="where the stage's DVC metrics go")
    for path_arg in path_args:
        parser.add_argument(f"--{path_arg.replace('_', '-')}", dest=path_arg, required=True, type=Path)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(message)s")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    try:
        params: Params = load_params(args.params)
    except ParamsError as error:
        print(f"stage {name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if params.launcher.world_size > 1 and not launched_by_launcher():
        if data_parallel:
            stage_argv = list(sys.argv[1:] if argv is None else argv)
            raise SystemExit(relaunch_under_deepspeed(params.launcher, f"stages.{name}", stage_argv))
        logging.getLogger(__name__).info(
            "stage %s shards no work across ranks; it runs as one process (launcher.world_size=%d applies to ppo)",
            name,
            params.launcher.world_size,
        )
    seed_everything(params.seed)

    started = time.perf_counter()
    arguments = {key: value for key, value in vars(args).items() if key not in ("params", "metrics", "local_rank")}
    try:
        metrics = run(params, **arguments)
    except StageInputError as error:
        # Bad params, bad input data, a resume state from other params: the same every time.
        print(f"stage {name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    metrics["wall_seconds"] = time.perf_counter() - started
    if is_main_process():
        write_metrics(args.metrics, metrics)
        print(f"stage {name} done in {metrics['wall_seconds']:.1f}s: {summary_line(metrics)}", flush=True)


def summary_line(metrics: dict, limit: int = 8) -> str:
    """The first few scalar metrics, flattened, as `key=value` pairs."""
    flat: list[str] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}/", item)
        elif isinstance(value, (int, float)) and len(flat) < limit:
            flat.append(
                f"{prefix.rstrip('/')}={value:.4g}" if isinstance(value, float) else f"{prefix.rstrip('/')}={value}"
            )

    for key, value in metrics.items():
        if key != "wall_seconds":
            walk(f"{key}/" if isinstance(value, dict) else key, value)
    return " ".join(flat)
