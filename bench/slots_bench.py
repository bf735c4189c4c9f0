"""Job slots (``TASKQUEUE_JOB_SLOTS``): waiting jobs in one process against one-slot workers, Celery's thread
pool and Dramatiq's threads; no-op throughput at each tool's defaults against Dramatiq's; CPU-bound jobs with
slots against one slot.

Every run fills the queue first, then starts the worker(s); a run ends when the last job has ended (ours: the
burst worker exits; Celery and Dramatiq: their ``wait`` task counts itself done in Redis).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from bench import procs
from bench.common import Opts, fast_paths_env, print_ratios, print_rows, ratio, summary, write_result
from bench.peer_jobs import DONE
from bench.worker_bench import drain, fill_ours, service
from taskqueue.api.jobs import JobRequest
from taskqueue.tasks import load
from tests.support import descendants

QUIET = {"TASKQUEUE_LOG_LEVEL": "WARNING"}


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM) of the process and its descendants, in MB."""
    peaks = []
    for p in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        peaks.append(kb / 1024)
    return max(peaks, default=0.0)


def fill_tasks(redis, task: str, args: list[Any], n: int) -> None:
    svc = service(redis)
    req = JobRequest(load()[task], args)
    for i in range(0, n, 1000):
        svc.enqueue_batch([req] * min(1000, n - i))


def ours_burst(redis, task: str, args: list[Any], n: int, env: dict[str, str]) -> dict[str, float]:
    """Fill ``n`` jobs, run one burst worker process: the wall time until the last job has finished (as the
    peers' is measured; the process's exit after it is not counted), its peak RSS and CPU."""
    client = redis.client()
    client.flushall()
    fill_tasks(redis, task, args, n)
    finished = FinishedJobRegistry("default", connection=client, serializer=JSONSerializer)
    t0 = time.perf_counter()
    proc = procs.our_worker(redis, "simple", {**QUIET, **fast_paths_env(), **env})
    while client.zcard(finished.key) < n and proc.poll() is None:
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or finished.count != n:
        raise RuntimeError(f"worker exited {proc.returncode} with {finished.count} of {n} jobs finished")
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def peer_until_done(redis, proc: subprocess.Popen, n: int, t0: float, timeout: float = 300) -> dict[str, float]:
    """Wait for ``n`` done marks; the wall time from ``t0`` and the worker tree's peak RSS, then stop it."""
    client = redis.client()
    deadline = time.monotonic() + timeout
    try:
        while int(client.get(DONE) or 0) < n:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{client.get(DONE)} of {n} done in {timeout} s")
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "rss_mb": peak_rss_mb(proc.pid)}
    finally:
        procs.stop(proc)


def celery_waiting(redis, n: int, delay: float, threads: int) -> dict[str, float]:
    redis.client().flushall()
    procs.celery_fill(redis, n, wait=delay)
    t0 = time.perf_counter()
    return peer_until_done(redis, procs.celery_worker(redis, pool="threads", concurrency=threads), n, t0)


def dramatiq_waiting(redis, n: int, delay: float, threads: int) -> dict[str, float]:
    redis.client().flushall()
    procs.dramatiq_fill(redis, n, wait=delay)
    t0 = time.perf_counter()
    return peer_until_done(redis, procs.dramatiq_worker(redis, processes=1, threads=threads), n, t0)


def waiting(opts: Opts) -> dict[str, Any]:
    """1,000 of the seed's jobs (sleep 2 s) at once: one process with job slots against one-slot workers,
    Celery ``--pool threads`` and Dramatiq ``-p 1 -t N`` with the same N, on one Redis."""
    n, slots, delay = opts.n(1000, 200), opts.n(200, 100), 2
    one_slot_n = opts.n(4, 2)  # a one-slot process takes 2 s a job: its rate, from a few
    procs.celery_python()
    procs.dramatiq_python()
    runs: dict[str, list[dict[str, float]]] = {}
    with procs.redis_server() as redis:
        for _ in range(opts.repeats):
            for name, run in {
                f"ours, 1 process x {slots} slots": lambda: ours_burst(
                    redis, "sleep", [delay], n, {"TASKQUEUE_JOB_SLOTS": str(slots)}
                ),
                f"celery --pool threads -c {slots}": lambda: celery_waiting(redis, n, delay, slots),
                f"dramatiq -p 1 -t {slots}": lambda: dramatiq_waiting(redis, n, delay, slots),
                "ours, 1 process x 1 slot (projected to N)": lambda: ours_burst(
                    redis, "sleep", [delay], one_slot_n, {"TASKQUEUE_JOB_SLOTS": "1"}
                ),
            }.items():
                runs.setdefault(name, []).append(run())
    one_slot = next(k for k in runs if "1 slot" in k)
    for r in runs[one_slot]:
        r["wall_s"] *= n / one_slot_n
    stats = {k: {m: summary(r[m] for r in v) for m in ("wall_s", "rss_mb")} for k, v in runs.items()}
    print_rows(
        f"waiting jobs: {n} x sleep {delay} s at once",
        [(k, m, s) for k, v in stats.items() for m, s in v.items()],
    )
    ours_key = next(iter(runs))
    ours_wall = stats[ours_key]["wall_s"]
    ratios = {f"{k} wall / ours": ratio(v["wall_s"], ours_wall) for k, v in stats.items() if k != ours_key}
    print_ratios(ratios)
    ours = stats[ours_key]
    peers = [v["wall_s"]["median"] for k, v in stats.items() if k.startswith(("celery", "dramatiq"))]
    goals = {
        "all done in <= 15 s with one process": ours["wall_s"]["median"] <= 15,
        "peak RSS <= 150 MB": ours["rss_mb"]["median"] <= 150,
        "no slower than Celery threads or Dramatiq": ours["wall_s"]["median"] <= min(peers),
    }
    out = {"n": n, "slots": slots, "delay": delay, "stats": stats, "ratios": ratios, "goals": goals}
    write_result("slots_waiting", opts, out)
    return out


