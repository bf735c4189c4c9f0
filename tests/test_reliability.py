"""Failures a task queue must survive: Redis restarts (AOF), TLS to an external Redis, hostile payloads."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.sentinel_cluster import SentinelServer
from tests.support import RedisServer, free_port, kill_tree, wait_for, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)


def aof_bytes(server: RedisServer) -> bytes:
    """What Redis's append-only files hold on disk now (Redis 7 keeps them under appendonlydir/)."""
    return b"".join(p.read_bytes() for p in server.dir.rglob("*.aof*") if p.is_file())


def make_test_ca(tmp: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl at run time."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=taskqueue-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return {"ca": tmp / "ca.crt", "cert": tmp / "server.crt", "key": tmp / "server.key"}


class TlsRedis(RedisServer):
    """redis-server speaking only TLS on its port."""

    def __init__(self, certs: dict[str, Path]):
        self.tls_port = free_port()
        super().__init__(
            port=0,
            extra=["--tls-port", str(self.tls_port), "--tls-cert-file", str(certs["cert"]),
                   "--tls-key-file", str(certs["key"]), "--tls-ca-cert-file", str(certs["ca"]),
                   "--tls-auth-clients", "no"],
        )  # fmt: skip
        self.certs = certs

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def env(self) -> dict[str, str]:
        return {**super().env(), "TASKQUEUE_REDIS_CA_CERT": str(self.certs["ca"])}

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.tls_port, password=self.password, ssl=True,
                           ssl_ca_certs=str(self.certs["ca"]), socket_timeout=5)  # fmt: skip


def test_rediss_tls_with_a_test_ca(processes, tmp_path):
    server = processes.add(TlsRedis(make_test_ca(tmp_path))).start()
    gen = processes.generator(env=server.env())
    processes.worker(env=server.env())
    # Without the CA the server's certificate is not trusted: verification is on.
    untrusting = processes.generator(env={**server.env(), "TASKQUEUE_REDIS_CA_CERT": ""})
    job_id = requests.get(gen.base + "/start?delay=0", timeout=5).json()["jobId"]
    doc = wait_status(gen.base, job_id, {"finished"}, timeout=15)
    assert doc["result"] == "Processed message generating task with delay: 0 after 0 seconds"
    assert requests.get(untrusting.base + "/readyz", timeout=5).status_code == 503


def test_rediss_with_sentinels_speaks_tls_to_the_sentinels_too(processes, tmp_path):
    """One address list serves the processes and KEDA's redis-sentinel scaler, which speaks TLS to both: the
    sentinel has no plain-text port, and the URL's port 1 has nothing, so the job ran through a TLS sentinel."""
    certs = make_test_ca(tmp_path)
    server = processes.add(TlsRedis(certs)).start()
    sentinel = processes.add(SentinelServer(server.tls_port, server.password, certs)).start()
    env = sentinel.app_env(server.env())
    gen = processes.generator(env=env)
    processes.worker(env=env)
    # Without the CA neither the sentinel's certificate nor Redis's is trusted: verification is on.
    untrusting = processes.generator(env={**env, "TASKQUEUE_REDIS_CA_CERT": ""})
    job_id = requests.get(gen.base + "/start?delay=0", timeout=5).json()["jobId"]
    doc = wait_status(gen.base, job_id, {"finished"}, timeout=15)
    assert doc["result"] == "Processed message generating task with delay: 0 after 0 seconds"
    assert requests.get(untrusting.base + "/readyz", timeout=5).status_code == 503


