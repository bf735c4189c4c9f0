"""A validated job request, what the API reports of an enqueued job, and RQ's own way of enqueueing.

:class:`StockEnqueuer` writes new jobs with ``Queue.enqueue_many`` in one MULTI/EXEC. With fast paths on,
the job service uses :class:`taskqueue.fastpath.enqueue_path.Enqueuer` instead: the same records, the same
interface, in one script call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rq import Queue, Retry

from taskqueue.tasks import Task


@dataclass(frozen=True)
class JobRequest:
    """A validated request for one job."""

    task: Task
    args: list[Any]
    description: str | None = None


@dataclass(frozen=True)
class Enqueued:
    """What the API reports about an enqueued job."""

    id: str
    task: str
    args: list[Any]
    enqueued_at: datetime | None


@dataclass(frozen=True)
class JobSettings:
    """The per-job settings the generator gives every job (from its config)."""

    timeout: int
    result_ttl: int
    failure_ttl: int
    retry: Retry | None


class StockEnqueuer:
    """Enqueue plain jobs on one queue with RQ's ``Queue.enqueue_many``, atomically."""

    def __init__(self, queue: Queue, settings: JobSettings, tasks: Mapping[str, Task]):
        self.queue = queue
        self.settings = settings
        self.tasks = tasks

    def check_connection(self) -> None:
        """Nothing to check ahead of a call: redis-py checks its pooled connection itself."""

    def enqueue(
        self,
        reqs: Sequence[JobRequest],
        job_ids: Sequence[str] | None = None,
        idempotency: tuple[str, int] | None = None,
    ) -> list[Enqueued]:
        """Enqueue ``reqs`` at the back of the queue, in order, in one transaction.

        ``idempotency`` is a key and a TTL to set on it in the same transaction (the key must exist).
        """
        if not reqs:
            return []
        ids: Sequence[str | None] = job_ids if job_ids is not None else [None] * len(reqs)
        settings = self.settings
        datas = [
            Queue.prepare_data(
                req.task.func,
                args=req.args,
                timeout=settings.timeout,
                result_ttl=settings.result_ttl,
                failure_ttl=settings.failure_ttl,
                description=req.description,
                job_id=job_id,
                meta={"task": req.task.name},
                retry=settings.retry,
            )
            for req, job_id in zip(reqs, ids, strict=True)
        ]
        with self.queue.connection.pipeline() as pipe:
            jobs = self.queue.enqueue_many(datas, pipeline=pipe)
            if idempotency is not None:
                pipe.expire(*idempotency)
            pipe.execute()
        return [Enqueued(job.id, req.task.name, req.args, job.enqueued_at) for job, req in zip(jobs, reqs, strict=True)]
