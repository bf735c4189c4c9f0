"""The Prometheus metrics of every role, and how each process serves them.

Import this module only after the process has decided on PROMETHEUS_MULTIPROC_DIR:
prometheus-client picks its storage (memory or mmap files) when it is first imported.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JOB_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

# -- generator --------------------------------------------------------------------------------------
JOBS_ENQUEUED = Counter("taskqueue_jobs_enqueued", "Jobs enqueued by the generator.", ["queue", "task"])
ENQUEUE_REJECTED = Counter("taskqueue_enqueue_rejected", "Enqueue requests refused, by reason.", ["reason"])
HTTP_REQUESTS = Counter(
    "taskqueue_http_requests", "HTTP requests served by the generator.", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "taskqueue_http_request_duration_seconds",
    "Time to serve an HTTP request.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
)

# -- worker -----------------------------------------------------------------------------------------
JOBS_COMPLETED = Counter(
    "taskqueue_jobs_completed",
    "Job attempts that ended, by outcome (succeeded, failed, retried, stopped).",
    ["queue", "task", "outcome"],
)
JOB_RUN = Histogram(
    "taskqueue_job_run_seconds",
    "Time a job attempt ran in the worker.",
    ["queue", "task"],
    buckets=JOB_BUCKETS,
)
JOB_WAIT = Histogram(
    "taskqueue_job_wait_seconds",
    "Time from enqueue to the start of a job attempt.",
    ["queue", "task"],
    buckets=JOB_BUCKETS,
)


def worker_gauges() -> tuple[Gauge, Gauge, Gauge]:
    """The worker's unlabelled gauges (busy slots, processes, slots), made only in worker processes (they
    would show on every role)."""
    global _WORKER_GAUGES
    if _WORKER_GAUGES is None:
        busy = Gauge(
            "taskqueue_worker_busy",
            "Job slots running a job (sampled every 0.5 s, summed over live processes).",
            multiprocess_mode="livesum",
        )
        alive = Gauge(
            "taskqueue_worker_processes",
            "Worker processes alive in this container.",
            multiprocess_mode="livesum",
        )
        slots = Gauge(
            "taskqueue_worker_slots",
            "Job slots alive in this container: worker processes x TASKQUEUE_JOB_SLOTS.",
            multiprocess_mode="livesum",
        )
        _WORKER_GAUGES = (busy, alive, slots)
    return _WORKER_GAUGES


_WORKER_GAUGES: tuple[Gauge, Gauge, Gauge] | None = None

OUTCOMES = ("succeeded", "failed", "retried", "stopped")
REJECT_REASONS = ("backlog_full", "redis_full")


@cache  # queues x tasks of the allow-list: bounded
def jobs_enqueued(queue: str, task: str) -> Counter:
    """The enqueue counter's series for a queue and task (looked up once, not on every request)."""
    return JOBS_ENQUEUED.labels(queue, task)


BATCH_INTERVAL = 0.5  # seconds between a process's flushes of its batched updates


class Batched:
    """Counter increments and histogram observations queued in process memory and added to their
    series every ``interval`` seconds by a daemon thread, and at the process's exit.

    In multiprocess mode each prometheus-client update takes a lock, a getpid() and an mmap write, with
    the caches cold between requests (docs/performance.md, metrics). Here an update is one append to a
    deque (atomic in CPython, no lock), off the request's path. The worker sends its two timing
    histograms this way and samples its busy gauge at each flush; its outcome counters stay exact to
    the job (the chaos test reconciles them with Redis). The flusher sums counter increments per
    series and replays histogram observations with ``observe()``: public API only. A process killed
    with SIGKILL loses at most its last interval's updates, as any restart loses a process's counts to
    ``rate()``.
    """

    def __init__(self, interval: float = BATCH_INTERVAL):
        self.interval = interval
        self._lock = threading.Lock()  # starting the flusher, and flushing
        self._updates: deque[tuple[bool, Any, float]] = deque()  # (is a histogram, series, value)
        self._samples: dict[Any, Callable[[], float]] = {}
        self._flushing = False  # this process's flusher runs (a fork starts its own)
        os.register_at_fork(after_in_child=self._forked)
        atexit.register(self.flush)  # runs in forks too, where it flushes the fork's own updates

    def inc(self, series: Any, amount: float = 1) -> None:
        """``series.inc(amount)``, batched."""
        self._ensure_flusher()
        self._updates.append((False, series, amount))

    def observe(self, histogram: Any, value: float) -> None:
        """``histogram.observe(value)`` on a histogram child, batched."""
        self._ensure_flusher()
        self._updates.append((True, histogram, value))

    def sample(self, gauge: Any, read: Callable[[], float]) -> None:
        """Set ``gauge`` to ``read()`` at every flush: a state gauge a job would otherwise set twice.

        One reader a gauge: a later call (a worker restarted in the same process) replaces it."""
        self._ensure_flusher()
        self._samples[gauge] = read

    def flush(self) -> None:
        """Add what is queued to the series now."""
        with self._lock:
            counts: dict[Any, float] = {}
            observed: list[tuple[Any, float]] = []
            pop = self._updates.popleft
            while True:
                try:
                    is_histogram, series, value = pop()
                except IndexError:
                    break
                if is_histogram:
                    observed.append((series, value))
                else:
                    counts[series] = counts.get(series, 0) + value
            for gauge, read in list(self._samples.items()):
                gauge.set(read())
            for series, amount in counts.items():
                series.inc(amount)
            for series, value in observed:
                series.observe(value)

    def _ensure_flusher(self) -> None:
        if not self._flushing:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
        # Outside the lock: under gevent, Thread.start() yields, and the lock is a real one.
        threading.Thread(target=self._run, name="metrics-flush", daemon=True).start()

    def _forked(self) -> None:
        """In a new child process: the parent's queued updates are the parent's to flush."""
        self._lock = threading.Lock()
        self._updates, self._samples = deque(), {}
        self._flushing = False

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()


