"""A full Redis must not lose a job: enqueue is refused before Redis is full, and a refused write leaves nothing.

Each test starts its own redis-server with a small ``maxmemory`` and ``noeviction`` (the chart's policy),
and real generator, worker and exporter processes on it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from tests.conftest import FAST_ENV
from tests.support import ADMIN, Exporter, Generator, RedisServer, WorkerProc, running, wait_for, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)

MAXMEMORY = 24 * 1024 * 1024
REFUSALS = {429: "backlog_full", 503: "redis_full"}


@pytest.fixture
def small_redis():
    server = RedisServer(extra=["--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"]).start()
    yield server
    server.cleanup()


def env_for(server: RedisServer, **settings: str) -> dict[str, str]:
    return {**server.env(), **FAST_ENV, **{f"TASKQUEUE_{k.upper()}": v for k, v in settings.items()}}


def memory(client) -> dict:
    return client.info("memory")


def fill_to(client, fraction: float) -> None:
    """Values of 256 kB until Redis holds ``fraction`` of its maxmemory (one big value would need twice
    its size while Redis reads it)."""
    chunk, n = 256 * 1024, 0
    while int(memory(client)["used_memory"]) + chunk < MAXMEMORY * fraction:
        client.set(f"filler:{n}", b"x" * chunk)
        n += 1


def empty(client) -> None:
    """Take the filler away: room again."""
    client.config_set("maxmemory", MAXMEMORY)
    client.delete(*client.keys("filler:*"))


def make_full(client) -> None:
    """Lower maxmemory well below what Redis holds: every write that would grow memory is refused. (1 MB
    below was not enough: Redis frees a client's idle query buffer, up to twice a 256 kB filler, on its
    own timer, and a CI run saw a write go through.)"""
    fill_to(client, 0.5)
    client.config_set("maxmemory", int(memory(client)["used_memory"]) // 2)


def assert_refused(r: requests.Response) -> None:
    """A refusal a client can act on: 429 or 503, JSON, with Retry-After."""
    assert r.status_code in REFUSALS, (r.status_code, r.text)
    assert r.json()["error"]["code"] == REFUSALS[r.status_code]
    assert int(r.headers["Retry-After"]) > 0


def flood(base: str, seconds: float, per_thread: int) -> list[tuple[int, list[str], requests.Response]]:
    """4 clients send /start, POST /jobs and batches until ``seconds`` pass or each sent ``per_thread``."""
    out: list[tuple[int, list[str], requests.Response]] = []
    lock, deadline = threading.Lock(), time.monotonic() + seconds
    calls = [
        lambda s: s.get(base + "/start?delay=0", timeout=5),
        lambda s: s.post(base + "/jobs", json={"task": "hash", "args": {"rounds": 10}}, timeout=5),
        lambda s: s.post(base + "/jobs/batch", json={"jobs": [{"task": "noop"}] * 20}, timeout=5),
    ]

    def client(n: int) -> None:
        with requests.Session() as s:
            for i in range(per_thread):
                if time.monotonic() > deadline:
                    return
                r = calls[(n + i) % len(calls)](s)
                doc = r.json()
                ids = [j["jobId"] for j in doc.get("jobs", [])] or ([doc["jobId"]] if "jobId" in doc else [])
                with lock:
                    out.append((r.status_code, ids, r))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_a_flood_is_refused_before_redis_is_full_and_every_accepted_job_is_accounted_for(small_redis, tmp_path):
    """Enqueues and completions against 24 MB: every answer is 2xx or a refusal with Retry-After, every
    accepted job ends finished, failed or still queued, and Redis never reaches its maxmemory."""
    client = small_redis.client()
    env = env_for(small_redis, redis_memory_limit="80")
    gen, worker = Generator(env, tmp_path), WorkerProc(env, tmp_path)
    with running(gen.start(), worker.start()):
        fill_to(client, 0.74)  # the flood's jobs and results take it past the 80 % limit
        answers = flood(gen.base, seconds=30, per_thread=600)
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 202, *REFUSALS}, statuses
        for status, _, r in answers:
            if status in REFUSALS:
                assert_refused(r)
        assert statuses[503] > 0, f"the flood never reached the memory limit: {statuses}"
        # While Redis is over the limit, the generator is not ready (Kubernetes stops routing to it).
        r = requests.get(gen.base + "/readyz", timeout=2)
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_full"
        # Every accepted job: finished, failed, or still waiting its turn. None lost, none half-written.
        accepted = [job_id for status, ids, _ in answers if status in (200, 202) for job_id in ids]
        wait_for(lambda: client.llen("rq:queue:default") == 0, timeout=60, what="the queue to drain")
        states = Counter((client.hget(f"rq:job:{job_id}", "status") or b"missing").decode() for job_id in accepted)
        assert set(states) <= {"finished", "failed", "queued", "started"}, states
        wait_for(lambda: not client.zcard("rq:wip:default"), timeout=30, what="running jobs to end")
        peak = client.info("memory")["used_memory_peak"]
        print(f"flood: answers {dict(statuses)}, {len(accepted)} jobs accepted, {dict(states)}, peak {peak:,} B")
        assert peak < MAXMEMORY
        # Room again (finished jobs expired, here: the filler deleted): ready and accepting at once.
        empty(client)
        wait_for(lambda: requests.get(gen.base + "/readyz", timeout=2).ok, timeout=5, what="/readyz 200")
        r = wait_for(lambda: (r := requests.get(gen.base + "/start?delay=0", timeout=2)).ok and r, timeout=5)
        assert wait_status(gen.base, r.json()["jobId"], {"finished"}, timeout=10)


@pytest.mark.parametrize("limit", ["80", "0"], ids=["checked", "check-off"])
def test_a_full_redis_answers_503_on_every_route_and_nothing_is_written(small_redis, tmp_path, limit):
    """Checked: the generator refuses before writing. Check off: Redis refuses the enqueue script's first
    write, so the script writes nothing, and the Idempotency-Key's claim is taken back."""
    client = small_redis.client()
    gen = Generator(env_for(small_redis, redis_memory_limit=limit), tmp_path)
    with running(gen.start()):
        make_full(client)
        keys_before = client.dbsize()
        calls = [
            lambda: requests.get(gen.base + "/start", timeout=5),
            lambda: requests.get(gen.base + "/start?delay=1", headers={"Idempotency-Key": "k1"}, timeout=5),
            lambda: requests.post(gen.base + "/jobs", json={"task": "noop"}, timeout=5),
            lambda: requests.post(
                gen.base + "/jobs", json={"task": "noop"}, headers={"Idempotency-Key": "k2"}, timeout=5
            ),
            lambda: requests.post(gen.base + "/jobs/batch", json={"jobs": [{"task": "noop"}] * 50}, timeout=5),
        ]
        for call in calls:
            r = call()
            assert r.status_code == 503, r.text
            assert_refused(r)
        assert client.dbsize() == keys_before
        assert client.llen("rq:queue:default") == 0
        r = requests.get(gen.base + "/readyz", timeout=2)
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_full"
        assert requests.get(gen.base + "/healthz", timeout=2).ok  # alive: no restart loop
        empty(client)
        wait_for(lambda: requests.get(gen.base + "/readyz", timeout=2).ok, timeout=5, what="/readyz 200")
        r = wait_for(lambda: (r := requests.post(gen.base + "/jobs", json={"task": "noop"})).ok and r, timeout=5)
        assert r.status_code == 202


