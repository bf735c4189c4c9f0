"""Completion webhooks: a real HTTP receiver in this process, and real redis-server, generator, worker and exporter.

The receiver (:class:`Receiver`) listens on 127.0.0.1 and answers each POST with the next status of its script
(or holds it until released); it records every request's headers, body and time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import signal
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from taskqueue.client import Client, verify_webhook
from tests.support import ADMIN, Exporter, RedisServer, free_port, wait_for, wait_status
from tests.test_reliability import make_test_ca

SECRET = "test-webhook-secret"


class Receiver:
    """An HTTP server that answers POSTs with ``script``'s statuses in turn (then 200), or holds them while
    ``hold`` is set; ``requests`` lists what came: ``{"headers", "body", "at"}``."""

    def __init__(self, script: list[int] | None = None, location: str | None = None):
        self.script = list(script or [])
        self.location = location
        self.requests: list[dict] = []
        self.hold = threading.Event()  # set: requests wait until it is cleared (or 30 s)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "at": time.time()})
                    status = receiver.script.pop(0) if receiver.script else 200
                deadline = time.monotonic() + 30
                while receiver.hold.is_set() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?team=a"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hold.clear()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def app_env(app_env):
    """Webhooks on, to 127.0.0.1 only; short attempts and backoff so retries fit a test."""
    return {
        **app_env,
        "TASKQUEUE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "TASKQUEUE_WEBHOOK_SECRET": SECRET,
        "TASKQUEUE_WEBHOOK_TIMEOUT": "1",
        "TASKQUEUE_WEBHOOK_BACKOFF": "0.2",
    }


def post_job(base: str, **fields) -> str:
    r = requests.post(base + "/jobs", json={"task": "noop", **fields}, timeout=5)
    assert r.status_code == 202, r.text
    return r.json()["jobId"]


def callback(base: str, job_id: str) -> dict:
    return requests.get(f"{base}/status/{job_id}", timeout=5).json()["callback"]


def wait_callback(base: str, job_id: str, status: str, timeout: float = 20) -> dict:
    def check():
        c = callback(base, job_id)
        return c if c["status"] == status else None

    return wait_for(check, timeout=timeout, interval=0.05, what=f"callback of {job_id} to be {status}")


def deliveries(metrics_port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("taskqueue_webhook_deliveries_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('outcome="')[1].split('"')[0]] = float(value)
    return out


@pytest.mark.behaviour  # the ends are written by the worker's own path in each mode: run in both (make test)
def test_each_ended_job_is_posted_once_signed_with_its_outcome(processes, receiver):
    """A finished, a failed (retries spent) and a canceled job: one POST each, the body's fields as documented,
    signed with HMAC-SHA256 of the exact body, each with its own delivery id; /status shows it delivered."""
    generator, _worker, exporter = processes.generator(), processes.worker(), processes.exporter()
    done = post_job(generator.base, callbackUrl=receiver.url)
    failed = post_job(generator.base, task="fail", args={"message": "boom"}, callbackUrl=receiver.url)
    canceled = Client(generator.base).enqueue("noop", delay_seconds=60, callback_url=receiver.url)
    assert callback(generator.base, canceled) == {"status": "pending", "attempts": 0, "lastError": None}
    assert requests.delete(f"{generator.base}/jobs/{canceled}", headers=ADMIN, timeout=5).status_code == 200
    for job_id in (done, failed, canceled):
        assert wait_callback(generator.base, job_id, "delivered") == {
            "status": "delivered", "attempts": 1, "lastError": None,
        }  # fmt: skip
    bodies = {}
    for req in receiver.requests:
        body, headers = req["body"], req["headers"]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Taskqueue-Signature"], expected)
        assert verify_webhook(SECRET, body, headers["X-Taskqueue-Signature"])
        assert not verify_webhook("another secret", body, headers["X-Taskqueue-Signature"])
        assert not verify_webhook(SECRET, body + b" ", headers["X-Taskqueue-Signature"])
        assert headers["Content-Type"] == "application/json" and len(headers["X-Taskqueue-Delivery"]) == 32
        doc = json.loads(body)
        bodies[doc["jobId"]] = doc
    assert len(receiver.requests) == 3 and set(bodies) == {done, failed, canceled}
    assert len({r["headers"]["X-Taskqueue-Delivery"] for r in receiver.requests}) == 3
    assert bodies[done] == {
        "jobId": done, "task": "noop", "status": "finished", "result": None,
        "enqueuedAt": bodies[done]["enqueuedAt"], "startedAt": bodies[done]["startedAt"],
        "endedAt": bodies[done]["endedAt"],
    }  # fmt: skip
    assert bodies[done]["endedAt"] >= bodies[done]["startedAt"] >= bodies[done]["enqueuedAt"]
    assert bodies[failed]["status"] == "failed" and bodies[failed]["error"] == "RuntimeError: boom"
    assert "result" not in bodies[failed]
    assert bodies[canceled]["status"] == "canceled" and bodies[canceled]["startedAt"] is None
    assert deliveries(exporter.metrics_port)["delivered"] == 3
    # A job without a callback has no "callback" field.
    plain = post_job(generator.base)
    assert "callback" not in wait_status(generator.base, plain, {"finished"})


def test_a_receiver_that_fails_three_times_gets_the_same_delivery_a_fourth_time(processes):
    """500, 500, 500, then 200: four attempts, with growing waits, one delivery id; metrics count 3 retries and
    1 delivery; /status shows the attempts and, meanwhile, the last error."""
    receiver = Receiver(script=[500, 500, 500])
    try:
        generator, _worker, exporter = processes.generator(), processes.worker(), processes.exporter()
        job_id = post_job(generator.base, callbackUrl=receiver.url)
        wait_for(lambda: len(receiver.requests) >= 1, what="the first attempt")
        pending = wait_for(lambda: (c := callback(generator.base, job_id))["attempts"] >= 1 and c, what="a retry")
        assert pending["status"] == "pending" and pending["lastError"] == "HTTP 500"
        assert wait_callback(generator.base, job_id, "delivered")["attempts"] == 4
        assert len(receiver.requests) == 4
        assert len({r["headers"]["X-Taskqueue-Delivery"] for r in receiver.requests}) == 1
        gaps = [b["at"] - a["at"] for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
        # Backoff 0.2 s doubled (±10 %), plus up to a pass (0.5 s) each: never sooner than the backoff.
        assert gaps[0] >= 0.18 and gaps[1] >= 0.36 and gaps[2] >= 0.72, gaps
        counts = deliveries(exporter.metrics_port)
        assert counts["retry"] == 3 and counts["delivered"] == 1, counts
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("script", "attempts", "error"),
    [([404], 1, "HTTP 404"), ([429, 408, 503], 4, None), ([302], 1, "HTTP 302 (redirects are not followed)")],
)
def test_4xx_stops_but_408_429_and_5xx_are_retried_and_redirects_are_not_followed(processes, script, attempts, error):
    """A 404 is given up at once (rejected); 429, 408 and 503 are retried; a 302 is not followed: the URL it
    points to is never asked."""
    elsewhere = Receiver()
    receiver = Receiver(script=script, location=elsewhere.url)
    try:
        generator, _worker, _exporter = processes.generator(), processes.worker(), processes.exporter()
        job_id = post_job(generator.base, callbackUrl=receiver.url)
        final = "delivered" if error is None else "failed"
        assert wait_callback(generator.base, job_id, final) == {
            "status": final,
            "attempts": attempts,
            "lastError": error,
        }
        assert len(receiver.requests) == attempts and elsewhere.requests == []
    finally:
        receiver.close()
        elsewhere.close()


def test_retries_stop_when_the_retry_window_is_spent(processes, app_env):
    """With TASKQUEUE_WEBHOOK_RETRY_FOR=1, a receiver that always answers 500 is given up as expired."""
    receiver = Receiver(script=[500] * 100)
    try:
        env = {**app_env, "TASKQUEUE_WEBHOOK_RETRY_FOR": "1"}
        generator, _w = processes.generator(), processes.worker()
        exporter = processes.exporter(env=env)
        job_id = post_job(generator.base, callbackUrl=receiver.url)
        c = wait_callback(generator.base, job_id, "failed")
        assert c["lastError"].startswith("HTTP 500; gave up after 1 s") and 1 <= c["attempts"] <= 4, c
        assert deliveries(exporter.metrics_port)["expired"] == 1
    finally:
        receiver.close()


REFUSED_URLS = [
    "http://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
    "http://localhost:8080/hook",
    "http://2852039166/",  # 169.254.169.254 written as one number
    "http://[::1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://user:pw@127.0.0.1/",
    "ftp://127.0.0.1/",
    "file:///etc/passwd",
    "http://127.0.0.1:99999/",
    "/relative",
    42,
    "http://127.0.0.1/" + "a" * 2100,
    "http://127.0.0.1/\ud800",  # a lone surrogate: valid JSON, not encodable
    "http://127.0.0.1/\u2603",
]


def test_urls_outside_the_allowed_hosts_are_refused_at_enqueue(generator):
    """400 invalid_callback_url with the field named, for single jobs and batch items; nothing is enqueued."""
    for url in REFUSED_URLS:
        r = requests.post(generator.base + "/jobs", json={"task": "noop", "callbackUrl": url}, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_callback_url", (url, r.text)
        assert r.json()["error"]["field"] == "callbackUrl"
        items = [{"task": "noop"}, {"task": "noop", "callbackUrl": url}]
        batch = requests.post(generator.base + "/jobs/batch", json={"jobs": items}, timeout=5)
        assert batch.status_code == 400, (url, batch.text)
    assert requests.get(generator.base + "/list", params={"state": "queued"}, timeout=5).json()["total"] == 0


def test_webhooks_are_refused_when_no_host_is_allowed(processes, app_env, receiver):
    env = {k: v for k, v in app_env.items() if not k.startswith("TASKQUEUE_WEBHOOK_")}
    generator = processes.generator(env=env)
    r = requests.post(generator.base + "/jobs", json={"task": "noop", "callbackUrl": receiver.url}, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "webhooks_disabled", r.text


def test_a_listed_name_that_resolves_to_a_private_address_is_refused_at_delivery(processes, app_env, receiver):
    """``localhost`` listed by name passes the check at enqueue; at delivery it resolves to loopback, which no
    listed network holds: refused, and the receiver behind it is never asked."""
    env = {**app_env, "TASKQUEUE_WEBHOOK_ALLOWED_HOSTS": "localhost"}
    generator, _worker, exporter = processes.generator(env=env), processes.worker(), processes.exporter(env=env)
    url = receiver.url.replace("127.0.0.1", "localhost")
    job_id = post_job(generator.base, callbackUrl=url)
    c = wait_callback(generator.base, job_id, "failed")
    assert c["attempts"] == 1 and "resolves to" in c["lastError"] and "not public" in c["lastError"], c
    assert receiver.requests == []
    assert deliveries(exporter.metrics_port)["refused"] == 1


def test_a_delivery_survives_the_worker_and_the_exporter_killed_and_redis_restarted(processes, app_env, receiver):
    """The worker is SIGKILLed right after its job ended, the exporter is SIGKILLed while the receiver holds the
    POST, and Redis restarts (AOF) while no exporter runs: a new exporter still delivers, with the same id (at
    least once: the receiver got it twice)."""
    redis = processes.add(RedisServer()).start()
    env = {**app_env, **redis.env()}
    generator, worker = processes.generator(env=env), processes.worker(env=env)
    job_id = post_job(generator.base, callbackUrl=receiver.url)
    wait_status(generator.base, job_id, {"finished"})
    worker.signal(signal.SIGKILL)
    receiver.hold.set()
    exporter = processes.exporter(env=env)
    wait_for(lambda: receiver.requests, what="the first attempt")
    exporter.signal(signal.SIGKILL)
    exporter.proc.wait(timeout=10)
    receiver.hold.clear()
    redis.stop()
    redis.start()
    assert callback(generator.base, job_id)["status"] == "pending"
    processes.exporter(env=env)
    # The lease of the killed attempt ends (2 x 1 s + 5 s), then it is sent again.
    assert wait_callback(generator.base, job_id, "delivered", timeout=30)["attempts"] == 1
    assert len(receiver.requests) == 2
    assert (
        receiver.requests[0]["headers"]["X-Taskqueue-Delivery"]
        == receiver.requests[1]["headers"]["X-Taskqueue-Delivery"]
    )
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]


def test_a_hanging_receiver_does_not_slow_the_worker(processes, app_env):
    """Jobs whose receiver holds every POST until the attempt's timeout, against the same jobs without webhooks:
    the worker's jobs/s (jobs over the span from the first start to the last end) is the same within 10 %
    (medians of 3 rounds each, in turn). Jobs of 1 s in 8 slots, so a send in the worker's way (RQ's own
    webhooks block the worker) would show as a second or more a job."""
    hanging = Receiver()
    hanging.hold.set()
    try:
        generator, _exporter = processes.generator(), processes.exporter()
        processes.worker(args=["--job-slots", "8"])
        rates: dict[str, list[float]] = {"no webhooks": [], "hanging receiver": []}
        for _ in range(3):
            for name, extra in (("no webhooks", {}), ("hanging receiver", {"callbackUrl": hanging.url})):
                ids = [post_job(generator.base, task="sleep", args={"seconds": 1}, **extra) for _ in range(16)]
                docs = [wait_status(generator.base, i, {"finished"}) for i in ids]
                span = _seconds(max(d["endedAt"] for d in docs)) - _seconds(min(d["startedAt"] for d in docs))
                rates[name].append(len(ids) / span)
        plain, hung = statistics.median(rates["no webhooks"]), statistics.median(rates["hanging receiver"])
        assert hung >= plain * 0.90, rates
        assert hanging.requests and all(callback(generator.base, i)["status"] == "pending" for i in ids)
    finally:
        hanging.close()


def _seconds(iso_time: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_time).timestamp()


def test_the_guard_checks_names_networks_and_resolved_addresses():
    """The allow list itself. Names outside this machine cannot be resolved here (no DNS beyond package
    registries), so those cases pass a stand-in for getaddrinfo; ``localhost`` goes through the real resolver."""
    from taskqueue.webhooks.guard import AllowList, UrlRefused

    allow = AllowList.parse(["hooks.example.com", "*.corp.example", "10.1.0.0/16", "192.0.2.7"])
    for ok in ("https://hooks.example.com/x", "http://a.b.corp.example:8080/", "http://10.1.2.3/", "http://192.0.2.7"):
        allow.check_url(ok)
    for bad in ("http://example.com/", "http://corp.example/", "http://10.2.0.1/", "http://192.0.2.8/"):
        with pytest.raises(UrlRefused):
            allow.check_url(bad)
    # A listed name must resolve to public addresses, or to listed ones.
    public = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]  # noqa: E731
    private = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443)), (2, 1, 6, "", ("10.9.9.9", 443))]  # noqa: E731
    listed = lambda *a, **k: [(2, 1, 6, "", ("10.1.5.5", 443))]  # noqa: E731
    target = allow.resolve("https://hooks.example.com/x?y=1", getaddrinfo=public)
    assert (target.address, target.host, target.port, target.path) == (
        "93.184.215.14",
        "hooks.example.com",
        443,
        "/x?y=1",
    )
    with pytest.raises(UrlRefused, match=r"10\.9\.9\.9"):
        allow.resolve("https://hooks.example.com/x", getaddrinfo=private)
    assert allow.resolve("https://hooks.example.com/", getaddrinfo=listed).address == "10.1.5.5"
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.1|::1"):
        AllowList.parse(["localhost"]).resolve("http://localhost/")
    with pytest.raises(ValueError):
        AllowList.parse(["not a host"])
    with pytest.raises(UrlRefused, match="off"):
        AllowList.parse([]).check_url("http://127.0.0.1/")


def test_a_requeued_job_is_owed_a_new_delivery(processes, receiver):
    """A failed job's delivery, then POST /jobs/<id>/requeue: when it fails again, a second delivery (a new id)."""
    generator, _worker, _exporter = processes.generator(), processes.worker(), processes.exporter()
    job_id = post_job(generator.base, task="fail", callbackUrl=receiver.url)
    wait_callback(generator.base, job_id, "delivered")
    requeued = requests.post(f"{generator.base}/jobs/{job_id}/requeue", headers=ADMIN, timeout=5)
    assert requeued.status_code == 200, requeued.text
    assert requeued.json()["callback"] == {"status": "pending", "attempts": 0, "lastError": None}
    wait_callback(generator.base, job_id, "delivered")
    assert len(receiver.requests) == 2
    first, second = (r["headers"]["X-Taskqueue-Delivery"] for r in receiver.requests)
    assert first != second and all(json.loads(r["body"])["status"] == "failed" for r in receiver.requests)


