"""The in-process worker's per-job Redis path: two round trips a job where stock RQ 3.0 makes nine.

Stock RQ spends 9 round trips of bookkeeping on a job that does nothing (``python -m bench
redis_cost``). :class:`LeanJobPath` overrides well-delimited ``BaseWorker``
methods so that the same records are written, in RQ's order, in fewer and merged calls:

- **take and start** (one MULTI/EXEC, after the pop): the job read (HGETALL), the Execution (its
  hash, the job's executions, the started registry, the worker's executions), the job's
  status/started_at/worker/heartbeat, PERSIST, and the LREM from the intermediate list last: at
  every moment the job is in the intermediate list or the started registry, where maintenance
  finds it. A transaction, so that a full Redis (which refuses the writes that grow memory and runs
  the others) refuses the whole start rather than run the LREM alone. A start cut short by a lost
  connection is checked on reconnect (run, or undone and taken again); a job that left the
  intermediate list meanwhile (requeued by maintenance) is not started;
- **finish** (one MULTI/EXEC): status/ended_at/heartbeat, the Result (XADD), the finished registry,
  expiry, the Execution removed, SMEMBERS of the job's dependents (enqueued afterwards through RQ
  if there are any), and the *next* job popped into the intermediate list (LMOVE), so a busy worker
  makes no separate pop (none when maintenance is due); a popped job not started (stop,
  ``max_jobs``, ``rq suspend``) is pushed back to the front;
- **short jobs share the round trips**: while jobs end within :data:`TAKE_BUDGET` the worker takes
  several at once (up to :data:`TAKE_MAX`, adapted to how long the last ones took): one transaction
  starts them all, and one writes all their finishes and pops the next ones. A job is so at most
  a budget's time marked started before it runs, or marked finished after it ended; a job that runs
  longer brings the worker back to one job a take;
- **worker bookkeeping**: job counters ride with the worker heartbeat every few seconds; the state
  is written when it changes, so a worker is ``idle`` only when its queue is empty.

- **the job class**: :class:`LeanJob` builds the job's registries from a Queue kept per queue name,
  and it and :class:`LeanResult` check a serializer against RQ's protocol once, not in every
  constructor (five checks a job);
- **the pipelines** go out through :func:`taskqueue.redis_pipeline.send`, without redis-py's per-call layers.

Everything else is RQ's own code: the job runs inside ``perform_job`` under RQ's death penalty
(timeouts), failures go through RQ's ``handle_job_failure`` (retries, failed registry, results),
jobs with a repeat, a rate limit, ``result_ttl=0`` or callbacks take RQ's stock methods, and a
worker on several queues takes jobs with RQ's ``dequeue_any``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

import redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import Serializer, resolve_serializer
from rq.suspension import is_suspended
from rq.utils import as_text, now
from rq.worker import WorkerStatus

from taskqueue.fastpath import redis_pipeline
from taskqueue.fastpath.timestamps import rq_timestamp
from taskqueue.store.connection import STORE_FULL_ERRORS
from taskqueue.store.outcomes import BoundedResultJob

JOB_FINISH_FIELDS = ("status", "ended_at", "last_heartbeat")
# Jobs taken together: their starts are written before the first runs, their finishes after the last
# ends, so a take holds as many as the last ones show to end within this many seconds altogether.
TAKE_BUDGET = 0.01
TAKE_MAX = 32  # jobs a take holds at most
# Put a popped job back at the front of its queue, if it is still in the intermediate list.
GIVE_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    return redis.call('LPUSH', KEYS[2], ARGV[1])
end
return 0
"""


ORIGIN_QUEUES_MAX = 64  # (queue, connection, serializer) triples a process keeps Queue objects for
# LeanJob's Queues, by (queue name, id of the connection, id of the serializer); a Queue holds its
# connection, so the id is not reused while the entry lives.
_ORIGIN_QUEUES: dict[tuple[str, int, int], Queue] = {}


