"""Redis HA: the primary SIGKILLed under load, twice (over to a replica, then back), with real processes.

Three redis-servers and three Sentinels (tests/sentinel_cluster.py: the chart's sentinel mode, its ACL users
and timings), the generator, two workers and the exporter following the primary through Sentinel; a client
enqueues over HTTP with an Idempotency-Key a job and retries on 503. docs/reliability.md has the figures;
bench/failover.py measures the same without ``min-replicas-to-write``.
"""

from __future__ import annotations

import time

import pytest
import requests

from taskqueue import config
from taskqueue.store.connection import connect
from tests.sentinel_cluster import SentinelCluster, SentinelServer, run_failover
from tests.support import RedisServer, free_port, wait_for, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)


@pytest.fixture
def cluster():
    c = SentinelCluster(min_replicas_to_write=1).start()
    yield c
    c.stop()


def test_the_primary_killed_twice_fails_over_and_back_and_every_accepted_job_finishes(cluster, processes, tmp_path):
    marks = tmp_path / "marks"
    generator = processes.generator(env=cluster.app_env("generator", marks))
    workers = [processes.worker(env=cluster.app_env("worker", marks)) for _ in range(2)]
    exporter = processes.exporter(env=cluster.app_env("exporter", marks))

    report = run_failover(cluster, generator, workers, exporter, marks)
    print(report.summary())

    assert len(report.to_first_2xx) == 2
    assert max(report.to_first_2xx) <= 10, report.summary()  # the goal, with the chart's Sentinel timings
    assert report.server_errors_but_503() == [], report.summary()
    assert report.given_up == [], report.summary()
    assert report.never_finished == [], report.summary()  # min-replicas-to-write 1
    # At least once: a job that ended while no primary answered has no recorded outcome; its claim expires
    # (heartbeat_ttl, 30 s) and it runs again. Never a third time.
    assert all(n == 2 for n in report.finished_twice.values()), report.summary()
    assert report.restarted == [], report.summary()
    assert report.acl_refusals == [], report.summary()  # the chart's users did it all, Sentinel's and replicas' too
    # The exporter reads the new primary without a restart.
    metrics = requests.get(f"http://127.0.0.1:{exporter.metrics_port}/metrics", timeout=5).text
    assert "taskqueue_redis_up 1.0" in metrics


ENQUEUES = [
    ("GET", "/start?delay=0", None, {}),
    ("POST", "/jobs", {"task": "noop"}, {}),
    ("POST", "/jobs", {"task": "noop"}, {"Idempotency-Key": "k-1"}),
    ("POST", "/jobs/batch", {"jobs": [{"task": "noop"}, {"task": "noop"}]}, {}),
]


def enqueue_answers(base: str) -> list[requests.Response]:
    return [requests.request(m, base + path, json=body, headers=h, timeout=5) for m, path, body, h in ENQUEUES]


@pytest.mark.parametrize("refusal", ["NOREPLICAS", "READONLY"])
def test_a_redis_that_cannot_take_writes_is_a_503_and_the_worker_waits_it_out(refusal, processes):
    """A primary short of replicas (min-replicas-to-write) or a replica (a demoted primary, or a URL that names a
    replica): every enqueue route answers 503 redis_unavailable with Retry-After, never a 500; the worker keeps
    running; once Redis takes writes again both go on without a restart."""
    primary = processes.add(RedisServer(extra=["--min-replicas-to-write", "1"])).start()
    if refusal == "READONLY":
        replica_of = ["--replicaof", "127.0.0.1", str(primary.port), "--masterauth", primary.password]
        server = processes.add(RedisServer(extra=replica_of)).start()
        wait_for(lambda: primary.client().info("replication")["connected_slaves"] == 1, what="the replica linked")
    else:
        server = primary
    env = {**server.env(), "TASKQUEUE_WORKER_MAINTENANCE": "false"}
    generator = processes.generator(env=env)
    worker = processes.worker(env=env)

    for r in enqueue_answers(generator.base):
        assert r.status_code == 503, (r.request.url, r.text)
        assert r.json()["error"]["code"] == "redis_unavailable" and r.headers["Retry-After"] == "2"
    assert requests.get(generator.base + "/status/" + "0" * 32, timeout=5).status_code == 404  # reads still work

    if refusal == "READONLY":
        server.client().replicaof("NO", "ONE")  # promoted, as Sentinel would
        server.client().config_set("min-replicas-to-write", 0)
    else:
        server.client().config_set("min-replicas-to-write", 0)
    answers = enqueue_answers(generator.base)
    assert [r.status_code for r in answers] == [200, 202, 202, 202], [r.text for r in answers]
    assert wait_status(generator.base, answers[1].json()["jobId"], {"finished"}, timeout=20)
    assert worker.proc.poll() is None and generator.proc.poll() is None


def test_a_dead_sentinel_first_in_the_list_is_passed_over_at_once(processes):
    """A lost pod's Sentinel may be the first one a process asks: each new client tries it once and asks the next
    (redis-py's default retries spent 4 s on a refused sentinel before asking the next, at each new client)."""
    server = processes.add(RedisServer()).start()
    sentinel = processes.add(SentinelServer(server.port, server.password)).start()
    env = sentinel.app_env(server.env())
    env["TASKQUEUE_REDIS_SENTINELS"] = f"127.0.0.1:{free_port()},{env['TASKQUEUE_REDIS_SENTINELS']}"
    cfg = config.load(env)
    started = time.monotonic()
    for _ in range(5):  # a new client asks the sentinels afresh, from the first
        assert connect(cfg).set("tq:probe", "1")
    assert time.monotonic() - started < 1.0
