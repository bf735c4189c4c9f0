"""The seed's API end to end: real gunicorn (2 processes), a real RQ worker, a real redis-server."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.support import Generator, RedisServer, Service, wait_for, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)

SEED_RESULT = "Processed message generating task with delay: 1 after 1 seconds"


def test_seed_flow_start_list_status(generator, worker):
    r = requests.get(generator.base + "/start", params={"delay": 1}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"jobId", "timeOfEnqueue", "message", "statusUrl"}
    job_id = body["jobId"]
    assert body["statusUrl"] == f"/status/{job_id}"
    assert body["timeOfEnqueue"].endswith("Z")
    assert body["message"].startswith("generating task with delay: 1 with id: " + job_id)

    # /list shows it while it runs (the seed's "running job ids").
    listed = wait_for(lambda: (doc := requests.get(generator.base + "/list", timeout=2).json())["jobs"] and doc,
                      timeout=5, what="a job in /list")  # fmt: skip
    assert listed["jobs"] == [job_id] and listed["state"] == "started" and listed["total"] == 1

    doc = wait_status(generator.base, job_id, {"finished"}, timeout=15)
    assert doc["result"] == SEED_RESULT
    assert doc["error"] is None
    assert doc["startedAt"] and doc["endedAt"] and doc["enqueuedAt"]
    assert requests.get(generator.base + "/list", timeout=2).json()["jobs"] == []
    finished = requests.get(generator.base + "/list", params={"state": "finished"}, timeout=2).json()
    assert finished["jobs"] == [job_id] and finished["total"] == 1


def test_random_delay_is_in_seed_bounds(generator, redis_client):
    for _ in range(5):
        body = requests.get(generator.base + "/start", timeout=5).json()
        delay = int(body["message"].split("delay: ")[1].split(" ")[0])
        assert 20 <= delay <= 30


def test_failing_task_consumes_retries_then_fails(generator, worker):
    r = requests.post(generator.base + "/jobs", json={"task": "fail", "args": {"message": "boom"}}, timeout=5)
    assert r.status_code == 202
    assert r.headers["Location"] == r.json()["statusUrl"]
    job_id = r.json()["jobId"]
    doc = wait_status(generator.base, job_id, {"failed"}, timeout=20)
    assert doc["error"] == "RuntimeError: boom"
    assert doc["retriesLeft"] == 0
    # Three attempts as configured (TASKQUEUE_RETRIES=2): two retried, the last failed.
    metrics = requests.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=2).text
    assert 'taskqueue_jobs_completed_total{outcome="retried",queue="default",task="fail"} 2.0' in metrics
    assert 'taskqueue_jobs_completed_total{outcome="failed",queue="default",task="fail"} 1.0' in metrics
    assert doc["result"] is None
    assert "Traceback" not in json.dumps(doc)


def test_cpu_task_runs(generator, worker):
    r = requests.post(generator.base + "/jobs", json={"task": "hash", "args": {"rounds": 1000}}, timeout=5)
    doc = wait_status(generator.base, r.json()["jobId"], {"finished"}, timeout=10)
    assert doc["result"]["rounds"] == 1000 and len(doc["result"]["digest"]) == 64


def test_unknown_job_is_404_json(generator):
    for path in ("/status/no-such-job", "/status/" + "x" * 300, "/jobs/nope"):
        r = requests.get(generator.base + path, timeout=2)
        assert r.status_code == 404
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"]["code"] in {"job_not_found", "not_found"}


def test_request_metrics_label_unknown_methods_other(generator):
    """A client picks the method token: unknown ones must not create new series (bounded cardinality)."""
    for method in ("FROB", "XYZZY"):
        assert requests.request(method, generator.base + "/start", timeout=2).status_code == 405
    requests.get(generator.base + "/start?delay=1", timeout=2)

    def request_series() -> list[str]:
        text = requests.get(f"http://127.0.0.1:{generator.metrics_port}/metrics", timeout=2).text
        return [ln for ln in text.splitlines() if ln.startswith("taskqueue_http_requests_total{")]

    # Request counts are batched in each web process and flushed every 0.5 s (metrics.BATCHED).
    wait_for(lambda: any('route="/start"' in ln and 'status="200"' in ln for ln in request_series()), timeout=5)
    series = request_series()
    assert any('method="other"' in ln and 'status="405"' in ln for ln in series), series
    assert not any("FROB" in ln or "XYZZY" in ln for ln in series)
    assert any('route="/start"' in ln and 'method="GET"' in ln and 'status="200"' in ln for ln in series)


def test_bad_input_is_400_json(generator):
    cases = [
        ("GET", "/start?delay=abc", None),
        ("GET", "/start?delay=-1", None),
        ("GET", "/start?delay=100000", None),
        ("POST", "/jobs", {"task": "os.system", "args": {}}),
        ("POST", "/jobs", {"task": "sleep", "args": {"seconds": "1"}}),
        ("POST", "/jobs", {"task": "sleep", "args": {"seconds": 1, "extra": 2}}),
        ("POST", "/jobs", {"task": "sleep", "args": [1]}),
        ("POST", "/jobs", ["not", "an", "object"]),
        ("POST", "/jobs", {"task": "sleep", "func": "os.system"}),
        ("GET", "/list?state=everything", None),
        ("GET", "/list?limit=0", None),
    ]
    for method, path, body in cases:
        r = requests.request(method, generator.base + path, json=body, timeout=2)
        assert r.status_code == 400, (path, body, r.text)
        assert set(r.json()["error"]) - {"field"} == {"code", "message"}  # field: the argument at fault
    r = requests.post(generator.base + "/jobs", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.post(generator.base + "/jobs", data="task=sleep", timeout=2)
    assert r.status_code == 415
    r = requests.put(generator.base + "/start", timeout=2)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = requests.post(generator.base + "/jobs", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                      headers={"Content-Type": "application/json"}, timeout=5)  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_job_hash_in_redis_is_json_not_pickle(generator, redis_client):
    job_id = requests.get(generator.base + "/start?delay=1", timeout=2).json()["jobId"]
    raw = redis_client.hgetall(f"rq:job:{job_id}")
    data = raw[b"data"]
    # RQ compresses the payload with zlib; inside is JSON (pickle would start with 0x80).
    import zlib

    payload = zlib.decompress(data)
    decoded = json.loads(payload)
    assert decoded[0] == "taskqueue.tasks.builtin.sleep"
    assert decoded[2] == [1]
    assert json.loads(raw[b"meta"]) == {"task": "sleep"}


def test_health_and_readiness(generator):
    assert requests.get(generator.base + "/healthz", timeout=2).json() == {"status": "ok"}
    assert requests.get(generator.base + "/readyz", timeout=2).json() == {"status": "ready"}


def test_redis_down_gives_503_fast_then_recovers(processes):
    server = processes.add(RedisServer()).start()
    gen = processes.generator(env={**server.env()})
    assert requests.get(gen.base + "/start?delay=1", timeout=2).status_code == 200
    server.stop()
    t0 = time.monotonic()
    r = requests.get(gen.base + "/start?delay=1", timeout=5)
    elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert elapsed < 1.0, elapsed
    assert r.json()["error"]["code"] == "redis_unavailable"
    assert int(r.headers["Retry-After"]) > 0
    t0 = time.monotonic()
    ready = requests.get(gen.base + "/readyz", timeout=5)
    assert ready.status_code == 503 and time.monotonic() - t0 < 1.0
    assert requests.get(gen.base + "/healthz", timeout=2).status_code == 200
    # Redis comes back on the same port with its AOF: the generator recovers without a restart.
    server.start()
    wait_for(lambda: requests.get(gen.base + "/readyz", timeout=2).status_code == 200, what="ready again")
    assert requests.get(gen.base + "/start?delay=1", timeout=2).status_code == 200


@pytest.mark.parametrize(
    ("worker_class", "gunicorn_class"), [("gthread", "JsonThreadWorker"), ("sync", "JsonSyncWorker")]
)
def test_the_other_gunicorn_worker_classes_serve_the_seed_api(worker_class, gunicorn_class, app_env, worker, processes):
    """gevent is the default (docs/performance.md); the two others stay selectable and work."""
    gen = processes.generator(env={**app_env, "TASKQUEUE_WEB_WORKER_CLASS": worker_class})
    job_id = requests.get(gen.base + "/start", params={"delay": 0}, timeout=5).json()["jobId"]
    assert wait_status(gen.base, job_id, {"finished"}, timeout=15)["result"].startswith("Processed message")
    assert job_id in requests.get(gen.base + "/list?state=finished", timeout=5).json()["jobs"]
    gen.stop()
    assert f"Using worker: taskqueue.server.workers.{gunicorn_class}" in gen.log()


def test_a_stop_while_the_web_workers_boot_ends_the_generator_at_once(app_env, tmp_path):
    """SIGTERM as soon as gunicorn has forked its workers, before they have set up their signal handlers
    (gevent's patching and the app's imports take a while): every process ends within seconds, not at
    the graceful timeout (20 s)."""
    for _ in range(3):
        gen = Generator(app_env, tmp_path)
        Service.start(gen)  # not Generator.start, which waits for /healthz: the workers are still booting
        wait_for(lambda g=gen: g.log().count("Booting worker") == 2, timeout=15, interval=0.005, what="forks")
        started = time.monotonic()
        assert gen.stop(timeout=30) == 0
        assert time.monotonic() - started < 8, gen.log()
