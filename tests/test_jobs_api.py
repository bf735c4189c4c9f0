"""Job routes beyond the seed: cancel, requeue, idempotency, batch, backpressure, listing."""

from __future__ import annotations

import concurrent.futures
import re
import time

import pytest
import requests

from tests.support import ADMIN, WorkerProc, running, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)


def test_cancel_queued_job_and_conflicts(generator):
    job_id = requests.get(generator.base + "/start?delay=1", timeout=2).json()["jobId"]
    r = requests.delete(f"{generator.base}/jobs/{job_id}", headers=ADMIN, timeout=2)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    again = requests.delete(f"{generator.base}/jobs/{job_id}", headers=ADMIN, timeout=2)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_job_state"
    assert requests.delete(f"{generator.base}/jobs/unknown", headers=ADMIN, timeout=2).status_code == 404
    listed = requests.get(generator.base + "/list?state=canceled", timeout=2).json()
    assert listed["jobs"] == [job_id]


def test_requeue_failed_job(generator, worker):
    job_id = requests.post(generator.base + "/jobs", json={"task": "fail"}, timeout=2).json()["jobId"]
    wait_status(generator.base, job_id, {"failed"}, timeout=20)
    r = requests.post(f"{generator.base}/jobs/{job_id}/requeue", headers=ADMIN, timeout=2)
    assert r.status_code == 200
    assert wait_status(generator.base, job_id, {"failed"}, timeout=20)["error"] == "RuntimeError: requested failure"
    ok = requests.get(generator.base + "/start?delay=0", timeout=2).json()["jobId"]
    wait_status(generator.base, ok, {"finished"}, timeout=10)
    r = requests.post(f"{generator.base}/jobs/{ok}/requeue", headers=ADMIN, timeout=2)
    assert r.status_code == 409


def test_a_requeued_canceled_job_leaves_the_canceled_registry(generator, redis_client, app_env, tmp_path):
    job_id = requests.get(generator.base + "/start?delay=0", timeout=2).json()["jobId"]
    assert requests.delete(f"{generator.base}/jobs/{job_id}", headers=ADMIN, timeout=2).json()["status"] == "canceled"
    r = requests.post(f"{generator.base}/jobs/{job_id}/requeue", headers=ADMIN, timeout=2)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    for state in ("canceled", "failed"):
        listed = requests.get(f"{generator.base}/list?state={state}", timeout=2).json()
        assert listed["total"] == 0, (state, listed)
    with running(WorkerProc(app_env, tmp_path).start()):
        wait_status(generator.base, job_id, {"finished"}, timeout=10)
    assert requests.get(generator.base + "/list?state=canceled", timeout=2).json()["total"] == 0


def test_concurrent_requeues_of_a_job_queue_it_once(generator, redis_client):
    job_id = requests.get(generator.base + "/start?delay=0", timeout=2).json()["jobId"]
    assert requests.delete(f"{generator.base}/jobs/{job_id}", headers=ADMIN, timeout=2).json()["status"] == "canceled"

    def requeue(_):
        return requests.post(f"{generator.base}/jobs/{job_id}/requeue", headers=ADMIN, timeout=5).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(requeue, range(8)))
    assert sorted(statuses) == [200] + [409] * 7, statuses
    assert redis_client.lrange("rq:queue:default", 0, -1) == [job_id.encode()]


def test_idempotency_key_returns_same_job_under_concurrency(generator, redis_client):
    def post(_):
        return requests.post(generator.base + "/jobs", json={"task": "noop"},
                             headers={"Idempotency-Key": "order-42"}, timeout=5)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(16)))
    ids = {r.json()["jobId"] for r in responses}
    assert len(ids) == 1
    assert all(r.status_code == 202 for r in responses)
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 15
    assert redis_client.llen("rq:queue:default") == 1
    s1 = requests.get(generator.base + "/start?delay=1", headers={"Idempotency-Key": "s"}, timeout=2).json()
    s2 = requests.get(generator.base + "/start?delay=1", headers={"Idempotency-Key": "s"}, timeout=2).json()
    assert s1["jobId"] == s2["jobId"]
    bad = requests.post(generator.base + "/jobs", json={"task": "noop"}, headers={"Idempotency-Key": "x" * 200})
    assert bad.status_code == 400


