"""The in-process worker's per-job Redis path: short jobs a few Redis commands each, where stock RQ 3.0
makes nine round trips a job.

Stock RQ spends 9 round trips of bookkeeping on a job that does nothing (``python -m bench
redis_cost``). :class:`LeanJobPath` overrides well-delimited ``BaseWorker`` methods so that the same
records are written, in RQ's order, in fewer and merged calls. A job runs one of two ways:

**Claimed before it runs** (the first job after the worker was idle, and a job that came back from a dead
worker's take): two round trips.

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
  if there are any), and the *next* job taken (a take of one, below) in the same transaction, so a busy
  worker makes no separate pop (none when maintenance is due); a taken job not started (stop,
  ``max_jobs``, ``rq suspend``) is pushed back to the front.

**Taken, claimed only if it runs long** (every job after the first of a busy spell): a *take*
(:data:`TAKE`, a script) moves up to N jobs into the intermediate list and returns their hashes; N is 1
after a job that ran long, and doubles (2, 4 ... :data:`TAKE_MAX`) while the take's jobs all end within
:data:`CLAIM_AFTER`.

- a job of a take starts in memory only; its start is written (it is *claimed*, as above) by the
  process's claim timer once it has run :data:`CLAIM_AFTER`, or before RQ's failure, callback or
  requeue paths handle it. A claim by the timer also gives the take's jobs not yet run back to the front
  of their queue, for other workers;
- a job that succeeds unclaimed gets its start's and its end's fields, Result, registry entry and expiry
  (no Execution, which a claimed job's end deletes anyway) and leaves the intermediate list, written
  together with the take's other ends and the next take in one MULTI/EXEC, once the take is spent or
  the first end has waited CLAIM_AFTER;
- while a job runs unclaimed it is ``queued`` in RQ's records and sits in the intermediate list. If the
  worker dies then, the exporter puts the take's jobs back on their queue with no retry spent (each
  return counted; past a bound the job is handed to RQ as abandoned: exporter/collector.py). So a job
  that ran unclaimed and whose end was not written runs again: at least once, as a claimed job killed
  mid-run is retried. A ``DELETE`` in a job's first CLAIM_AFTER finds it ``queued`` and cancels it, and
  the job, already running, still ends ``finished``.

Also: **worker bookkeeping**: job counters ride with the worker heartbeat every few seconds; the state
is written when it changes, so a worker is ``idle`` only when its queue is empty. **The job class**:
:class:`LeanJob` builds the job's registries from a Queue kept per queue name, and it and
:class:`LeanResult` check a serializer against RQ's protocol once, not in every constructor (five
checks a job). **The pipelines** go out through :func:`taskqueue.redis_pipeline.send`, without
redis-py's per-call layers.

Everything else is RQ's own code: the job runs inside ``perform_job`` under RQ's death penalty
(timeouts), failures go through RQ's ``handle_job_failure`` (retries, failed registry, results),
and jobs with a repeat, a rate limit, ``result_ttl=0`` or callbacks take RQ's stock methods. A worker
on several queues pops from the first non-empty one in order with a script (``store/queues.py``'s
:data:`POP_FIRST`, which the stock workers' take uses too), into that queue's intermediate list as for one
queue.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from uuid import uuid4

import redis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import Serializer, resolve_serializer
from rq.suspension import is_suspended
from rq.utils import as_text, now
from rq.worker import WorkerStatus

from taskqueue.config import default_queue
from taskqueue.fastpath import redis_pipeline
from taskqueue.fastpath.timestamps import rq_timestamp
from taskqueue.store.connection import STORE_FULL_ERRORS
from taskqueue.store.outcomes import BoundedResultJob
from taskqueue.store.queues import IDLE_LOOK_EVERY, POP_FIRST, pop_keys
from taskqueue.store.records import RETURNS_FIELD
from taskqueue.tasks import report
from taskqueue.timers import Timers

# The first job of the first non-empty queue (priority order) into that queue's intermediate list, as
# RQ's LMOVE does for one queue. KEYS: each queue's list, then its intermediate list. Returns
# {the queue's place (from 1), the job id}, or nil.
# Put a popped job back at the front of its queue, if it is still in the intermediate list.
GIVE_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    return redis.call('LPUSH', KEYS[2], ARGV[1])
end
return 0
"""
# Up to ARGV[1] jobs of the first non-empty queue (priority order) into its intermediate list, each with its
# hash (HGETALL of ARGV[2] .. id). KEYS as POP_FIRST's. Returns {the queue's place, id, hash, id, hash...}, or
# nil. The RPUSH goes first: a full Redis refuses it before the LTRIM has taken anything off the queue.
TAKE = """
for i = 1, #KEYS, 2 do
    local ids = redis.call('LRANGE', KEYS[i], 0, tonumber(ARGV[1]) - 1)
    if #ids > 0 then
        redis.call('RPUSH', KEYS[i + 1], unpack(ids))
        redis.call('LTRIM', KEYS[i], #ids, -1)
        local out = {(i + 1) / 2}
        for _, id in ipairs(ids) do
            out[#out + 1] = id
            out[#out + 1] = redis.call('HGETALL', ARGV[2] .. id)
        end
        return out
    end
end
return false
"""
CLAIM_AFTER = 0.01  # seconds a job of a take runs before its start is written (it is claimed)
TAKE_MAX = 32  # jobs a take holds at most; a worker's takes grow 1, 2, 4... while their jobs end unclaimed
# The claims of jobs that run past CLAIM_AFTER, for every worker (and slot) of the process.
CLAIMS = Timers("job-claims")


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