def test_cancel_and_requeue_on_a_full_redis_answer_503_and_leave_the_job_where_it_was(small_redis, tmp_path):
    """Both are one transaction Redis refuses whole: the job stays queued, or canceled, not lost between."""
    client = small_redis.client()
    gen = Generator(env_for(small_redis, redis_memory_limit="0"), tmp_path)  # Redis itself refuses the writes
    with running(gen.start()):
        queued, canceled = (requests.get(gen.base + "/start?delay=0", timeout=2).json()["jobId"] for _ in "ab")
        assert requests.delete(f"{gen.base}/jobs/{canceled}", headers=ADMIN, timeout=2).json()["status"] == "canceled"
        make_full(client)
        for r in (
            requests.delete(f"{gen.base}/jobs/{queued}", headers=ADMIN, timeout=5),
            requests.post(f"{gen.base}/jobs/{canceled}/requeue", headers=ADMIN, timeout=5),
        ):
            assert r.status_code == 503, r.text
            assert_refused(r)
        assert client.lrange("rq:queue:default", 0, -1) == [queued.encode()]
        assert client.zscore("rq:canceled:default", canceled) is not None
        assert requests.get(f"{gen.base}/status/{canceled}", timeout=2).json()["status"] == "canceled"
        empty(client)
        r = requests.post(f"{gen.base}/jobs/{canceled}/requeue", headers=ADMIN, timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert client.zscore("rq:canceled:default", canceled) is None


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_a_worker_waits_out_a_full_redis_and_loses_no_job(small_redis, tmp_path, worker_class):
    """Redis fills while a job runs and others wait: the finish and the next starts are refused whole; the
    worker waits in its loop (no restart), and once there is room every job finishes (the one whose finish
    was refused is retried when its claim expires)."""
    client = small_redis.client()
    env = env_for(small_redis, heartbeat_ttl="6", cleanup_interval="2", retries="1", retry_intervals="0")
    gen = Generator(env, tmp_path)
    worker = WorkerProc(env, tmp_path, ["--worker-class", worker_class])
    exporter = Exporter(env, tmp_path)
    with running(gen.start(), worker.start(), exporter.start()):
        first = requests.get(gen.base + "/start?delay=2", timeout=2).json()["jobId"]
        wait_status(gen.base, first, {"started"}, timeout=10)
        waiting = [requests.post(gen.base + "/jobs", json={"task": "noop"}, timeout=2).json()["jobId"] for _ in "abc"]
        make_full(client)
        wait_for(lambda: "maxmemory" in worker.log(), timeout=15, what="the worker to meet the full Redis")
        for job_id in waiting:  # not lost: still on the queue or between the queue and a start
            assert (
                client.lpos("rq:queue:default", job_id) is not None
                or client.lpos("rq:queue:default:intermediate", job_id) is not None
            ), job_id
        empty(client)
        for job_id in [first, *waiting]:
            wait_status(gen.base, job_id, {"finished"}, timeout=40)
        log = worker.log()
        assert "starting a new worker" not in log and "found an unhandled exception" not in log, log[-3000:]
