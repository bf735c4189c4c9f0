"""Taking a job off several queues with no moment at which it is in none of RQ's lists or registries.

On one queue RQ moves the job it takes into the queue's intermediate list (BLMOVE), and the worker takes it
out in the transaction that starts it: a worker killed, or cut off from Redis, in between leaves the job in
that list, where the exporter finds it and puts it back (exporter/collector.py). On several queues stock RQ
pops with BLPOP instead, and the job is then in no list until its start is written: lost if the worker dies
or a Redis failover comes in between (tests/test_failover.py found it with fast paths off). :class:`TakingQueue`
takes into the intermediate list on several queues too; the workers remove it from there as they start it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text

from taskqueue.config import default_queue

# The first job of the first non-empty queue, moved into that queue's intermediate list. KEYS: each queue's
# list and intermediate list, in priority order. Returns {the queue's place (1-based), the job id}, or false.
POP_FIRST = """
for i = 1, #KEYS, 2 do
    local job_id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
    if job_id then return {(i + 1) / 2, job_id} end
end
return false
"""
# Redis has no blocking move out of several lists: an idle worker on several queues blocks on one (the default
# queue, where jobs of tasks without a queue of their own wait) at most this long, then looks at all in order.
IDLE_LOOK_EVERY = 0.2


def pop_keys(queues: Iterable[Queue]) -> list[str]:
    """Each queue's list and intermediate list, in priority order: the keys of :data:`POP_FIRST`."""
    return [key for q in queues for key in (q.key, q.intermediate_queue_key)]


class TakingQueue(Queue):
    """RQ's queue, whose :meth:`dequeue_any` takes into the intermediate list on several queues as on one."""

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        """As RQ's: the first job of the first non-empty queue and its queue, waiting up to ``timeout`` seconds
        (None: not at all) and raising :class:`DequeueTimeout` when none came."""
        queues = list(queues)
        if len(queues) == 1:  # RQ's own BLMOVE into the intermediate list
            return super().dequeue_any(queues, timeout, connection, job_class, serializer, death_penalty_class)
        keys = pop_keys(queues)
        names = [q.name for q in queues]
        idle = queues[names.index(default_queue(names))]
        deadline = None if timeout is None else time.monotonic() + timeout
        job_class = job_class or Job
        while True:
            popped = connection.eval(POP_FIRST, len(keys), *keys)
            if popped:
                queue, job_id = queues[int(popped[0]) - 1], as_text(popped[1])
            else:
                left = None if deadline is None else deadline - time.monotonic()
                if left is None:
                    return None
                if left <= 0:
                    raise DequeueTimeout(timeout, keys[::2])
                blocked = connection.blmove(idle.key, idle.intermediate_queue_key, min(left, IDLE_LOOK_EVERY))
                if blocked is None:
                    continue
                queue, job_id = idle, as_text(blocked)
            try:
                job = job_class.fetch(job_id, connection=connection, serializer=serializer)
            except NoSuchJobError:  # deleted while queued (as RQ does: skip it)
                connection.lrem(queue.intermediate_queue_key, 1, job_id)
                continue
            job.origin = queue.name
            return job, queue
