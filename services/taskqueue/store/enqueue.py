"""A validated job request, what the API reports of an enqueued job, and RQ's own way of enqueueing.

:class:`StockEnqueuer` writes new jobs with ``Queue.enqueue_many`` in one MULTI/EXEC, and scheduled ones
(``run_at``) with ``Queue.schedule_job`` in the same transaction, with the webhook records of jobs that
have a ``callback_url``. With fast paths on, the job service uses
:class:`taskqueue.fastpath.enqueue_path.Enqueuer` for jobs to run now: the same records, the same
interface, in one script call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from redis.client import Pipeline
from rq import Queue, Retry
from rq.job import JobStatus

from taskqueue.config import Config
from taskqueue.store import outbox
from taskqueue.tasks import Task


@dataclass(frozen=True)
class JobRequest:
    """A validated request for one job."""

    task: Task
    args: list[Any]
    description: str | None = None
    run_at: datetime | None = None  # scheduled: not before this time (UTC, whole seconds); None: now
    queue: str | None = None  # the queue it asks for; None: its task's
    callback_url: str | None = None  # where to POST when the job ends (checked by webhooks.guard)


@dataclass(frozen=True)
class Enqueued:
    """What the API reports about an enqueued job."""

    id: str
    task: str
    args: list[Any]
    enqueued_at: datetime | None  # a scheduled job: when it was accepted
    run_at: datetime | None = None


@dataclass(frozen=True)
class JobSettings:
    """The per-job settings the generator gives every job (from its config)."""

    timeout: int
    result_ttl: int
    failure_ttl: int
    retries: int
    retry_intervals: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> JobSettings:
        return cls(cfg.job_timeout, cfg.result_ttl, cfg.failure_ttl, cfg.retries, cfg.retry_intervals)

    def for_task(self, task: Task) -> JobSettings:
        """These settings with the task's own timeout and retries, where it sets them."""
        timeout = self.timeout if task.timeout is None else task.timeout
        retries = self.retries if task.retries is None else task.retries
        return replace(self, timeout=timeout, retries=retries)

    @property
    def retry(self) -> Retry | None:
        return Retry(max=self.retries, interval=list(self.retry_intervals)) if self.retries else None

    def job_options(self) -> dict[str, Any]:
        """These settings as the keyword arguments of RQ's ``Job.create`` and ``Queue.prepare_data``."""
        return {
            "timeout": self.timeout,
            "result_ttl": self.result_ttl,
            "failure_ttl": self.failure_ttl,
            "retry": self.retry,
        }


class BaseEnqueuer(ABC):
    """Writes plain jobs of the given tasks at the back of one queue, in order, in one atomic step."""

    def __init__(self, queue: Queue, settings: JobSettings):
        self.queue = queue
        self.settings = settings

    def check_connection(self) -> None:
        """The checks to make ahead of the next :meth:`enqueue`: none, unless the writer skips redis-py's."""
        return None

    def enqueue(
        self,
        reqs: Sequence[JobRequest],
        job_ids: Sequence[str] | None = None,
        idempotency: tuple[str, int] | None = None,
    ) -> list[Enqueued]:
        """Enqueue ``reqs`` (with ``job_ids``, else new ids), in order, in one atomic step.

        ``idempotency`` is a key and a TTL to set on it in the same step (the key must exist).
        """
        if not reqs:
            return []
        written = self._write(reqs, job_ids, idempotency)
        return [
            Enqueued(job_id, req.task.name, req.args, at, req.run_at)
            for (job_id, at), req in zip(written, reqs, strict=True)
        ]

    @abstractmethod
    def _write(
        self, reqs: Sequence[JobRequest], job_ids: Sequence[str] | None, idempotency: tuple[str, int] | None
    ) -> list[tuple[str, datetime | None]]:
        """Write the jobs; each one's id and enqueue time."""


class StockEnqueuer(BaseEnqueuer):
    """RQ's ``Queue.enqueue_many`` (and ``Queue.schedule_job`` for scheduled requests), in one transaction."""

    def _write(
        self, reqs: Sequence[JobRequest], job_ids: Sequence[str] | None, idempotency: tuple[str, int] | None
    ) -> list[tuple[str, datetime | None]]:
        with self.queue.connection.pipeline() as pipe:
            written = self.write_into(pipe, reqs, job_ids)
            if idempotency is not None:
                pipe.expire(*idempotency)
            pipe.execute()
        return written

    def write_into(
        self, pipe: Pipeline, reqs: Sequence[JobRequest], job_ids: Sequence[str] | None = None
    ) -> list[tuple[str, datetime | None]]:
        """Queue the jobs' writes in ``pipe`` (a transaction the caller executes); each one's id and time."""
        ids: Sequence[str | None] = job_ids if job_ids is not None else [None] * len(reqs)
        options = [
            {
                "args": req.args,
                "description": req.description,
                "job_id": job_id,
                "meta": {
                    "task": req.task.name,
                    **({"runAt": req.run_at.isoformat()} if req.run_at else {}),
                    **({outbox.META_FLAG: True} if req.callback_url else {}),
                },
                **self.settings.for_task(req.task).job_options(),
            }
            for req, job_id in zip(reqs, ids, strict=True)
        ]
        pairs = list(zip(reqs, options, strict=True))
        datas = [Queue.prepare_data(req.task.func, **opts) for req, opts in pairs if req.run_at is None]
        jobs = iter(self.queue.enqueue_many(datas, pipeline=pipe))
        written: list[tuple[str, datetime | None]] = []
        for req, opts in pairs:
            if req.run_at is None:
                job = next(jobs)
                written.append((job.id, job.enqueued_at))
            else:  # status scheduled, in the scheduled registry scored by run_at; the scheduler queues it
                job = self.queue.create_job(req.task.func, status=JobStatus.SCHEDULED, **opts)
                self.queue.schedule_job(job, req.run_at, pipeline=pipe)
                written.append((job.id, job.created_at))
        for req, (job_id, _at) in zip(reqs, written, strict=True):
            if req.callback_url:  # owed from now on, in the same transaction as the job (webhooks/outbox.py)
                outbox.add(pipe, job_id, req.callback_url, req.task.name)
        return written
