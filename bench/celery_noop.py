"""The Celery side of the worker benchmarks (runs in bench/.venv-celery, not the project's venv).

``python -m celery_noop fill N`` queues N no-op tasks, ``fill N wait SECONDS`` N tasks that sleep;
``celery -A celery_noop worker`` runs them. A ``wait`` task counts itself done in Redis (``bench:done``):
without a result backend, that is how the benchmark sees the last one end.
"""

import os
import sys
import time

import redis
from celery import Celery

app = Celery("celery_noop", broker=os.environ["CELERY_BROKER"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
done = redis.Redis.from_url(os.environ["CELERY_BROKER"], max_connections=1024)  # a thread each


@app.task(name="noop")
def noop():
    """Does nothing, like taskqueue.tasks.noop."""


@app.task(name="wait")
def wait(seconds):
    """Sleeps like the seed's job, then counts itself done."""
    time.sleep(seconds)
    done.incr("bench:done")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fill"]:
        n = int(sys.argv[2])
        task, args = (wait, (float(sys.argv[4]),)) if sys.argv[3:4] == ["wait"] else (noop, ())
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(args, producer=producer)
