"""`python -m stages.export_policy --run <method>-<seed> --to DIR`: a publishable folder for one PPO
run's final policy: its transformers files (merged weights under `ppo.lora`, the adapters in
`adapter/`) and the full model card (README.md, robust_rlhf/card.py) with the study's numbers for its
method from evaluate's table. Not a DVC stage: it reads the pipeline's outputs and writes outside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from robust_rlhf.card import CARD_FILE, card_facts, model_card
from robust_rlhf.config import ParamsError, load_params, policy_run_name
from robust_rlhf.runtime.atomic import atomic_directory, atomic_write_text
from robust_rlhf.runtime.checkpoint import read_checkpoints


def parse_run(run: str) -> tuple[str, int]:
    """`<method>-<seed>` (method names hold no `-`: config checks them) -> (method, seed)."""
    method, _, seed = run.rpartition("-")
    if not method or not seed.isdigit():
        raise ValueError(f"--run {run!r} is not <method>-<seed> (e.g. brme-0)")
    return method, int(seed)


def export_policy(run: str, to: Path, *, params_path: Path, policies: Path, table: Path) -> Path:
    """Copy run `run`'s final checkpoint to `to` (which must not exist yet) with its full card."""
    params = load_params(params_path)
    method, seed = parse_run(run)
    if method not in params.methods or seed not in params.ppo_seeds:
        raise ValueError(f"--run {run!r}: no such run under `methods:` x `ppo_seeds:` in {params_path}")
    folder = policies / policy_run_name(method, seed)
    if not (folder / "checkpoints.json").exists():
        raise FileNotFoundError(f"{folder} holds no finished run (no checkpoints.json): run `dvc repro` first")
    if to.exists():
        raise FileExistsError(f"--to {to} exists: the export writes a new folder")
    final = folder / read_checkpoints(folder)[-1]["path"]
    row = table / f"{method}.json"
    study = json.loads(row.read_text()) if row.exists() else None
    with atomic_directory(to) as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        atomic_write_text(tmp / CARD_FILE, model_card(card_facts(params, method, seed, study=study)))
    return to


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.export_policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="<method>-<seed>, e.g. brme-0")
    parser.add_argument("--to", required=True, type=Path, help="the folder to create")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--policies", default=Path("models/policy"), type=Path, help="ppo's checkpoint folders")
    parser.add_argument("--table", default=Path("metrics/eval"), type=Path, help="evaluate's per-method rows")
    args = parser.parse_args(argv)
    try:
        export_policy(args.run, args.to, params_path=args.params, policies=args.policies, table=args.table)
    except (ParamsError, ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"export_policy: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported {args.run} to {args.to}")


if __name__ == "__main__":
    main()