def test_queued_jobs_survive_a_redis_crash(processes):
    """AOF everysec: jobs accepted more than a second before Redis is SIGKILLed are still there."""
    server = processes.add(RedisServer()).start()
    gen = processes.generator(env=server.env())
    ids = [requests.get(gen.base + "/start?delay=0", timeout=2).json()["jobId"] for _ in range(20)]
    # Every accepted job written to the append-only file before the crash (a SIGKILL loses what Redis
    # has not written yet; everysec's fsync matters for a crash of the machine, not of the process).
    wait_for(lambda: all(i.encode() in aof_bytes(server) for i in ids), timeout=5, what="the jobs in the AOF")
    server.stop(signal.SIGKILL)
    server.start()  # same port, same folder: Redis replays the append-only file
    processes.worker(env=server.env())
    for job_id in ids:
        assert wait_status(gen.base, job_id, {"finished"}, timeout=20)["result"].startswith("Processed")


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_pickled_payload_is_refused_not_executed(worker_class, tmp_path, redis_server, redis_client, processes):
    """A job hash written straight into Redis with a pickle in it must never be unpickled."""
    import pickle
    import zlib

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    redis_client.hset("rq:job:evil", mapping={
        "data": zlib.compress(pickle.dumps(("os.system", None, Exploit(), {}))), "status": "queued",
        "origin": "default", "created_at": "2026-01-01T00:00:00.000000Z", "description": "evil", "timeout": 60,
    })  # fmt: skip
    redis_client.rpush("rq:queue:default", "evil")
    gen = processes.generator(env=redis_server.env())
    w = processes.worker(["--worker-class", worker_class], env=redis_server.env())
    wait_for(lambda: redis_client.zscore("rq:failed:default", "evil") is not None, timeout=10,
             what="the pickled job in the failed registry")  # fmt: skip
    assert not marker.exists()
    doc = requests.get(gen.base + "/status/evil", timeout=2).json()
    assert doc["status"] == "failed" and "not JSON" in doc["error"]
    # The worker survived the poison message and takes the next job.
    assert w.proc.poll() is None
    job_id = requests.get(gen.base + "/start?delay=0", timeout=2).json()["jobId"]
    wait_status(gen.base, job_id, {"finished"}, timeout=10)


def test_worker_waits_out_a_redis_outage_and_recovers(processes):
    server = processes.add(RedisServer()).start()
    env = {**server.env(), "TASKQUEUE_REDIS_TIMEOUT": "0.5"}
    gen = processes.generator(env=env)
    w = processes.worker(env=env)
    first = requests.get(gen.base + "/start?delay=0", timeout=2).json()["jobId"]
    wait_status(gen.base, first, {"finished"}, timeout=10)
    server.stop()
    time.sleep(4)
    assert w.proc.poll() is None, "the worker must wait for Redis, not exit"
    server.start()
    wait_for(lambda: requests.get(gen.base + "/readyz", timeout=2).ok, timeout=10, what="generator ready")
    t0 = time.monotonic()
    job_id = requests.get(gen.base + "/start?delay=0", timeout=2).json()["jobId"]
    wait_status(gen.base, job_id, {"finished"}, timeout=30)
    recovery = time.monotonic() - t0
    assert recovery < 20, recovery
    assert w.proc.poll() is None


def test_a_worker_told_to_stop_during_a_redis_outage_stops(processes):
    """SIGTERM while Redis is down: the warm shutdown cannot say goodbye to Redis, and the worker
    exits rather than starting a new worker and waiting for Redis until it is killed."""
    server = processes.add(RedisServer()).start()
    env = {**server.env(), "TASKQUEUE_REDIS_TIMEOUT": "0.5"}
    w = processes.worker(env=env)
    # In RQ's loop first (its metrics port opens before the worker registers with Redis; an outage
    # before that is the case of the test below).
    wait_for(lambda: "Listening on" in w.log(), timeout=10, what="the worker listening")
    server.stop()
    # The worker notices: in RQ's loop (its retries log "Redis unavailable (..." or, in its dequeue, "could not
    # connect to Redis"), or, when a call outside them met the outage first, between workers ("redis
    # unavailable: ...", the case of the test below). Either way SIGTERM must end it; which one came first
    # decides what it logs.
    between, in_loop = '"msg": "redis unavailable: ', ("Redis unavailable (", "could not connect to Redis")

    def noticed_where() -> str | None:
        log = w.log()
        return "between" if between in log else "in_loop" if any(m in log for m in in_loop) else None

    noticed = wait_for(noticed_where, timeout=15, what="the worker noticing")
    assert w.proc.poll() is None
    w.signal(signal.SIGTERM)
    assert w.proc.wait(timeout=15) == 0
    if noticed == "in_loop":
        assert "redis unavailable during shutdown" in w.log()
    else:
        assert w.log().count("starting a new worker") == 1  # stopped in the wait, no second worker


