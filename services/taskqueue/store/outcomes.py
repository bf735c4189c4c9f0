"""What a worker stores about how a job ended: error text that can always be stored, bounded results.

A job's code chooses its result and its exception's message, so both are input: a lone UTF-16
surrogate (valid in JSON, ``"\\ud800"``) cannot be encoded as UTF-8, and one megabyte of error text
a job is a megabyte of Redis memory per failure. Results cross into Redis as RQ's JSON (escaped, so
always encodable) and are bounded in size here; error text is made encodable and bounded here.

The ``error`` a client reads is a line taskqueue writes itself from the exception object, ahead of the
traceback: a message cannot forge it by ending in a line that looks like another exception.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from rq.job import Job, JobStatus
from rq.results import Result

# Characters of error text (traceback included) kept per failure; the end is kept, where the error is.
ERROR_TEXT_MAX = 4000
ERROR_MESSAGE_MAX = 1000  # characters of the message in the error line
ERROR_LINE_PREFIX = "taskqueue-error: "


class ResultTooLarge(Exception):
    """A job's result is larger than the worker may store."""


class JobStopped(Exception):
    """The job was stopped on request (``DELETE /jobs/<id>``), not by a timeout or an error of its own."""


def storable(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """``text`` with whatever UTF-8 cannot encode (lone surrogates) escaped, cut to its last ``limit`` characters."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(safe) <= limit:
        return safe
    return f"[{len(safe) - limit} characters cut]\n" + safe[-limit:]


def error_line(exc: BaseException | None) -> str:
    """The one line a failure's error is read from: the exception's type and message, as JSON."""
    doc = {"type": type(exc).__name__, "message": _message(exc)[:ERROR_MESSAGE_MAX]} if exc is not None else {}
    return ERROR_LINE_PREFIX + json.dumps(doc)  # ASCII only: JSON escapes every other character


def error_text(exc: BaseException | None, traceback_text: str) -> str:
    """What a failure stores: :func:`error_line`, then the traceback, encodable and bounded."""
    return error_line(exc) + "\n" + storable(traceback_text)


def error_summary(text: str | None) -> str:
    """The ``error`` a client reads from a failure's stored text: ``Type: message``."""
    if not text:
        return "job failed"
    first, _, _rest = text.partition("\n")
    if first.startswith(ERROR_LINE_PREFIX):
        try:
            doc = json.loads(first[len(ERROR_LINE_PREFIX) :])
            return f"{doc['type']}: {doc['message']}" if doc.get("message") else str(doc.get("type", "job failed"))
        except (ValueError, KeyError, TypeError):
            pass
    # Written by someone else (RQ's maintenance, an older version): its last line, as RQ shows it.
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "job failed"


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, or None: the API's timestamps."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_outcome(job: Job) -> dict[str, Any]:
    """How a job stands or ended, as the status document and a webhook's body tell it: its status, result or
    error, and its times (one more round trip for an ended job's latest Result)."""
    status = job.get_status(refresh=False)
    status_value = status.value if isinstance(status, JobStatus) else status
    latest: Result | None = None
    if status_value in ("finished", "failed", "stopped"):
        latest = job.latest_result()
    result = latest.return_value if latest is not None and latest.type == Result.Type.SUCCESSFUL else None
    error = None
    if status_value == "failed" or (latest is not None and latest.type == Result.Type.FAILED):
        error = error_summary(latest.exc_string if latest is not None else None)
    return {
        "status": status_value,
        "result": result,
        "error": error,
        "enqueuedAt": iso(job.enqueued_at),
        "startedAt": iso(job.started_at),
        "endedAt": iso(job.ended_at),
    }


def check_result_size(dumps: Any, value: Any, limit: int) -> None:
    """Raise :class:`ResultTooLarge` when ``value`` serializes to more than ``limit`` bytes."""
    if value is None:
        return
    size = len(dumps(value))
    if size > limit:
        raise ResultTooLarge(
            f"the job's result is {size} bytes of JSON; a worker stores at most {limit} (TASKQUEUE_MAX_RESULT_BYTES)"
        )


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a __str__ that raises is the job's bug, not a reason to lose the failure
        return f"<{type(exc).__name__}: message not printable>"


# The result limit of the job this process (or thread) runs: set by the worker around each job.
result_limit: ContextVar[int | None] = ContextVar("result_limit", default=None)


class BoundedResultJob(Job):
    """RQ's Job whose ``perform()`` refuses a result larger than :data:`result_limit` (the job then fails)."""

    def perform(self) -> Any:
        value = super().perform()
        limit = result_limit.get()
        if limit is not None:
            check_result_size(self.serializer.dumps, value, limit)
        return value
