"""How far a running job has got: ``progress(current, total=None, message=None)``, shown by ``GET /status``.

Call it from a task as often as you like: it writes at most every :data:`INTERVAL` seconds (a call in
between only keeps its values, for the next write or the job's end), so a tight loop costs a clock read
and a comparison. The values go into the job's ``meta`` (RQ's documented place for progress, written as
``Job.save_meta`` does, unless the job was deleted), which the status document reads with the job: no
extra Redis call a status. Outside a job (a test, a script) it checks its arguments and writes nothing.

A job's writes while it runs are sent by one thread of the process, for all its running jobs in one
round trip, within :data:`INTERVAL` (200 job slots reporting each second would otherwise make 200 round
trips, each job's thread waiting for its own); the values kept at a job's end are written by the job's
thread before the worker goes on. Writes are best effort: Redis away or full, the job runs on.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import redis
from redis.commands.core import Script
from rq import get_current_job

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between two writes of one job's progress
MESSAGE_MAX = 200  # characters of a message kept

_local = threading.local()  # the job this thread reports on, when it may write next, and what waits


def progress(current: float, total: float | None = None, message: str | None = None) -> None:
    """Record that the running job has done ``current`` of ``total`` (any unit), with an optional message."""
    if type(current) not in _PLAIN or type(total) not in _PLAIN_OR_NONE or type(message) not in _TEXT_OR_NONE:
        _check(current, total, message)  # a bool, a subclass, or not a number: TypeError unless it is one after all
    elif current - current or (total is not None and total - total):  # NaN or infinite: x - x is NaN, truthy
        raise TypeError(f"progress current and total must be finite numbers, not {current!r} and {total!r}")
    now = time.monotonic()
    state = _local.__dict__
    if now < state.get("next_at", 0.0):  # written less than INTERVAL ago (the state is this job's: see begin)
        state["pending"] = (current, total, message)
        return
    job = state.get("job") or get_current_job()
    if job is None:
        return
    state.update(job=job, next_at=now + INTERVAL, pending=None)
    _WRITER.put(job, _document(current, total, message))


def begin(job: Any) -> None:
    """Start this thread's reporting afresh for ``job``: the worker calls it in the job's thread (or work
    horse) before the job runs, so nothing kept from another job (one run outside a worker, say) carries over."""
    _local.__dict__.clear()
    _local.job = job


def flush(job: Any) -> None:
    """Write ``job``'s values kept since its last write, if any, and forget them: the worker calls it in the
    job's thread (or work horse) when the job ends."""
    state = _local.__dict__
    pending, reported = state.get("pending"), state.get("job")
    state.clear()
    if reported is not job:
        return
    queued = _WRITER.take(job)  # a write not sent yet: sent now, unless a newer value supersedes it
    if pending is not None:
        _write(job, _document(*pending))
    elif queued is not None:
        _write(job, queued)


def take_final(job: Any) -> dict[str, Any] | None:
    """``job``'s latest document not written yet (kept since its last write, or queued for the writer), put
    into ``job.meta`` for the worker to write with the job's end (one round trip less); forgotten here."""
    state = _local.__dict__
    if state.get("job") is not job:
        return None
    pending, state["pending"] = state.get("pending"), None
    queued = _WRITER.take(job)
    doc = _document(*pending) if pending is not None else queued
    if doc is not None:
        job.meta["progress"] = doc
    return doc


_PLAIN = {int, float}
_PLAIN_OR_NONE = {int, float, type(None)}
_TEXT_OR_NONE = {str, type(None)}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"progress {name} must be a finite number, not {value!r}")
    return value


def _check(current: Any, total: Any, message: Any) -> None:
    _number("current", current)
    if total is not None:
        _number("total", total)
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a string, not {type(message).__name__}")


def _document(current: Any, total: Any, message: Any) -> dict[str, Any]:
    return {
        "current": float(current) if type(current) is not int else current,
        "total": None if total is None else (float(total) if type(total) is not int else total),
        "message": None if message is None else str(message)[:MESSAGE_MAX],
        "updatedAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


# RQ's Job.save_meta, but only while the job exists: a job deleted while it runs gets no stub key back.
SAVE_META = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('HSET', KEYS[1], 'meta', ARGV[1])
end
return -1
"""
_save_meta: list[Script] = []  # the script, bound to the first client that wrote (it runs on any)


def _write(job: Any, doc: dict[str, Any]) -> None:
    job.meta["progress"] = doc
    try:
        if not _save_meta:
            _save_meta.append(job.connection.register_script(SAVE_META))
        _save_meta[0](keys=[job.key], args=[job.serializer.dumps(job.meta)], client=job.connection)
    except redis.exceptions.RedisError as exc:  # Redis away or full: the job runs on without it
        log.warning("job %s: progress not recorded: %s", job.id, exc)


class Writer:
    """The process's progress writes while jobs run: the latest document a job, sent every INTERVAL by one
    thread in one pipeline (started at the first write, again in a forked work horse)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[Any, dict[str, Any]]] = {}  # by job key: the job, its latest document
        self._sending = threading.Lock()  # held while a batch is sent: a job's last write goes after it
        self._pid = 0

    def put(self, job: Any, doc: dict[str, Any]) -> None:
        with self._cond:
            self._pending[job.key] = (job, doc)
            if self._pid != os.getpid():  # none yet in this process (a fork copies the flag, not the thread)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="progress-writer", daemon=True).start()
            self._cond.notify()

    def take(self, job: Any) -> dict[str, Any] | None:
        """The job's document not sent yet, taken out of the next batch; once this returns no batch in
        flight holds an older one (its last write cannot be overwritten by one sent late)."""
        with self._cond:
            queued = self._pending.pop(job.key, None)
        with self._sending:
            pass
        return None if queued is None else queued[1]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(INTERVAL)  # gather the others due meanwhile
            with self._sending:
                with self._cond:
                    batch, self._pending = self._pending, {}
                _write_many(list(batch.values()))


_WRITER = Writer()


def _write_many(writes: list[tuple[Any, dict[str, Any]]]) -> None:
    """Several jobs' documents, one round trip for those on each client."""
    by_client: dict[int, list[tuple[Any, dict[str, Any]]]] = {}
    for job, doc in writes:
        by_client.setdefault(id(job.connection), []).append((job, doc))
    for group in by_client.values():
        connection = group[0][0].connection
        try:
            if not _save_meta:
                _save_meta.append(connection.register_script(SAVE_META))
            with connection.pipeline(transaction=False) as pipe:
                for job, doc in group:
                    job.meta["progress"] = doc
                    _save_meta[0](keys=[job.key], args=[job.serializer.dumps(job.meta)], client=pipe)
                pipe.execute()
        except Exception as exc:  # Redis away or full, a meta not JSON: the jobs run on, the writer too
            log.warning("progress of %d jobs not recorded: %s", len(group), exc)
