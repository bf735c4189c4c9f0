"""The webhooks' records in Redis: what is owed to whom, durable before the job even runs.

A job with a ``callbackUrl`` gets, in the transaction that enqueues it, a record (``taskqueue:webhook:<job id>``:
its URL and task) and a place in the *waiting* set. Nothing else in the job's life changes: no worker, fast
path or RQ code writes anything for a webhook. The exporter's deliverer (webhooks/delivery.py) looks at the waiting
jobs' statuses; once one has ended (finished, failed with its retries spent, stopped, canceled), it writes
the body to send into the record and moves the job from *waiting* to *due* (a sorted set scored by the time
of the next attempt), in one transaction. So a delivery survives any worker's death at any moment, the
exporter's death (a due delivery is leased, not removed, while it is sent) and a Redis restart (with its
persistence), and is sent at least once.

The record is what ``GET /status/<id>`` shows as ``callback: {status, attempts, lastError}``, and the
outcomes' counts (``taskqueue:webhooks:stats``) are the exporter's ``taskqueue_webhook_deliveries_total``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.job import Job

from taskqueue.store.outcomes import job_outcome
from taskqueue.store.records import SERIALIZER

WAITING_KEY = "taskqueue:webhooks:waiting"  # set: ids of jobs with a callback that have not ended
DUE_KEY = "taskqueue:webhooks:due"  # sorted set: job id -> time of its delivery's next attempt
STATS_KEY = "taskqueue:webhooks:stats"  # hash: outcome -> attempts that had it
RECORD_PREFIX = "taskqueue:webhook:"
META_FLAG = "callback"  # in a job's meta: it has a record (so /status reads it)
ENDED = frozenset({"finished", "failed", "stopped", "canceled"})
OUTCOMES = ("delivered", "retry", "rejected", "expired", "refused")
RECORD_TTL = 7 * 24 * 3600  # seconds a record is kept once its delivery succeeded or was given up
SCAN_BATCH = 500  # waiting jobs whose status is read a round trip

# Claim up to ARGV[3] deliveries due by ARGV[1]: each is pushed to ARGV[2] (a lease) before it is returned,
# so a deliverer that dies while sending leaves it due again when the lease ends.
CLAIM_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


def record_key(job_id: str) -> str:
    return RECORD_PREFIX + job_id


def add(pipe: Pipeline, job_id: str, url: str, task: str) -> None:
    """Queue in ``pipe`` (the enqueue's transaction) a new job's callback: its record and its wait."""
    pipe.hset(record_key(job_id), mapping={"url": url, "task": task, "status": "pending", "attempts": 0})
    pipe.sadd(WAITING_KEY, job_id)


def rearm(pipe: Pipeline, job_id: str) -> None:
    """Queue in ``pipe`` (a requeue's transaction) a new delivery for a job that runs again."""
    key = record_key(job_id)
    pipe.hset(key, mapping={"status": "pending", "attempts": 0, "lastError": ""})
    pipe.hdel(key, "delivery", "body", "firstAttemptAt")
    pipe.persist(key)
    pipe.zrem(DUE_KEY, job_id)
    pipe.sadd(WAITING_KEY, job_id)


def status(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """What ``/status`` shows of a job's callback: ``{status, attempts, lastError}``; None without a record."""
    fields = redis.hmget(record_key(job_id), "status", "attempts", "lastError")
    if fields[0] is None:
        return None
    last_error = (fields[2] or b"").decode() or None
    return {"status": fields[0].decode(), "attempts": int(fields[1] or 0), "lastError": last_error}


def _waiting_ids(redis: Redis) -> Iterator[list[str]]:
    cursor = 0
    while True:
        cursor, ids = redis.sscan(WAITING_KEY, cursor, count=SCAN_BATCH)
        if ids:
            yield [i.decode() for i in ids]
        if not cursor:
            return


def move_ended(redis: Redis, now: float | None = None) -> int:
    """Make a delivery due for every waiting job that has ended (its body written now); how many."""
    moved = 0
    for ids in _waiting_ids(redis):
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(Job.key_for(job_id), "status")
            statuses = pipe.execute()
        for job_id, raw in zip(ids, statuses, strict=True):
            if raw is None or raw.decode() in ENDED:
                _make_due(redis, job_id, now if now is not None else time.time())
                moved += 1
    return moved


def _make_due(redis: Redis, job_id: str, now: float) -> None:
    key = record_key(job_id)
    task = (redis.hget(key, "task") or b"other").decode()
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except Exception:  # gone (expired, deleted) or not readable: nothing to tell, and it will not end again
        job = None
    with redis.pipeline() as pipe:
        pipe.srem(WAITING_KEY, job_id)
        if job is None:
            pipe.hset(key, mapping={"status": "failed", "lastError": "the job no longer exists"})
            pipe.expire(key, RECORD_TTL)
        else:
            body = {"jobId": job_id, "task": task, **job_outcome(job)}
            body.pop("error" if body["status"] == "finished" else "result")
            fields = {"delivery": uuid.uuid4().hex, "body": json.dumps(body, separators=(",", ":"))}
            pipe.hset(key, mapping={**fields, "firstAttemptAt": now})
            pipe.zadd(DUE_KEY, {job_id: now})
        pipe.execute()


def claim_due(redis: Redis, limit: int, lease: float, now: float | None = None) -> list[str]:
    """Up to ``limit`` job ids whose delivery is due, each leased for ``lease`` seconds."""
    now = time.time() if now is None else now
    ids = redis.eval(CLAIM_SCRIPT, 1, DUE_KEY, now, now + lease, limit)
    return [i.decode() for i in ids]


def read(redis: Redis, job_id: str) -> dict[str, str]:
    """A delivery's record, decoded."""
    return {k.decode(): v.decode() for k, v in redis.hgetall(record_key(job_id)).items()}


def settle(redis: Redis, job_id: str, outcome: str, attempts: int, error: str, retry_at: float | None) -> None:
    """Record an attempt: its ``outcome`` (one of :data:`OUTCOMES`), and when to try again, if ever."""
    key = record_key(job_id)
    with redis.pipeline() as pipe:
        final = "delivered" if outcome == "delivered" else "failed"
        state = final if retry_at is None else "pending"
        pipe.hset(key, mapping={"attempts": attempts, "lastError": error, "status": state})
        if retry_at is None:
            pipe.zrem(DUE_KEY, job_id)
            pipe.expire(key, RECORD_TTL)
        else:
            pipe.zadd(DUE_KEY, {job_id: retry_at})
        pipe.hincrby(STATS_KEY, outcome, 1)
        pipe.execute()


def counts(redis: Redis) -> tuple[dict[str, int], dict[str, int]]:
    """Attempts by outcome since Redis's data began, and deliveries pending by state (waiting, due)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(STATS_KEY)
        pipe.scard(WAITING_KEY)
        pipe.zcard(DUE_KEY)
        stats, waiting, due = pipe.execute()
    by_outcome = {o: int(stats.get(o.encode(), 0)) for o in OUTCOMES}
    return by_outcome, {"waiting": int(waiting), "due": int(due)}
