"""Redis memory a job holds, queued and once it ended, ours against stock RQ: what sizes ``maxmemory``.

``python -m bench memory`` (or ``python -m bench.memory``): for each task, N jobs (2,000; one run) are enqueued (ours:
the generator's one-script enqueue; stock: ``Queue.enqueue_many``), Redis's ``used_memory`` is read,
a worker in burst mode runs them all (ours: ``taskqueue-worker``; stock: ``rq.SimpleWorker``), and
``used_memory`` is read again. Bytes a job = the growth over N. Jobs are kept for the default
``TASKQUEUE_RESULT_TTL`` (finished) and ``TASKQUEUE_FAILURE_TTL`` (failed), so a finished job holds
this much memory for an hour: docs/reliability.md turns it into how many jobs a ``maxmemory`` holds.
"""

from __future__ import annotations

import argparse
from typing import Any

from rq import Queue
from rq.serializers import JSONSerializer

from bench import procs
from bench.common import Opts, fast_paths_env, print_rows, summary, write_result
from taskqueue import config as config_module
from taskqueue.api.jobs import JobRequest, JobService
from taskqueue.store.connection import connect
from taskqueue.tasks import load

TASKS = load()  # the built-in tasks

# (task, the API's arguments): the seed's job (with no wait), CPU work, nothing, a failure.
JOBS = {
    "sleep": {"seconds": 0},
    "hash": {"rounds": 1000},
    "noop": {},
    "fail": {"message": "requested failure"},
}


def _used(client) -> int:
    return int(client.info("memory")["used_memory"])


def _ours(redis, task: str, n: int) -> dict[str, float]:
    client = redis.client()
    client.flushall()
    cfg = config_module.load(environ={**redis.env(), **fast_paths_env(), "TASKQUEUE_RETRIES": "0"})
    svc = JobService(cfg, connect(cfg))
    req = JobRequest(TASKS[task], TASKS[task].arguments(JOBS[task]))
    before = _used(client)
    for i in range(0, n, 1000):
        svc.enqueue_batch([req] * min(1000, n - i))
    queued = _used(client)
    procs.our_worker(redis, "simple", {"TASKQUEUE_RETRIES": "0"}).wait(timeout=300)
    return {"queued_bytes": (queued - before) / n, "ended_bytes": (_used(client) - before) / n}


def _stock(redis, task: str, n: int) -> dict[str, float]:
    client = redis.client()
    client.flushall()
    cfg = config_module.load(environ={**redis.env(), **fast_paths_env()})
    queue = Queue("default", connection=client, serializer=JSONSerializer)
    args = TASKS[task].arguments(JOBS[task])
    before = _used(client)
    for i in range(0, n, 1000):
        data = [
            Queue.prepare_data(
                TASKS[task].func,
                args=args,
                timeout=cfg.job_timeout,
                result_ttl=cfg.result_ttl,
                failure_ttl=cfg.failure_ttl,
            )
            for _ in range(min(1000, n - i))
        ]
        queue.enqueue_many(data)
    queued = _used(client)
    procs.stock_worker(redis, burst=True).wait(timeout=300)
    return {"queued_bytes": (queued - before) / n, "ended_bytes": (_used(client) - before) / n}


def memory(opts: Opts) -> dict[str, Any]:
    """Bytes of Redis memory a job holds queued and ended, per task, ours and stock RQ."""
    n = opts.n(2000, 500)
    out: dict[str, Any] = {}
    rows = []
    with procs.redis_server() as redis:
        for task in JOBS:
            for name, run in (("ours", _ours), ("stock RQ", _stock)):
                runs = [run(redis, task, n)]  # Redis's accounting is exact: one run (repeats agree to <1 %)
                doc = {k: summary(r[k] for r in runs) for k in ("queued_bytes", "ended_bytes")}
                out[f"{task} {name}"] = doc
                rows += [(f"{task} {name}", k, v) for k, v in doc.items()]
    print_rows(f"Redis memory a job ({n} jobs a run)", rows)
    write_result("memory", opts, out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    memory(Opts.make(quick=p.parse_args().quick))


if __name__ == "__main__":
    main()
