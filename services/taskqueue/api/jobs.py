"""Enqueueing, inspecting, cancelling and requeueing jobs: the queue logic behind the HTTP API."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import uuid4

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry

from taskqueue.config import Config
from taskqueue.fastpath.enqueue_path import Enqueuer
from taskqueue.fastpath.group_commit import GroupCommit
from taskqueue.store import outbox
from taskqueue.store.connection import STORE_FULL_ERRORS, UNAVAILABLE_ERRORS
from taskqueue.store.enqueue import BaseEnqueuer, Enqueued, JobRequest, JobSettings, StockEnqueuer
from taskqueue.store.outcomes import iso, job_outcome
from taskqueue.store.records import REGISTRIES, SERIALIZER
from taskqueue.tasks import Catalogue, Task
from taskqueue.tasks import load as load_catalogue
from taskqueue.webhooks.guard import AllowList

# Job ids as RQ makes them; "batch" is not one, so GET /jobs/batch is a 405, not a lookup.
JOB_ID_REGEX = r"(?!batch$)[A-Za-z0-9_-]{1,64}"
JOB_ID_PATTERN = f"^{JOB_ID_REGEX}$"
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENCY_PREFIX = "taskqueue:idempotency:"
IDEMPOTENCY_CLAIM_TTL = 10  # seconds a claim lives before its job exists
IDEMPOTENCY_WAIT = 2.0  # seconds a concurrent request waits for the winner's job
# The capacity check reads the queue's length and Redis's memory at most this often (s), and the
# length always within this many jobs (or 10 %) of the backlog limit: far from it, /start makes one
# Redis round trip, not two (bench/).
CAPACITY_READ_EVERY = 0.1
BACKLOG_MARGIN = 100
# Bytes a queued job adds to Redis when it ends (its result, registry entries): the built-in tasks'
# measure ~1.1-1.3 kB with Redis configured as the chart does (python -m bench memory); with margin.
QUEUED_JOB_GROWTH = 2048

LIST_STATES = ("queued", *REGISTRIES)
STATUSES = ("queued", "started", "finished", "failed", "scheduled", "deferred", "canceled", "stopped")


class JobNotFound(LookupError):
    """No job with that id (or the id is not a valid job id)."""


class JobStateConflict(RuntimeError):
    """The job is in a state that does not allow the requested operation."""


class BacklogFull(RuntimeError):
    """The queue already holds ``max_backlog`` jobs."""


class StoreFull(RuntimeError):
    """Redis's memory is at ``redis_memory_limit`` percent of its ``maxmemory``, or Redis refused a write as full."""


class IdempotencyMismatch(RuntimeError):
    """An Idempotency-Key was first used with another request (another route, task or arguments)."""