START, JOBS = ("GET", "/start", None), "/jobs"
HASH10, HASH11 = '{"task": "hash", "args": {"rounds": 10}}', '{"task": "hash", "args": {"rounds": 11}}'


@pytest.mark.parametrize(
    ("first", "second", "replayed"),
    [
        (("POST", JOBS, '{"task": "noop"}'), ("POST", JOBS, HASH10), False),
        (("POST", JOBS, HASH10), ("POST", JOBS, HASH11), False),
        (("GET", "/start?delay=1", None), ("GET", "/start?delay=2", None), False),
        (("POST", JOBS, '{"task": "sleep", "args": {"seconds": 1}}'), ("GET", "/start?delay=1", None), False),
        (("GET", "/start?delay=1", None), ("GET", "/start?delay=1&delay=1", None), False),
        (START, START, True),  # the seed's /start: a random delay each time, the same request
        (("POST", JOBS, HASH10), ("POST", JOBS, '{"args": {"rounds": 10}, "task": "hash"}'), True),
    ],
    ids=["other-task", "other-args", "other-delay", "other-route", "other-query", "seed-start", "same-json"],
)  # fmt: skip
def test_an_idempotency_key_answers_only_the_request_it_was_first_used_with(
    generator, redis_client, first, second, replayed
):
    """Like the payment APIs: the same key with another request is refused (409), never the first request's job."""

    def send(method: str, path: str, body: str | None) -> requests.Response:
        headers = {"Idempotency-Key": "order-7", "Content-Type": "application/json"}
        return requests.request(method, generator.base + path, data=body, headers=headers, timeout=5)

    r1 = send(*first)
    assert r1.status_code in (200, 202), r1.text
    r2 = send(*second)
    if replayed:
        assert r2.status_code == r1.status_code and r2.json()["jobId"] == r1.json()["jobId"]
        assert r2.headers["Idempotent-Replayed"] == "true"
    else:
        assert r2.status_code == 409, r2.text
        assert r2.json()["error"]["code"] == "idempotency_key_reused"
        assert "Retry-After" not in r2.headers  # it can never succeed: a new key is needed
    assert redis_client.llen("rq:queue:default") == 1  # one job, whatever the second request was
    assert send(*first).json()["jobId"] == r1.json()["jobId"]  # the first request still replays


def test_batch_enqueue_in_one_request(generator, worker, redis_client):
    jobs = [{"task": "noop"} for _ in range(50)] + [{"task": "hash", "args": {"rounds": 10}}]
    r = requests.post(generator.base + "/jobs/batch", json={"jobs": jobs}, timeout=5)
    assert r.status_code == 202
    body = r.json()
    assert body["count"] == 51 and len({j["jobId"] for j in body["jobs"]}) == 51
    wait_status(generator.base, body["jobs"][-1]["jobId"], {"finished"}, timeout=15)
    too_many = requests.post(generator.base + "/jobs/batch", json={"jobs": [{"task": "noop"}] * 1001}, timeout=5)
    assert too_many.status_code == 400
    one_bad = requests.post(generator.base + "/jobs/batch", json={"jobs": [{"task": "noop"}, {"task": "rm"}]})
    assert one_bad.status_code == 400
    assert redis_client.llen("rq:queue:default") == 0  # nothing of a rejected batch was enqueued


