"""Run a command in a child process and measure its wall time and peak resident memory."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_seconds: float
    peak_rss_mb: float  # the largest RSS of the child or any descendant it waited for (dvc -> stage)
    output_tail: str


def run_measured(command: list[str], *, cwd: Path, env: dict[str, str] | None = None, log: Path | None = None,
                 timeout: float | None = None) -> Measured:
    """Run `command`, output to `log` (or a temp file next to nothing: DEVNULL when None).

    os.wait4 gives this child's own rusage, so each command's peak RSS is its own, unlike
    RUSAGE_CHILDREN, which is the maximum over every child this process ever waited for.
    """
    started = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; tell Popen so
    wall = time.perf_counter() - started
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    return Measured(process.returncode, wall, usage.ru_maxrss / 1024, tail)
