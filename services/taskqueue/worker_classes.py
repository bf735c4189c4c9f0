"""Our RQ worker classes: RQ's forking and non-forking workers plus metrics, job-id logging and stop.

Only public hooks are overridden (``execute_job``, ``kill_horse``, the death penalty class), so
RQ's timeouts, retries, results and registries work unchanged.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime

from rq import SimpleWorker, Worker
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import UnixSignalDeathPenalty

from . import metrics
from .logs import current_job_id
from .tasks import TASKS, task_name

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


class MetricsMixin:
    """Counts each job attempt in the long-lived worker process (never in a forked work-horse)."""

    refresh_status_after_job = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        metrics.init_worker_series((q.name for q in self.queues), TASKS)

    def execute_job(self, job: Job, queue: Queue):
        try:
            task = task_name(job.func_name)
        except DeserializationError:  # not our JSON: RQ fails the job; the worker must not die here
            task = "other"
        token = current_job_id.set(job.id)
        if job.enqueued_at is not None:
            enqueued = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=UTC)
            metrics.JOB_WAIT.labels(queue.name, task).observe(max(0.0, (datetime.now(UTC) - enqueued).total_seconds()))
        busy = metrics.worker_gauges()[0]
        busy.set(1)
        started = time.perf_counter()
        try:
            return super().execute_job(job, queue)
        finally:
            metrics.JOB_RUN.labels(queue.name, task).observe(time.perf_counter() - started)
            busy.set(0)
            status = job.get_status(refresh=self.refresh_status_after_job)
            outcome = OUTCOME_BY_STATUS.get(status, "failed")
            metrics.JOBS_COMPLETED.labels(queue.name, task, outcome).inc()
            current_job_id.reset(token)


class ForkingWorker(MetricsMixin, Worker):
    """A work-horse process per job: isolation at the cost of a fork per job."""


class StoppableDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM timeout, leaving SIGALRM ignored between jobs so a late stop signal is harmless."""

    def cancel_death_penalty(self):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


class InProcessWorker(MetricsMixin, SimpleWorker):
    """Runs jobs in the worker process itself: no fork per job; the job status is already in memory."""

    refresh_status_after_job = False
    death_penalty_class = StoppableDeathPenalty

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL):
        """Stop the running job (``DELETE /jobs/<id>``): interrupt it the way a timeout does."""
        if self.executions and threading.current_thread() is not threading.main_thread():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)


WORKER_CLASSES = {"simple": InProcessWorker, "fork": ForkingWorker}


def worker_class(name: str) -> type[Worker] | type[SimpleWorker]:
    return WORKER_CLASSES[name]
