"""The generator's enqueue path (taskqueue.enqueue_path): stock RQ's records, in one Redis call.

Real redis-server; stock RQ 3.0 (``Queue.enqueue_many``, the path this replaces) writes the
reference records, and stock RQ's ``SimpleWorker`` runs what ours wrote.
"""

from __future__ import annotations

from rq import Queue, Retry, SimpleWorker
from rq.job import Job
from rq.utils import utcformat

from taskqueue.api.jobs import IDEMPOTENCY_PREFIX, SERIALIZER, JobRequest, JobService
from taskqueue.tasks import load

TASKS = load()  # the built-in tasks

PER_JOB = {b"created_at", b"enqueued_at"}  # timestamps: ours are one instant, stock's two


def requests() -> list[JobRequest]:
    """One job of every task, with arguments that exercise repr() and JSON (quotes, unicode, long)."""
    return [
        JobRequest(TASKS["sleep"], TASKS["sleep"].arguments({"seconds": 3})),
        JobRequest(TASKS["hash"], TASKS["hash"].arguments({"rounds": 10})),
        JobRequest(TASKS["noop"], []),
        JobRequest(TASKS["fail"], TASKS["fail"].arguments({"message": 'it\'s "é" ' + "x" * 120})),
    ]


def stock_enqueue(svc: JobService, reqs: list[JobRequest]) -> list[str]:
    """What JobService did before this path: stock RQ's enqueue_many with the same settings."""
    datas = [
        Queue.prepare_data(
            r.task.func,
            args=r.args,
            timeout=svc.cfg.job_timeout,
            result_ttl=svc.cfg.result_ttl,
            failure_ttl=svc.cfg.failure_ttl,
            retry=Retry(max=svc.cfg.retries, interval=list(svc.cfg.retry_intervals)) if svc.cfg.retries else None,
            meta={"task": r.task.name},
        )
        for r in reqs
    ]
    return [job.id for job in svc.queue.enqueue_many(datas)]


def snapshot(client, ids: list[str]) -> list[dict[bytes, bytes]]:
    return [{k: v for k, v in client.hgetall(Job.key_for(i)).items() if k not in PER_JOB} for i in ids]


def test_job_records_match_stock_rq_field_for_field(service, redis_client):
    reqs = requests()
    stock_ids = stock_enqueue(service, reqs)
    stock = snapshot(redis_client, stock_ids)
    stock_queues = redis_client.smembers(Queue.redis_queues_keys)
    redis_client.delete(service.queue.key, Queue.redis_queues_keys)
    ours_ids = [j.id for j in service.enqueue_batch(reqs)]
    assert snapshot(redis_client, ours_ids) == stock
    assert all(stock[i][b"description"] and stock[i][b"data"] for i in range(len(reqs)))
    assert redis_client.lrange(service.queue.key, 0, -1) == [i.encode() for i in ours_ids]
    assert redis_client.smembers(Queue.redis_queues_keys) == stock_queues == {service.queue.key.encode()}
    for i in ours_ids:
        fields = redis_client.hgetall(Job.key_for(i))
        assert fields[b"created_at"] == fields[b"enqueued_at"]
        assert redis_client.ttl(Job.key_for(i)) == -1  # no expiry while queued, as stock RQ


def test_rq_reads_our_jobs_back_and_stock_workers_run_them(service, redis_client):
    reqs = requests()[:3]  # not the failing task
    enqueued = service.enqueue_batch(reqs)
    for e, r in zip(enqueued, reqs, strict=True):
        job = Job.fetch(e.id, connection=redis_client, serializer=SERIALIZER)
        assert (job.func_name, list(job.args), job.meta, job.origin) == (
            f"{r.task.func.__module__}.{r.task.func.__qualname__}",
            r.args,
            {"task": r.task.name},
            "default",
        )
        assert redis_client.hget(job.key, "enqueued_at") == utcformat(e.enqueued_at).encode()
        assert job.retries_left == service.cfg.retries and job.timeout == service.cfg.job_timeout
    SimpleWorker(["default"], connection=redis_client, serializer=SERIALIZER).work(burst=True)
    for e in enqueued:
        assert Job.fetch(e.id, connection=redis_client, serializer=SERIALIZER).get_status() == "finished"


def test_a_mixed_batch_keeps_its_order_and_each_job_its_own_task(service, redis_client):
    tasks = [requests()[i % 3] for i in range(2500)]  # > the script's 1,000 ids an RPUSH
    ids = [j.id for j in service.enqueuers[service.queue.name].enqueue(tasks)]
    assert redis_client.lrange(service.queue.key, 0, -1) == [i.encode() for i in ids]
    metas = [redis_client.hget(Job.key_for(i), "meta") for i in ids[:6]]
    assert metas == [f'{{"task": "{tasks[k].task.name}"}}'.encode() for k in range(6)]


def test_idempotency_key_gets_its_lifetime_with_the_job(service, redis_client):
    req = requests()[2]
    first, created = service.enqueue(req, "order-42", "fingerprint-of-the-request")
    assert created and redis_client.lrange(service.queue.key, 0, -1) == [first.id.encode()]
    key = IDEMPOTENCY_PREFIX + "order-42"
    assert redis_client.get(key) == f"{first.id} fingerprint-of-the-request".encode()  # the job, and its request
    assert service.cfg.result_ttl - 5 < redis_client.ttl(key) <= service.cfg.result_ttl
    again, created = service.enqueue(req, "order-42", "fingerprint-of-the-request")
    assert not created and again.id == first.id and again.task == "noop"
    assert redis_client.llen(service.queue.key) == 1


