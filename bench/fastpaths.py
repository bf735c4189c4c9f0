"""``python -m bench.fastpaths``: what a fast path gains against the path it replaces, paired in one
process (fastpath/COUPLING.md lists them).

- ``job_path``: the in-process worker's job lifecycle in two round trips (``LeanInProcessWorker``)
  against RQ's ``SimpleWorker`` job handling with our additions (``InProcessWorker``, fast paths off).
  Whole burst runs over the same number of no-op jobs, the two in a random order each round.
- ``plain_start``: ``GET /start?delay=1`` answered by ``fastpath/plain_start.py`` against Flask's
  dispatch of the same route (the app with fast paths off), both driving the WSGI app in this process
  with Redis behind; the two in a random order each round.

The figure is this process's CPU a job or a request (``time.process_time``): steadier than wall time
on a shared 2-core host. A fast path with private names stays only if it saves >= 10 %.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from bench.common import Opts, write_result

KEEP_AT = 0.10  # the least gain a fast path with private names must show


def gain(on: list[float], off: list[float]) -> dict[str, Any]:
    """Medians and the median paired saving of the fast path (``on``) over the path it replaces."""
    med_on, med_off = statistics.median(on), statistics.median(off)
    saving = statistics.median((b - a) / b for a, b in zip(on, off, strict=True))
    return {"on_us": med_on, "off_us": med_off, "saving": saving, "keep": saving >= KEEP_AT, "rounds": [on, off]}


def report(name: str, doc: dict[str, Any]) -> None:
    verdict = "keep" if doc["keep"] else "remove"
    print(
        f"{name}: {doc['on_us']:.0f} µs a job (or request) with it, {doc['off_us']:.0f} without (medians); "
        f"paired saving {doc['saving']:.1%} -> {verdict} (>= {KEEP_AT:.0%})"
    )


def job_path_rounds(redis, rounds: int, jobs: int) -> dict[str, Any]:
    """Whole bursts: the fast path's worker and the stock one, in a random order each round."""
    from bench.worker_bench import NOOP, service
    from taskqueue import config as config_module
    from taskqueue.store.connection import connect
    from taskqueue.store.records import SERIALIZER
    from taskqueue.worker.classes import InProcessWorker, LeanInProcessWorker

    cfg = config_module.load(environ=redis.env())
    svc = service(redis)
    rng = random.Random(11)
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(rounds + 1):  # the first round warms up
        for side in rng.sample(("on", "off"), 2):
            redis.client().flushall()
            svc.enqueue_batch([NOOP] * jobs)
            cls = LeanInProcessWorker if side == "on" else InProcessWorker
            w = cls(["default"], connection=connect(cfg, retries=0), serializer=SERIALIZER, metrics_enabled=False)
            t0 = time.process_time()
            w.work(burst=True, logging_level="WARNING")
            spent = time.process_time() - t0
            if redis.client().llen("rq:queue:default"):
                raise RuntimeError("jobs left")
            if i:
                cpu[side].append(spent / jobs * 1e6)
    return gain(cpu["on"], cpu["off"])


def plain_start_rounds(redis, rounds: int, requests: int) -> dict[str, Any]:
    """The same requests through the app with the fast path and through Flask, in a random order each round."""
    from werkzeug.test import EnvironBuilder

    from taskqueue import config as config_module
    from taskqueue.api.app import create_app

    apps = {
        side: create_app(config_module.load(environ={**redis.env(), "TASKQUEUE_FAST_PATHS": side}))
        for side in ("on", "off")
    }
    environ = EnvironBuilder(path="/start", query_string="delay=1").get_environ()
    statuses: list[str] = []
    rng = random.Random(12)
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(rounds + 1):  # the first round warms up
        for side in rng.sample(("on", "off"), 2):
            app = apps[side]
            t0 = time.process_time()
            for _ in range(requests):
                b"".join(app(dict(environ), lambda status, headers: statuses.append(status)))
            spent = time.process_time() - t0
            redis.client().flushall()
            if i:
                cpu[side].append(spent / requests * 1e6)
    if set(statuses) != {"200 OK"}:
        raise RuntimeError(f"answers other than 200: {set(statuses)}")
    return gain(cpu["on"], cpu["off"])


def run(rounds: int, jobs: int) -> dict[str, Any]:
    from bench import procs

    with procs.redis_server() as redis:
        out = {"job_path": job_path_rounds(redis, rounds, jobs), "plain_start": plain_start_rounds(redis, rounds, jobs)}
    for name, doc in out.items():
        report(name, doc)
    write_result("fastpaths", Opts(repeats=rounds), out)
    return out


def fastpaths(opts: Opts) -> dict[str, Any]:
    """``make bench``'s entry: 10 rounds of 1,000 jobs (quick: 2 of 300)."""
    return run(2, 300) if opts.quick else run(10, 1000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fastpaths", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1000, help="no-op jobs (and /start requests) a round")
    args = p.parse_args(argv)
    run(args.rounds, args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