class JobService:
    """The queue operations the API needs, bound to one Redis connection and config."""

    def __init__(self, cfg: Config, connection: Redis, catalogue: Catalogue | None = None):
        """``catalogue``: the tasks jobs may name (default: loaded from ``cfg.task_modules``); each task's
        ``queue`` must be one of ``cfg.queues`` (else CatalogueError)."""
        self.cfg = cfg
        self.redis = connection
        self.catalogue = catalogue if catalogue is not None else load_catalogue(cfg.task_modules)
        self.catalogue.check_queues(cfg.queues)
        # The queues the API lists, the first (the default of a task without one) first.
        self.queues = {name: self.queue_for(name) for name in cfg.queues}
        self.queue = self.queues[cfg.queue]
        settings = JobSettings.from_config(cfg)
        # One writer per queue (a request may name any of them); scheduled jobs are written by RQ's own
        # way on every path (the scheduler, not this writer, queues them later).
        self.enqueuers: dict[str, BaseEnqueuer] = {}
        self.schedulers: dict[str, BaseEnqueuer] = {}
        self._commits: dict[str, GroupCommit[JobRequest, Enqueued]] = {}
        for name, queue in self.queues.items():
            if cfg.fast_paths:
                enqueuer = self.enqueuers[name] = Enqueuer(queue, settings, dict(self.catalogue.items()))
                # Concurrent enqueues without an Idempotency-Key share one script call (group_commit.py); the
                # connection check before it lets the requests ready by then join it.
                self._commits[name] = GroupCommit(enqueuer.enqueue, before_batch=enqueuer.check_connection)
            else:
                self.enqueuers[name] = StockEnqueuer(queue, settings)
            self.schedulers[name] = StockEnqueuer(queue, settings)
        self._backlog = dict.fromkeys(self.queues, 0)
        self._memory_full, self._capacity_read_at = False, float("-inf")
        self.webhooks = AllowList.parse(cfg.webhook_allowed_hosts)  # what a callbackUrl may name

    def queue_for(self, name: str) -> Queue:
        return Queue(name, connection=self.redis, serializer=SERIALIZER)

    def task_queue(self, task: Task) -> str:
        """The name of the queue a task's jobs wait on unless a request names another: its own, else the
        default (``Config.queue``)."""
        return task.queue or self.cfg.queue

    def request_queue(self, req: JobRequest) -> str:
        """The name of the queue a job waits on: the one its request names, else its task's."""
        return req.queue or self.task_queue(req.task)

    def writer(self, reqs: Sequence[JobRequest], queue: str) -> BaseEnqueuer:
        """The writer for these requests: the queue's own, or RQ's when any of them is scheduled or has a
        callback (which RQ's writer records in the same transaction)."""
        plain = all(req.run_at is None and req.callback_url is None for req in reqs)
        return self.enqueuers[queue] if plain else self.schedulers[queue]

    # -- enqueue -----------------------------------------------------------------------------------

    def _check_capacity(self, queue: str, adding: int) -> None:
        """Refuse work beyond ``max_backlog`` jobs queued on ``queue``, or while Redis is nearly full, without a
        Redis call for most requests.

        The queues' lengths and Redis's memory are read at most every CAPACITY_READ_EVERY seconds and
        this process's own enqueues are added to the length; within max(BACKLOG_MARGIN, 10 %) of the
        backlog limit it is read every time. Like any check-then-enqueue across processes, both limits
        are soft: the memory limit leaves the rest of ``maxmemory`` for the jobs already accepted.
        """
        limit = self.cfg.max_backlog
        near = limit and self._backlog.get(queue, 0) + adding > limit - max(BACKLOG_MARGIN, limit // 10)
        if near or time.monotonic() - self._capacity_read_at > CAPACITY_READ_EVERY:
            self._read_capacity()
        if self._memory_full:
            raise StoreFull(f"redis holds {self.cfg.redis_memory_limit} % of its maxmemory or more")
        if limit and self._backlog.get(queue, 0) + adding > limit:
            raise BacklogFull(f"queue '{queue}' holds {limit} jobs or more")
        if queue in self._backlog:  # (a requeue to a queue this generator does not serve: no count kept)
            self._backlog[queue] += adding

    def _read_capacity(self) -> None:
        """Read the lengths of the generator's queues, and Redis's memory use, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in self._backlog:
                pipe.llen(self.queues[name].key)
            if self.cfg.redis_memory_limit:
                pipe.info("memory")
            replies = pipe.execute()
        self._backlog = {name: int(n) for name, n in zip(self._backlog, replies, strict=False)}
        growth = sum(self._backlog.values()) * QUEUED_JOB_GROWTH  # what the queued jobs will add when they end
        memory = replies[len(self._backlog) :]
        self._memory_full = bool(memory) and memory_full(memory[0], self.cfg.redis_memory_limit, growth)
        self._capacity_read_at = time.monotonic()

    def store_full(self) -> bool:
        """Whether enqueue would be refused as full now (``/readyz``); with the check off, whether Redis is
        at its maxmemory."""
        if not self.cfg.redis_memory_limit:
            return memory_full(self.redis.info("memory"), 100)
        self._read_capacity()
        return self._memory_full

    def enqueue(
        self, req: JobRequest, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> tuple[Enqueued, bool]:
        """Enqueue one job; with an idempotency key, return the key's job instead when it exists.

        ``fingerprint`` names the request the key is first used with: the key answers only requests with
        the same one (else :class:`IdempotencyMismatch`). Returns the job and whether this call created it.
        """
        queue = self.request_queue(req)
        with _store_full_as_refusal():
            if idempotency_key is None:
                self._check_capacity(queue, 1)
                plain = req.run_at is None and req.callback_url is None
                commit = self._commits.get(queue) if plain else None
                if commit is None:
                    return self.writer([req], queue).enqueue([req])[0], True
                return commit.submit(req), True
            return self._enqueue_once(req, IDEMPOTENCY_PREFIX + idempotency_key, fingerprint)

    def _enqueue_once(self, req: JobRequest, key: str, fingerprint: str) -> tuple[Enqueued, bool]:
        deadline = time.monotonic() + IDEMPOTENCY_WAIT
        while True:
            job_id = uuid4().hex
            claim = f"{job_id} {fingerprint}"
            # SET NX decides the race between concurrent requests with the same key. The claim is
            # short-lived until the job exists, so a request that dies in between blocks no one for long.
            if self.redis.set(key, claim, nx=True, ex=IDEMPOTENCY_CLAIM_TTL):
                return self._enqueue_claimed(req, key, job_id), True
            existing = self.redis.get(key)
            if existing == claim.encode():  # ours: redis-py sent the SET again, its first reply lost (a failover)
                return self._enqueue_claimed(req, key, job_id), True
            if existing is not None:
                existing_id, bound, first_fingerprint = existing.decode().partition(" ")
                if bound and first_fingerprint != fingerprint:  # (a key written before keys were bound: any)
                    raise IdempotencyMismatch("this Idempotency-Key was used with another request")
                try:
                    return self.enqueued(self.fetch(existing_id)), False
                except JobNotFound:
                    pass  # the winner of the race has not enqueued it yet
            if time.monotonic() > deadline:
                raise JobStateConflict("a request with this Idempotency-Key is still being processed")
            time.sleep(0.02)

    def _enqueue_claimed(self, req: JobRequest, key: str, job_id: str) -> Enqueued:
        """Write the job of a claimed key, and the key's full lifetime, in one atomic step: both or neither."""
        try:
            queue = self.request_queue(req)
            self._check_capacity(queue, 1)
            (job,) = self.writer([req], queue).enqueue([req], [job_id], (key, self.cfg.result_ttl))
        except BaseException:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):  # unreachable: the claim ends with its TTL
                self.redis.delete(key)
            raise
        return job

    def enqueue_batch(self, reqs: Sequence[JobRequest]) -> list[Enqueued]:
        """Enqueue many jobs in one atomic Redis call: all of them or none."""
        by_queue: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            by_queue.setdefault(self.request_queue(req), []).append(i)
        with _store_full_as_refusal():
            for queue, places in by_queue.items():
                self._check_capacity(queue, len(places))
            if len(by_queue) == 1:
                (queue,) = by_queue
                return self.writer(reqs, queue).enqueue(reqs)
            return self._enqueue_across(reqs, by_queue)

    def _enqueue_across(self, reqs: Sequence[JobRequest], by_queue: dict[str, list[int]]) -> list[Enqueued]:
        """A batch for several queues: RQ's writes of each queue's jobs, in one transaction."""
        written: dict[int, tuple[str, datetime | None]] = {}
        with self.redis.pipeline() as pipe:
            for queue, places in by_queue.items():
                jobs = self.schedulers[queue].write_into(pipe, [reqs[i] for i in places])
                written.update(zip(places, jobs, strict=True))
            pipe.execute()
        return [
            Enqueued(job_id, req.task.name, req.args, at, req.run_at)
            for req, (job_id, at) in ((req, written[i]) for i, req in enumerate(reqs))
        ]

    # -- inspect -----------------------------------------------------------------------------------

    def enqueued(self, job: Job) -> Enqueued:
        """What the API reports about an existing job (an Idempotency-Key's replay)."""
        task = self.job_task(job)
        args = list(job.args) if task != "other" else []
        return Enqueued(job.id, task, args, job.enqueued_at or job.created_at, run_at(job))

    def job_task(self, job: Job) -> str:
        """The task name of a job; 'other' for one not in the catalogue, or whose data is not ours (not JSON)."""
        try:
            return self.catalogue.task_name(job.func_name)
        except DeserializationError:
            return "other"

    def fetch(self, job_id: str) -> Job:
        if not JOB_ID_RE.match(job_id):
            raise JobNotFound(job_id)
        try:
            return Job.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            raise JobNotFound(job_id) from None

    def describe(self, job: Job) -> dict[str, Any]:
        """The status document of a job (the seed's ``result`` plus lifecycle fields)."""
        return {
            "jobId": job.id,
            "task": self.job_task(job),
            **job_outcome(job),
            "retriesLeft": job.retries_left,
            "queue": job.origin,
            "runAt": iso(run_at(job)),
            "progress": job.meta.get("progress"),  # what the task last reported (taskqueue.tasks.progress)
            # Its completion webhook (webhooks/outbox.py): only a job enqueued with a callbackUrl has one.
            **({"callback": callback} if (callback := self._callback(job)) is not None else {}),
        }

    def _callback(self, job: Job) -> dict[str, Any] | None:
        """A job's webhook delivery (``callback`` in its status), if it was enqueued with one whose record is kept."""
        return outbox.status(self.redis, job.id) if job.meta.get(outbox.META_FLAG) else None

    def list_ids(self, state: str, offset: int, limit: int) -> tuple[list[str], int]:
        """A page of the ids of jobs in ``state`` on the generator's queues, and the total in that state.

        The queues' jobs follow each other in TASKQUEUE_QUEUES order; with one queue, that queue's order.
        """
        ids: list[str] = []
        total = 0
        for name in self.queues:
            page, count = self._list_queue(name, state, max(0, offset - total), max(1, limit - len(ids)))
            ids += page[: limit - len(ids)]
            total += count
        return ids, total

    def _list_queue(self, name: str, state: str, offset: int, limit: int) -> tuple[list[str], int]:
        if state == "queued":
            queue = self.queues[name]
            return queue.get_job_ids(offset=offset, length=limit), queue.count
        if state == "started":
            return self._running(name, offset, limit)
        registry = REGISTRIES[state](name, connection=self.redis, serializer=SERIALIZER)
        # No cleanup from the request path: maintenance is the exporter's job.
        total = registry.get_job_count(cleanup=False)
        ids = registry.get_job_ids(start=offset, end=offset + limit - 1, cleanup=False)
        return ids, total

    def _running(self, name: str, offset: int, limit: int) -> tuple[list[str], int]:
        """Started jobs whose claim is alive (an expired one belongs to a dead worker)."""
        registry = StartedJobRegistry(name, connection=self.redis, serializer=SERIALIZER)
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
                with _store_full_as_refusal():  # RQ's cancel is one transaction: refused whole when full
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
        # A failed or stopped job is in the failed registry, a canceled one in the canceled registry. It
        # leaves it as it goes back on its queue, in one transaction that only the first of two concurrent
        # requeues commits (WATCH), and that a full Redis refuses whole: never queued twice, never lost.
        registry = (CanceledJobRegistry if status == JobStatus.CANCELED else FailedJobRegistry)(
            job.origin, connection=self.redis, serializer=SERIALIZER
        )
        with _store_full_as_refusal(), self.redis.pipeline() as pipe:
            self._check_capacity(job.origin, 1)
            try:
                pipe.watch(registry.key)
                if pipe.zscore(registry.key, job.id) is None:
                    raise JobStateConflict(f"job {job.id} is not in the {status.value} registry: requeued already?")
                pipe.multi()
                pipe.zrem(registry.key, job.id)
                job.started_at = job.ended_at = None  # as RQ's registry requeue does
                self.queue_for(job.origin).enqueue_job(job, pipeline=pipe)
                if job.meta.get(outbox.META_FLAG):  # it will end again: its webhook is owed again
                    outbox.rearm(pipe, job.id)
                pipe.execute()
            except WatchError:
                raise JobStateConflict("job was requeued by another request meanwhile") from None
        job.refresh()
        return job


def run_at(job: Job) -> datetime | None:
    """When a job asked to run (``runAt``, ``delaySeconds``), or None: kept in its meta, as RQ keeps the time
    only in the scheduled registry, which the job leaves when it is due."""
    value = job.meta.get("runAt")
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@contextlib.contextmanager
def _store_full_as_refusal() -> Iterator[None]:
    """Redis refusing a write as full (the memory check raced, or is off) is :class:`StoreFull` too.

    The enqueue script's first write is refused before it writes anything, so nothing is half-written.
    """
    try:
        yield
    except STORE_FULL_ERRORS as exc:
        raise StoreFull(f"redis refused the write: {exc}") from None


def memory_full(info: dict[str, Any], limit_percent: int, growth: int = 0) -> bool:
    """Whether INFO memory's ``used_memory``, plus ``growth`` bytes to come, is at ``limit_percent`` of
    ``maxmemory`` (never without a maxmemory)."""
    maxmemory = int(info.get("maxmemory") or 0)
    return maxmemory > 0 and (int(info.get("used_memory") or 0) + growth) * 100 >= maxmemory * limit_percent
