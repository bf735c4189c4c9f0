"""Enqueueing, inspecting, cancelling and requeueing jobs: the queue logic behind the HTTP API."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.serializers import JSONSerializer

from .config import Config
from .connection import UNAVAILABLE_ERRORS
from .enqueue_path import Enqueued, Enqueuer, JobSettings
from .group_commit import GroupCommit
from .tasks import TASKS, Task, task_name
from .timestamps import iso

# JSON on both sides of Redis: a job hash never holds a pickle, and one that does is refused.
SERIALIZER = JSONSerializer

# Job ids as RQ makes them; "batch" is not one, so GET /jobs/batch is a 405, not a lookup.
JOB_ID_REGEX = r"(?!batch$)[A-Za-z0-9_-]{1,64}"
JOB_ID_PATTERN = f"^{JOB_ID_REGEX}$"
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENCY_PREFIX = "taskqueue:idempotency:"
IDEMPOTENCY_CLAIM_TTL = 10  # seconds a claim lives before its job exists
IDEMPOTENCY_WAIT = 2.0  # seconds a concurrent request waits for the winner's job
# The backlog check reads the queue's length at most this often (s), and always within this many
# jobs (or 10 %) of the limit: far from it, /start makes one Redis round trip, not two (bench/).
BACKLOG_READ_EVERY = 0.1
BACKLOG_MARGIN = 100

REGISTRIES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "deferred": DeferredJobRegistry,
    "canceled": CanceledJobRegistry,
}
LIST_STATES = ("queued", *REGISTRIES)
STATUSES = ("queued", "started", "finished", "failed", "scheduled", "deferred", "canceled", "stopped")


class JobNotFound(LookupError):
    """No job with that id (or the id is not a valid job id)."""


class JobStateConflict(RuntimeError):
    """The job is in a state that does not allow the requested operation."""


class BacklogFull(RuntimeError):
    """The queue already holds ``max_backlog`` jobs."""


@dataclass(frozen=True)
class JobRequest:
    """A validated request for one job."""

    task: Task
    args: list[Any]
    description: str | None = None


class JobService:
    """The queue operations the API needs, bound to one Redis connection and config."""

    def __init__(self, cfg: Config, connection: Redis):
        self.cfg = cfg
        self.redis = connection
        self.queue = Queue(cfg.queue, connection=connection, serializer=SERIALIZER)
        self.retry = Retry(max=cfg.retries, interval=list(cfg.retry_intervals)) if cfg.retries else None
        self.enqueuer = Enqueuer(
            self.queue, JobSettings(cfg.job_timeout, cfg.result_ttl, cfg.failure_ttl, self.retry), TASKS
        )
        # Concurrent enqueues without an Idempotency-Key share one script call (group_commit.py); the
        # connection check before it lets the requests ready by then join it.
        self._commit: GroupCommit[JobRequest, Enqueued] = GroupCommit(
            self.enqueuer.enqueue, before_batch=self.enqueuer.check_connection
        )
        self._backlog, self._backlog_read_at = 0, float("-inf")

    def queue_for(self, name: str) -> Queue:
        return Queue(name, connection=self.redis, serializer=SERIALIZER)

    # -- enqueue -----------------------------------------------------------------------------------

    def _check_backlog(self, adding: int) -> None:
        """Refuse work beyond ``max_backlog`` queued jobs, without a Redis call for most requests.

        The queue's length is read at most every BACKLOG_READ_EVERY seconds and this process's own
        enqueues are added to it; within max(BACKLOG_MARGIN, 10 %) of the limit it is read every time.
        Like any check-then-enqueue across processes, the limit is soft.
        """
        limit = self.cfg.max_backlog
        if not limit:
            return
        now = time.monotonic()
        near = self._backlog + adding > limit - max(BACKLOG_MARGIN, limit // 10)
        if near or now - self._backlog_read_at > BACKLOG_READ_EVERY:
            self._backlog, self._backlog_read_at = self.queue.count, now
        if self._backlog + adding > limit:
            raise BacklogFull(f"queue '{self.queue.name}' holds {limit} jobs or more")
        self._backlog += adding

    def enqueue(self, req: JobRequest, idempotency_key: str | None = None) -> tuple[Enqueued, bool]:
        """Enqueue one job; with an idempotency key, return the key's job instead when it exists.

        Returns the job and whether it was created by this call.
        """
        if idempotency_key is None:
            self._check_backlog(1)
            return self._commit.submit(req), True
        key = IDEMPOTENCY_PREFIX + idempotency_key
        deadline = time.monotonic() + IDEMPOTENCY_WAIT
        while True:
            job_id = uuid4().hex
            # SET NX decides the race between concurrent requests with the same key. The claim is
            # short-lived until the job exists, so a request that dies in between blocks no one for long.
            if self.redis.set(key, job_id, nx=True, ex=IDEMPOTENCY_CLAIM_TTL):
                try:
                    self._check_backlog(1)
                    # The job and the key's full lifetime in one atomic step: both or neither.
                    (job,) = self.enqueuer.enqueue([req], [job_id], (key, self.cfg.result_ttl))
                except BaseException:
                    with contextlib.suppress(*UNAVAILABLE_ERRORS):
                        self.redis.delete(key)
                    raise
                return job, True
            existing = self.redis.get(key)
            if existing is not None:
                try:
                    return enqueued(self.fetch(existing.decode())), False
                except JobNotFound:
                    pass  # the winner of the race has not enqueued it yet
            if time.monotonic() > deadline:
                raise JobStateConflict("a request with this Idempotency-Key is still being processed")
            time.sleep(0.02)

    def enqueue_batch(self, reqs: Sequence[JobRequest]) -> list[Enqueued]:
        """Enqueue many jobs in one atomic Redis call."""
        self._check_backlog(len(reqs))
        return self.enqueuer.enqueue(reqs)

    # -- inspect -----------------------------------------------------------------------------------

    def fetch(self, job_id: str) -> Job:
        if not JOB_ID_RE.match(job_id):
            raise JobNotFound(job_id)
        try:
            return Job.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            raise JobNotFound(job_id) from None

    def describe(self, job: Job) -> dict[str, Any]:
        """The status document of a job (the seed's ``result`` plus lifecycle fields)."""
        status = job.get_status(refresh=False)
        status_value = status.value if isinstance(status, JobStatus) else status
        latest: Result | None = None
        if status_value in ("finished", "failed", "stopped"):
            latest = job.latest_result()
        result = latest.return_value if latest is not None and latest.type == Result.Type.SUCCESSFUL else None
        error = None
        if status_value == "failed" or (latest is not None and latest.type == Result.Type.FAILED):
            error = _error_summary(latest.exc_string if latest is not None else None)
        return {
            "jobId": job.id,
            "task": job_task(job),
            "status": status_value,
            "result": result,
            "error": error,
            "enqueuedAt": iso(job.enqueued_at),
            "startedAt": iso(job.started_at),
            "endedAt": iso(job.ended_at),
            "retriesLeft": job.retries_left,
            "queue": job.origin,
        }

    def list_ids(self, state: str, offset: int, limit: int) -> tuple[list[str], int]:
        """A page of job ids in ``state`` for the default queue, and the total in that state."""
        if state == "queued":
            total = self.queue.count
            ids = self.queue.get_job_ids(offset=offset, length=limit)
            return ids, total
        if state == "started":
            return self._running(offset, limit)
        registry = REGISTRIES[state](self.queue.name, connection=self.redis, serializer=SERIALIZER)
        # No cleanup from the request path: maintenance is the exporter's job.
        total = registry.get_job_count(cleanup=False)
        ids = registry.get_job_ids(start=offset, end=offset + limit - 1, cleanup=False)
        return ids, total

    def _running(self, offset: int, limit: int) -> tuple[list[str], int]:
        """Started jobs whose claim is alive (an expired one belongs to a dead worker)."""
        registry = StartedJobRegistry(self.queue.name, connection=self.redis, serializer=SERIALIZER)
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(registry.key, now, "+inf", start=offset, num=limit)
            pipe.zcount(registry.key, now, "+inf")
            entries, total = pipe.execute()
        return [registry.parse_job_id(e.decode()) for e in entries], int(total)

    # -- change ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job, or stop a running one."""
        job = self.fetch(job_id)
        status = job.get_status()
        if status == JobStatus.STARTED:
            try:
                send_stop_job_command(self.redis, job.id, serializer=SERIALIZER)
            except InvalidJobOperation as exc:  # between dequeue and start: no worker to tell yet
                raise JobStateConflict(f"job is starting, try again: {exc}") from None
        elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            try:
                job.cancel()
            except InvalidJobOperation as exc:
                raise JobStateConflict(str(exc)) from None
        else:
            raise JobStateConflict(
                f"job is {status.value}; only queued, scheduled, deferred or started jobs can be cancelled"
            )
        job.refresh()
        return job

    def requeue(self, job_id: str) -> Job:
        """Put a failed (or stopped/canceled) job back on its queue."""
        job = self.fetch(job_id)
        status = job.get_status()
        if status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            raise JobStateConflict(f"job is {status.value}; only failed, stopped or canceled jobs can be requeued")
        if status == JobStatus.FAILED:
            FailedJobRegistry(job.origin, connection=self.redis, serializer=SERIALIZER).requeue(job)
        else:
            self.queue_for(job.origin).enqueue_job(job)
        job.refresh()
        return job


def enqueued(job: Job) -> Enqueued:
    """What the API reports about an existing job (an Idempotency-Key's replay)."""
    task = job_task(job)
    return Enqueued(job.id, task, list(job.args) if task != "other" else [], job.enqueued_at)


def job_task(job: Job) -> str:
    """The task key of a job; 'other' for one whose data is not ours (e.g. not JSON)."""
    try:
        return task_name(job.func_name)
    except DeserializationError:
        return "other"


def _error_summary(exc_string: str | None) -> str:
    """The last line of a traceback: the exception type and message, not the stack."""
    if not exc_string:
        return "job failed"
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "job failed"
