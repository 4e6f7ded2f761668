"""Schedules of the served deployments: from params, overridden by flags."""

from datetime import timedelta

import pytest

from flows.serve import pipeline_schedules, schedule_from_flags
from robust_rlhf.config import ScheduleParams


def _schedule(**fields) -> ScheduleParams:
    """A schedule with only `fields` set: cron and interval null, timezone UTC unless given."""
    return ScheduleParams(**{"cron": None, "interval_minutes": None, "timezone": "UTC", **fields})


def test_params_schedule_becomes_a_prefect_schedule():
    (cron,) = pipeline_schedules(_schedule(cron="0 3 * * *", timezone="Europe/Paris"))
    assert (cron.cron, cron.timezone) == ("0 3 * * *", "Europe/Paris")
    (interval,) = pipeline_schedules(_schedule(interval_minutes=90))
    assert interval.interval == timedelta(minutes=90)
    assert pipeline_schedules(_schedule()) == []


def test_flags_override_params():
    params = _schedule(cron="0 3 * * *")
    assert schedule_from_flags(params, None, None, False) == params
    assert schedule_from_flags(params, None, 15, False) == _schedule(interval_minutes=15)
    assert schedule_from_flags(params, "*/5 * * * *", None, False).cron == "*/5 * * * *"
    assert schedule_from_flags(params, None, None, True) == _schedule()


def test_cron_and_interval_together_are_refused():
    with pytest.raises(ValueError, match="cron or interval_minutes, not both"):
        _schedule(cron="0 3 * * *", interval_minutes=5)
