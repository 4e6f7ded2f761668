"""Run a command in a child process and measure its wall time and peak resident memory.

    python -m bench.measure RESULT.json -- COMMAND...   # the wrapper run_measured starts

The command runs under a small wrapper process that reports RUSAGE_CHILDREN: a child forked (or
vforked) straight from a large process inherits that process's RSS high-water mark across exec
on Linux, so measured directly from the bench (GBs of models loaded) every small stage would
read as large as the bench itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_seconds: float
    peak_rss_mb: float  # the largest RSS of the command or any descendant it waited for (dvc -> stage)
    output_tail: str


def run_measured(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run `command` in `cwd`, its output to `log` (discarded when None); killed with its process
    group after `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="bench_measure_") as tmp:
        result_path = Path(tmp) / "result.json"
        wrapper = [sys.executable, "-m", "bench.measure", str(result_path), "--", *command]
        started = time.perf_counter()
        with open(log or os.devnull, "w") as out:
            # The wrapper imports `bench` from this checkout, wherever the command runs.
            wrapper_env = dict(env if env is not None else os.environ)
            wrapper_env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(Path(__file__).resolve().parents[1]), wrapper_env.get("PYTHONPATH")])
            )
            process = subprocess.Popen(
                wrapper, cwd=cwd, env=wrapper_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                returncode = process.wait()
        wall = time.perf_counter() - started
        peak = json.loads(result_path.read_text())["peak_rss_mb"] if result_path.exists() else float("nan")
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    return Measured(returncode, wall, peak, tail)


def main(argv: list[str] | None = None) -> None:
    """The wrapper: run the command after `--`, write its exit code and peak RSS, exit with its code."""
    argv = sys.argv[1:] if argv is None else argv
    result_path, separator, command = argv[0], argv[1], argv[2:]
    if separator != "--" or not command:
        raise SystemExit("usage: python -m bench.measure RESULT.json -- COMMAND...")
    returncode = subprocess.call(command)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps({"returncode": returncode, "peak_rss_mb": peak_mb}))
    raise SystemExit(returncode)


if __name__ == "__main__":
    main()
