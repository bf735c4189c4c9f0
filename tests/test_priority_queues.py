"""Priority queues: TASKQUEUE_QUEUES in priority order (high,default,low), and POST /jobs naming one.

Real redis-server, generator (gunicorn), worker and exporter processes.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import requests

from tests.support import wait_status


@pytest.mark.behaviour  # run again with the fast paths off (make test): stock RQ pops several queues its own way
def test_a_high_job_starts_within_one_jobs_time_behind_a_thousand_low_ones(processes):
    """1,000 one-second jobs wait on `low`; a job put on `high` starts once the running one ends."""
    generator, _worker, exporter = processes.generator(), processes.worker(), processes.exporter()
    low = [{"task": "sleep", "args": {"seconds": 1}, "queue": "low"}] * 1000
    r = requests.post(generator.base + "/jobs/batch", json={"jobs": low}, timeout=30)
    assert r.status_code == 202, r.text
    first = r.json()["jobs"][0]["jobId"]
    wait_status(generator.base, first, {"started"}, timeout=15)
    scale = requests.get(f"http://127.0.0.1:{exporter.metrics_port}/scale", timeout=5).json()
    assert scale["workRemaining"] == 1000, scale  # every queue counts: 999 queued on low, 1 running

    r = requests.post(generator.base + "/jobs", json={"task": "noop", "queue": "high"}, timeout=5)
    assert r.status_code == 202, r.text
    urgent = wait_status(generator.base, r.json()["jobId"], {"finished"}, timeout=15)
    assert urgent["queue"] == "high"
    waited = (
        datetime.fromisoformat(urgent["startedAt"]) - datetime.fromisoformat(urgent["enqueuedAt"])
    ).total_seconds()
    assert waited <= 1.0 + 0.5, f"the high job waited {waited:.2f} s behind the low ones"  # a job's time, and margin
    # The low jobs go on after it, in their order.
    assert requests.get(f"{generator.base}/status/{first}", timeout=5).json()["status"] == "finished"
    listed = requests.get(generator.base + "/list", params={"state": "queued", "limit": 1}, timeout=5).json()
    assert listed["total"] >= 990 and listed["jobs"][0] != first


def test_a_request_names_a_configured_queue_or_gets_a_400(generator, worker):
    """POST /jobs and batch items may name any of TASKQUEUE_QUEUES (else 400), and a job waits there."""
    r = requests.post(generator.base + "/jobs", json={"task": "noop", "queue": "low"}, timeout=5)
    assert r.status_code == 202, r.text
    low = wait_status(generator.base, r.json()["jobId"], {"finished"}, timeout=15)
    assert low["queue"] == "low"
    # An idle worker blocks on `default` and looks at the other queues every 0.2 s (store/queues.py, IDLE_LOOK_EVERY).
    started, enqueued = (datetime.fromisoformat(low[k]) for k in ("startedAt", "enqueuedAt"))
    assert (started - enqueued).total_seconds() < 1.0, low
    plain = requests.post(generator.base + "/jobs", json={"task": "noop"}, timeout=5).json()
    assert wait_status(generator.base, plain["jobId"], {"finished"}, timeout=15)["queue"] == "default"
    for bad in ("urgent", 3, "", {}, ["low"]):
        r = requests.post(generator.base + "/jobs", json={"task": "noop", "queue": bad}, timeout=5)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "unknown_queue" and r.json()["error"]["field"] == "queue"
    # A batch may mix queues: one transaction, each job on its own queue.
    mixed = [{"task": "noop", "queue": "low"}, {"task": "noop", "queue": "high"}, {"task": "noop"}]
    r = requests.post(generator.base + "/jobs/batch", json={"jobs": mixed}, timeout=5)
    assert r.status_code == 202, r.text
    ended = [wait_status(generator.base, j["jobId"], {"finished"}, timeout=15) for j in r.json()["jobs"]]
    assert [d["queue"] for d in ended] == ["low", "high", "default"]
    doc = requests.get(generator.base + "/openapi.json", timeout=5).json()
    variants = doc["components"]["schemas"]["JobRequest"]["oneOf"]
    assert all(v["properties"]["queue"]["enum"] == ["high", "default", "low"] for v in variants)


def test_a_stock_take_off_several_queues_leaves_the_job_in_its_intermediate_list(service, redis_client, cfg):
    """Stock RQ pops several queues with BLPOP: the job is in no list until its start is written, and lost if the
    worker dies or Redis fails over in between. The stock workers' take (store/queues.py) moves it into its queue's
    intermediate list, where the exporter finds it; empty queues time out as RQ's do."""
    from rq.exceptions import DequeueTimeout

    from taskqueue.exporter.collector import QueueState
    from taskqueue.store.queues import TakingQueue
    from taskqueue.store.records import SERIALIZER
    from taskqueue.tasks import load

    job_id = requests_free_enqueue(service, load()["noop"], "low")
    queues = [TakingQueue(n, connection=service.redis, serializer=SERIALIZER) for n in cfg.queues]
    job, queue = TakingQueue.dequeue_any(queues, 1, connection=service.redis, serializer=SERIALIZER)
    assert (job.id, queue.name) == (job_id, "low")
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [job_id.encode()]
    assert redis_client.llen(queue.key) == 0
    # The worker dies here: the exporter's cleanup puts the job back after two passes, no retry spent.
    state = QueueState(cfg, service.redis)
    assert state.requeue_stranded(queue) == [] and state.requeue_stranded(queue) == [job_id]
    assert redis_client.lrange(queue.key, 0, -1) == [job_id.encode()]
    # Nothing queued: a timeout, after it; no wait asked: None at once.
    TakingQueue.dequeue_any(queues, 1, connection=service.redis, serializer=SERIALIZER)
    with pytest.raises(DequeueTimeout):
        TakingQueue.dequeue_any(queues, 1, connection=service.redis, serializer=SERIALIZER)
    assert TakingQueue.dequeue_any(queues, None, connection=service.redis, serializer=SERIALIZER) is None


def requests_free_enqueue(service, task, queue: str) -> str:
    """Enqueue a job of ``task`` on ``queue`` in this process (the generator's JobService)."""
    from taskqueue.store.enqueue import JobRequest

    job, _created = service.enqueue(JobRequest(task, [], queue=queue))
    return job.id


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_stock_workers_on_several_queues_leave_no_job_in_the_intermediate_lists(
    worker_class, generator, app_env, redis_client, processes
):
    """The stock workers take jobs into their queue's intermediate list and out of it as they start them."""
    processes.worker(env={**app_env, "TASKQUEUE_FAST_PATHS": "off", "TASKQUEUE_WORKER_CLASS": worker_class})
    jobs = [{"task": "noop", "queue": q} for q in ("high", "default", "low") for _ in range(3)]
    r = requests.post(generator.base + "/jobs/batch", json={"jobs": jobs}, timeout=5)
    ids = [j["jobId"] for j in r.json()["jobs"]]
    for job_id in ids:
        wait_status(generator.base, job_id, {"finished"}, timeout=20)
    assert [redis_client.llen(f"rq:queue:{q}:intermediate") for q in ("high", "default", "low")] == [0, 0, 0]
