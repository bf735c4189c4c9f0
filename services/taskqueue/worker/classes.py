"""Our RQ worker classes: RQ's forking and non-forking workers, plus what production needs around them.

- metrics counted in the long-lived worker process (never in a forked work-horse);
- the job id on every log line;
- job data that is not JSON (e.g. a pickle written into Redis) refused, never executed;
- a job whose function is not a task of the catalogue (e.g. ``os.system``, written into Redis with plain
  RQ) refused: its function is never imported or called;
- heartbeats every ``heartbeat_ttl / 3`` seconds while a job runs, so that the job of a worker
  that was SIGKILLed or OOM-killed is found abandoned within ``heartbeat_ttl`` seconds;
- stop of a running job for the non-forking worker (``DELETE /jobs/<id>``);
- ``shutdown_mode="requeue"``: SIGTERM puts the running job back at the front of its queue at once.

Only public methods of RQ's workers are overridden (``work``, ``execute_job``, ``prepare_job_execution``,
``handle_execution_ended``, ``handle_job_failure``, ``handle_exception``, ``handle_payload``, ``heartbeat``,
``clean_registries``, ``request_stop``, ``get_heartbeat_ttl``, ``kill_horse``, the death penalty class), so
RQ's timeouts, retries, results and registries work unchanged. With fast paths on, the in-process worker
is :class:`LeanInProcessWorker`: the same, with the job's lifecycle of ``taskqueue/fastpath/job_path.py``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from datetime import UTC

from redis.client import Pipeline
from rq import SimpleWorker, Worker, worker_registration
from rq.command import parse_payload
from rq.exceptions import DeserializationError, StopRequested
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import UnixSignalDeathPenalty
from rq.utils import now

from taskqueue.fastpath.job_path import LeanJob, LeanJobPath
from taskqueue.observability import logs, metrics
from taskqueue.observability.logs import current_job_id
from taskqueue.store import outcomes
from taskqueue.store.connection import STORE_FULL_ERRORS, UNAVAILABLE_ERRORS
from taskqueue.store.outcomes import BoundedResultJob
from taskqueue.store.queues import TakingQueue
from taskqueue.tasks import Catalogue, report
from taskqueue.tasks import load as load_catalogue

OUTCOME_BY_STATUS = {
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "stopped",
    JobStatus.CANCELED: "stopped",
    JobStatus.SCHEDULED: "retried",
    JobStatus.QUEUED: "retried",
    # Retried with no interval and already taken by another worker before this one read the status.
    JobStatus.STARTED: "retried",
}
# Most seconds between refreshes of the worker's own key outside jobs (a third of its TTL if less).
WORKER_BEAT_EVERY = 5.0
NOT_JSON = "refused: the job's data is not JSON (taskqueue never unpickles job data)"
NOT_A_TASK = "refused: {} is not a task of this worker's catalogue (TASKQUEUE_TASK_MODULES), so it was not run"


class ShutdownRequeue(Exception):
    """Raised into a running in-process job when the worker is told to requeue it and stop."""


class TaskqueueWorkerMixin:
    """What both worker classes add to RQ's (see the module docstring)."""

    refresh_status_after_job = True
    job_class = BoundedResultJob  # RQ's Job, failing a job whose result is over max_result_bytes
    # RQ waits up to 60 s between reconnect attempts by default; a queue should come back sooner.
    max_connection_wait_time = 5.0

    def __init__(
        self,
        *args,
        heartbeat_ttl: int = 60,
        shutdown_mode: str = "finish",
        maintenance: bool = True,
        log_job_lines: bool = False,
        metrics_enabled: bool = True,
        max_result_bytes: int = 65536,
        catalogue: Catalogue | None = None,
        **kwargs,
    ):
        self.catalogue = catalogue if catalogue is not None else load_catalogue()  # default: the built-in tasks
        self.metrics_enabled = metrics_enabled
        self.max_result_bytes = max_result_bytes
        self.stopping_job_id: str | None = None  # the job a DELETE asked to stop
        self._failure: tuple[str, BaseException | None] | None = None  # the job id and exception being failed
        self.heartbeat_ttl = heartbeat_ttl
        self.log_job_lines = log_job_lines
        self.maintenance = maintenance
        self.shutdown_mode = shutdown_mode
        self.stop_requested = False
        self._requeue_job_id: str | None = None
        self._last_worker_beat = float("-inf")
        kwargs.setdefault("job_monitoring_interval", max(1, heartbeat_ttl // 3))
        # RQ blocks on the queue for worker_ttl - 15 s between idle beats: below heartbeat_ttl.
        kwargs.setdefault("worker_ttl", heartbeat_ttl)
        super().__init__(*args, **kwargs)
        if not log_job_lines:
            self.log_result_lifespan = False
        if metrics_enabled:
            metrics.init_worker_series((q.name for q in self.queues), self.catalogue)
            # 1 while a job runs, read every 0.5 s rather than set twice a job
            metrics.BATCHED.sample(metrics.worker_gauges()[0], lambda: 1.0 if self.executions else 0.0)

    @property
    def log(self) -> logging.Logger | logs.WithoutPerJobLines:
        return self._log

    @log.setter
    def log(self, logger: logging.Logger | logs.WithoutPerJobLines) -> None:
        """RQ sets ``self.log`` in ``__init__`` and again in a forked work horse; both get the adapter
        that drops the per-job lines, unless they are asked for."""
        if self.log_job_lines or isinstance(logger, logs.WithoutPerJobLines):
            self._log = logger
        else:
            self._log = logs.WithoutPerJobLines(logger)

    def clean_registries(self):
        """RQ's registry maintenance, unless the exporter owns it (TASKQUEUE_WORKER_MAINTENANCE=false).

        Then no worker runs it: a worker killed mid-maintenance can neither leave a job half-updated
        nor hold RQ's 15-minute maintenance lock.
        """
        if self.maintenance:
            super().clean_registries()
        else:
            self.last_cleaned_at = now()

    # -- the worker's key ---------------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """Keep the worker key alive for heartbeat_ttl s (not RQ's minutes) and the worker registered."""
        # A SIGKILLed worker's key expires within heartbeat_ttl; a live one is beaten well before: between
        # jobs by RQ's dequeue loop (every worker_ttl - 15 s and after each job), during one by the job
        # heartbeats (every job_monitoring_interval). RQ asks for longer TTLs (worker_ttl + 60, interval + 60).
        ttl = min(timeout or self.heartbeat_ttl, self.heartbeat_ttl)
        if timeout is not None or pipeline is not None:
            super().heartbeat(ttl, pipeline)
            return
        # RQ refreshes the key three times a job; a fraction of its TTL apart is plenty.
        if time.monotonic() - self._last_worker_beat < min(WORKER_BEAT_EVERY, ttl / 3):
            return
        try:
            self._beat(ttl)
        except STORE_FULL_ERRORS as exc:  # Redis full: wait it out in the loop; the key lives out its TTL
            self.log.warning("Worker %s: heartbeat not written, Redis is full: %s", self.name, exc)

    def mark_beaten(self) -> None:
        """The worker key was just written whole (a birth): the next beat is due a beat's interval from now."""
        self._last_worker_beat = time.monotonic()

    def _beat(self, ttl: int) -> None:
        super().heartbeat()  # RQ's beat (in-process: with the job counters), with RQ's TTL: cut below
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.expire(self.key, ttl)
            pipe.expire(self.executions_key, ttl)
            pipe.hexists(self.key, "birth")
            # Idempotent; lists the worker again if its key expired while Redis was away.
            worker_registration.register(self, pipe)
            complete = pipe.execute()[2]
            if not complete and self.birth_date is not None:  # the beat recreated an expired key
                pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
                pipe.expire(self.key, ttl)
                pipe.execute()
        self._last_worker_beat = time.monotonic()

    # -- heartbeats --------------------------------------------------------------------------------

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long a running job's execution stays alive without a heartbeat: bounded, configured."""
        return self.heartbeat_ttl

    # -- per job -----------------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue):
        try:
            task = self.catalogue.for_path(job.func_name)
        except DeserializationError:
            return self._refuse(job, queue, NOT_JSON)
        if task is None:
            return self._refuse(job, queue, NOT_A_TASK.format(job.func_name))
        if self.stop_requested and self.shutdown_mode == "requeue":
            # SIGTERM came after the job was taken but before it ran: hand it back unstarted.
            self._requeue_job_id = job.id
            execution = self.prepare_execution(job)
            return self.handle_job_failure(job, queue, queue.started_job_registry, "", execution)
        self.stopping_job_id = None  # a stop that came for the last job after it ended
        token, limit = current_job_id.set(job.id), outcomes.result_limit.set(self.max_result_bytes)
        try:
            if not self.metrics_enabled:
                return super().execute_job(job, queue)
            return self._execute_counted(job, queue, task.name)
        except (StopRequested, ShutdownRequeue, *UNAVAILABLE_ERRORS):
            raise
        except Exception as exc:  # RQ's loop would quit on it: fail this job, go on with the next
            return self._fail_unrecorded(job, queue, exc)
        finally:
            current_job_id.reset(token)
            outcomes.result_limit.reset(limit)
            if self.stopping_job_id == job.id:
                self.stopping_job_id = None

    def perform_job(self, job: Job, queue: Queue, execution) -> bool:
        """RQ's, then the job's last progress kept between writes (in the job's thread, or its work horse)."""
        report.begin(job)
        try:
            return super().perform_job(job, queue, execution)
        finally:
            report.flush(job)

    def _fail_unrecorded(self, job: Job, queue: Queue, exc: Exception) -> None:
        """A job whose outcome could not be stored: fail it with a short error; failing that, leave it to
        the heartbeat bound (its claim expires, maintenance retries or fails it)."""
        self.log.exception("Worker %s: job %s: its outcome could not be stored; failing it", self.name, job.id)
        execution = next((e for e in self.executions.values() if e.job_id == job.id), None)
        self._failure = (job.id, exc)  # the error line names this exception
        try:
            self.handle_job_failure(
                job, queue, exc_string="taskqueue: the job's outcome could not be stored", execution=execution
            )
        except Exception:
            self.log.exception("Worker %s: job %s: not failed either; its claim will expire", self.name, job.id)

    def _execute_counted(self, job: Job, queue: Queue, task: str):
        """Run the job with its wait, run time and outcome counted."""
        wait, run, completed = metrics.job_series(queue.name, task)
        enqueued = job.enqueued_at
        if enqueued is not None and enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=UTC)
        waited = max(0.0, time.time() - enqueued.timestamp()) if enqueued is not None else None
        started = time.perf_counter()
        try:
            return super().execute_job(job, queue)
        finally:
            metrics.BATCHED.observe(run, time.perf_counter() - started)
            if waited is not None:
                metrics.BATCHED.observe(wait, waited)
            status = job.get_status(refresh=self.refresh_status_after_job)
            completed[OUTCOME_BY_STATUS.get(status, "failed")].inc()

    def _refuse(self, job: Job, queue: Queue, reason: str) -> None:
        """Fail a job without running (or importing, or unpickling) anything: its data is not JSON, or its
        function is not a catalogue task."""
        self.log.error("Worker %s: job %s: %s", self.name, job.id, reason)
        execution = self.prepare_execution(job)
        # RQ's names the job's function in the process title once the records are written: there is none.
        with contextlib.suppress(DeserializationError):
            self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        self.handle_job_failure(
            job, queue, started_job_registry=queue.started_job_registry, exc_string=reason, execution=execution
        )
        if self.metrics_enabled:
            metrics.JOBS_COMPLETED.labels(queue.name, "other", "failed").inc()

    def handle_exception(self, job: Job, *exc_info):
        """Keep the exception a failure is about (its error line is written from it), then RQ's handlers."""
        self._failure = (job.id, exc_info[1])
        return super().handle_exception(job, *exc_info)

    def handle_payload(self, message):
        """A stop command for the running job (``DELETE /jobs/<id>``): remember it, so that its failure
        reads "stopped on request", not the timeout or the killed work horse the stop looks like."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            job_id = payload.get("job_id")
        elif payload.get("command") == "stop-execution":
            execution = self.executions.get(payload.get("execution_id"))
            job_id = execution.job_id if execution is not None else None
        else:
            job_id = None
        if job_id is not None and job_id == self.get_current_job_id():
            self.stopping_job_id = job_id
        return super().handle_payload(message)

    def _failure_text(self, job: Job, exc_string: str) -> str:
        """What a failure stores: the error line from the exception, then RQ's traceback, encodable and bounded."""
        failure, self._failure = self._failure, None
        if self.stopping_job_id == job.id:
            self.stopping_job_id = None
            return outcomes.error_text(outcomes.JobStopped("stopped on request"), "stopped on request")
        if failure is not None and failure[0] == job.id:
            return outcomes.error_text(failure[1], exc_string)
        return outcomes.storable(exc_string)  # no exception object (a killed work horse): RQ's text

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string="", execution=None):
        """A job interrupted for a requeueing shutdown goes back to the front of its queue, no retry spent;
        any other failure stores :meth:`_failure_text`."""
        if self._requeue_job_id is not None and job.id == self._requeue_job_id:
            self._requeue_job_id = None
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
            queue.enqueue_job(job, at_front=True)
            self.log.warning("Worker %s: job %s requeued at shutdown", self.name, job.id)
            return None
        return super().handle_job_failure(
            job,
            queue,
            started_job_registry=started_job_registry,
            exc_string=self._failure_text(job, exc_string),
            execution=execution,
        )

    # -- shutdown ----------------------------------------------------------------------------------

    def request_stop(self, signum, frame):
        """SIGTERM/SIGINT: warm shutdown; in ``requeue`` mode the running job is interrupted and requeued."""
        self.stop_requested = True
        busy = self.job_interruptible()
        super().request_stop(signum, frame)
        if busy and self.shutdown_mode == "requeue":
            execution = self.execution
            self._requeue_job_id = execution.job_id if execution else None
            self.interrupt_job()

    def job_interruptible(self) -> bool:
        """A job is running and :meth:`interrupt_job` may stop it now."""
        return bool(self.executions)

    def interrupt_job(self) -> None:
        """Interrupt the running job (subclasses know how)."""
        raise NotImplementedError


