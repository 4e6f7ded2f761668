"""Time the Prefect flow over an up-to-date repo once Prefect's server is up, so the number is the
flow's own overhead, not the server's start (which `python -m flows.pipeline` also pays):

    python -m bench.flow_run --repo DIR      # last line: `flow seconds <s>`
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    parser = argparse.ArgumentParser(prog="python -m bench.flow_run")
    parser.add_argument("--repo", required=True)
    args = parser.parse_args(argv)
    # Default flow settings (heartbeat on), as a user's run has them.
    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        results = pipeline(repo=args.repo)
        seconds = time.perf_counter() - started
    if not all(result["skipped"] for result in results.values()):
        raise SystemExit(f"expected every stage up to date, got {results}")
    print(f"flow seconds {seconds:.3f}")


if __name__ == "__main__":
    main()
