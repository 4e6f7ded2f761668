"""Deployments of the pipeline and the sweep, for the Prefect UI.

Serve them from this machine (a long-running process that runs the flows itself):

    prefect server start                      # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve [--cron "0 3 * * *" | --interval-minutes 60]

or register them on a work pool, whose workers (on this or other machines) run them:

    prefect work-pool create robust-rlhf --type process
    python -m flows.serve --work-pool robust-rlhf [--source <git URL or path the workers can read>]
    prefect worker start --pool robust-rlhf   # on every machine that should run flows

`pipeline` gets the schedule of params.yaml's `orchestration.schedule` (flags override it); `sweep`
runs on demand (Run > Custom run in the UI, or `prefect deployment run robust-rlhf-sweep/sweep`).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.schedules import Cron, Interval, Schedule

from flows.pipeline import pipeline
from flows.sweep import sweep
from robust_rlhf.config import ScheduleParams, load_params

PIPELINE_DEPLOYMENT = "pipeline"
SWEEP_DEPLOYMENT = "sweep"


def pipeline_schedules(schedule: ScheduleParams) -> list[Schedule]:
    """The `orchestration.schedule` params as Prefect schedules (none: on demand only)."""
    if schedule.cron is not None:
        return [Cron(schedule.cron, timezone=schedule.timezone)]
    if schedule.interval_minutes is not None:
        return [Interval(timedelta(minutes=schedule.interval_minutes), timezone=schedule.timezone)]
    return []


def schedule_from_flags(
    schedule: ScheduleParams, cron: str | None, interval_minutes: float | None, unscheduled: bool
) -> ScheduleParams:
    """Command-line flags over params: --cron or --interval-minutes replaces the params' schedule,
    --no-schedule removes it."""
    if unscheduled:
        return ScheduleParams(cron=None, interval_minutes=None, timezone=schedule.timezone)
    if cron is not None or interval_minutes is not None:
        return ScheduleParams(cron=cron, interval_minutes=interval_minutes, timezone=schedule.timezone)
    return schedule


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="the repository the flows run in")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help="the pipeline's cron schedule (overrides params)")
    when.add_argument("--interval-minutes", type=float, default=None, help="run the pipeline every N minutes")
    when.add_argument("--no-schedule", action="store_true", help="the pipeline runs on demand only")
    parser.add_argument("--methods", default=None, help="comma-separated methods the scheduled pipeline runs")
    parser.add_argument("--work-pool", default=None, help="register on this work pool instead of serving here")
    parser.add_argument(
        "--source",
        default=None,
        help="with --work-pool: where workers get the code (a git URL or a path they can read; default: --repo)",
    )
    args = parser.parse_args(argv)

    repo = Path(args.repo).resolve()
    params = load_params(repo / "params.yaml")
    schedule = schedule_from_flags(params.orchestration.schedule, args.cron, args.interval_minutes, args.no_schedule)
    methods = args.methods.split(",") if args.methods else None
    # A worker that clones a git source runs the flow inside its clone: there the repo is ".".
    run_in = "." if args.source and "://" in args.source else str(repo)
    pipeline_parameters = {"repo": run_in, "methods": methods}
    description = f"robust-rlhf on {repo}; schedule from orchestration.schedule in params.yaml"
    if args.work_pool is None:
        serve(
            pipeline.to_deployment(
                PIPELINE_DEPLOYMENT,
                schedules=pipeline_schedules(schedule),
                parameters=pipeline_parameters,
                description=description,
                tags=["robust-rlhf"],
            ),
            sweep.to_deployment(
                SWEEP_DEPLOYMENT,
                parameters={"repo": run_in},
                tags=["robust-rlhf"],
                description="One DVC experiment per (method, lambda, seed), run on demand",
            ),
        )
        return
    source = args.source or str(repo)
    for flow_object, entrypoint, name, parameters, schedules in (
        (
            pipeline,
            "flows/pipeline.py:pipeline",
            PIPELINE_DEPLOYMENT,
            pipeline_parameters,
            pipeline_schedules(schedule),
        ),
        (sweep, "flows/sweep.py:sweep", SWEEP_DEPLOYMENT, {"repo": run_in}, []),
    ):
        flow_object.from_source(source=source, entrypoint=entrypoint).deploy(
            name=name,
            work_pool_name=args.work_pool,
            parameters=parameters,
            schedules=schedules,
            tags=["robust-rlhf"],
            print_next_steps=False,
        )
        print(f"deployed {flow_object.name}/{name} on work pool {args.work_pool} (source {source})")


if __name__ == "__main__":
    main()
