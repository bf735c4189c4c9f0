"""``taskqueue-worker``: RQ workers on the configured queues, with metrics and structured logs.

SIGTERM or SIGINT once: warm shutdown (the running job finishes). Twice: cold shutdown.
With ``--worker-processes N`` (N > 1) this process supervises N worker processes, forwards
signals to them, restarts any that die, and serves their summed metrics.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from uuid import uuid4

from taskqueue import config as config_module
from taskqueue import tasks
from taskqueue.observability import logs, multiproc

log = logging.getLogger("taskqueue.worker")

CHILD_ENV = "TASKQUEUE_SUPERVISED_CHILD"
RESTART_BACKOFF_MAX = 30.0
# A worker process that lived this long was healthy: if it dies, restart it without delay.
HEALTHY_RUN = 5.0


def worker_name(cfg: config_module.Config) -> str:
    """Unique even when a container restarts with the same host name and pid."""
    return f"{cfg.worker_name or socket.gethostname()}.{os.getpid()}.{uuid4().hex[:6]}"


def run_worker(
    cfg: config_module.Config, catalogue: tasks.Catalogue, *, serve_metrics: bool, burst: bool = False
) -> int:
    """Run one RQ worker of the ``catalogue``'s tasks in this process until it is asked to stop."""
    from taskqueue.observability import metrics  # after the multiprocess decision
    from taskqueue.store.connection import STORE_FULL_ERRORS, UNAVAILABLE_ERRORS, connect
    from taskqueue.store.records import SERIALIZER
    from taskqueue.worker.classes import worker_class
    from taskqueue.worker.slots import SlotPool, slot_class

    if serve_metrics and cfg.metrics_enabled:
        port = cfg.metrics_port_for("worker")
        metrics.serve(cfg.metrics_host, port)
        log.info("metrics on %s:%s/metrics", cfg.metrics_host, port)
    _busy, processes, slots = metrics.worker_gauges()
    processes.set(1)
    slots.set(cfg.job_slots)
    cls = slot_class(cfg.fast_paths) if cfg.job_slots > 1 else worker_class(cfg.worker_class, cfg.fast_paths)
    log.info(
        "worker class %s.%s, %d job slot%s (fast paths %s)",
        cls.__module__, cls.__qualname__, cfg.job_slots, "s" if cfg.job_slots > 1 else "",
        "on" if cfg.fast_paths else "off",
    )  # fmt: skip

    def make_worker(name: str, maintenance: bool, connection=None):
        # No retries in the client: RQ's own loop waits and reconnects with backoff.
        return cls(
            list(cfg.queues),
            name=name,
            connection=connection or connect(cfg, retries=0),
            serializer=SERIALIZER,
            default_result_ttl=cfg.result_ttl,
            maintenance_interval=cfg.maintenance_interval,
            heartbeat_ttl=cfg.heartbeat_ttl,
            shutdown_mode=cfg.shutdown_mode,
            maintenance=maintenance,
            log_job_lines=cfg.log_job_lines,
            metrics_enabled=cfg.metrics_enabled,
            max_result_bytes=cfg.max_result_bytes,
            catalogue=catalogue,
        )

    backoff = 1.0
    while True:
        started = time.monotonic()
        worker = None
        try:
            if cfg.job_slots > 1:
                # One RQ worker a slot, all on one client (its pool gives each blocked call a connection of its
                # own); the first does the registry maintenance (no scheduler: the exporter runs RQ's).
                # A slot holds at most a blocked call and a heartbeat's call at once.
                name, shared = worker_name(cfg), connect(cfg, retries=0, max_connections=3 * cfg.job_slots + 8)
                pool = SlotPool(
                    [
                        make_worker(f"{name}.{i}", cfg.worker_maintenance and i == 0, shared)
                        for i in range(cfg.job_slots)
                    ],
                    burst=burst,
                    logging_level=cfg.log_level.upper(),
                )
                if cfg.metrics_enabled:
                    metrics.BATCHED.sample(metrics.worker_gauges()[0], pool.busy_slots)
                worker = pool
                pool.run()
                return 0
            worker = make_worker(worker_name(cfg), cfg.worker_maintenance)
            worker.work(with_scheduler=cfg.worker_maintenance, burst=burst, logging_level=cfg.log_level.upper())
            if worker.stop_requested or burst:
                return 0
            log.warning("worker loop ended without a stop request (Redis lost?)")
        except (*UNAVAILABLE_ERRORS, *STORE_FULL_ERRORS) as exc:
            if worker is not None and worker.stop_requested:  # told to stop; its goodbye to Redis failed
                log.warning("redis unavailable during shutdown: %s; stopping", exc)
                return 0
            log.warning("redis unavailable: %s", exc)
        if time.monotonic() - started > RESTART_BACKOFF_MAX:
            backoff = 1.0
        log.info("starting a new worker in %.0f s", backoff)
        if sleep_unless_signalled(backoff):
            return 0
        backoff = min(backoff * 2, RESTART_BACKOFF_MAX)