CHECKED_SERIALIZERS_MAX = 16
# What resolve_serializer gave, by the serializer's identity (a str or None by value); the entry holds
# the serializer, so its id is not reused while the entry lives.
_CHECKED: dict[object, tuple[object, Serializer]] = {}


def checked_serializer(serializer) -> Serializer:
    """RQ's ``resolve_serializer``, remembered per serializer: RQ runs its ``typing.Protocol``
    ``isinstance`` in every Job and Result constructor."""
    key = serializer if serializer is None or isinstance(serializer, str) else id(serializer)
    hit = _CHECKED.get(key)
    if hit is not None and (hit[0] is serializer or isinstance(serializer, str)):
        return hit[1]
    resolved = resolve_serializer(serializer)
    if len(_CHECKED) >= CHECKED_SERIALIZERS_MAX:
        _CHECKED.clear()
    _CHECKED[key] = (serializer, resolved)
    return resolved


class LeanResult(Result):
    """RQ's Result, with the serializer checked by :func:`checked_serializer`."""

    def __init__(self, job_id: str, type: Result.Type, connection: redis.Redis, **kwargs):
        serializer = kwargs.pop("serializer", None)
        super().__init__(job_id, type, connection, **kwargs)  # no serializer: RQ's check is skipped...
        self.serializer = checked_serializer(serializer)  # ...and done here (the constructor stores it only)


class LeanJob(BoundedResultJob):
    """RQ's Job whose registry properties build the registry from a Queue kept for the job's queue,
    and whose serializer is checked by :func:`checked_serializer`.

    RQ builds ``job.started_job_registry`` (read twice a job: the Execution's start and its cleanup)
    and ``job.finished_job_registry`` from the job's serializer, which RQ checks against its
    ``Serializer`` protocol each time: a ``typing.Protocol`` ``isinstance``, most of what a property
    costs. Built from a Queue, a registry takes the queue's checked serializer: the same registry
    (name, key, connection, serializer, job class), cheaper.
    """

    def __init__(self, id: str | None = None, connection: redis.Redis | None = None, serializer=None):
        super().__init__(id, connection)  # no serializer: RQ's check is skipped...
        self.serializer = checked_serializer(serializer)  # ...and done here (the constructor stores it only)

    def _origin_queue(self) -> Queue:
        key = (self.origin, id(self.connection), id(self.serializer))
        queue = _ORIGIN_QUEUES.get(key)
        if queue is None:
            if len(_ORIGIN_QUEUES) >= ORIGIN_QUEUES_MAX:
                _ORIGIN_QUEUES.clear()
            queue = _ORIGIN_QUEUES[key] = Queue(self.origin, connection=self.connection, serializer=self.serializer)
        return queue

    @property
    def started_job_registry(self) -> StartedJobRegistry:
        return StartedJobRegistry(queue=self._origin_queue(), job_class=type(self))

    @property
    def finished_job_registry(self) -> FinishedJobRegistry:
        return FinishedJobRegistry(queue=self._origin_queue(), job_class=type(self))

    @property
    def failed_job_registry(self) -> FailedJobRegistry:
        return FailedJobRegistry(queue=self._origin_queue(), job_class=type(self))


