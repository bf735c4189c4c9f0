"""Takes (fastpath/job_path.py): short jobs taken several at a time and run before their start is written.

Real redis-server, ``taskqueue-worker`` processes and the exporter. Fast paths only: with them off, every job
is claimed before it runs (RQ's path), so there is no take to test.
"""

from __future__ import annotations

import signal
import time

import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from taskqueue.api.jobs import SERIALIZER, JobRequest
from taskqueue.fastpath.job_path import CLAIM_AFTER
from taskqueue.tasks import load
from tests.support import wait_for

TASKS = load()
NOOP = JobRequest(TASKS["noop"], [])


@pytest.fixture(autouse=True)
def fast_paths_only(app_env):
    if app_env.get("TASKQUEUE_FAST_PATHS") == "off":
        pytest.skip("takes are a fast path; with it off every job is claimed before it runs (other tests)")


def test_a_long_job_of_a_take_is_claimed_at_once_and_the_rest_go_back(service, redis_client, processes):
    """Noops, then a 3 s sleep, then more noops, for one worker: the sleep runs in a take of several jobs. Its
    start is written within CLAIM_AFTER (plus this host's scheduling) of its start, as RQ's records of a
    running job, and the take's jobs behind it go back to the queue at once, where a second worker runs them
    all while the sleep still runs."""
    sleep = JobRequest(TASKS["sleep"], TASKS["sleep"].arguments({"seconds": 3}))
    before = [j.id for j in service.enqueue_batch([NOOP] * 20)]
    long_id = service.enqueue(sleep)[0].id
    after = [j.id for j in service.enqueue_batch([NOOP] * 40)]
    processes.worker()
    key = Job.key_for(long_id)

    def claimed():
        status, started_at = redis_client.hmget(key, "status", "started_at")
        return status == b"started" and (time.time(), started_at.decode())

    seen, started_at = wait_for(claimed, timeout=10, interval=0.005, what="the long job's start written")
    started = Job.fetch(long_id, connection=redis_client, serializer=SERIALIZER).started_at.timestamp()
    assert 0 <= seen - started <= CLAIM_AFTER + 0.3, (seen, started_at)
    registry = StartedJobRegistry("default", connection=redis_client, serializer=SERIALIZER)
    assert registry.get_job_ids(cleanup=False) == [long_id]
    assert redis_client.llen("rq:queue:default:intermediate") == 0  # the rest of its take went back
    queued = {i.decode() for i in redis_client.lrange("rq:queue:default", 0, -1)}
    assert queued and queued <= set(after)
    processes.worker()
    finished = FinishedJobRegistry("default", connection=redis_client, serializer=SERIALIZER)
    wait_for(lambda: set(finished.get_job_ids()) >= set(before + after), timeout=10, what="the noops finished")
    assert redis_client.hget(key, "status") == b"started"  # ... while the long job still runs
    wait_for(lambda: redis_client.hget(key, "status") == b"finished", timeout=10, what="the long job finished")
    assert redis_client.keys("rq:execution:*") == []


def test_a_killed_workers_take_comes_back_with_no_retry_spent(app_env, service, redis_client, processes):
    """A worker SIGKILLed while it runs takes of no-op jobs (no retries: a job handed to RQ as abandoned would
    fail): the exporter puts the jobs of its take back, a new worker runs them, and every job finishes."""
    env = {**app_env, "TASKQUEUE_RETRIES": "0", "TASKQUEUE_CLEANUP_INTERVAL": "1"}
    n = 4000
    ids = [j.id for j in service.enqueue_batch([NOOP] * n)]
    finished = FinishedJobRegistry("default", connection=redis_client, serializer=SERIALIZER)
    stranded = 0
    for _ in range(5):  # a kill may land between two takes, when the worker holds none: kill again
        worker = processes.worker(env=env)
        start = finished.count
        wait_for(lambda s=start: finished.count >= s + 200, timeout=20, interval=0.01, what="jobs finished")
        worker.signal(signal.SIGKILL)
        worker.stop(timeout=5)
        stranded = redis_client.llen("rq:queue:default:intermediate")
        if stranded:
            break
    assert stranded > 1, "no kill landed while a take was held"
    exporter = processes.exporter(env=env)
    processes.worker(env=env)
    wait_for(lambda: finished.count == n, timeout=60, interval=0.2, what="every job finished")
    assert FailedJobRegistry("default", connection=redis_client, serializer=SERIALIZER).count == 0
    assert set(finished.get_job_ids()) == set(ids)
    assert "requeued" in exporter.log()