def test_a_worker_told_to_stop_while_waiting_to_start_a_new_one_stops_at_once(processes):
    """Redis down from the start: the worker fails to register, waits to start a new one (1 s, then 2 s),
    and SIGTERM in that wait ends the process at once, without another attempt."""
    server = processes.add(RedisServer()).start()
    env = {**server.env(), "TASKQUEUE_REDIS_TIMEOUT": "0.5"}
    server.stop()
    w = processes.worker(env=env)
    wait_for(lambda: "starting a new worker in 2 s" in w.log(), timeout=15, what="the second wait")
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.proc.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 1.5  # not the rest of the 2 s wait, nor a new worker's attempt
    assert w.log().count("starting a new worker") == 2


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_requeue_shutdown_mode_puts_the_running_job_back_at_once(generator, processes, worker_class):
    args = ["--worker-class", worker_class, "--shutdown-mode", "requeue"]
    w = processes.worker(args)
    job_id = requests.get(generator.base + "/start?delay=30", timeout=2).json()["jobId"]
    wait_status(generator.base, job_id, {"started"}, timeout=10)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 15, "requeue mode must not wait for the 30 s job"
    doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
    assert doc["status"] == "queued" and doc["retriesLeft"] == 2  # no retry spent
    listed = requests.get(generator.base + "/list?state=queued", timeout=2).json()["jobs"]
    assert listed[0] == job_id  # at the front
    # The next worker takes it up again (and, in requeue mode too, hands it back when stopped).
    nxt = processes.worker(args, stop_timeout=15)
    wait_status(generator.base, job_id, {"started"}, timeout=15)
    assert nxt.stop(timeout=15) == 0
    doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
    assert doc["status"] == "queued" and doc["retriesLeft"] == 2


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_job_of_a_sigkilled_worker_is_retried_within_the_heartbeat_bound(app_env, processes, worker_class):
    """No worker left (as with KEDA's min replicas 0): the exporter finds the abandoned job and retries it."""
    env = {**app_env, "TASKQUEUE_HEARTBEAT_TTL": "6", "TASKQUEUE_CLEANUP_INTERVAL": "2",
           "TASKQUEUE_WORKER_MAINTENANCE": "false"}  # fmt: skip
    gen = processes.generator(env=env)
    processes.exporter(env=env)
    w = processes.worker(["--worker-class", worker_class], env=env)
    job_id = requests.get(gen.base + "/start?delay=3", timeout=2).json()["jobId"]
    wait_status(gen.base, job_id, {"started"}, timeout=10)
    time.sleep(1)
    kill_tree(w.proc.pid)  # the worker and its work-horse, like an OOM kill of the pod
    w.proc.wait()
    t0 = time.monotonic()

    # RQ's retry writes the status at once and the retries left with the rest of it: wait for both.
    def retried() -> bool:
        doc = requests.get(f"{gen.base}/status/{job_id}", timeout=2).json()
        return doc["status"] in {"queued", "scheduled"} and doc["retriesLeft"] == 1

    wait_for(retried, timeout=30, interval=0.1, what="the job retried, one retry spent")
    found = time.monotonic() - t0
    assert found <= 6 + 2 + 2, found  # heartbeat TTL + cleanup interval + slack
    processes.worker(["--worker-class", worker_class], env=env)
    assert wait_status(gen.base, job_id, {"finished"}, timeout=30)["result"].startswith("Processed")
