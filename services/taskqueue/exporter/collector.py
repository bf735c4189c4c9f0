"""``taskqueue-exporter``: queue state (jobs per queue and state, workers) for Prometheus and autoscaling.

Queue state is global, so it is exported from exactly one place: this process, one replica,
instead of every generator replica (which would duplicate each series). It also runs the
registries' cleanup on a timer, so a job whose worker was killed is retried or failed even
while no worker is running (KEDA may have scaled them to zero).

rq-exporter is not used: its releases require rq<3 and redis<6, and we run rq 3.0 and redis-py 8.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from taskqueue import config as config_module
from taskqueue import tasks
from taskqueue.exporter.maintenance import maintain
from taskqueue.observability import logs
from taskqueue.store import outbox
from taskqueue.store.records import RETURNS_FIELD

log = logging.getLogger("taskqueue.exporter")

SECOND_MARGIN = 0.005  # seconds past a whole second when the scheduler looks for due jobs
# Times a job may come back from workers that died before they claimed it, no retry spent (requeue_stranded).
STRANDED_RETURNS_MAX = 3
REGISTRY_STATES = ("started", "scheduled", "deferred", "failed", "finished", "canceled")


class QueueState:
    """Reads the jobs per state and the workers of each queue, in one pipeline."""

    def __init__(self, cfg: config_module.Config, connection):
        from rq import Queue

        from taskqueue.store.records import REGISTRIES, SERIALIZER

        self.cfg = cfg
        self.redis = connection
        self.queues = [Queue(name, connection=connection, serializer=SERIALIZER) for name in cfg.queues]
        self.registries = {
            (q.name, state): REGISTRIES[state](q.name, connection=connection, serializer=SERIALIZER)
            for q in self.queues
            for state in REGISTRY_STATES
        }
        self._intermediate_seen: dict[str, set[str]] = {}

    def read(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """``{(queue, state): jobs}`` and ``{queue: workers}`` (two round trips)."""
        from rq.worker_registration import WORKERS_BY_QUEUE_KEY

        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            keys: list[tuple[str, str]] = []
            for q in self.queues:
                keys.append((q.name, "queued"))
                pipe.llen(q.key)
                for state in REGISTRY_STATES:
                    keys.append((q.name, state))
                    registry = self.registries[(q.name, state)]
                    if state == "started":
                        # Entries whose heartbeat expired belong to dead workers: not in flight.
                        pipe.zcount(registry.key, now, "+inf")
                    else:
                        pipe.zcard(registry.key)
            for q in self.queues:
                pipe.smembers(WORKERS_BY_QUEUE_KEY % q.name)
            values = pipe.execute()
            counts = dict(zip(keys, (int(v) for v in values[: len(keys)]), strict=True))
            # Only workers whose key is alive (heartbeat_ttl): a killed one drops out when its key
            # expires, not when the next cleanup pass takes it out of RQ's set (as `rq info` does).
            members = values[len(keys) :]
            for worker_keys in members:
                if worker_keys:
                    pipe.exists(*worker_keys)
            alive = iter(pipe.execute())
            workers = {q.name: next(alive) if m else 0 for q, m in zip(self.queues, members, strict=True)}
        return counts, workers

    def work_remaining(self) -> dict[str, int]:
        """Queued and in-flight jobs over all queues (one round trip): the autoscaling signal."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for q in self.queues:
                pipe.llen(q.key)
                pipe.zcount(self.registries[(q.name, "started")].key, now, "+inf")
            values = [int(v) for v in pipe.execute()]
        queued, started = sum(values[0::2]), sum(values[1::2])
        return {"workRemaining": queued + started, "queued": queued, "started": started}

    def cleanup(self) -> None:
        """Repair limbo jobs, retry or fail jobs abandoned by dead workers (their heartbeats expired),
        and requeue jobs stranded between dequeue and start (see maintenance.py). A queue whose repair fails
        is logged and the others are still repaired."""
        for q in self.queues:
            try:
                maintain(q)
                self.requeue_stranded(q)
            except Exception as exc:
                log.warning("maintenance of queue %s failed: %s", q.name, exc)

    def requeue_stranded(self, queue) -> list[str]:
        """Put back jobs a worker took off the queue but was killed before it started them.

        RQ moves a job from the queue into ``<queue>:intermediate`` and only then into the started
        registry; a worker SIGKILLed between the two leaves the job in neither, where only a live
        worker's maintenance would find it (after a minute). A job still ``queued`` that sits in the
        intermediate list, not in the started registry, on two cleanup passes in a row never
        started: it goes back to the front of its queue, no retry spent.

        A fast-path worker also runs short jobs there before it claims them (fastpath/job_path.py): a
        job that kills its worker within that time would come back for ever. So each return is counted
        in the job's hash (and such a worker claims a job that came back before it runs it, so a job that
        kills its worker is then retried by RQ as any claimed job); past :data:`STRANDED_RETURNS_MAX` the job
        is handed to RQ as an abandoned job instead (claimed with an expired claim), which spends a retry or
        fails it at the next pass.
        """
        from rq.executions import Execution
        from rq.job import Job, JobStatus

        from taskqueue.store.records import SERIALIZER

        key = queue.intermediate_queue_key
        ids = [i.decode() for i in self.redis.lrange(key, 0, -1)]
        started = set(self.registries[(queue.name, "started")].get_job_ids(cleanup=False)) if ids else set()
        seen_before = self._intermediate_seen.get(queue.name, set())
        candidates = set(ids) - started
        requeued = []
        for job_id in candidates & seen_before:
            job = (
                Job.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
                if self.redis.exists(Job.key_for(job_id))
                else None
            )
            if job is None:
                self.redis.lrem(key, 1, job_id)
            elif job.get_status(refresh=True) == JobStatus.QUEUED and self.redis.lrem(key, 1, job_id):
                requeued.append(job_id)
                if self.redis.hincrby(job.key, RETURNS_FIELD, 1) <= STRANDED_RETURNS_MAX:
                    queue.enqueue_job(job, at_front=True)
                    log.warning("job %s was taken off queue %s by a worker that died before it claimed it: "
                                "requeued", job_id, queue.name)  # fmt: skip
                    continue
                with self.redis.pipeline() as pipe:
                    job.set_status(JobStatus.STARTED, pipeline=pipe)
                    execution = Execution(uuid.uuid4().hex, job_id, self.redis)
                    queue.started_job_registry.add_execution(execution, pipeline=pipe, ttl=0)
                    pipe.execute()
                log.warning("job %s came back %d times from workers that died before they claimed it: "
                            "abandoned, RQ retries or fails it", job_id, STRANDED_RETURNS_MAX + 1)  # fmt: skip
        self._intermediate_seen[queue.name] = candidates - set(requeued)
        return requeued


