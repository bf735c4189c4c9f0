"""What the peers' task modules share (bench/celery_noop.py, bench/dramatiq_tasks.py); each runs in its peer's
venv, which has redis-py: the done counter the benchmark reads, the waiting job, the ``fill`` arguments."""

import sys
import time

import redis

DONE = "bench:done"


def done_counter(url: str) -> redis.Redis:
    """A client for the counter; a connection a worker thread (redis-py's default pool holds 100)."""
    return redis.Redis.from_url(url, max_connections=1024)


def wait_then_count(done: redis.Redis, seconds: float) -> None:
    """Sleep like the seed's job, then count the job done: without a result backend, how the benchmark
    sees the last one end."""
    time.sleep(seconds)
    done.incr(DONE)


def fill_request(argv: list[str]) -> tuple[int, float | None] | None:
    """``fill N`` (no-op jobs) or ``fill N wait SECONDS``: (N, SECONDS or None); None for anything else."""
    if argv[1:2] != ["fill"]:
        return None
    return int(argv[2]), (float(argv[4]) if argv[3:4] == ["wait"] else None)


if __name__ == "__main__":
    sys.exit("a module of the peers' task modules, not a command")
