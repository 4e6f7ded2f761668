"""`python -m stages.memory_plan --params PROFILE [--devices N] [--device-memory-gib M]`: each stage's
estimated memory per device (robust_rlhf/runtime/memory_plan.py) and whether it fits. Not a DVC stage.
Exit 0 when every stage fits (or there is nothing to check against: the CPU), 2 when one does not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robust_rlhf.config import ParamsError, load_params
from robust_rlhf.runtime.memory_plan import CUDA_RESERVE_GIB, GIB, available_memory_gib, plan_stages, shortfall_gib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.memory_plan")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--devices", type=int, default=None, help="ppo's data-parallel devices (default: launcher's)")
    parser.add_argument("--device-memory-gib", type=float, default=None, help="default: launcher.device_memory_gib")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as error:
        print(f"memory_plan: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    available = available_memory_gib(
        args.device_memory_gib if args.device_memory_gib is not None else params.launcher.device_memory_gib
    )
    print(f"memory plan of {args.params} (profile {params.profile}), GiB per device; reserve {CUDA_RESERVE_GIB} GiB")
    print(f"{'stage':<13}{'devices':>8}{'weights':>10}{'grads':>10}{'optim':>10}{'act+kv':>10}{'total':>10}  fits")
    failed = False
    for memory in plan_stages(params, ppo_devices=args.devices):
        if available is None:
            verdict = "no check (no device memory given)"
        else:
            short = shortfall_gib(memory, available)
            failed |= short > 0
            verdict = f"no: short by {short:.2f} of {available:.1f}" if short > 0 else f"yes (of {available:.1f})"
        cells = [memory.weights, memory.gradients, memory.optimizer, memory.activations, memory.total]
        print(
            f"{memory.stage:<13}{memory.devices:>8}"
            + "".join(f"{value / GIB:>10.3f}" for value in cells)
            + f"  {verdict}"
        )
    raise SystemExit(2 if failed else 0)


if __name__ == "__main__":
    main()
