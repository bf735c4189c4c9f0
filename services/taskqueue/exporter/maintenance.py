"""Queue maintenance that leaves no job behind: abandoned jobs, limbo states, the intermediate queue.

RQ's own maintenance has two gaps that killed workers fall into:

- ``Job.retry()`` sets the status outside the pipeline that schedules the job. A process killed
  between the two leaves a job marked ``scheduled`` (or ``queued``) that is in no registry and no
  queue, and the next cleanup drops its started-registry entry: the job is never run again.
- RQ's maintenance runs under a lock that lives 15 minutes if the worker holding it is killed.

So one process, the exporter (one replica, never scaled to zero), runs :func:`maintain` for every
queue: it puts limbo jobs back on their queue, then lets RQ retry or fail abandoned ones. (The
exporter also requeues jobs dequeued by a worker that died before starting them.)
"""

from __future__ import annotations

import logging

from redis import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry, clean_registries
from rq.worker_registration import clean_worker_registry

log = logging.getLogger(__name__)


def _in_lists(redis: Redis, job_id: str, *keys: str) -> bool:
    """Whether ``job_id`` is in any of the lists, read in one transaction (a consistent snapshot)."""
    with redis.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.lpos(key, job_id)
        return any(pos is not None for pos in pipe.execute())


def repair_limbo(queue: Queue, job: Job) -> bool:
    """Put a job whose status says where it is, but which is not there, back on its queue."""
    status = job.get_status(refresh=False)
    redis = queue.connection
    if status == JobStatus.SCHEDULED:
        lost = redis.zscore(ScheduledJobRegistry(queue=queue).key, job.id) is None
    elif status == JobStatus.QUEUED:
        lost = not _in_lists(redis, job.id, queue.key, queue.intermediate_queue_key)
    else:
        return False
    if lost:
        log.warning("job %s was %s but in no queue or registry (its worker died mid-update): requeued", job.id, status)
        queue.enqueue_job(job, at_front=True)
    return lost


def maintain(queue: Queue) -> None:
    """One maintenance pass over ``queue`` (see the module docstring)."""
    started = StartedJobRegistry(queue=queue)
    for job_id in started.get_expired_job_ids():
        job = queue.fetch_job(job_id)
        if job is not None:
            repair_limbo(queue, job)
    clean_registries(queue)  # retries or fails abandoned jobs, expires old finished/failed entries
    clean_worker_registry(queue)
