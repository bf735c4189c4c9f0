"""The Dramatiq side of the job-slot benchmarks (runs in bench/.venv-dramatiq, not the project's venv).

``python -m dramatiq_tasks fill N`` queues N no-op messages, ``fill N wait SECONDS`` N that sleep;
``dramatiq dramatiq_tasks`` runs them. A ``wait`` counts itself done in Redis (``bench:done``): without a
result backend, that is how the benchmark sees the last one end.
"""

import os
import sys
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["DRAMATIQ_BROKER"])
dramatiq.set_broker(broker)
done = redis.Redis.from_url(os.environ["DRAMATIQ_BROKER"], max_connections=1024)  # a thread each


@dramatiq.actor(max_retries=0)
def noop():
    """Does nothing, like taskqueue.tasks.noop."""


@dramatiq.actor(max_retries=0)
def wait(seconds):
    """Sleeps like the seed's job, then counts itself done."""
    time.sleep(seconds)
    done.incr("bench:done")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fill"]:
        n = int(sys.argv[2])
        actor, args = (wait, (float(sys.argv[4]),)) if sys.argv[3:4] == ["wait"] else (noop, ())
        for _ in range(n):
            actor.send(*args)
