"""Benchmarks 3-5: worker no-op throughput (ours vs Celery solo), Redis cost per job, enqueue->start latency."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from rq import Queue
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from bench import procs
from bench.common import (
    Opts,
    command_usec,
    commandstats,
    cpu_seconds,
    fast_paths_env,
    print_ratios,
    print_rows,
    ratio,
    summary,
    write_result,
)
from taskqueue import config as config_module
from taskqueue.api.jobs import JobRequest, JobService
from taskqueue.store.connection import connect
from taskqueue.tasks import load, noop

RQ_LIST = "rq:queue:default"
CELERY_LIST = "celery"
NOOP = JobRequest(load()["noop"], [])
WORKER_METRICS = ("jobs_per_s", "cpu_us_per_job", "startup_s")


def service(redis) -> JobService:
    cfg = config_module.load(environ={**redis.env(), **fast_paths_env()})
    return JobService(cfg, connect(cfg))


def fill_ours(redis, n: int) -> None:
    svc = service(redis)
    for i in range(0, n, 1000):
        svc.enqueue_batch([NOOP] * min(1000, n - i))


def fill_stock(redis, n: int) -> None:
    conn = redis.client()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    for i in range(0, n, 1000):
        with conn.pipeline() as pipe:
            q.enqueue_many([Queue.prepare_data(noop) for _ in range(min(1000, n - i))], pipeline=pipe)
            pipe.execute()


def drain(client, key: str, n: int, proc: subprocess.Popen, t_spawn: float, timeout: float) -> dict[str, float]:
    """Poll the queue's list every 2 ms: jobs/s from the first job taken until the list is empty.

    The same count for every worker: a job leaves the list when a worker takes it (RQ: LMOVE to its
    intermediate list; Celery: BRPOP into its prefetch buffer), so at most a prefetch's worth (RQ 1,
    Celery 4) is still running when the list is empty; over N jobs that tail is negligible.
    """
    deadline = time.monotonic() + timeout
    t_first = n_first = cpu_first = None
    while time.monotonic() < deadline:
        left = client.llen(key)
        now = time.perf_counter()
        if t_first is None and left < n:
            t_first, n_first, cpu_first = now, left, cpu_seconds(proc.pid)
        if left == 0:
            if t_first is None or n_first is None or cpu_first is None:
                raise RuntimeError("queue empty before any job was seen")
            return {
                "jobs_per_s": n_first / (now - t_first),
                # The worker process's own CPU a job: steadier than jobs/s on a shared box.
                "cpu_us_per_job": (cpu_seconds(proc.pid) - cpu_first) / n_first * 1e6,
                "startup_s": t_first - t_spawn,
                "n": n_first,
            }
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} and {left} jobs left")
        time.sleep(0.002)
    raise TimeoutError(f"{key} not drained in {timeout}s")


def _ours_run(redis, n: int, worker_class: str, env: dict[str, str] | None = None) -> dict[str, float]:
    client = redis.client()
    client.flushall()
    fill_ours(redis, n)
    t0 = time.perf_counter()
    proc = procs.our_worker(redis, worker_class, env)
    r = drain(client, RQ_LIST, n, proc, t0, timeout=300)
    proc.wait(timeout=60)
    r["wall_s"] = time.perf_counter() - t0
    finished = FinishedJobRegistry("default", connection=client, serializer=JSONSerializer).count
    if finished != n:
        raise RuntimeError(f"{finished} of {n} jobs finished")
    return r


def _stock_run(redis, n: int) -> dict[str, float]:
    client = redis.client()
    client.flushall()
    fill_stock(redis, n)
    t0 = time.perf_counter()
    proc = procs.stock_worker(redis)
    r = drain(client, RQ_LIST, n, proc, t0, timeout=300)
    proc.wait(timeout=60)
    r["wall_s"] = time.perf_counter() - t0
    return r


def _celery_run(redis, n: int) -> dict[str, float]:
    client = redis.client()
    client.flushall()
    procs.celery_fill(redis, n)
    t0 = time.perf_counter()
    proc = procs.celery_worker(redis)
    try:
        r = drain(client, CELERY_LIST, n, proc, t0, timeout=300)
        time.sleep(0.2)  # the prefetched tail
    finally:
        procs.stop(proc)
    r["wall_s"] = time.perf_counter() - t0
    return r


def worker(opts: Opts) -> dict[str, Any]:
    """No-op jobs/s of one worker process: ours (simple, fork) vs Celery --pool solo vs stock RQ."""
    n, n_fork = opts.n(3000, 300), opts.n(300, 60)
    procs.celery_python()
    variants: dict[str, tuple[int, Callable]] = {
        "celery --pool solo": (n, lambda r: _celery_run(r, n)),
        "ours --worker-class simple": (n, lambda r: _ours_run(r, n, "simple")),
        "ours --worker-class fork": (n_fork, lambda r: _ours_run(r, n_fork, "fork")),
        "stock rq SimpleWorker": (n, lambda r: _stock_run(r, n)),
    }
    if not opts.quick:
        variants["ours simple, per-job log lines on"] = (
            n,
            lambda r: _ours_run(r, n, "simple", {"TASKQUEUE_LOG_JOB_LINES": "true"}),
        )
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    with procs.redis_server() as redis:
        for _ in range(opts.repeats):
            for label, (_n, fn) in variants.items():
                runs[label].append(fn(redis))
    doc = {
        label: {m: summary(r[m] for r in rs) for m in WORKER_METRICS} | {"jobs": variants[label][0]}
        for label, rs in runs.items()
    }
    rows = [(label, m, d[m]) for label, d in doc.items() for m in WORKER_METRICS]
    print_rows(f"worker no-op throughput per process (N={n}, fork N={n_fork})", rows)
    cel, cel_cpu = doc["celery --pool solo"]["jobs_per_s"], doc["celery --pool solo"]["cpu_us_per_job"]
    ratios = {
        f"{label} / celery solo": ratio(d["jobs_per_s"], cel) for label, d in doc.items() if "celery" not in label
    } | {  # jobs per CPU-second, relative to Celery's
        f"{label} / celery solo, per CPU-second": ratio(cel_cpu, d["cpu_us_per_job"])
        for label, d in doc.items()
        if "celery" not in label
    }
    print_ratios(ratios)
    out = {
        "variants": doc,
        "ratios": ratios,
        "goals": {"simple >= 1.0x celery": ratios["ours --worker-class simple / celery solo"] >= 1.0},
    }
    write_result("worker", opts, out)
    return out


# -- Redis cost per job -----------------------------------------------------------------------------


def _worker_proc(redis, variant: str) -> subprocess.Popen:
    return procs.stock_worker(redis) if variant == "stock" else procs.our_worker(redis, "simple")


def _fixed_worker_commands(redis, variant: str) -> int:
    """What a burst worker costs with an empty queue (start-up, maintenance, shutdown): not per job."""
    client = redis.client()
    client.flushall()
    client.config_resetstat()
    _worker_proc(redis, variant).wait(timeout=60)
    stats = commandstats(client)
    return sum(v for k, v in stats.items() if k not in ("info", "config|resetstat", "flushall"))


def _cost_run(redis, n: int, variant: str) -> dict[str, Any]:
    fixed = _fixed_worker_commands(redis, variant)
    client = redis.client()
    client.flushall()
    pid = redis.proc.pid
    client.config_resetstat()
    cpu0 = cpu_seconds(pid)
    if variant == "stock":
        q = Queue("default", connection=redis.client(), serializer=JSONSerializer)
        for _ in range(n):
            q.enqueue(noop)
    elif variant == "ours":
        svc = service(redis)
        for _ in range(n):
            svc.enqueue(NOOP)
    else:  # ours, batch
        fill_ours(redis, n)
    cpu1 = cpu_seconds(pid)
    enq = commandstats(client)
    proc = _worker_proc(redis, variant)
    proc.wait(timeout=300)
    cpu2 = cpu_seconds(pid)
    total = commandstats(client)
    usec = command_usec(client)
    for stats in (enq, total):
        for k in ("info", "config|resetstat", "flushall"):
            stats.pop(k, None)
    work = {k: v - enq.get(k, 0) for k, v in total.items() if v - enq.get(k, 0)}
    if variant != "stock":
        finished = FinishedJobRegistry("default", connection=client, serializer=JSONSerializer).count
        if finished != n:
            raise RuntimeError(f"{finished} of {n} jobs finished")
    return {
        # Per job: the worker's start-up and shutdown (measured apart, with an empty queue) left out.
        "cmds_per_job": (sum(total.values()) - fixed) / n,
        "enqueue_cmds_per_job": sum(enq.values()) / n,
        "worker_cmds_per_job": (sum(work.values()) - fixed) / n,
        "worker_fixed_cmds": fixed,
        "cpu_us_per_job": (cpu2 - cpu0) / n * 1e6,
        "cmd_exec_us_per_job": usec / n,
        "enqueue_cpu_us_per_job": (cpu1 - cpu0) / n * 1e6,
        "worker_cpu_us_per_job": (cpu2 - cpu1) / n * 1e6,
        "enqueue_commands": {k: round(v / n, 3) for k, v in sorted(enq.items(), key=lambda kv: -kv[1])},
        "worker_commands": {k: round(v / n, 3) for k, v in sorted(work.items(), key=lambda kv: -kv[1])},
    }


def redis_cost(opts: Opts) -> dict[str, Any]:
    """Redis commands and Redis CPU per job, enqueue -> finished, stock RQ vs ours."""
    n = opts.n(2000, 300)
    variants = {
        "stock rq: Queue.enqueue + SimpleWorker": "stock",
        "ours: JobService.enqueue (/start path) + worker simple": "ours",
        "ours: enqueue_batch (/jobs/batch path) + worker simple": "ours-batch",
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    with procs.redis_server() as redis:
        for _ in range(opts.repeats):
            for label, v in variants.items():
                runs[label].append(_cost_run(redis, n, v))
    metrics = ("cmds_per_job", "enqueue_cmds_per_job", "worker_cmds_per_job", "worker_fixed_cmds", "cpu_us_per_job",
               "cmd_exec_us_per_job", "enqueue_cpu_us_per_job", "worker_cpu_us_per_job")  # fmt: skip
    doc = {
        label: {m: summary(r[m] for r in rs) for m in metrics}
        | {"enqueue_commands": rs[-1]["enqueue_commands"], "worker_commands": rs[-1]["worker_commands"]}
        for label, rs in runs.items()
    }
    print_rows(f"Redis cost per job (N={n} no-op jobs, enqueue -> finished)",
               [(label, m, d[m]) for label, d in doc.items() for m in metrics])  # fmt: skip
    stock = doc["stock rq: Queue.enqueue + SimpleWorker"]
    ours = doc["ours: JobService.enqueue (/start path) + worker simple"]
    ratios = {
        "ours/stock commands": ratio(ours["cmds_per_job"], stock["cmds_per_job"]),
        "ours/stock redis cpu": ratio(ours["cpu_us_per_job"], stock["cpu_us_per_job"]),
        "ours batch/stock redis cpu": ratio(
            doc["ours: enqueue_batch (/jobs/batch path) + worker simple"]["cpu_us_per_job"], stock["cpu_us_per_job"]
        ),
    }
    print_ratios(ratios)
    for label, d in doc.items():
        print(f"  {label}\n    enqueue: {d['enqueue_commands']}\n    worker:  {d['worker_commands']}")
    out = {
        "jobs": n,
        "variants": doc,
        "ratios": ratios,
        "goals": {
            "<= 30 commands/job": ours["cmds_per_job"]["median"] <= 30,
            "<= 0.5x stock redis cpu": (ratios["ours/stock redis cpu"] or 1) <= 0.5,
        },
    }
    write_result("redis_cost", opts, out)
    return out


# -- enqueue -> start latency ------------------------------------------------------------------------


def _latency_run(redis, jobs: int, variant: str, gap: float = 0.01) -> list[float]:
    client = redis.client()
    client.flushall()
    proc = (
        procs.stock_worker(redis, burst=False) if variant == "stock" else procs.our_worker(redis, "simple", burst=False)
    )
    try:
        deadline = time.monotonic() + 30
        while not client.scard("rq:workers") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # let it settle into its blocking dequeue
        svc = service(redis)
        q = Queue("default", connection=redis.client(), serializer=JSONSerializer)
        lat = []
        for _ in range(jobs):
            job = q.enqueue(noop) if variant == "stock" else svc.fetch(svc.enqueue(NOOP)[0].id)
            end = time.monotonic() + 10
            while client.hget(job.key, "status") != b"finished":
                if time.monotonic() > end:
                    raise TimeoutError(f"job {job.id} did not finish")
                time.sleep(0.0005)
            job.refresh()
            lat.append((job.started_at - job.enqueued_at).total_seconds() * 1000)
            time.sleep(gap)  # the worker is idle (back in its blocking dequeue) when the next job comes
        return lat
    finally:
        procs.stop(proc)


def latency(opts: Opts) -> dict[str, Any]:
    """Enqueue -> start (RQ's started_at - enqueued_at) of sequential jobs with an idle worker."""
    jobs = opts.n(200, 50)
    variants = {"stock rq SimpleWorker": "stock", "ours worker simple": "ours"}
    runs: dict[str, list[list[float]]] = {k: [] for k in variants}
    with procs.redis_server() as redis:
        for _ in range(opts.repeats):
            for label, v in variants.items():
                runs[label].append(_latency_run(redis, jobs, v))

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]

    doc = {
        label: {
            "p50_ms": summary(pct(r, 50) for r in rs),
            "p99_ms": summary(pct(r, 99) for r in rs),
            "mean_ms": summary(statistics.mean(r) for r in rs),
        }
        for label, rs in runs.items()
    }
    print_rows(f"enqueue -> start latency, idle worker ({jobs} sequential jobs a run)",
               [(label, m, d[m]) for label, d in doc.items() for m in ("p50_ms", "p99_ms")])  # fmt: skip
    ours = doc["ours worker simple"]
    ratios = {"ours/stock p50": ratio(ours["p50_ms"], doc["stock rq SimpleWorker"]["p50_ms"])}
    print_ratios(ratios)
    out = {
        "jobs_per_run": jobs,
        "variants": doc,
        "ratios": ratios,
        "goals": {"p50 <= 2 ms": ours["p50_ms"]["median"] <= 2, "p99 <= 20 ms": ours["p99_ms"]["median"] <= 20},
    }
    write_result("latency", opts, out)
    return out


def worker_metrics(opts: Opts) -> dict[str, dict[str, Any]]:
    """No-op jobs/s of our simple worker with metrics on and off (for the metrics benchmark)."""
    n = opts.n(3000, 300)
    variants = {"metrics on": "true", "metrics off": "false"}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    with procs.redis_server() as redis:
        for _ in range(opts.repeats):
            for label, flag in variants.items():
                runs[label].append(_ours_run(redis, n, "simple", {"TASKQUEUE_METRICS_ENABLED": flag}))
    return {k: {m: summary(r[m] for r in v) for m in ("jobs_per_s", "cpu_us_per_job")} for k, v in runs.items()}
