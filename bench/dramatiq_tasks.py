"""The Dramatiq side of the job-slot benchmarks (runs in bench/.venv-dramatiq, not the project's venv).

``python -m dramatiq_tasks fill N`` queues N no-op messages, ``fill N wait SECONDS`` N that sleep;
``dramatiq dramatiq_tasks`` runs them.
"""

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peer_jobs import done_counter, fill_request, wait_then_count

broker = RedisBroker(url=os.environ["DRAMATIQ_BROKER"])
dramatiq.set_broker(broker)
done = done_counter(os.environ["DRAMATIQ_BROKER"])


@dramatiq.actor(max_retries=0)
def noop():
    """Does nothing, like taskqueue.tasks.noop."""


@dramatiq.actor(max_retries=0)
def wait(seconds):
    wait_then_count(done, seconds)


if __name__ == "__main__":
    if (request := fill_request(sys.argv)) is not None:
        n, seconds = request
        actor, args = (noop, ()) if seconds is None else (wait, (seconds,))
        for _ in range(n):
            actor.send(*args)
