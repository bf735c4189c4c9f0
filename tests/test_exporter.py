"""The exporter: queue state for Prometheus, work remaining for KEDA, scheduling when no worker runs."""

from __future__ import annotations

import pytest
import requests

from tests.support import RedisServer, wait_for, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)


def test_scale_endpoint_counts_queued_and_in_flight(generator, processes):
    exporter = processes.exporter()
    url = f"http://127.0.0.1:{exporter.metrics_port}/scale"
    assert requests.get(url, timeout=2).json() == {"workRemaining": 0, "queued": 0, "started": 0}
    for _ in range(3):
        requests.get(generator.base + "/start?delay=3", timeout=2)
    assert requests.get(url, timeout=2).json() == {"workRemaining": 3, "queued": 3, "started": 0}
    w = processes.worker(stop_timeout=1)
    doc = wait_for(lambda: (d := requests.get(url, timeout=2).json())["started"] == 1 and d, timeout=10)
    assert doc == {"workRemaining": 3, "queued": 2, "started": 1}
    w.stop(timeout=1)
    assert requests.get(f"http://127.0.0.1:{exporter.metrics_port}/healthz", timeout=2).json() == {"status": "ok"}


def test_scale_endpoint_is_503_while_redis_is_down(processes):
    server = processes.add(RedisServer()).start()
    exporter = processes.exporter(env=server.env())
    server.stop()
    r = requests.get(f"http://127.0.0.1:{exporter.metrics_port}/scale", timeout=5)
    assert r.status_code == 503
    metrics = requests.get(f"http://127.0.0.1:{exporter.metrics_port}/metrics", timeout=5).text
    assert "taskqueue_redis_up 0.0" in metrics


def test_exporter_fires_retries_when_workers_do_no_maintenance(app_env, processes):
    """Workers run without RQ's scheduler (as in the chart); the exporter moves due retries to the queue."""
    env = {**app_env, "TASKQUEUE_WORKER_MAINTENANCE": "false"}
    gen = processes.generator(env=env)
    processes.exporter(env=env)
    processes.worker(env=env)
    job_id = requests.post(gen.base + "/jobs", json={"task": "fail"}, timeout=2).json()["jobId"]
    doc = wait_status(gen.base, job_id, {"failed"}, timeout=20)
    assert doc["retriesLeft"] == 0  # both retries ran: the exporter scheduled them


def test_exporter_requeues_a_job_stranded_between_dequeue_and_start(generator, app_env, redis_client, processes):
    """A worker SIGKILLed right after RQ moved a job to the intermediate list (before the started
    registry) leaves it in neither: the exporter's cleanup puts it back on the queue, no retry spent.
    Found by tests/autoscale (a job left `queued` in no queue after a SIGKILL during scale-down)."""
    exporter = processes.exporter(env={**app_env, "TASKQUEUE_CLEANUP_INTERVAL": "1"})
    job_id = requests.get(generator.base + "/start?delay=0", timeout=2).json()["jobId"]
    # What a worker's dequeue does, and then it dies.
    assert redis_client.lmove("rq:queue:default", "rq:queue:default:intermediate") == job_id.encode()
    wait_for(lambda: redis_client.lrange("rq:queue:default", 0, -1) == [job_id.encode()], timeout=10,
             what="the stranded job back on the queue")  # fmt: skip
    assert redis_client.llen("rq:queue:default:intermediate") == 0
    assert "requeued" in exporter.log()
    processes.worker()
    doc = wait_status(generator.base, job_id, {"finished"}, timeout=15)
    assert doc["retriesLeft"] == 2


def test_a_job_stranded_again_and_again_is_handed_to_rq_as_abandoned(generator, app_env, redis_client, processes):
    """A job that kills its worker before its start is written (a take's job runs unclaimed for a few ms) would
    come back for ever: after STRANDED_RETURNS_MAX returns with no retry spent, the next stranding makes it an
    abandoned job, which RQ retries (one retry spent) as it does a killed worker's claimed job."""
    from taskqueue.exporter.collector import STRANDED_RETURNS_MAX

    processes.exporter(env={**app_env, "TASKQUEUE_CLEANUP_INTERVAL": "1"})
    job_id = requests.get(generator.base + "/start?delay=0", timeout=2).json()["jobId"]
    for returns in range(1, STRANDED_RETURNS_MAX + 2):
        # What a worker's take does, and then it dies.
        assert redis_client.lmove("rq:queue:default", "rq:queue:default:intermediate") == job_id.encode()
        wait_for(lambda: redis_client.lrange("rq:queue:default", 0, -1) == [job_id.encode()], timeout=10,
                 what=f"return {returns}")  # fmt: skip
        doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
        assert int(redis_client.hget(f"rq:job:{job_id}", "taskqueue_returns")) == returns
        assert doc["retriesLeft"] == (2 if returns <= STRANDED_RETURNS_MAX else 1), (returns, doc)