def test_enqueue_works_after_redis_forgets_its_scripts(service, redis_client):
    """A Redis restart empties the script cache: the next call loads the script again (NOSCRIPT)."""
    service.enqueue(requests()[2])
    redis_client.script_flush()
    job, _ = service.enqueue(requests()[2])
    assert redis_client.llen(service.queue.key) == 2 and redis_client.exists(Job.key_for(job.id))


def test_the_same_call_sent_twice_queues_its_jobs_once(service, redis_client):
    """redis-py re-sends a command whose reply it lost (its Retry, on timeouts and dropped
    connections); on that path the script checks that the first send had not run. The first call
    goes over the script's own connection; the repeat takes redis-py's path (the own connection
    held, as by a concurrent call)."""
    reqs = requests()
    ids = [f"retried-{i}" for i in range(len(reqs))]
    service.enqueuers[service.queue.name].enqueue(reqs, ids)
    before = {i: redis_client.hgetall(Job.key_for(i)) for i in ids}
    with service.enqueuers[service.queue.name]._script._lock:
        service.enqueuers[service.queue.name].enqueue(reqs, ids)  # what the retry sends: the same ids and arguments
    assert redis_client.lrange(service.queue.key, 0, -1) == [i.encode() for i in ids]
    assert {i: redis_client.hgetall(Job.key_for(i)) for i in ids} == before


def test_rq_timestamp_is_rqs_utcformat():
    """The job hash's timestamps: the text RQ's ``utcformat`` gives, without its strftime."""
    from datetime import UTC, datetime, timedelta, timezone

    from taskqueue.fastpath.timestamps import rq_timestamp

    moments = [
        datetime(2026, 11, 28, 14, 25, 9, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: isoformat would drop them
        datetime(2026, 1, 2, 3, 4, 5, 7),  # naive
        datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),  # fields as they are
        datetime(1000, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    assert [rq_timestamp(m) for m in moments] == [utcformat(m) for m in moments]


def test_enqueues_check_the_script_connection_before_their_batch_is_taken(service, redis_client, monkeypatch):
    """JobService's wiring: the connection check (a turn of the loop under gevent) runs while the sender is
    still in line, so whoever it lets run joins the call; it is not repeated in the call."""
    from taskqueue.fastpath.script_call import OwnConnectionScript

    in_line = []
    real = OwnConnectionScript._check

    def counted(conn):
        in_line.append(len(service._commits[service.queue.name]._waiting))  # the sender's item: still waiting, or taken
        return real(conn)

    service.enqueue(requests()[2])  # the script is loaded (redis-py's path, no check of ours)
    monkeypatch.setattr(OwnConnectionScript, "_check", staticmethod(counted))
    for _ in range(3):
        service.enqueue(requests()[2])
    assert in_line == [1, 1, 1]
    assert redis_client.llen(service.queue.key) == 4


def test_job_ids_are_random_uuids_as_uuid4_writes_them():
    import uuid

    from taskqueue.fastpath.enqueue_path import new_job_id

    ids = [new_job_id() for _ in range(4000)]
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert {i[19] for i in ids} == set("89ab") and {i[14] for i in ids} == {"4"}
    assert len({i[20] for i in ids}) == 16  # the digits around the fixed ones stay random


def test_a_small_calls_data_and_description_are_made_once_and_kept_apart_by_value_and_type(service, monkeypatch):
    import zlib as real_zlib

    from taskqueue.fastpath import enqueue_path

    compressed = []

    class CountingZlib:
        @staticmethod
        def compress(data):
            compressed.append(data)
            return real_zlib.compress(data)

    monkeypatch.setattr(enqueue_path, "zlib", CountingZlib)
    enqueuer = service.enqueuers[service.queue.name]
    func = "taskqueue.tasks.sleep"
    first = enqueuer._payload(func, [25])
    assert enqueuer._payload(func, [25]) is first and len(compressed) == 1  # kept
    assert first == (real_zlib.compress(b'["taskqueue.tasks.sleep", null, [25], {}]'), "taskqueue.tasks.sleep(25)")
    # Equal as Python keys (1 == 1.0 == True), not as jobs: each has its own data and description.
    payloads = [enqueuer._payload(func, [v]) for v in (1, 1.0, True)]
    assert [p[1] for p in payloads] == [f"{func}(1)", f"{func}(1.0)", f"{func}(True)"]
    assert len({p[0] for p in payloads}) == 3
    big = ["x" * 200]
    enqueuer._payload(func, big)
    enqueuer._payload(func, big)
    assert compressed[-2:] == [compressed[-1]] * 2  # too big to keep: made each time
    monkeypatch.setattr(enqueue_path, "KEPT_PAYLOADS", len(enqueuer._payloads))
    kept = len(enqueuer._payloads)
    made = enqueuer._payload(func, [99])
    assert enqueuer._payload(func, [99]) is not made and len(enqueuer._payloads) == kept  # full: made each time