def test_the_exporter_refuses_to_send_unsigned_webhooks(processes, app_env):
    """Hosts allowed but no secret: the exporter exits 2 and says why, instead of sending unsigned bodies."""
    env = {**app_env, "TASKQUEUE_WEBHOOK_SECRET": ""}
    exporter = processes.add(Exporter(env, processes.log_dir)).start(wait=False)
    assert exporter.proc.wait(timeout=30) == 2
    assert "TASKQUEUE_WEBHOOK_SECRET is empty" in exporter.log()


def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_at_the_timeout(processes):
    """A receiver that sends its status line one byte every 0.3 s (each read would restart a read timeout): the
    attempt ends within the 1 s timeout (plus a pass), and is retried as a timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[float] = []

    def trickle() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            start = time.monotonic()
            conn.recv(65536)
            with contextlib.suppress(OSError):
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    conn.send(bytes([byte]))
                    time.sleep(0.3)
            held.append(time.monotonic() - start)
            conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    try:
        generator, _worker, _exporter = processes.generator(), processes.worker(), processes.exporter()
        job_id = post_job(generator.base, callbackUrl=f"http://127.0.0.1:{port}/slow")
        c = wait_for(lambda: (c := callback(generator.base, job_id))["attempts"] >= 1 and c, what="the first attempt")
        assert c["status"] == "pending" and c["lastError"].startswith("TimeoutError: no answer within 1 s"), c
        wait_for(lambda: held, what="the receiver to see its connection shut")
        assert held[0] < 2.0, held  # the whole status line would have taken 11 s
    finally:
        server.close()


def test_https_receivers_are_verified_against_the_urls_host(processes, app_env, tmp_path):
    """An HTTPS receiver whose certificate (from a throwaway CA the exporter trusts through SSL_CERT_FILE) names
    127.0.0.1 gets the delivery; without that CA the attempt fails verification and is retried."""
    certs = make_test_ca(tmp_path)
    receiver = Receiver()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    url = receiver.url.replace("http://", "https://")
    try:
        generator, _worker = processes.generator(), processes.worker()
        untrusted = processes.exporter()
        first = post_job(generator.base, callbackUrl=url)
        c = wait_for(lambda: (c := callback(generator.base, first))["attempts"] >= 1 and c, what="an attempt")
        assert c["status"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in c["lastError"], c
        untrusted.stop()
        processes.exporter(env={**app_env, "SSL_CERT_FILE": str(certs["ca"])})
        assert wait_callback(generator.base, first, "delivered")["attempts"] >= 2
        assert json.loads(receiver.requests[-1]["body"])["jobId"] == first
    finally:
        receiver.close()


def test_an_attempt_is_recorded_only_against_the_delivery_and_count_it_was_made_for(redis_client):
    """The outbox's scripts against a real Redis: a settle for an attempt that outlived its lease, or for a job
    requeued meanwhile, writes nothing; an end is made due only if the job still has the status it was read with."""
    from rq.job import Job

    from taskqueue.store import outbox

    redis_client.sadd(outbox.WAITING_KEY, "j1")
    redis_client.hset(Job.key_for("j1"), "status", "queued")  # read as finished, then requeued
    keys = [outbox.WAITING_KEY, Job.key_for("j1"), outbox.record_key("j1"), outbox.DUE_KEY]
    assert redis_client.eval(outbox.MAKE_DUE_SCRIPT, 4, *keys, "j1", "finished", "d", "{}", 1) == 0
    assert redis_client.sismember(outbox.WAITING_KEY, "j1") and redis_client.zcard(outbox.DUE_KEY) == 0
    redis_client.hset(Job.key_for("j1"), "status", "finished")
    assert redis_client.eval(outbox.MAKE_DUE_SCRIPT, 4, *keys, "j1", "finished", "d", "{}", 1) == 1
    assert not redis_client.sismember(outbox.WAITING_KEY, "j1") and redis_client.zcard(outbox.DUE_KEY) == 1

    pipe = redis_client.pipeline()
    outbox.rearm(pipe, "j2")
    pipe.hset(outbox.record_key("j2"), mapping={"url": "http://127.0.0.1/", "task": "noop"})
    pipe.hset(outbox.record_key("j2"), mapping={"delivery": "d1", "body": "{}", "firstAttemptAt": 1})
    pipe.execute()
    assert outbox.settle(redis_client, "j2", "d1", 1, "retry", "HTTP 500", time.time() + 60)
    assert not outbox.settle(redis_client, "j2", "d1", 1, "delivered", "", None)  # a second, late attempt 1
    assert not outbox.settle(redis_client, "j2", "d0", 2, "delivered", "", None)  # another delivery's
    assert outbox.status(redis_client, "j2") == {"status": "pending", "attempts": 1, "lastError": "HTTP 500"}
    assert redis_client.hget(outbox.STATS_KEY, "delivered") is None