class LeanJobPath:
    """Mixin for an in-process ``rq.SimpleWorker`` subclass: RQ's job lifecycle in fewer round trips.

    Goes after ``TaskqueueWorkerMixin`` in the bases, which throttles the standalone worker heartbeat;
    its worker's ``job_class`` is :class:`LeanJob`.
    """

    def __init__(self, *args, **kwargs):
        self._pending_start: redis.client.Pipeline | None = None
        self._taken: Execution | None = None  # the start of the job handed out last
        self._interrupted: list[tuple[Job, Execution]] = []  # starts Redis did not confirm
        self._prefetched: list[str] = []  # popped into the intermediate list, not started
        self._batch: deque[tuple[Job, Queue, Execution]] = deque()  # started by the last take, not run yet
        self._finishing: redis.client.Pipeline | None = None  # finishes not sent yet...
        self._finished: list[tuple[Job, Queue, int, int, int]] = []  # ...(job, queue, result ttl, reply indexes)
        self._take_size = 1
        self._take_started = 0.0  # when the last take was sent
        self._take_count = 0  # and how many jobs it held
        self._counts = {"successful_job_count": 0, "failed_job_count": 0}
        self._working_time = 0.0
        self._last_suspension_check = float("-inf")
        self._last_state_written: str | None = None
        super().__init__(*args, **kwargs)
        self._give_back = self.connection.register_script(GIVE_BACK)

    # -- worker key: heartbeat and counters ----------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """A standalone worker heartbeat carries the job counters counted since the last one."""
        if timeout is not None or pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        # The worker key's TTL is worker_ttl itself (RQ's heartbeat adds 60 s to it when given none).
        self._write_with_counters(lambda pipe: super(LeanJobPath, self).heartbeat(self.worker_ttl, pipe))
        return None

    def set_state(self, state: str, pipeline=None):
        """An unchanged state is not written again (RQ writes IDLE twice a job); going idle writes the
        counters not yet written, in the same round trip."""
        if state == self._last_state_written:
            return None
        self._last_state_written = state
        if pipeline is not None or state != WorkerStatus.IDLE or not self._counters_pending():
            return super().set_state(state, pipeline)
        self._write_with_counters(lambda pipe: super(LeanJobPath, self).set_state(state, pipe))
        return None

    def _write_with_counters(self, write: Callable[[redis.client.Pipeline], object]) -> None:
        """``write(pipe)`` and the job counters counted since the last write, in one round trip;
        the counters are cleared only once Redis has them."""
        counts, working = dict(self._counts), self._working_time
        with self.connection.pipeline(transaction=False) as pipe:
            write(pipe)
            for field, n in counts.items():
                if n:
                    pipe.hincrby(self.key, field, n)
            if working:
                pipe.hincrbyfloat(self.key, "total_working_time", working)
            pipe.execute()
        for field, n in counts.items():
            self._counts[field] -= n
        self._working_time -= working

    def _counters_pending(self) -> bool:
        return bool(self._working_time or any(self._counts.values()))

    def increment_successful_job_count(self, pipeline=None):
        """Counted here; written with the next worker heartbeat (every few seconds) or when idle."""
        self._counts["successful_job_count"] += 1

    def increment_failed_job_count(self, pipeline=None):
        self._counts["failed_job_count"] += 1

    def increment_total_working_time(self, job_execution_time: timedelta, pipeline=None):
        self._working_time += job_execution_time.total_seconds()

    def teardown(self):
        """Write the finishes not sent yet, give back the jobs taken ahead, write the counters not yet
        written, then RQ's teardown."""
        if not self.is_horse:
            try:
                self._send_finishes(prefetch=False)
                self._give_back_taken()
            except redis.exceptions.RedisError as exc:  # maintenance retries or requeues them
                self.log.warning("Worker %s: jobs taken ahead not given back: %s", self.name, exc)
            try:
                self._write_with_counters(lambda pipe: None)
            except redis.exceptions.RedisError as exc:
                self.log.warning("Worker %s: job counters not written: %s", self.name, exc)
        super().teardown()

    # -- taking jobs and starting them: one round trip after the pop ----------------------------------

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """The next job of the last take; else pop a job (or use the ones the last finish popped) and
        start them in the same round trip as their fetch; go idle and block only with the queue empty.
        Several queues: RQ's own method."""
        if len(self.queues) != 1:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if self._batch:
            return self._hand_out()
        queue = self.queues[0]
        idle_since = time.monotonic()
        wait = 1.0
        while True:
            try:
                if self._finished:  # the take's last job failed (RQ's path): its earlier ones' finishes
                    self._send_finishes(prefetch=True)
                self.heartbeat()
                if self._interrupted and self._resume_interrupted_take(queue):
                    return self._hand_out()
                job_ids, self._prefetched = self._prefetched, []
                if not job_ids:
                    job_id = self.connection.lmove(queue.key, queue.intermediate_queue_key)
                    if job_id is None:
                        if timeout is None:  # burst mode: done
                            return None
                        job_id = self._wait_for_job(queue, timeout, max_idle_time, idle_since)
                        if job_id is None:
                            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                                return None
                            continue
                    job_ids = [as_text(job_id)]
                if self._take(queue, job_ids):
                    return self._hand_out()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *STORE_FULL_ERRORS) as exc:
                # Redis away, or full (a start refused whole: the jobs stay in the intermediate list)
                self.log.error("Worker %s: Redis unavailable (%s); retrying in %.0f s", self.name, exc, wait)
                time.sleep(wait)
                wait = min(wait * self.exponential_backoff_factor, self.max_connection_wait_time)

    def _hand_out(self) -> tuple[Job, Queue]:
        job, queue, execution = self._batch.popleft()
        self._taken = execution
        # RQ's line for a taken job (dropped by default with the other per-job lines, see logs.py)
        self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        return job, queue

    def _wait_for_job(self, queue: Queue, timeout: int, max_idle_time: int | None, idle_since: float):
        """Idle: RQ's state and maintenance, then a blocking pop of at most ``timeout`` seconds."""
        self.set_state(WorkerStatus.IDLE)
        self.procline(f"Listening on {queue.name}")
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        if max_idle_time is not None:
            timeout = max(1, min(timeout, math.ceil(max_idle_time - (time.monotonic() - idle_since))))
        return self.connection.blmove(queue.key, queue.intermediate_queue_key, timeout)

    def _take(self, queue: Queue, job_ids: list[str]) -> bool:
        """Read the jobs and write their starts (RQ's records, in RQ's order) in one transaction; True if
        any is to run (they wait in ``_batch``).

        The LREMs from the intermediate list go last: at every moment a job is in the queue's
        intermediate list or in its started registry, where maintenance finds it if this process
        dies. A transaction, because a full Redis refuses the writes that grow memory and runs the
        rest: alone, an LREM would take a job out of the list while its start was refused.
        """
        jobs = []
        for job_id in job_ids:
            job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
            job.origin = queue.name
            jobs.append(job)
        with self.connection.pipeline() as pipe:
            for job in jobs:
                pipe.hgetall(job.key)  # the job as it was queued
            executions = []
            for job in jobs:
                ttl = self.get_heartbeat_ttl(job)
                executions.append(Execution.create(job, ttl, pipeline=pipe, worker_name=self.name))
                job.prepare_for_execution(self.name, pipeline=pipe)  # status, started_at, heartbeat, worker
                pipe.persist(job.key)  # a running job must not expire (a requeued failed job has a TTL)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            for job in jobs:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            try:
                replies = redis_pipeline.send(pipe)
            except redis.exceptions.RedisError:
                self._interrupted = list(zip(jobs, executions, strict=True))  # sorted out when Redis answers again
                raise
        n = len(jobs)
        self._take_started = time.monotonic()
        self._take_count = n
        for job, execution, raw, removed in zip(jobs, executions, replies[:n], replies[-n:], strict=True):
            if self._started(job, queue, execution, raw=raw, removed=removed):
                self._batch.append((job, queue, execution))
        return bool(self._batch)

    def _started(self, job: Job, queue: Queue, execution: Execution, raw, removed: int) -> bool:
        """Whether the job is to run; False (and its start undone) if it vanished or was taken back meanwhile."""
        started_at, worker_name = job.started_at, job.worker_name
        deleted = not raw or b"data" not in raw
        if deleted or not removed:
            # Deleted while queued, or no longer ours: requeued or failed by maintenance in between.
            self.log.warning("Worker %s: job %s %s; skipped", self.name, job.id,
                             "was deleted" if deleted else "left the intermediate list before it started")  # fmt: skip
            with self.connection.pipeline() as pipe:
                if deleted:
                    pipe.delete(job.key)  # the start's fields on a deleted job
                else:
                    pipe.hset(job.key, "status", raw.get(b"status", JobStatus.QUEUED))
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
            return False
        job.restore(raw)
        job._status, job.started_at, job.last_heartbeat, job.worker_name = (
            JobStatus.STARTED,
            started_at,
            started_at,
            worker_name,
        )
        job.redis_server_version = self.get_redis_server_version()
        return True

    def _resume_interrupted_take(self, queue: Queue) -> bool:
        """Redis went away or refused a take: did it land? (An LREM is its last command.) True if jobs of it are
        to run; the ones still in the intermediate list are taken again."""
        interrupted = self._interrupted
        with self.connection.pipeline(transaction=False) as pipe:
            for job, execution in interrupted:
                pipe.lpos(queue.intermediate_queue_key, job.id)
                pipe.zscore(queue.started_job_registry.key, execution.composite_key)
                pipe.hgetall(job.key)
            replies = pipe.execute()
        states = [(job, execution, *replies[3 * i : 3 * i + 3]) for i, (job, execution) in enumerate(interrupted)]
        retake = [(job, execution, raw) for job, execution, queued, _claim, raw in states if queued is not None]
        if retake:  # it did not: undo what of it landed, take the jobs again
            with self.connection.pipeline() as pipe:
                for job, execution, raw in retake:
                    if raw and b"data" in raw:
                        pipe.hset(job.key, "status", JobStatus.QUEUED)
                    self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()  # refused (Redis full): still interrupted, looked at again on the next try
        self._interrupted = []
        self._prefetched = [job.id for job, _execution, _raw in retake] + self._prefetched
        for job, execution, still_queued, claim, raw in states:
            # A claim gone too: maintenance requeued or failed the job meanwhile.
            if still_queued is None and claim is not None and self._started(job, queue, execution, raw=raw, removed=1):
                self._batch.append((job, queue, execution))
        return bool(self._batch)

    def execute_job(self, job: Job, queue: Queue):
        """RQ's ``SimpleWorker.execute_job`` without the idle write after every job."""
        execution = self.prepare_execution(job)
        self.perform_job(job, queue, execution)

    def prepare_execution(self, job: Job) -> Execution:
        """The execution ``_take`` wrote; else (several queues) RQ's records, queued on a pipeline
        that ``prepare_job_execution`` sends."""
        taken, self._taken = self._taken, None
        if taken is not None and taken.job_id == job.id:
            self.executions[taken.id] = taken  # from here on the worker is running it (stop, requeue)
            return taken
        pipe = self.connection.pipeline(transaction=False)
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
        self.executions[execution.id] = execution
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self._pending_start = pipe
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        pipe, self._pending_start = self._pending_start, None
        if pipe is None:  # started by _take already
            return None
        with pipe:
            job.prepare_for_execution(self.name, pipeline=pipe)
            if job.ttl is not None:
                pipe.persist(job.key)
            if remove_from_intermediate_queue:
                pipe.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
            pipe.execute()
        return None

    # -- the jobs taken ahead, when the worker stops or is suspended instead ----------------------------

    def _give_back_taken(self) -> None:
        """Put the jobs popped or started ahead and not run back at the front of the queue, in their order."""
        batch, self._batch = list(self._batch), deque()
        job_ids, self._prefetched = self._prefetched, []
        if not batch and not job_ids:
            return
        queue = self.queues[0]
        for job_id in reversed(job_ids):  # the later ones first: each goes to the front
            self._give_back(keys=[queue.intermediate_queue_key, queue.key], args=[job_id], client=self.connection)
        if batch:
            with self.connection.pipeline() as pipe:
                for job, _queue, execution in batch:
                    pipe.hset(job.key, "status", JobStatus.QUEUED)
                    self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.lpush(queue.key, *[job.id for job, _queue, _execution in reversed(batch)])
                pipe.execute()

    def check_for_suspension(self, burst: bool):
        """``rq suspend`` is noticed within a second, not checked before every job."""
        if time.monotonic() - self._last_suspension_check < 1.0:
            return None
        self._last_suspension_check = time.monotonic()
        if (self._prefetched or self._batch) and is_suspended(self.connection, self):
            self._give_back_taken()
        return super().check_for_suspension(burst)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int):
        """RQ writes a heartbeat here to cover the job's callbacks; without callbacks it rides with the finish."""
        if job.success_callback or job.failure_callback:
            return super().handle_execution_ended(job, queue, heartbeat_ttl)
        job.ended_at = job.last_heartbeat = now()
        return None

    # -- finishing jobs: one transaction a take ---------------------------------------------------------

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry, execution: Execution):
        """RQ's records of a finished job, sent with the finishes of its take's other jobs after the last."""
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl == 0 or job.repeats_left or job.has_rate_limit:
            return super().handle_job_success(job, queue, started_job_registry, execution)
        self.increment_successful_job_count()
        self.increment_total_working_time(job.ended_at - job.started_at)
        job._status = JobStatus.FINISHED
        if self._finishing is None:
            self._finishing = self.connection.pipeline()
        pipe = self._finishing
        status_reply = len(pipe.command_stack)
        pipe.hset(
            job.key,
            mapping={
                "status": JobStatus.FINISHED,
                "ended_at": rq_timestamp(job.ended_at),
                "last_heartbeat": rq_timestamp(job.last_heartbeat),
            },
        )
        LeanResult.create(
            job,
            Result.Type.SUCCESSFUL,
            ttl=result_ttl,
            return_value=job._result,
            worker_name=self.name,
            pipeline=pipe,
            execution_id=execution.id,
            execution_started_at=execution.created_at,
            execution_ended_at=job.ended_at,
        )
        job.finished_job_registry.add(job, result_ttl, pipe)
        if result_ttl > 0:
            pipe.expire(job.key, result_ttl)
            if job._dependency_ids:
                pipe.expire(job.dependencies_key, result_ttl)
        self.cleanup_execution(job, pipeline=pipe, execution=execution)
        pipe.smembers(job.dependents_key)
        self._finished.append((job, queue, result_ttl, status_reply, len(pipe.command_stack) - 1))
        if not self._batch:  # the take's last job
            self._send_finishes(prefetch=True)
        return None

    def _send_finishes(self, prefetch: bool) -> None:
        """The finishes not sent yet in one transaction, with the next take popped in it (``prefetch``),
        so a busy worker makes no separate pop. Lost if Redis fails it: maintenance retries those jobs."""
        pipe, finished = self._finishing, self._finished
        self._finishing, self._finished = None, []
        if pipe is None:
            return
        # Not before maintenance, which would see the popped jobs in the intermediate list.
        take = 0
        if prefetch and len(self.queues) == 1 and not self._stop_requested and not self.should_run_maintenance_tasks:
            take = self._next_take_size()
            for _ in range(take):
                pipe.lmove(self.queues[0].key, self.queues[0].intermediate_queue_key)
        with pipe:
            replies = redis_pipeline.send(pipe)
        if take:
            self._prefetched = [as_text(job_id) for job_id in replies[-take:] if job_id is not None]
        for job, queue, result_ttl, status_reply, dependents_reply in finished:
            if replies[status_reply] == len(JOB_FINISH_FIELDS):  # the hash was deleted while it ran: drop the stub
                self.connection.delete(job.key)
            if replies[dependents_reply]:
                # Dependents registered before the commit are in the reply; later ones saw FINISHED and
                # were enqueued by whoever added them. RQ moves these to their queues.
                if result_ttl > 0:
                    self.connection.expire(job.dependents_key, result_ttl)
                self._enqueue_dependents_safely(queue, job)
            self.log.debug("Worker %s: job %s finished", self.name, job.id)

    def _next_take_size(self) -> int:
        """As many jobs as the last take's show to end within TAKE_BUDGET altogether; at most twice the last."""
        spent = (time.monotonic() - self._take_started) / max(self._take_count, 1)
        fits = int(TAKE_BUDGET / spent) if spent > 0 else TAKE_MAX
        self._take_size = max(1, min(TAKE_MAX, 2 * self._take_size, fits))
        return self._take_size
