"""A throwaway copy of this checkout to run `dvc repro` in: repro rewrites dvc.lock, metrics and plots,
so neither the benchmarks nor the end-to-end tests ever run it in the checkout itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_checkout(destination: Path, params: Path) -> Path:
    """Copy the files git knows (tracked and untracked-not-ignored) into `destination`, a new git repo
    with one commit, with `params` as its params.yaml; return `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    shutil.copy2(params, destination / "params.yaml")
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(command, cwd=destination, check=True, capture_output=True)
    return destination