class Run:
    """A job of a take while it runs: its start is not written until it is claimed (see :class:`LeanJobPath`)."""

    UNCLAIMED, CLAIMED, ENDED = "unclaimed", "claimed", "ended"

    def __init__(self, job: Job, queue: Queue, execution: Execution):
        self.job, self.queue, self.execution = job, queue, execution
        self.state = Run.UNCLAIMED
        self.timer: list | None = None


class LeanJobPath:
    """Mixin for an in-process ``rq.SimpleWorker`` subclass: RQ's job lifecycle in fewer round trips.

    Goes after ``TaskqueueWorkerMixin`` in the bases, which throttles the standalone worker heartbeat;
    its worker's ``job_class`` is :class:`LeanJob`.
    """

    def __init__(self, *args, **kwargs):
        self._pending_start: redis.client.Pipeline | None = None
        self._taken: Execution | None = None
        self._interrupted: tuple[Job, Execution, Queue] | None = None
        self._prefetched: tuple[Queue, str] | None = None  # popped by the last finish, not taken yet
        self._counts = {"successful_job_count": 0, "failed_job_count": 0}
        self._working_time = 0.0
        self._last_suspension_check = float("-inf")
        self._last_state_written: str | None = None
        # Takes: jobs taken several at a time and run before their start is written (class docstring)
        self._claim_lock = threading.Lock()  # the running job's Run, between its thread and the claim timer
        self._run: Run | None = None
        self._queued: deque[tuple[Queue, str, list]] = deque()  # taken, not run yet: queue, id, hash
        # ran unclaimed, end not written yet: the job, queue, execution, result TTL and last progress
        self._ended: list[tuple[Job, Queue, Execution, int, dict]] = []
        self._ended_since = 0.0
        self._discarded: list[tuple[Queue, str]] = []  # taken, found deleted or canceled as it came up: not run
        self._take_size = 0  # 0: one job at a time, claimed before it runs
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
        """Give back a popped job, write the counters not yet written, then RQ's teardown."""
        if not self.is_horse:
            try:
                self._give_back_prefetched()
                self._write_take(take=False, give_back=True)
            except redis.exceptions.RedisError as exc:  # the exporter requeues them from the intermediate list
                self.log.warning("Worker %s: popped jobs not given back: %s", self.name, exc)
            try:
                self._write_with_counters(lambda pipe: None)
            except redis.exceptions.RedisError as exc:
                self.log.warning("Worker %s: job counters not written: %s", self.name, exc)
        super().teardown()

    # -- taking a job and starting it: one round trip after the pop ---------------------------------

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """Pop a job (or use the one the last finish popped) and start it in the same round trip as
        its fetch; go idle and block only with the queues empty."""
        idle_since = time.monotonic()
        wait = 1.0
        while True:
            try:
                self.heartbeat()
                if self._interrupted is not None and (taken := self._resume_interrupted_take()):
                    return taken
                if self._queued or self._ended or self._discarded:
                    taken = self._next_of_take()
                    if taken is not None:
                        return taken
                popped, self._prefetched = self._prefetched, None
                if popped is None:
                    popped = self._pop()
                if popped is None:
                    if timeout is None:  # burst mode: done
                        return None
                    popped = self._wait_for_job(timeout, max_idle_time, idle_since)
                    if popped is None:
                        if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                            return None
                        continue
                taken = self._take(*popped)
                if taken is not None:
                    return taken
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *STORE_FULL_ERRORS) as exc:
                # Redis away, or full (a start refused whole: the job stays in the intermediate list)
                self.log.error("Worker %s: Redis unavailable (%s); retrying in %.0f s", self.name, exc, wait)
                time.sleep(wait)
                wait = min(wait * self.exponential_backoff_factor, self.max_connection_wait_time)

    def _pop_keys(self) -> list[str]:
        """Each queue's list and intermediate list, in priority order: the keys of :data:`POP_FIRST`."""
        return pop_keys(self.queues)

    def _pop(self) -> tuple[Queue, str] | None:
        """The first job of the first non-empty queue, moved into that queue's intermediate list."""
        if len(self.queues) == 1:
            queue = self.queues[0]
            job_id = self.connection.lmove(queue.key, queue.intermediate_queue_key)
            return None if job_id is None else (queue, as_text(job_id))
        return self._popped(self.connection.eval(POP_FIRST, 2 * len(self.queues), *self._pop_keys()))

    def _popped(self, reply) -> tuple[Queue, str] | None:
        """:data:`POP_FIRST`'s reply as the queue and the job id."""
        return None if not reply else (self.queues[int(reply[0]) - 1], as_text(reply[1]))

    def _wait_for_job(self, timeout: int, max_idle_time: int | None, idle_since: float) -> tuple[Queue, str] | None:
        """Idle: RQ's state and maintenance, then a blocking pop of at most ``timeout`` seconds.

        Redis has no blocking pop of several lists into another: on several queues the worker blocks on
        the ``default`` one (where the jobs of tasks without a queue of their own wait; else the first)
        at most :data:`IDLE_LOOK_EVERY` seconds at a time, and the caller looks at all of them in order
        between. So an idle worker takes a job of that queue at once, and one of the others within that time.
        """
        names = [q.name for q in self.queues]
        queue = self.queues[names.index(default_queue(names))]
        self.set_state(WorkerStatus.IDLE)
        self.procline(f"Listening on {','.join(q.name for q in self.queues)}")
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        if max_idle_time is not None:
            timeout = max(1, min(timeout, math.ceil(max_idle_time - (time.monotonic() - idle_since))))
        if len(self.queues) > 1:
            timeout = min(timeout, IDLE_LOOK_EVERY)
        job_id = self.connection.blmove(queue.key, queue.intermediate_queue_key, timeout)
        return None if job_id is None else (queue, as_text(job_id))  # None: the caller looks at all again

    def _take(self, queue: Queue, job_id: str) -> tuple[Job, Queue] | None:
        """Read the job and write its start (RQ's records, in RQ's order) in one transaction.

        The LREM from the intermediate list goes last: at every moment the job is in the queue's
        intermediate list or in its started registry, where maintenance finds it if this process
        dies. A transaction, because a full Redis refuses the writes that grow memory and runs the
        rest: alone, the LREM would take the job out of the list while its start was refused.
        """
        job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
        job.origin = queue.name
        with self.connection.pipeline() as pipe:
            pipe.hgetall(job.key)  # the job as it was queued
            execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)  # status, started_at, heartbeat, worker
            pipe.persist(job.key)  # a running job must not expire (a requeued failed job has a TTL)
            pipe.lrem(queue.intermediate_queue_key, 1, job_id)
            try:
                replies = redis_pipeline.send(pipe)
            except redis.exceptions.RedisError:
                self._interrupted = (job, execution, queue)  # sorted out when Redis answers again
                raise
        return self._started(job, queue, execution, raw=replies[0], removed=replies[-1])

    def _started(self, job: Job, queue: Queue, execution: Execution, raw, removed: int):
        """The job to run, or None (and the start undone) if it vanished or was taken back meanwhile."""
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
            return None
        job.restore(raw)
        job._status, job.started_at, job.last_heartbeat, job.worker_name = (
            JobStatus.STARTED,
            started_at,
            started_at,
            worker_name,
        )
        job.redis_server_version = self.get_redis_server_version()
        self._taken = execution
        # RQ's line for a taken job (dropped by default with the other per-job lines, see logs.py)
        self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        return job, queue

    # -- takes: short jobs several at a time, claimed only if they run long -------------------------------

    def _next_of_take(self) -> tuple[Job, Queue] | None:
        """The take's next job, started unclaimed; the ended ones' records are written once the take is
        spent (with the next take, in one transaction) or once the first of them has waited CLAIM_AFTER."""
        while True:
            if not self._queued or (self._ended and time.monotonic() - self._ended_since >= CLAIM_AFTER):
                self._write_take(take=not self._queued)
            if not self._queued:
                return None
            queue, job_id, flat = self._queued.popleft()
            job = self._start_unclaimed(queue, job_id, dict(zip(flat[::2], flat[1::2], strict=True)))
            if job is not None:
                return job, queue

    def _start_unclaimed(self, queue: Queue, job_id: str, raw: dict) -> Job | None:
        """The job as it was queued, started in memory only: its claim is set for CLAIM_AFTER from now."""
        if b"data" not in raw or raw.get(b"status") != JobStatus.QUEUED.encode():  # deleted or canceled
            self._discarded.append((queue, job_id))
            return None
        job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
        job.restore(raw)
        job.worker_name = self.name
        job.started_at = job.last_heartbeat = now()
        job._status = JobStatus.STARTED
        job.redis_server_version = self.get_redis_server_version()
        execution = Execution(uuid4().hex, job.id, self.connection, worker_name=self.name)  # written if claimed
        run = self._run = Run(job, queue, execution)
        self._taken = execution
        if RETURNS_FIELD.encode() in raw:  # it came back from a worker that died in a take: claimed before it
            self._claim(run, give_back=False)  # runs, so a job that kills its worker spends its own retries only
        else:
            run.timer = CLAIMS.call_later(CLAIM_AFTER, functools.partial(self._claim_late, run))
        self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        return job

    def _write_take(self, take: bool, give_back: bool = False) -> None:
        """Write the ended jobs' records and drop the discarded ones, in one transaction with the next take
        (if ``take`` and the worker may take: no stop, no maintenance due), or with the not-run jobs given
        back to the front of their queues (``give_back``)."""
        size = 0
        if take and self._take_size and not self._stop_requested and not self.should_run_maintenance_tasks:
            size = self._take_size
        queued = list(self._queued) if give_back else []
        if not (size or queued or self._ended or self._discarded):
            return
        ended = self._ended
        with self.connection.pipeline() as pipe:
            ends = [self._write_end(pipe, *e) for e in ended]
            for queue, job_id in self._discarded:
                pipe.lrem(queue.intermediate_queue_key, 1, job_id)
            for queue, job_id, _ in reversed(queued):
                pipe.eval(GIVE_BACK, 2, queue.intermediate_queue_key, queue.key, job_id)
            if size:  # EVAL, not EVALSHA: no NOSCRIPT inside the transaction after a Redis restart
                pipe.eval(TAKE, 2 * len(self.queues), *self._pop_keys(), size, self.job_class.key_for(""))
            replies = redis_pipeline.send(pipe)
        self._ended, self._discarded = [], []
        if give_back:
            self._queued.clear()
        if size:
            self._take_size = min(2 * size, TAKE_MAX)
            self._add_take(replies[-1])
        self._after_ends(ended, ends, replies)

    def _add_take(self, reply) -> None:
        """:data:`TAKE`'s reply into the jobs to run."""
        if reply:
            queue = self.queues[int(reply[0]) - 1]
            self._queued.extend((queue, as_text(reply[i]), reply[i + 1]) for i in range(1, len(reply), 2))

    def _write_end(
        self, pipe: redis.client.Pipeline, job: Job, queue: Queue, execution: Execution, result_ttl: int, final: dict
    ):
        """The records of a job that succeeded unclaimed: its start's and its end's fields, as a claimed job's
        end leaves them (no Execution: a claimed job's is deleted at its end). Returns its replies' places."""
        first = len(pipe)
        pipe.exists(job.key)
        pipe.hset(
            job.key,
            mapping={
                "status": JobStatus.FINISHED,
                "started_at": rq_timestamp(job.started_at),
                "ended_at": rq_timestamp(job.ended_at),
                "last_heartbeat": rq_timestamp(job.last_heartbeat),
                "worker_name": self.name,
                **final,
            },
        )
        self._write_success(pipe, job, execution, result_ttl)
        if result_ttl <= 0:  # kept for ever (a requeued failed job has a TTL; a claimed job's start persisted it)
            pipe.persist(job.key)
        pipe.smembers(job.dependents_key)
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        return first, len(pipe) - 2

    def _write_success(self, pipe: redis.client.Pipeline, job: Job, execution: Execution, result_ttl: int) -> None:
        """A succeeded job's Result, finished-registry entry and expiry: the part of its end both paths write."""
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

    @staticmethod
    def _final_progress(job: Job) -> dict[str, str]:
        """The job's ``meta`` field with its last progress, if it reported progress that is not written yet:
        written with the job's end instead of in a round trip of its own (tasks/report.py). In the job's thread."""
        if report.take_final(job) is None:
            return {}
        return {"meta": job.serializer.dumps(job.meta)}

    def _after_ends(self, ended: list[tuple[Job, Queue, Execution, int, dict]], places: list[tuple[int, int]], replies):
        """After the ends are written: stubs of jobs deleted while they ran dropped, dependents enqueued."""
        for (job, queue, _execution, result_ttl, _final), (first, members) in zip(ended, places, strict=True):
            if not replies[first]:  # deleted while it ran: drop the fields the end wrote
                self.connection.delete(job.key)
                continue
            if not replies[members + 1]:
                self.log.warning(
                    "Worker %s: job %s was requeued while it ran (its worker looked dead)", self.name, job.id
                )
            if replies[members]:
                if result_ttl > 0:
                    self.connection.expire(job.dependents_key, result_ttl)
                self._enqueue_dependents_safely(queue, job)

    def _claim(self, run: Run, give_back: bool) -> bool:
        """Write the running job's start as ``_take`` does (and the ended jobs' records, and, if
        ``give_back``, the take's other jobs back to the front of their queues), unless it has ended."""
        with self._claim_lock:
            if run.state != Run.UNCLAIMED:
                return False
            job, execution, ended = run.job, run.execution, self._ended
            queued = list(self._queued) if give_back else []
            ttl = self.get_heartbeat_ttl(job)
            with self.connection.pipeline() as pipe:
                ends = [self._write_end(pipe, *e) for e in ended]
                for queue, job_id in self._discarded:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                # RQ's Execution.create, for an Execution made already (its id is in the worker's executions)
                execution.save(ttl=ttl, pipeline=pipe)
                ExecutionRegistry(job_id=job.id, connection=pipe).add(execution=execution, ttl=ttl, pipeline=pipe)
                job.started_job_registry.add_execution(execution, pipeline=pipe, ttl=ttl, xx=False)
                pipe.sadd(execution.worker_executions_key, execution.composite_key)
                pipe.expire(execution.worker_executions_key, ttl + 60)
                pipe.hset(
                    job.key,
                    mapping={
                        "last_heartbeat": rq_timestamp(job.last_heartbeat),
                        "status": JobStatus.STARTED,
                        "started_at": rq_timestamp(job.started_at),
                        "worker_name": self.name,
                    },
                )
                pipe.persist(job.key)
                for queue, job_id, _ in reversed(queued):
                    pipe.eval(GIVE_BACK, 2, queue.intermediate_queue_key, queue.key, job_id)
                pipe.lrem(run.queue.intermediate_queue_key, 1, job.id)
                replies = redis_pipeline.send(pipe)
            run.state = Run.CLAIMED
            self._ended, self._discarded, self._take_size = [], [], 0
            if give_back:
                self._queued.clear()
        self._after_ends(ended, ends, replies)
        return True

    def _claim_late(self, run: Run) -> None:
        """The claim timer: the job runs past CLAIM_AFTER; the take's other jobs go back for other workers."""
        try:
            self._claim(run, give_back=True)
        except redis.exceptions.RedisError as exc:  # Redis away or full: again in a second, while it runs
            self.log.warning("Worker %s: job %s: start not written: %s; retrying", self.name, run.job.id, exc)
            with self._claim_lock:
                if run.state == Run.UNCLAIMED:
                    run.timer = CLAIMS.call_later(1.0, functools.partial(self._claim_late, run))

    def claim_running(self, job: Job) -> None:
        """Claim ``job`` now if it runs unclaimed: RQ's failure, callback and requeue paths work on claimed jobs."""
        run = self._run
        if run is not None and run.job is job and run.state == Run.UNCLAIMED:
            CLAIMS.cancel(run.timer)
            try:
                self._claim(run, give_back=False)
            except redis.exceptions.RedisError as exc:  # left unclaimed in the intermediate list: the exporter's
                self.log.warning("Worker %s: job %s: start not written: %s", self.name, job.id, exc)

    def handle_job_retry(self, job: Job, queue: Queue, retry, started_job_registry, execution: Execution):
        """A job that returned RQ's ``Retry`` is claimed first: RQ's retry path works on a claimed job."""
        self.claim_running(job)
        return super().handle_job_retry(job, queue, retry, started_job_registry, execution)

    def run_maintenance_tasks(self):
        """RQ's maintenance, with the take given back first (RQ's looks at the intermediate lists)."""
        self._write_take(take=False, give_back=True)
        return super().run_maintenance_tasks()

    def _resume_interrupted_take(self) -> tuple[Job, Queue] | None:
        """Redis went away or refused a start: did it land? (The LREM is its last command.)"""
        job, execution, queue = self._interrupted
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.lpos(queue.intermediate_queue_key, job.id)
            pipe.zscore(queue.started_job_registry.key, execution.composite_key)
            pipe.hgetall(job.key)
            still_queued, claim, raw = pipe.execute()
        if still_queued is not None:  # it did not: undo what of it landed, take the job again
            with self.connection.pipeline() as pipe:
                if raw and b"data" in raw:
                    pipe.hset(job.key, "status", JobStatus.QUEUED)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()  # refused (Redis full): still interrupted, looked at again on the next try
            self._interrupted = None
            self._prefetched = (queue, job.id)
            return None
        self._interrupted = None
        if claim is None:  # gone from both: maintenance requeued or failed it meanwhile
            return None
        return self._started(job, queue, execution, raw=raw, removed=1)

    def execute_job(self, job: Job, queue: Queue):
        """RQ's ``SimpleWorker.execute_job`` without the idle write after every job."""
        execution = self.prepare_execution(job)
        try:
            self.perform_job(job, queue, execution)
        finally:
            run, self._run = self._run, None
            if run is not None and run.timer is not None:
                CLAIMS.cancel(run.timer)  # (claimed or ended: no-op; else its records could not be written)

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

    # -- the job popped by the last finish, when the worker stops or is suspended instead ---------------

    def _give_back_prefetched(self) -> None:
        popped, self._prefetched = self._prefetched, None
        if popped is not None:
            queue, job_id = popped
            self._give_back(keys=[queue.intermediate_queue_key, queue.key], args=[job_id], client=self.connection)

    def check_for_suspension(self, burst: bool):
        """``rq suspend`` is noticed within a second, not checked before every job."""
        if time.monotonic() - self._last_suspension_check < 1.0:
            return None
        self._last_suspension_check = time.monotonic()
        if (self._prefetched is not None or self._queued or self._ended) and is_suspended(self.connection, self):
            self._give_back_prefetched()
            self._write_take(take=False, give_back=True)
        return super().check_for_suspension(burst)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int):
        """RQ writes a heartbeat here to cover the job's callbacks; without callbacks it rides with the finish."""
        if job.success_callback or job.failure_callback:
            self.claim_running(job)
            return super().handle_execution_ended(job, queue, heartbeat_ttl)
        job.ended_at = job.last_heartbeat = now()
        return None

    # -- finishing it: one transaction ---------------------------------------------------------------

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry, execution: Execution):
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl == 0 or job.repeats_left or job.has_rate_limit:
            self.claim_running(job)
            return super().handle_job_success(job, queue, started_job_registry, execution)
        self.increment_successful_job_count()
        self.increment_total_working_time(job.ended_at - job.started_at)
        job._status = JobStatus.FINISHED
        final = self._final_progress(job)
        run = self._run
        if run is not None and run.job is job:
            with self._claim_lock:
                unclaimed = run.state == Run.UNCLAIMED
                if unclaimed:
                    run.state = Run.ENDED
            if unclaimed:  # written with the take's next write
                CLAIMS.cancel(run.timer)
                self.executions.pop(execution.id, None)  # the worker no longer runs it (as cleanup_execution)
                if not self._ended:
                    self._ended_since = time.monotonic()
                self._ended.append((job, queue, execution, result_ttl, final))
                return None
        short = (job.ended_at - job.started_at).total_seconds() < CLAIM_AFTER
        finish = {
            "status": JobStatus.FINISHED,
            "ended_at": rq_timestamp(job.ended_at),
            "last_heartbeat": rq_timestamp(job.last_heartbeat),
            **final,
        }
        with self.connection.pipeline() as pipe:
            pipe.hset(job.key, mapping=finish)
            self._write_success(pipe, job, execution, result_ttl)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.smembers(job.dependents_key)
            # Not before maintenance, which would see the popped job in the intermediate list.
            prefetch = not self._stop_requested and not self.should_run_maintenance_tasks and not self._queued
            if prefetch:  # a take of one, run unclaimed: takes grow while jobs stay short
                pipe.eval(TAKE, 2 * len(self.queues), *self._pop_keys(), 1, self.job_class.key_for(""))
            replies = redis_pipeline.send(pipe)
        if prefetch:
            self._take_size = 2 if short else 1
            self._add_take(replies.pop())
        if replies[0] == len(finish):  # the job's hash was deleted while it ran: drop the stub
            self.connection.delete(job.key)
        if replies[-1]:
            # Dependents registered before the commit are in the reply; later ones saw FINISHED and
            # were enqueued by whoever added them. RQ moves these to their queues.
            if result_ttl > 0:
                self.connection.expire(job.dependents_key, result_ttl)
            self._enqueue_dependents_safely(queue, job)
        self.log.debug("Worker %s: job %s finished", self.name, job.id)
        return None