def throughput(opts: Opts) -> dict[str, Any]:
    """No-op jobs/s at defaults: our worker (2 processes, default slots) against Dramatiq with no -p/-t
    (a process a CPU, 8 threads each), on one Redis; jobs/s from the first job taken until the list is empty."""
    n = opts.n(20000, 3000)
    procs.dramatiq_python()
    runs: dict[str, list[dict[str, float]]] = {}
    with procs.redis_server() as redis:
        client = redis.client()
        for _ in range(opts.repeats):
            client.flushall()
            fill_ours(redis, n)
            t0 = time.perf_counter()
            proc = procs.our_worker(redis, "simple", {**QUIET, **fast_paths_env(), "TASKQUEUE_WORKER_PROCESSES": "2"})
            try:
                runs.setdefault("ours, 2 processes, default slots", []).append(
                    drain(client, "rq:queue:default", n, proc, t0, 300)
                )
            finally:
                procs.stop(proc)
            client.flushall()
            procs.dramatiq_fill(redis, n)
            t0 = time.perf_counter()
            proc = procs.dramatiq_worker(redis)
            try:
                runs.setdefault("dramatiq at its defaults", []).append(
                    drain(client, "dramatiq:default", n, proc, t0, 300)
                )
            finally:
                procs.stop(proc)
    stats = {k: summary(r["jobs_per_s"] for r in v) for k, v in runs.items()}
    print_rows(f"no-op throughput at defaults ({n} jobs)", [(k, "jobs_per_s", s) for k, s in stats.items()])
    ours, dramatiq = stats.values()
    ratios = {"ours / dramatiq": ratio(ours, dramatiq)}
    print_ratios(ratios)
    goals = {">= 1.0x Dramatiq": (ratios["ours / dramatiq"] or 0) >= 1}
    out = {"n": n, "stats": stats, "ratios": ratios, "goals": goals}
    write_result("slots_throughput", opts, out)
    return out


def cpu_bound(opts: Opts) -> dict[str, Any]:
    """CPU-bound ``hash`` jobs in one process: 4 slots against 1 (the GIL must not make slots slower).

    This host's speed drifts by 10-20 % between runs of a few seconds, so the runs go in pairs, in turn
    1-4 then 4-1, and the figure is the median of each pair's ratio."""
    n, rounds = opts.n(60, 20), 100_000
    runs: dict[str, list[dict[str, float]]] = {}
    pairs: list[float] = []
    cpu_pairs: list[float] = []  # the process's CPU time: drifts less than the wall with this host's load
    with procs.redis_server() as redis:
        for i in range(opts.repeats if opts.quick else 9):
            pair = {}
            for slots in (1, 4) if i % 2 == 0 else (4, 1):
                r = ours_burst(redis, "hash", [rounds, "taskqueue"], n, {"TASKQUEUE_JOB_SLOTS": str(slots)})
                runs.setdefault(f"ours, 1 process x {slots} slot{'s' if slots > 1 else ''}", []).append(r)
                pair[slots] = r
            pairs.append(pair[4]["wall_s"] / pair[1]["wall_s"])
            cpu_pairs.append(pair[4]["cpu_s"] / pair[1]["cpu_s"])
    stats = {k: summary(r["wall_s"] for r in v) for k, v in sorted(runs.items(), key=lambda kv: len(kv[0]))}
    print_rows(f"CPU-bound: {n} x hash {rounds:,} rounds", [(k, "wall_s", s) for k, s in stats.items()])
    paired = summary(pairs)
    ratios = {"4 slots / 1 slot wall, median of pairs": paired["median"],
              "4 slots / 1 slot CPU, median of pairs": summary(cpu_pairs)["median"]}  # fmt: skip
    print_ratios(ratios)
    print(f"  pairs' wall ratios: {', '.join(f'{p:.2f}' for p in pairs)}")
    print(f"  pairs' CPU ratios: {', '.join(f'{p:.2f}' for p in cpu_pairs)}")
    out = {"n": n, "rounds": rounds, "stats": stats, "ratios": ratios, "pairs": pairs, "cpu_pairs": cpu_pairs,
           "goals": {"slots no slower than one": paired["median"] <= 1.05}}  # fmt: skip
    write_result("slots_cpu_bound", opts, out)
    return out


def slots(opts: Opts) -> dict[str, Any]:
    """All three job-slot benchmarks."""
    return {"waiting": waiting(opts), "throughput": throughput(opts), "cpu_bound": cpu_bound(opts)}
