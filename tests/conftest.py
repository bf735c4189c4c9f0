"""Fixtures: a real redis-server per test module (flushed per test), real generator and worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import Generator, Processes, RedisServer, WorkerProc

# Short retry intervals so the failure path finishes in a test's time.
FAST_ENV = {"TASKQUEUE_RETRIES": "2", "TASKQUEUE_RETRY_INTERVALS": "1", "TASKQUEUE_MAINTENANCE_INTERVAL": "5"}


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


def env_for(redis_server: RedisServer) -> dict[str, str]:
    """The settings of the processes and services a test starts; ``TASKQUEUE_FAST_PATHS`` from the
    environment, so that ``make test-stock`` runs every one of them with the fast paths off."""
    switch = (
        {"TASKQUEUE_FAST_PATHS": os.environ["TASKQUEUE_FAST_PATHS"]} if "TASKQUEUE_FAST_PATHS" in os.environ else {}
    )
    return {**redis_server.env(), **FAST_ENV, **switch}


@pytest.fixture
def app_env(redis_server, redis_client):
    """:func:`env_for` the module's Redis, flushed for the test."""
    return env_for(redis_server)


@pytest.fixture
def cfg(app_env):
    """The config the processes get from app_env, for in-process services and workers."""
    from taskqueue import config as config_module

    return config_module.load(environ=app_env)


@pytest.fixture
def service(cfg):
    """The generator's JobService on the test Redis, in this process."""
    from taskqueue.api.jobs import JobService
    from taskqueue.store.connection import connect

    return JobService(cfg, connect(cfg))


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path) -> Iterator[Processes]:
    """Starts the test's processes (env: app_env unless given) and kills them at its end (Processes.kill_all: the
    test's checks are done; one that checks a graceful stop asks for it in the test)."""
    procs = Processes(lambda: request.getfixturevalue("app_env"), tmp_path)
    yield procs
    procs.kill_all()


@pytest.fixture
def generator(processes: Processes) -> Generator:
    return processes.generator()


@pytest.fixture
def worker(processes: Processes) -> WorkerProc:
    return processes.worker()


def pytest_unconfigure(config) -> None:
    """One line at the very end when the Prometheus tests were skipped (a machine without prometheus)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [r for r in reporter.stats.get("skipped", []) if "prometheus" in str(r.longrepr)]
    if skipped:
        reporter.write_line(
            f"{len(skipped)} Prometheus tests skipped: prometheus/promtool are not installed "
            "(apt-get install prometheus, then make test again; CI installs them)",
            yellow=True,
            bold=True,
        )