BATCHED = Batched()


def init_generator_series(tasks: Iterable[tuple[str, str]]) -> None:
    """Create the generator's counters at 0 for every known label value: ``tasks`` are (queue, task) pairs.

    A series that first appears at 1 hides that first increment from rate() and increase(), and a
    missing series makes ratios and alerts return nothing instead of 0.
    """
    for queue, task in tasks:
        jobs_enqueued(queue, task)
    for reason in REJECT_REASONS:
        ENQUEUE_REJECTED.labels(reason)


@cache  # queues x tasks of the allow-list: bounded
def job_series(queue: str, task: str) -> tuple[Histogram, Histogram, dict[str, Counter]]:
    """A queue's and task's wait and run histograms and completion counters by outcome.

    Looked up at the task's first job, then cached: not at start (see :func:`init_worker_series`)."""
    completed = {outcome: JOBS_COMPLETED.labels(queue, task, outcome) for outcome in OUTCOMES}
    return JOB_WAIT.labels(queue, task), JOB_RUN.labels(queue, task), completed


def init_worker_series(queues: Iterable[str], tasks: Iterable[str]) -> None:
    """Create the worker's outcome counters at 0 (see :func:`init_generator_series`).

    Not the histograms: 17 series each per queue and task would make every scrape of a
    multiprocess worker several times slower, for the first observation of a rate only.
    """
    tasks = tuple(tasks)
    for queue in queues:
        for task in tasks:
            for outcome in OUTCOMES:
                JOBS_COMPLETED.labels(queue, task, outcome)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def serving_registry() -> CollectorRegistry:
    """The registry to expose: an aggregate of all processes in multiprocess mode, else this process's."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


# Pending connections the kernel queues for an HTTP endpoint (socketserver's default is 5): the
# liveness probe and the scrapes must get through a burst of connections, or idle ones, while the
# process is busy (a CPU-bound job holds the GIL the accepting thread needs).
LISTEN_BACKLOG = socket.SOMAXCONN
# Seconds a connection may take to send its request (and read the answer); then its thread is freed.
CONNECTION_TIMEOUT = 10.0


class HTTPServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, as prometheus-client's server, with a real listen backlog."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG


class QuietHandler(WSGIRequestHandler):
    """No line per request; a client that sends nothing is dropped after ``CONNECTION_TIMEOUT``."""

    timeout = CONNECTION_TIMEOUT

    def handle(self) -> None:
        """Serve the request; a client that timed out or went away is no error worth a trace."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the logs."""


def serve_app(app: Callable, host: str, port: int) -> WSGIServer:
    """Serve the WSGI ``app`` on ``host:port`` from a daemon thread; returns the server (``shutdown()`` stops it)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # "::" listens on IPv6
    server_class = type("HTTPServer", (HTTPServer,), {"address_family": family})
    server = make_server(host, port, app, server_class=server_class, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def serve(host: str, port: int, registry: CollectorRegistry | None = None) -> WSGIServer:
    """Serve ``/metrics`` on a daemon thread; returns the server so callers can shut it down."""
    return serve_app(make_wsgi_app(registry or serving_registry()), host, port)


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (no-op outside multiprocess mode)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