def test_backlog_limit_answers_429(app_env, redis_client, processes):
    gen = processes.generator(env={**app_env, "TASKQUEUE_MAX_BACKLOG": "3"})
    codes = [requests.get(gen.base + "/start?delay=1", timeout=2).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = requests.get(gen.base + "/start?delay=1", timeout=2)
    assert r.json()["error"]["code"] == "backlog_full" and int(r.headers["Retry-After"]) > 0
    assert redis_client.llen("rq:queue:default") == 3
    batch = requests.post(gen.base + "/jobs/batch", json={"jobs": [{"task": "noop"}] * 2}, timeout=2)
    assert batch.status_code == 429


def test_backlog_check_reads_the_queue_length_rarely_far_from_the_limit_and_always_near_it(app_env, redis_client):
    """/start's backlog check: no LLEN per request far from the limit; exact within the margin."""
    from taskqueue import config as config_module
    from taskqueue.api.jobs import BACKLOG_MARGIN, CAPACITY_READ_EVERY, BacklogFull, JobRequest, JobService
    from taskqueue.store.connection import connect
    from taskqueue.tasks import load

    limit = 10 * BACKLOG_MARGIN
    cfg = config_module.load(environ={**app_env, "TASKQUEUE_MAX_BACKLOG": str(limit)})
    svc, noop = JobService(cfg, connect(cfg)), JobRequest(load()["noop"], [])
    redis_client.config_resetstat()
    for _ in range(50):  # well under 0.1 s a request here: a handful of reads, not 50
        svc.enqueue(noop)
    assert redis_client.info("commandstats")["cmdstat_llen"]["calls"] < 50
    # Other processes fill the queue behind this one's back: seen within CAPACITY_READ_EVERY, and
    # near the limit every request reads the length.
    redis_client.rpush("rq:queue:default", *[f"other-{i}" for i in range(limit - 50 - 1)])
    time.sleep(CAPACITY_READ_EVERY + 0.05)
    svc.enqueue(noop)
    assert redis_client.llen("rq:queue:default") == limit
    with pytest.raises(BacklogFull):
        svc.enqueue(noop)


def test_list_pagination(generator):
    ids = [requests.get(generator.base + "/start?delay=1", timeout=2).json()["jobId"] for _ in range(5)]
    page = requests.get(generator.base + "/list?state=queued&offset=1&limit=2", timeout=2).json()
    assert page == {"jobs": ids[1:3], "state": "queued", "total": 5, "offset": 1, "limit": 2}


def test_status_urls_follow_the_apps_mount_point(app_env):
    """Behind a proxy that mounts the API under a prefix (SCRIPT_NAME), statusUrl and Location carry it.

    In-process (Flask's test client, real Redis): gunicorn sets SCRIPT_NAME the same way from the env.
    """
    from taskqueue import config as config_module
    from taskqueue.api.app import create_app

    client = create_app(config_module.load(environ=app_env)).test_client()
    for prefix in ("", "/tq"):
        mounted = f"http://localhost{prefix}"  # the test client's SCRIPT_NAME
        one = client.get("/start?delay=1", base_url=mounted)
        assert one.json["statusUrl"] == one.headers["Location"] == f"{prefix}/status/{one.json['jobId']}"
        batch = client.post("/jobs/batch", json={"jobs": [{"task": "noop"}]}, base_url=mounted)
        (job,) = batch.json["jobs"]
        assert job["statusUrl"] == f"{prefix}/status/{job['jobId']}"
        assert client.get(job["statusUrl"].removeprefix(prefix), base_url=mounted).status_code == 200


def test_an_empty_query_string_is_no_query(app_env):
    """``/start?`` and ``/list?`` answer as ``/start`` and ``/list`` do (the parameters' defaults)."""
    from taskqueue import config as config_module
    from taskqueue.api.app import create_app

    cfg = config_module.load(environ=app_env)
    client = create_app(cfg).test_client()
    started = client.get("/start?")
    assert started.status_code == 200
    delay = int(re.search(r"delay: (\d+) with id", started.json["message"])[1])  # the seed's message
    assert cfg.delay_min <= delay <= cfg.delay_max
    assert client.get("/list?").json == client.get("/list").json
    assert client.get("/list?limit=0").status_code == client.get("/start?delay=x").status_code == 400
