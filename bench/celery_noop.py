"""The Celery side of the worker benchmark (runs in bench/.venv-celery, not the project's venv).

``python -m celery_noop fill N`` queues N no-op tasks; ``celery -A celery_noop worker`` runs them.
"""

import os
import sys

from celery import Celery

app = Celery("celery_noop", broker=os.environ["CELERY_BROKER"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop():
    """Does nothing, like taskqueue.tasks.noop."""


if __name__ == "__main__":
    if sys.argv[1:2] == ["fill"]:
        n = int(sys.argv[2])
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)
