"""One test Prefect server for every flow test (prefect_test_harness: a real server on SQLite in a temp
PREFECT_HOME)."""

import os

import pytest
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One test Prefect server (SQLite in a temp dir) for the session, with a throwaway PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect_home")
    # os.environ for the server subprocess; temporary_settings for this process, whose settings were
    # read when prefect was imported. No heartbeat thread: it costs ~1 s per flow run.
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DS_ACCELERATOR": "cpu",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with temporary_settings(
            {PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        ):
            with prefect_test_harness(server_startup_timeout=120):
                yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
