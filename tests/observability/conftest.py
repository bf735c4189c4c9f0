"""A real stack for the observability tests, started once per session.

Redis, the generator under gunicorn (2 web processes), a forking worker and an in-process worker,
the exporter, and a real Prometheus scraping all four every second and loading the chart's alert
rules. ``workload`` then runs a fixed mix of jobs through it once; the tests read the results
through Prometheus's HTTP API.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support import (
    ADMIN,
    ROOT,
    Exporter,
    Generator,
    PrometheusServer,
    RedisServer,
    WorkerProc,
    wait_for,
    wait_status,
)

ALERTS = ROOT / "helm" / "taskqueue" / "files" / "alerts.yml"

RETRIES = 2
# Short retry waits and maintenance so the failure path ends within the test's time.
ENV = {
    "TASKQUEUE_RETRIES": str(RETRIES),
    "TASKQUEUE_RETRY_INTERVALS": "1",
    "TASKQUEUE_MAINTENANCE_INTERVAL": "5",
    "TASKQUEUE_LOG_LEVEL": "WARNING",
}

# The workload: N jobs, of which FAILING fail every attempt and one is stopped while it runs.
SINGLE = [{"task": "noop"}] * 24 + [{"task": "hash", "args": {"rounds": 2000}}] * 8 + [{"task": "fail"}] * 8
BATCH = [{"task": "noop"}] * 40 + [{"task": "hash", "args": {"rounds": 1000}}] * 10 + [{"task": "fail"}] * 7


@dataclass
class Workload:
    n: int
    failing: int
    stopped: int
    retries: int
    single_posts: int
    seconds: float = 0.0
    expected: dict[str, int] = field(default_factory=dict)  # ended attempts by outcome
    submitted: dict[str, int] = field(default_factory=dict)  # jobs by task


def pytest_collection_modifyitems(items):
    # On a developer's machine without Prometheus, skip; in CI (.ci/run installs it) a missing one fails.
    if os.environ.get("CI"):
        return
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        skip = pytest.mark.skip(reason="prometheus/promtool not installed (apt-get install prometheus)")
        for item in items:
            if "observability" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def obs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("observability")


@pytest.fixture(scope="session")
def obs_redis():
    server = RedisServer(extra=["--maxmemory", "256mb", "--maxmemory-policy", "noeviction"]).start()  # as the chart
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def stack(obs_redis, obs_dir):
    """Generator, a forking and a simple worker, the exporter, and Prometheus scraping them."""
    env = {**obs_redis.env(), **ENV}
    gen = Generator(env, obs_dir, web_workers=2).start()
    fork = WorkerProc(env, obs_dir, ["--worker-class", "fork"]).start()
    simple = WorkerProc(env, obs_dir, ["--worker-class", "simple"]).start()
    exporter = Exporter(env, obs_dir).start()
    targets = {
        "taskqueue-generator": f"127.0.0.1:{gen.metrics_port}",
        "taskqueue-worker-fork": f"127.0.0.1:{fork.metrics_port}",
        "taskqueue-worker-simple": f"127.0.0.1:{simple.metrics_port}",
        "taskqueue-exporter": f"127.0.0.1:{exporter.metrics_port}",
    }
    prom = PrometheusServer(targets, obs_dir, rule_files=[ALERTS])
    services = [gen, fork, simple, exporter]
    try:
        prom.start()
        wait_for(
            lambda: prom.value("count(up == 1)") == len(targets),
            timeout=30,
            interval=0.1,
            what="prometheus to scrape every target",
        )
        yield {"prometheus": prom, "generator": gen, "workers": [fork, simple], "exporter": exporter}
    finally:
        prom.cleanup()
        for s in reversed(services):
            s.kill()  # the session's checks are done


def _post(url: str, body: dict) -> requests.Response:
    # A new connection per request, so gunicorn's processes share the requests.
    with requests.Session() as s:
        return s.post(url, json=body, headers={"Connection": "close"}, timeout=10)


@pytest.fixture(scope="session")
def workload(stack) -> Workload:
    """Run the job mix once and wait until Prometheus has seen every job end."""
    import time

    gen = stack["generator"]
    prom: PrometheusServer = stack["prometheus"]
    t0 = time.monotonic()

    # One job stopped while it runs: the "stopped" outcome.
    r = _post(gen.base + "/jobs", {"task": "sleep", "args": {"seconds": 60}})
    assert r.status_code == 202, r.text
    sleeper = r.json()["jobId"]
    wait_status(gen.base, sleeper, {"started"}, timeout=15)
    assert requests.delete(f"{gen.base}/jobs/{sleeper}", headers=ADMIN, timeout=5).status_code == 200
    wait_status(gen.base, sleeper, {"stopped"}, timeout=15)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(lambda body: _post(gen.base + "/jobs", body).status_code, SINGLE))
    assert codes == [202] * len(SINGLE)
    r = _post(gen.base + "/jobs/batch", {"jobs": BATCH})
    assert r.status_code == 202, r.text

    n = 1 + len(SINGLE) + len(BATCH)
    failing = sum(1 for j in SINGLE + BATCH if j["task"] == "fail")
    w = Workload(n=n, failing=failing, stopped=1, retries=RETRIES, single_posts=1 + len(SINGLE))
    for job in [{"task": "sleep"}, *SINGLE, *BATCH]:
        w.submitted[job["task"]] = w.submitted.get(job["task"], 0) + 1
    w.expected = {
        "succeeded": n - failing - 1,
        "failed": failing,
        "stopped": 1,
        "retried": failing * RETRIES,
    }
    ended = 'sum(taskqueue_jobs_completed_total{outcome=~"succeeded|failed|stopped"})'
    wait_for(lambda: prom.value(ended) == n, timeout=60, interval=0.1, what=f"prometheus to see {n} jobs end")
    # Queue state settles (the exporter is scraped every second too).
    wait_for(
        lambda: prom.value('sum(taskqueue_queue_jobs{state=~"queued|started|scheduled|deferred"})') == 0,
        timeout=20,
        interval=0.1,
        what="an empty queue in prometheus",
    )
    w.seconds = time.monotonic() - t0
    return w
