"""A Python client of the generator's HTTP API: enqueue catalogue tasks, follow them, cancel them.

Standard library only (``urllib``), so an application can use it without the server's dependencies::

    from taskqueue.client import Client

    client = Client("http://127.0.0.1:8000")
    job_id = client.enqueue("hash", rounds=1000)
    print(client.wait(job_id, timeout=60)["result"])

Every error the API answers is raised as a typed :class:`ApiError` (``BadRequest`` with the argument at
fault in ``field``, ``NotFound``, ``Conflict``, ``BacklogFull``, ``Unavailable``), with its ``code``,
``message`` and ``retry_after``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

ENDED = frozenset({"finished", "failed", "stopped", "canceled"})


class ApiError(Exception):
    """An error answer of the API: its HTTP status, stable ``code``, ``message`` and ``Retry-After``."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None, field: str | None = None
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after, self.field = retry_after, field


class BadRequest(ApiError):
    """400: a bad task name or argument (``field`` names it), or a bad parameter."""


class NotFound(ApiError):
    """404: no such job (or it expired)."""


class Conflict(ApiError):
    """409: an Idempotency-Key in use or reused, or a job in a state the operation cannot change."""


class BacklogFull(ApiError):
    """429: the queue holds TASKQUEUE_MAX_BACKLOG jobs; try again after ``retry_after`` seconds."""


class Unavailable(ApiError):
    """503: Redis is unreachable or full; try again after ``retry_after`` seconds."""


class WaitTimeout(TimeoutError):
    """The job had not ended when :meth:`Client.wait` gave up; ``status`` is what it last read."""

    def __init__(self, job_id: str, status: Mapping[str, Any]):
        super().__init__(f"job {job_id} is still {status.get('status')}")
        self.job_id, self.status = job_id, status


ERRORS: dict[int, type[ApiError]] = {400: BadRequest, 404: NotFound, 409: Conflict, 429: BacklogFull, 503: Unavailable}
BUSY = (BacklogFull, Unavailable)


class Client:
    """The API at ``base_url``; ``token`` is sent as ``Authorization: Bearer <token>`` when given."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        """One API call: the decoded JSON answer, or the ApiError it answered."""
        head = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data, head["Content-Type"] = json.dumps(body).encode(), "application/json"
        if self.token:
            head["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data=data, headers=head, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None

    def enqueue(
        self,
        task: str,
        *,
        idempotency_key: str | None = None,
        retry_for: float = 0.0,
        run_at: datetime | str | None = None,
        delay_seconds: float | None = None,
        callback_url: str | None = None,
        **args: Any,
    ) -> str:
        """Enqueue ``task`` with keyword ``args``; the job id.

        ``retry_for``: seconds to keep trying while the API answers 429, 503 or 409 ``idempotency_conflict``
        (an earlier try still holds the key), waiting its Retry-After between tries; the tries share one
        Idempotency-Key (``idempotency_key``, else a new one), so the job is enqueued once however many answers
        were lost. ``run_at`` (a time with a zone) or
        ``delay_seconds`` schedules the job to run then. ``callback_url``: where to POST the job's outcome when it
        ends (check it there with :func:`verify_webhook`).
        """
        if retry_for > 0 and idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        body: dict[str, Any] = {"task": task, "args": args}
        if run_at is not None:
            body["runAt"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
        if delay_seconds is not None:
            body["delaySeconds"] = delay_seconds
        if callback_url is not None:
            body["callbackUrl"] = callback_url
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return self.request("POST", "/jobs", body, headers)["jobId"]
            except (*BUSY, Conflict) as exc:
                if isinstance(exc, Conflict) and exc.code != "idempotency_conflict":
                    raise  # the key was used with another request: no retry helps
                pause = exc.retry_after if exc.retry_after is not None else 1.0
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)

    def enqueue_many(self, jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Enqueue ``(task, args)`` pairs in one request (up to 1,000), all or none; their job ids in order."""
        body = {"jobs": [{"task": task, "args": dict(args)} for task, args in jobs]}
        return [job["jobId"] for job in self.request("POST", "/jobs/batch", body)["jobs"]]

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status document: ``status``, ``result``, ``error``, times, retries left."""
        return self.request("GET", f"/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        timeout: float = 60.0,
        on_poll: Callable[[dict[str, Any], float], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job has ended (finished, failed, stopped, canceled); its status document.

        Polls back off from 0.1 s to 2 s (with jitter); ``on_poll(status, elapsed)`` sees each read.
        Raises WaitTimeout after ``timeout`` seconds.
        """
        started = time.monotonic()
        pause = 0.1
        while True:
            doc = self.status(job_id)
            elapsed = time.monotonic() - started
            if on_poll is not None:
                on_poll(doc, elapsed)
            if doc.get("status") in ENDED:
                return doc
            if elapsed + pause > timeout:
                raise WaitTimeout(job_id, doc)
            time.sleep(pause * random.uniform(0.8, 1.2))
            pause = min(pause * 1.6, 2.0)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a waiting job or stop a running one; its status document."""
        return self.request("DELETE", f"/jobs/{job_id}")

    def tasks(self) -> list[dict[str, Any]]:
        """The catalogue: each task's name, description, arguments' JSON Schema, queue, timeout, retries."""
        return self.request("GET", "/tasks")["tasks"]


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        error = json.loads(exc.read())["error"]
        code, message, field = error["code"], error["message"], error.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "http_error", exc.reason or "", None
    try:
        retry_after: float | None = float(exc.headers.get("Retry-After") or "")
    except ValueError:  # none, or an HTTP date (the API sends seconds)
        retry_after = None
    return ERRORS.get(exc.code, ApiError)(exc.code, code, message, retry_after, field)


def verify_webhook(secret: str | bytes, body: bytes, signature: str | None) -> bool:
    """Whether a webhook's ``X-Taskqueue-Signature`` header is ours for ``body`` (the raw bytes received),
    compared in constant time. A receiver also drops a repeated ``X-Taskqueue-Delivery`` (sent at least once)."""
    key = secret.encode() if isinstance(secret, str) else secret
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return signature is not None and hmac.compare_digest(signature.encode(), expected.encode())
