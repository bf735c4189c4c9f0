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
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job

from taskqueue.store.outcomes import job_outcome
from taskqueue.store.records import SERIALIZER

log = logging.getLogger("taskqueue.webhooks")

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


# Make a waiting job's delivery due (KEYS: waiting set, job hash, record, due set; ARGV: job id, the status
# the body was built from, delivery id, body, now): only while the job is still waiting and still has that
# status, so a requeue between the read and this write (which re-arms the wait) is never undone.
MAKE_DUE_SCRIPT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], 'delivery', ARGV[3], 'body', ARGV[4], 'firstAttemptAt', ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
return 1
"""

# Record an attempt (KEYS: record, due set, stats; ARGV: job id, delivery id, attempts before it, outcome,
# error, retry time or '' when final, final status, record TTL) only if the record still holds that delivery
# at that count: an attempt that outlived its lease, or one whose job was requeued meanwhile, changes nothing.
SETTLE_SCRIPT = """
local rec = redis.call('HMGET', KEYS[1], 'delivery', 'attempts')
if rec[1] ~= ARGV[2] or tonumber(rec[2] or '0') ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'attempts', tonumber(ARGV[3]) + 1, 'lastError', ARGV[5])
if ARGV[6] == '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[7])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
else
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return 1
"""


def _waiting_ids(redis: Redis) -> Iterator[list[str]]:
    cursor = 0
    while True:
        cursor, ids = redis.sscan(WAITING_KEY, cursor, count=SCAN_BATCH)
        if ids:
            yield [i.decode() for i in ids]
        if not cursor:
            return


def move_ended(redis: Redis, now: float | None = None) -> int:
    """Make a delivery due for every waiting job that has ended (its body written now); how many.

    A job that cannot be told (its data gone or not readable) is logged and given up, alone."""
    moved = 0
    for ids in _waiting_ids(redis):
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(Job.key_for(job_id), "status")
            statuses = pipe.execute()
        for job_id, raw in zip(ids, statuses, strict=True):
            if raw is None or raw.decode() in ENDED:
                moved += _make_due(redis, job_id, now if now is not None else time.time())
    return moved


def _make_due(redis: Redis, job_id: str, now: float) -> int:
    key = record_key(job_id)
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
        task = (redis.hget(key, "task") or b"other").decode()
        body = {"jobId": job_id, "task": task, **job_outcome(job)}
    except (NoSuchJobError, DeserializationError) as exc:  # it will not end again: nothing to tell
        reason = "the job no longer exists" if isinstance(exc, NoSuchJobError) else "the job's data is not readable"
        return _give_up(redis, job_id, reason)
    body.pop("error" if body["status"] == "finished" else "result")
    keys = [WAITING_KEY, Job.key_for(job_id), key, DUE_KEY]
    delivery = uuid.uuid4().hex
    args = [job_id, body["status"], delivery, json.dumps(body, separators=(",", ":")), now]
    return int(redis.eval(MAKE_DUE_SCRIPT, len(keys), *keys, *args))


def _give_up(redis: Redis, job_id: str, reason: str) -> int:
    log.warning("webhook of job %s given up: %s", job_id, reason)
    with redis.pipeline() as pipe:
        pipe.srem(WAITING_KEY, job_id)
        pipe.hset(record_key(job_id), mapping={"status": "failed", "lastError": reason})
        pipe.expire(record_key(job_id), RECORD_TTL)
        pipe.hincrby(STATS_KEY, "expired", 1)
        pipe.execute()
    return 0


def claim_due(redis: Redis, limit: int, lease: float, now: float | None = None) -> list[str]:
    """Up to ``limit`` job ids whose delivery is due, each leased for ``lease`` seconds."""
    now = time.time() if now is None else now
    ids = redis.eval(CLAIM_SCRIPT, 1, DUE_KEY, now, now + lease, limit)
    return [i.decode() for i in ids]


def read(redis: Redis, job_id: str) -> dict[str, str]:
    """A delivery's record, decoded."""
    return {k.decode(): v.decode() for k, v in redis.hgetall(record_key(job_id)).items()}


def settle(
    redis: Redis, job_id: str, delivery: str, attempts: int, outcome: str, error: str, retry_at: float | None
) -> bool:
    """Record attempt number ``attempts`` of ``delivery``: its ``outcome`` (one of :data:`OUTCOMES`), and when to
    try again, if ever. False (nothing written) when the record moved on meanwhile (see SETTLE_SCRIPT)."""
    final = "delivered" if outcome == "delivered" else "failed"
    keys = [record_key(job_id), DUE_KEY, STATS_KEY]
    args = [job_id, delivery, attempts - 1, outcome, error, "" if retry_at is None else retry_at, final, RECORD_TTL]
    return bool(redis.eval(SETTLE_SCRIPT, len(keys), *keys, *args))


def drop_due(redis: Redis, job_id: str) -> None:
    """Take a due entry that has nothing to send (its record has no delivery: re-armed, or gone) out of the set."""
    redis.zrem(DUE_KEY, job_id)


def counts(redis: Redis) -> tuple[dict[str, int], dict[str, int]]:
    """Attempts by outcome since Redis's data began, and deliveries pending by state (waiting, due)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(STATS_KEY)
        pipe.scard(WAITING_KEY)
        pipe.zcard(DUE_KEY)
        stats, waiting, due = pipe.execute()
    by_outcome = {o: int(stats.get(o.encode(), 0)) for o in OUTCOMES}
    return by_outcome, {"waiting": int(waiting), "due": int(due)}
