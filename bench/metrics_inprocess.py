"""``python -m bench.metrics_inprocess``: CPU a ``/start`` request with metrics on vs off, in one process.

One generator app, with the multiprocess (mmap) metric storage gunicorn uses on a tmpfs as in the
chart, is driven by Flask's test client against a real Redis; its metrics are switched on and off
(what ``TASKQUEUE_METRICS_ENABLED`` decides at start) from one request to the next, in pairs of
requests whose order is drawn at random, and each request's CPU time goes to its side. The median
over rounds of the per-round difference is the metrics' cost a request, free of gunicorn's and
wrk's scheduling noise (the test client's own cost is on both sides). Two apps built side by side,
or rounds of 300 requests each, differ by 20-40 µs a request with identical settings, as much as
the effect; ``--aa`` runs the same loop with metrics on both sides and shows the method's own bias.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import tempfile
import time

from bench.common import Opts, fast_paths_env, write_result


def paired(cpu: dict[str, list[float]], unit: str, rounds: int, aa: bool, name: str) -> dict:
    """Print and write the medians and the median paired difference of per-round CPU figures."""
    on, off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    diff = statistics.median(a - b for a, b in zip(cpu["on"], cpu["off"], strict=True))
    label = "A/A check, metrics on both sides" if aa else "metrics on vs off"
    print(f"CPU a {unit} ({label}): {on:.0f} µs vs {off:.0f} µs (medians of {rounds} rounds)")
    print(f"paired difference: {diff:.1f} µs a {unit} = {diff / off:.1%} of a {unit}")
    doc = {"aa": aa, "on_us": on, "off_us": off, "paired_diff_us": diff, "overhead": diff / off, "rounds": cpu}
    write_result(f"{name}_aa" if aa else name, Opts(repeats=rounds), doc)
    return doc


def sides(rng: random.Random, n: int) -> list[str]:
    """n/2 pairs of "on" and "off", each pair's order drawn (periodic costs, GC, follow no fixed order)."""
    return [side for _ in range(n // 2) for side in rng.sample(("on", "off"), 2)]


def worker_rounds(rounds: int, jobs: int, aa: bool) -> dict[str, list[float]]:
    """The in-process worker (``taskqueue-worker``'s class) on no-op jobs, metrics switched per job."""
    from bench import procs
    from bench.worker_bench import NOOP, service
    from taskqueue import config as config_module
    from taskqueue.store.connection import connect
    from taskqueue.store.records import SERIALIZER
    from taskqueue.worker.classes import worker_class

    fast = config_module.load(environ=fast_paths_env()).fast_paths

    class Switching(worker_class("simple", fast)):  # type: ignore[misc]
        """Runs each job with metrics on or off as ``plan`` says, and charges its CPU to that side:
        all of the worker's CPU since the previous job ended (taking this job, starting it, running
        and finishing it), so the share is of what a job costs the worker, not of ``execute_job``."""

        def __init__(self, plan: list[str], *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.plan, self.spent = plan, {"on": 0.0, "off": 0.0}
            self.mark: float | None = None  # CPU time at the end of the previous job

        def execute_job(self, job, queue):
            side = self.plan.pop()
            self.metrics_enabled = side == "on" or aa
            if self.mark is None:  # the first job: from here (not the worker's start-up)
                self.mark = time.process_time()
            try:
                return super().execute_job(job, queue)
            finally:
                now = time.process_time()
                self.spent[side] += now - self.mark
                self.mark = now

    rng = random.Random(7)
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    with procs.redis_server() as redis:
        cfg = config_module.load(environ={**redis.env(), **fast_paths_env()})
        svc = service(redis)
        for i in range(rounds + 1):  # the first round warms up
            redis.client().flushall()
            svc.enqueue_batch([NOOP] * jobs)
            w = Switching(sides(rng, jobs), ["default"], connection=connect(cfg, retries=0), serializer=SERIALIZER)
            w.work(burst=True, logging_level="WARNING")
            if w.plan:
                raise RuntimeError(f"{len(w.plan)} jobs not run")
            if i:
                for side, seconds in w.spent.items():
                    cpu[side].append(seconds / (jobs / 2) * 1e6)
    return cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_inprocess", description=__doc__)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--requests", type=int, default=500, help="requests a round (half of them with metrics on)")
    p.add_argument("--aa", action="store_true", help="metrics on for both sides: the method's bias")
    p.add_argument("--worker", action="store_true", help="the worker's no-op jobs instead of /start (N = --requests)")
    args = p.parse_args(argv)
    if args.worker:  # a one-process worker keeps its metrics in memory: no multiprocess directory
        paired(worker_rounds(args.rounds, args.requests, args.aa), "job", args.rounds, args.aa, "metrics_worker")
        return 0
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the chart's /tmp is a memory-backed emptyDir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tq-bench-metrics-", dir=shm)  # before import
    from bench import procs
    from taskqueue import config as config_module
    from taskqueue.api.app import create_app

    with procs.redis_server() as redis:
        client = redis.client()
        base = {**redis.env(), **fast_paths_env(), "TASKQUEUE_MAX_BACKLOG": "0"}
        app = create_app(config_module.load(environ={**base, "TASKQUEUE_METRICS_ENABLED": "true"}))
        svc, test_client = app.extensions["taskqueue"], app.test_client()
        cfgs = {flag: dataclasses.replace(svc.cfg, metrics_enabled=flag) for flag in (True, False)}
        for _ in range(200):
            test_client.get("/start?delay=1")
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        rng = random.Random(7)
        for _ in range(args.rounds):
            client.flushall()
            spent = {"on": 0.0, "off": 0.0}
            for side in sides(rng, args.requests):
                metrics_on = side == "on" or args.aa
                svc.cfg, app.count_requests = cfgs[metrics_on], metrics_on
                t0 = time.process_time()
                if test_client.get("/start?delay=1").status_code != 200:
                    raise RuntimeError("/start failed")
                spent[side] += time.process_time() - t0
            for side, seconds in spent.items():
                cpu[side].append(seconds / (args.requests / 2) * 1e6)
    paired(cpu, "request", args.rounds, args.aa, "metrics_inprocess")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
