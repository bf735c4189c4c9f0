"""The Celery side of the worker benchmarks (runs in bench/.venv-celery, not the project's venv).

``python -m celery_noop fill N`` queues N no-op tasks, ``fill N wait SECONDS`` N tasks that sleep;
``celery -A celery_noop worker`` runs them.
"""

import os
import sys

from celery import Celery
from peer_jobs import done_counter, fill_request, wait_then_count

app = Celery("celery_noop", broker=os.environ["CELERY_BROKER"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
done = done_counter(os.environ["CELERY_BROKER"])


@app.task(name="noop")
def noop():
    """Does nothing, like taskqueue.tasks.noop."""


@app.task(name="wait")
def wait(seconds):
    wait_then_count(done, seconds)


if __name__ == "__main__":
    if (request := fill_request(sys.argv)) is not None:
        n, seconds = request
        task, args = (noop, ()) if seconds is None else (wait, (seconds,))
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(args, producer=producer)