class TakesIntoIntermediateList:
    """RQ's take on several queues as on one (store/queues.py): the job goes into its queue's intermediate list,
    and out of it in the transaction that starts it, so it is never in no list (stock RQ pops with BLPOP there)."""

    queue_class = TakingQueue

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)  # type: ignore[misc]


class ForkingWorker(TakesIntoIntermediateList, TaskqueueWorkerMixin, Worker):
    """A work-horse process per job: isolation at the cost of a fork per job."""

    def interrupt_job(self) -> None:
        self.kill_horse(signal.SIGKILL)


class StoppableDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM timeout, leaving SIGALRM ignored between jobs so a late stop signal is harmless."""

    def cancel_death_penalty(self):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


class InProcessMixin:
    """Runs jobs in the worker process itself, no fork per job; a thread keeps a long job's heartbeats going.

    First in the bases, before :class:`TaskqueueWorkerMixin`."""

    refresh_status_after_job = False
    death_penalty_class = StoppableDeathPenalty

    _beat_thread: threading.Thread | None = None
    # Inside RQ's perform_job, from prepare_job_execution to the end of the run: the only stretch
    # where an exception raised into the job lands in RQ's failure handling (see job_interruptible).
    _performing = False

    def work(self, *args, **kwargs):
        """RQ's, with SIGALRM ignored until a job's timeout arms it: a stop that arrives just before
        the first job starts must not kill the process (SIGALRM's default action)."""
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        return super().work(*args, **kwargs)

    def execute_job(self, job: Job, queue: Queue):
        if self._beat_thread is None:
            # One thread for the worker's life: starting one per job cost ~0.8 ms a job (bench/).
            self._beat_lock = threading.Lock()
            self._beat_job: tuple[Job, float] | None = None
            self._beat_thread = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
            self._beat_thread.start()
        with self._beat_lock:
            self._beat_job = (job, time.monotonic())
        try:
            return super().execute_job(job, queue)
        finally:
            self._performing = False
            with self._beat_lock:  # waits for a beat in flight: none lands after the job ends
                self._beat_job = None

    def job_interruptible(self) -> bool:
        """Only while RQ's perform_job can catch the interruption: a SIGTERM between the take and
        that point is left to :meth:`prepare_job_execution`, which requeues the job unrun."""
        return self._performing

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # The first step inside perform_job's try: from here an interruption is handled by RQ.
        self._performing = True
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        if self.stop_requested and self.shutdown_mode == "requeue":
            self._requeue_job_id = job.id
            raise ShutdownRequeue()  # into RQ's failure handling, which requeues it (handle_job_failure)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int):
        self._performing = False  # the job returned: a stop now lets it finish its bookkeeping
        return super().handle_execution_ended(job, queue, heartbeat_ttl)

    def _beat_forever(self) -> None:
        """Renew the running job's claim every job_monitoring_interval (jobs shorter than that need none)."""
        while True:
            time.sleep(self.job_monitoring_interval)
            with self._beat_lock:
                if self._beat_job is None:
                    continue
                job, since = self._beat_job
                execution = self.execution
                if execution is None or time.monotonic() - since < self.job_monitoring_interval:
                    continue
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception as exc:  # Redis away for a moment: the next beat tries again
                    self.log.warning("Worker %s: heartbeat failed: %s", self.name, exc)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL):
        """Stop the running job (``DELETE /jobs/<id>``): interrupt it the way a timeout does."""
        if self.executions and threading.current_thread() is not threading.main_thread():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)

    def interrupt_job(self) -> None:
        # Signal handlers run in the main thread, inside the job: the exception unwinds the job
        # into RQ's failure handling, where handle_job_failure requeues it.
        raise ShutdownRequeue()


class InProcessWorker(TakesIntoIntermediateList, InProcessMixin, TaskqueueWorkerMixin, SimpleWorker):
    """RQ's ``SimpleWorker`` job handling, with the above."""


class LeanInProcessWorker(InProcessMixin, TaskqueueWorkerMixin, LeanJobPath, SimpleWorker):
    """:class:`InProcessWorker` with RQ's job lifecycle of fastpath/job_path.py (short jobs taken several at a
    time and claimed only if they run long)."""

    job_class = LeanJob

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string="", execution=None):
        """A job of a take is claimed before it is failed, retried or requeued: those paths are RQ's (and
        :class:`TaskqueueWorkerMixin`'s), which work on a claimed job."""
        self.claim_running(job)
        return super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)


WORKER_CLASSES = {"simple": InProcessWorker, "fork": ForkingWorker}
# With fast paths on; a fork a job costs far more than the bookkeeping the fast path saves.
FAST_WORKER_CLASSES = {"simple": LeanInProcessWorker, "fork": ForkingWorker}


def worker_class(name: str, fast_paths: bool = True) -> type[Worker] | type[SimpleWorker]:
    return (FAST_WORKER_CLASSES if fast_paths else WORKER_CLASSES)[name]
