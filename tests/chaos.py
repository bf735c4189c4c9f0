"""Chaos and soak run: jobs through HTTP while workers are SIGKILLed and restarted and Redis restarts once.

``python -m tests.chaos --jobs 10000`` is ``make soak``; tests/test_chaos.py runs it small in CI.
Only loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from tests.support import Exporter, Generator, RedisServer, WorkerProc, descendants, kill_tree, wait_for

ENV = {
    "TASKQUEUE_RETRIES": "3",
    "TASKQUEUE_RETRY_INTERVALS": "1",
    "TASKQUEUE_HEARTBEAT_TTL": "6",
    "TASKQUEUE_CLEANUP_INTERVAL": "2",
    "TASKQUEUE_WORKER_MAINTENANCE": "false",
    "TASKQUEUE_LOG_LEVEL": "WARNING",
    "TASKQUEUE_REDIS_TIMEOUT": "2",
}
# One job in MIX_FAIL_EVERY fails on purpose (and spends its retries); the rest succeed.
MIX_FAIL_EVERY = 50


@dataclass
class Report:
    """What a run submitted, what became of the jobs (their statuses read back) and what it did to the system."""

    submitted: int
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "missing": no record left
    worker_kills: int = 0
    redis_restarts: int = 0
    http_503: int = 0
    enqueued_counter: float = 0  # the generator's and the worker's metrics at the end
    succeeded_counter: float = 0
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def finished(self) -> int:
        return self.statuses.get("finished", 0)

    @property
    def failed(self) -> int:
        return self.statuses.get("failed", 0)

    @property
    def lost(self) -> int:
        return self.statuses.get("missing", 0)

    @property
    def left_started(self) -> int:
        """Jobs neither ended nor lost: still queued, started or scheduled for a retry."""
        return sum(n for s, n in self.statuses.items() if s not in ("finished", "failed", "missing"))

    @property
    def failed_on_purpose(self) -> int:
        return sum(1 for i in range(self.submitted) if i % MIX_FAIL_EVERY == 0)

    def summary(self) -> dict:
        derived = ("finished", "failed", "lost", "left_started", "failed_on_purpose")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


def job_body(i: int) -> dict:
    if i % MIX_FAIL_EVERY == 0:
        return {"task": "fail", "args": {"message": f"job {i} fails on purpose"}}
    if i % 3 == 0:
        return {"task": "hash", "args": {"rounds": 2000}}
    if i % 7 == 0:
        return {"task": "sleep", "args": {"seconds": 1}}
    return {"task": "noop"}


def submit(base: str, i: int, report: Report, deadline: float) -> str | None:
    """POST one job with an Idempotency-Key, retrying 503s and connection errors: accepted once or not at all."""
    key = f"chaos-{i}"
    while time.monotonic() < deadline:
        try:
            r = requests.post(base + "/jobs", json=job_body(i), headers={"Idempotency-Key": key}, timeout=5)
        except requests.RequestException:
            time.sleep(0.2)
            continue
        if r.status_code == 202:
            return r.json()["jobId"]
        if r.status_code in (503, 409, 429):
            report.http_503 += r.status_code == 503
            time.sleep(min(float(r.headers.get("Retry-After", "1")), 1.0))
            continue
        raise AssertionError(f"unexpected answer {r.status_code}: {r.text}")
    return None


def chaos(worker: WorkerProc, redis: RedisServer, report: Report, stop: threading.Event, kill_every: float,
          restart_redis: threading.Event) -> None:  # fmt: skip
    """SIGKILL a random worker process (and its work-horse) every ``kill_every`` s; restart Redis once."""
    rng = random.Random(7)
    restarted = False
    while not stop.wait(kill_every):
        children = [p for p in descendants(worker.proc.pid) if p in _direct_children(worker.proc.pid)]
        if children:
            kill_tree(rng.choice(children))
            report.worker_kills += 1
        if not restarted and restart_redis.is_set():
            redis.stop(signal.SIGTERM)  # a restart: Redis writes its AOF out and comes back
            time.sleep(1)
            redis.start()
            report.redis_restarts += 1
            restarted = True


def _direct_children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def counter(metrics_text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(jobs: int, workers: int = 4, kill_every: float = 2.0, time_limit: float = 600.0, log_dir: Path | None = None):
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tq-chaos-"))
    report = Report(submitted=jobs)
    t0 = time.monotonic()
    deadline = t0 + time_limit
    redis = RedisServer().start()
    env = {**redis.env(), **ENV}
    gen = Generator(env, log_dir).start()
    exporter = Exporter(env, log_dir).start()
    worker = WorkerProc(env, log_dir, ["--worker-processes", str(workers)]).start()
    stop, restart_redis = threading.Event(), threading.Event()
    monkey = threading.Thread(target=chaos, args=(worker, redis, report, stop, kill_every, restart_redis), daemon=True)
    ids: list[str] = []
    try:
        monkey.start()
        lock = threading.Lock()

        def client(start: int) -> None:
            for i in range(start, jobs, 8):
                job_id = submit(gen.base, i, report, deadline)
                if job_id:
                    with lock:
                        ids.append(job_id)
                        if len(ids) >= jobs // 3:
                            restart_redis.set()

        threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.accepted = len(ids)

        def all_ended() -> bool:
            try:
                return _statuses(redis, ids).keys() <= {"finished", "failed"}
            except Exception:  # Redis is restarting
                return False

        # Workers keep dying while the backlog drains; the chaos stops once every job has ended.
        try:
            wait_for(all_ended, timeout=max(30.0, deadline - time.monotonic()), interval=0.2, what="all ended")
        except TimeoutError:
            report.timed_out = True
        stop.set()
        monkey.join()
    finally:
        stop.set()
        statuses = _statuses(redis, ids) if ids else Counter()
        report.statuses = dict(statuses)
        try:
            gen_metrics = requests.get(f"http://127.0.0.1:{gen.metrics_port}/metrics", timeout=5).text
            worker_metrics = requests.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
            report.enqueued_counter = counter(gen_metrics, "taskqueue_jobs_enqueued_total")
            report.succeeded_counter = counter(worker_metrics, "taskqueue_jobs_completed_total", outcome="succeeded")
        except requests.RequestException:
            pass
        report.seconds = round(time.monotonic() - t0, 1)
        for s in (worker, exporter, gen):
            s.kill()  # the run is over and counted: no graceful stop to wait for
        redis.cleanup()
    return report


def _statuses(redis: RedisServer, ids: list[str]) -> Counter:
    client = redis.client()
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        values = pipe.execute()
    return Counter(v.decode() if v else "missing" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (SIGKILLed at random)")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between worker kills")
    parser.add_argument("--time-limit", type=float, default=900.0)
    args = parser.parse_args()
    print(f"chaos: {args.jobs} jobs, {args.workers} worker processes, a SIGKILL every {args.kill_every} s")
    report = run(args.jobs, args.workers, args.kill_every, args.time_limit)
    print(json.dumps(report.summary(), indent=2))
    ok = (
        not report.timed_out
        and report.lost == 0
        and report.left_started == 0
        and report.accepted == report.finished + report.failed
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
