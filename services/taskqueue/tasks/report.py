"""How far a running job has got: ``progress(current, total=None, message=None)``, shown by ``GET /status``.

Call it from a task as often as you like: it writes at most every :data:`INTERVAL` seconds (a call in
between only keeps its values, for the next write or the job's end), so a tight loop costs a clock read
and a comparison. The values go into the job's ``meta`` (RQ's documented place for progress, written as
``Job.save_meta`` does, unless the job was deleted), which the status document reads with the job: no
extra Redis call a status. Outside a job (a test, a script) it checks its arguments and writes nothing.
Writes are best effort: Redis away or full, the job runs on.
"""

from __future__ import annotations

import logging
import math
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
    _write(job, _document(current, total, message))


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
    if pending is not None and reported is job:
        _write(job, _document(*pending))


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
