"""Batched metric updates (taskqueue.metrics.Batched): the same series as direct updates, flushed
on a timer and at exit, never twice across a fork. Real prometheus-client, in memory and in
multiprocess mode (mmap files, what gunicorn's processes write)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from taskqueue.observability.metrics import HTTP_BUCKETS, Batched
from tests.support import wait_for


def series(registry: CollectorRegistry) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}  # fmt: skip


def pair() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("t_requests", "requests", ["route"], registry=registry)
    histogram = Histogram("t_seconds", "seconds", ["route"], buckets=HTTP_BUCKETS, registry=registry)
    return registry, counter, histogram


def test_batched_updates_equal_direct_updates():
    rng = random.Random(1)
    # Bucket bounds exactly (le is inclusive), between them, below the first and beyond the last.
    values = [*HTTP_BUCKETS, 0.0, 0.0001, 3.0, 1e6] + [rng.expovariate(200) for _ in range(500)]
    direct, d_counter, d_hist = pair()
    batched_registry, b_counter, b_hist = pair()
    batched = Batched(interval=3600)
    for i, v in enumerate(values):
        route = ("/start", "/jobs")[i % 2]
        d_counter.labels(route).inc()
        d_hist.labels(route).observe(v)
        batched.inc(b_counter.labels(route))
        batched.observe(b_hist.labels(route), v)
        d_counter.labels("/batch").inc(3)
        batched.inc(b_counter.labels("/batch"), 3)
        d_hist.labels("/one").observe(v)
        d_hist.labels("/two").observe(v / 2)
        batched.observe(b_hist.labels("/one"), v)
        batched.observe(b_hist.labels("/two"), v / 2)
    assert series(batched_registry) != series(direct)  # nothing out before a flush
    batched.flush()
    assert series(batched_registry) == series(direct)


def test_batched_updates_go_out_on_their_own():
    registry, counter, _ = pair()
    batched = Batched(interval=0.1)
    batched.inc(counter.labels("/start"), 2)
    key = ("t_requests_total", (("route", "/start"),))
    wait_for(lambda: series(registry).get(key) == 2, timeout=5, what="the flusher")


def test_a_sampled_gauge_is_read_at_each_flush_and_the_latest_reader_wins():
    registry = CollectorRegistry()
    busy = Gauge("t_busy", "busy", registry=registry)
    batched = Batched(interval=3600)
    state = {"running": True}
    batched.sample(busy, lambda: 0.0)  # a worker that was replaced in the same process
    batched.sample(busy, lambda: 1.0 if state["running"] else 0.0)
    batched.flush()
    assert series(registry)[("t_busy", ())] == 1
    state["running"] = False
    batched.flush()
    assert series(registry)[("t_busy", ())] == 0


def test_exit_flushes_and_a_fork_counts_only_its_own(tmp_path):
    """Multiprocess mode, as under gunicorn: a process's pending updates reach its mmap file when it
    exits, and a forked child starts empty (the parent's 3 are counted once, by the parent)."""
    script = textwrap.dedent(
        """
        import os, sys
        from prometheus_client import Counter
        from taskqueue.observability.metrics import Batched
        c = Counter("t_jobs", "jobs")
        b = Batched(interval=3600)
        b.inc(c, 3)
        pid = os.fork()
        if pid == 0:
            b.inc(c, 2)
            sys.exit(0)
        os.waitpid(pid, 0)
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert series(registry)[("t_jobs_total", ())] == 5
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file a process