class QueueStateCollector:
    """A prometheus-client collector that reads Redis at scrape time."""

    def __init__(self, state: QueueState):
        self.state = state

    def describe(self):
        return []

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("taskqueue_redis_up", "1 when the exporter could read Redis at this scrape.")
        try:
            counts, workers = self.state.read()
            memory = self.state.redis.info("memory")
            deliveries, pending = outbox.counts(self.state.redis)
        except Exception as exc:  # Redis down or slow: report it as a metric, not a scrape failure
            log.warning("cannot read queue state: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            "taskqueue_queue_jobs",
            "Jobs per queue and state (started: in flight now).",
            labels=["queue", "state"],
        )
        for (queue, state), n in counts.items():
            jobs.add_metric([queue, state], n)
        yield jobs
        w = GaugeMetricFamily("taskqueue_workers", "RQ workers registered on each queue.", labels=["queue"])
        for queue, n in workers.items():
            w.add_metric([queue], n)
        yield w
        yield GaugeMetricFamily(
            "taskqueue_redis_memory_used_bytes", "Memory Redis uses (INFO memory used_memory).",
            value=int(memory.get("used_memory", 0)),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "taskqueue_redis_memory_max_bytes",
            "Redis's maxmemory (0: no limit); enqueue stops at TASKQUEUE_REDIS_MEMORY_LIMIT percent of it.",
            value=int(memory.get("maxmemory", 0)),
        )
        sent = CounterMetricFamily(
            "taskqueue_webhook_deliveries",
            "Webhook attempts by outcome: delivered, retry (another is scheduled), rejected (3xx/4xx), expired"
            " (retry window spent), refused (address not allowed at delivery).",
            labels=["outcome"],
        )
        for outcome, n in deliveries.items():
            sent.add_metric([outcome], n)
        yield sent
        owed = GaugeMetricFamily(
            "taskqueue_webhooks_pending",
            "Webhooks owed: waiting (their job has not ended) and due (to send or retry).",
            labels=["state"],
        )
        for state, n in pending.items():
            owed.add_metric([state], n)
        yield owed