def sleep_unless_signalled(seconds: float) -> bool:
    """Sleep, returning early (True) when SIGTERM or SIGINT arrives: between workers a stop is immediate."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(cfg: config_module.Config, argv: list[str]) -> int:
    """Run ``cfg.worker_processes`` worker processes, restart the ones that die, serve their metrics."""
    from taskqueue.observability import metrics

    if cfg.metrics_enabled:
        port = cfg.metrics_port_for("worker")
        metrics.serve(cfg.metrics_host, port)
        log.info("metrics of %d processes on %s:%s/metrics", cfg.worker_processes, cfg.metrics_host, port)
    env = {**os.environ, CHILD_ENV: "1"}
    cmd = [sys.executable, "-m", "taskqueue.worker", *argv]
    children: dict[int, subprocess.Popen] = {}
    stopping = {"signals": 0}
    backoff = 0.0

    def forward(signum, _frame):
        stopping["signals"] += 1
        log.info(
            "signal %s: %s shutdown of %d workers",
            signum,
            "warm" if stopping["signals"] == 1 else "cold",
            len(children),
        )
        for child in children.values():
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started: dict[int, float] = {}

    def spawn() -> None:
        child = subprocess.Popen(cmd, env=env)
        children[child.pid] = child
        started[child.pid] = time.monotonic()

    for _ in range(cfg.worker_processes):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        child = children.pop(pid, None)
        if child is None:
            continue
        metrics.mark_process_dead(pid)  # its counters stay summed; its live gauges go
        if not stopping["signals"]:
            # A process that ran a while died of something passing: restart at once. One that keeps
            # dying at start (bad config, Redis gone) backs off.
            backoff = 0.0 if time.monotonic() - started.pop(pid, 0.0) > HEALTHY_RUN else max(1.0, backoff * 2)
            backoff = min(backoff, RESTART_BACKOFF_MAX)
            log.warning("worker process %s exited (status %s); restarting in %.0f s", pid, status, backoff)
            time.sleep(backoff)
            spawn()
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, cfg = config_module.parse_cli(
        "taskqueue-worker", "worker", __doc__.splitlines()[0], argv,
        extra=lambda p: p.add_argument("--burst", action="store_true", help="Quit when the queues are empty."),
    )  # fmt: skip
    logs.setup(cfg.log_format, cfg.log_level)
    catalogue = tasks.load_or_exit("taskqueue-worker", cfg.task_modules)  # a bad task module: exit 2, not a loop
    child = os.environ.get(CHILD_ENV) == "1"
    if cfg.worker_processes > 1 and not child:
        # Several long-lived processes share one metrics view through prometheus-client's mmap files.
        metrics_dir = multiproc.use_fresh_dir(multiproc.tmp_path(f"taskqueue-worker-metrics-{os.getpid()}"))
        try:
            sys.exit(supervise(cfg, argv))
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)  # its children are gone: nothing counts into it
    if not child:
        # One process keeps its counters in memory; a stray setting must not switch it to files.
        os.environ.pop(multiproc.ENV, None)
    log.info("%d tasks: %s", len(catalogue), ", ".join(catalogue))
    sys.exit(run_worker(cfg, catalogue, serve_metrics=not child, burst=args.burst))


if __name__ == "__main__":
    main()