def make_app(registry, state: QueueState):
    """``/metrics`` for Prometheus, ``/scale`` (JSON work remaining) for KEDA's metrics-api scaler, ``/healthz``."""
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def respond(start_response, status: str, doc: dict) -> list[bytes]:
        body = json.dumps(doc).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/scale":
            try:
                return respond(start_response, "200 OK", state.work_remaining())
            except Exception as exc:  # KEDA counts the failure and, past its threshold, uses the fallback
                log.warning("cannot read work remaining: %s", exc)
                return respond(start_response, "503 Service Unavailable", {"error": "redis unavailable"})
        if path == "/healthz":
            return respond(start_response, "200 OK", {"status": "ok"})
        return metrics_app(environ, start_response)

    return app


def serve(app: Callable, host: str, port: int) -> WSGIServer:
    """Serve ``app`` from a daemon thread, with a real listen backlog; returns the server (``shutdown()`` stops it)."""
    from taskqueue.observability.metrics import serve_app

    return serve_app(app, host, port)


def maintenance_loop(state: QueueState, cfg: config_module.Config, stop: threading.Event) -> None:
    """Every second: move due scheduled jobs (retries, `runAt`) to their queues; every cleanup interval: abandoned jobs.

    The exporter runs RQ's scheduler because it is the one process that is always up: with
    workers scaled to zero, or the worker that held the scheduler lock SIGKILLed, retries still fire.
    """
    from rq.scheduler import RQScheduler

    from taskqueue.store.records import SERIALIZER

    scheduler = RQScheduler(cfg.queues, state.redis, interval=1, serializer=SERIALIZER, logging_level=cfg.log_level)
    last_cleanup = time.monotonic()
    # Just after each whole second: RQ's scheduler keeps whole seconds (a job due at second S is moved once
    # the clock reads S), and the API rounds a job's time up to one, so while this process holds RQ's
    # scheduler lock a job is queued within milliseconds of its time, never before it. (A worker's RQ
    # scheduler, when it holds the lock, looks each second from its start: within a second.)
    while not stop.wait(1.0 - time.time() % 1.0 + SECOND_MARGIN):
        try:
            if scheduler.acquire_locks():
                scheduler.enqueue_scheduled_jobs()
            if time.monotonic() - last_cleanup >= cfg.cleanup_interval:
                last_cleanup = time.monotonic()
                state.cleanup()
        except Exception as exc:
            log.warning("queue maintenance failed: %s", exc)
    try:
        scheduler.release_locks()
    except Exception as exc:
        log.warning("could not release the scheduler locks: %s", exc)


def start_webhooks(cfg: config_module.Config, redis, stop: threading.Event) -> threading.Thread | None:
    """Send completion webhooks from a thread of this process (webhooks/delivery.py), when any host is allowed."""
    from taskqueue.webhooks.delivery import Deliverer

    if not cfg.webhook_allowed_hosts:
        return None
    if not cfg.webhook_secret:
        log.error("TASKQUEUE_WEBHOOK_ALLOWED_HOSTS is set but TASKQUEUE_WEBHOOK_SECRET is empty: webhooks unsigned")
        sys.exit(2)
    thread = threading.Thread(target=Deliverer(cfg, redis).run, args=(stop,), name="webhooks", daemon=True)
    thread.start()
    log.info("webhooks to %s", ",".join(cfg.webhook_allowed_hosts))
    return thread


def main(argv: list[str] | None = None) -> None:
    _args, cfg = config_module.parse_cli("taskqueue-exporter", "exporter", __doc__.splitlines()[0], argv)
    logs.setup(cfg.log_format, cfg.log_level)
    # The same catalogue as the generator and the workers: a task module missing here fails here too.
    catalogue = tasks.load_or_exit("taskqueue-exporter", cfg.task_modules)
    log.info("%d tasks: %s", len(catalogue), ", ".join(catalogue))
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from prometheus_client import CollectorRegistry

    from taskqueue.store.connection import connect

    state = QueueState(cfg, connect(cfg))
    registry = CollectorRegistry()
    registry.register(QueueStateCollector(state))
    port = cfg.metrics_port_for("exporter")
    server = serve(make_app(registry, state), cfg.metrics_host, port)
    log.info("queue state of %s on %s:%s (/metrics, /scale)", ",".join(cfg.queues), cfg.metrics_host, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    webhooks = start_webhooks(cfg, state.redis, stop)
    maintenance_loop(state, cfg, stop)
    if webhooks is not None:
        webhooks.join()
    server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
