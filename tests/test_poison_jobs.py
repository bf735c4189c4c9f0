"""One bad job must not stall the workers: outcomes that are hard to store, and the error a client reads.

Each case runs a job whose outcome is hostile to store (text UTF-8 cannot encode, a result JSON cannot
hold, megabytes of result or message, a message that forges another exception), then asserts the
invariant: the job ends with a clear outcome, its stored error is bounded, and the same worker takes a
`noop` queued behind it within 2 s, without its RQ loop having quit or restarted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from taskqueue.store.outcomes import ERROR_TEXT_MAX
from tests.conftest import env_for
from tests.support import ROOT, Generator, WorkerProc, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)

NOOP_BOUND = 2.0  # seconds for a noop queued behind the poison to finish
LOOP_ENDED = ("found an unhandled exception", "starting a new worker", "worker loop ended")


@pytest.fixture(scope="module")
def generator(redis_server, tmp_path_factory) -> Iterator[Generator]:
    """One generator for the module: the tests check a worker (a new one each) and the API's answers, not the
    generator's own state; each test flushes Redis (redis_client)."""
    gen = Generator(env_for(redis_server), tmp_path_factory.mktemp("generator")).start()
    yield gen
    gen.kill()


@pytest.fixture
def poison_env(app_env):
    """No retries (each poison fails once), and the checkout importable so the worker loads tests.user_tasks."""
    return {**app_env, "TASKQUEUE_RETRIES": "0", "PYTHONPATH": str(ROOT), "TASKQUEUE_TASK_MODULES": "tests.user_tasks"}


@pytest.fixture(params=["simple", "fork"])
def poison_worker(request, poison_env, tmp_path):
    w = WorkerProc(poison_env, tmp_path, ["--worker-class", request.param]).start()
    yield w
    w.kill()  # the checks are done: no graceful stop to wait for


def assert_still_serving(base: str, worker: WorkerProc) -> None:
    """A noop queued now finishes within NOOP_BOUND, and the worker's RQ loop never quit."""
    queued = time.monotonic()
    r = requests.post(base + "/jobs", json={"task": "noop"}, timeout=2)
    assert r.status_code == 202, r.text
    wait_status(base, r.json()["jobId"], {"finished"}, timeout=NOOP_BOUND)
    assert time.monotonic() - queued <= NOOP_BOUND
    log = worker.log()
    assert not [line for line in log.splitlines() if any(s in line for s in LOOP_ENDED)], log[-2000:]


def stored_error_chars(redis_client, job_id: str) -> int:
    """Characters of the error text stored for the job's latest failure."""
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    return len(job.latest_result().exc_string or "")


@pytest.mark.parametrize(
    "message",
    ["nul \\u0000 and \\u0001", "x\\nValueError: forged", "tab\\tand \\u2028 separator"],
    ids=["nul", "forged-line", "separators"],
)
def test_a_fail_job_with_hostile_text_fails_cleanly_and_the_worker_goes_on(
    generator, poison_worker, redis_client, message
):
    """The API takes the text (it is valid JSON and valid Unicode); the failure is stored and read back as the
    job's own."""
    body = '{"task": "fail", "args": {"message": "' + message + '"}}'  # the escape as a client sends it
    r = requests.post(generator.base + "/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=2)
    assert r.status_code == 202, r.text
    doc = wait_status(generator.base, r.json()["jobId"], {"failed"}, timeout=10)
    # The error is the exception's type and message as the job raised it, not a line of its text.
    assert doc["error"] == "RuntimeError: " + json.loads(f'"{message}"')
    assert_still_serving(generator.base, poison_worker)


@pytest.mark.parametrize(
    "message",
    ["\\ud800", "bad \\udfff tail", "x\\ud83d", "nul \\u0000 and \\ud800\\ud800"],
    ids=["lone-high", "lone-low", "unpaired-end", "nul-and-pairless"],
)
def test_text_that_is_not_unicode_is_refused_at_the_api(generator, redis_client, message):
    """JSON can escape a lone UTF-16 surrogate; no UTF-8 text holds one: a task's string argument refuses it
    (400 naming the argument), one job alone or in a batch, and nothing is enqueued. (Such text from a task's
    own code: test_a_users_job_with_an_outcome_hard_to_store_ends_cleanly.)"""
    one = '{"task": "fail", "args": {"message": "' + message + '"}}'
    batch = '{"jobs": [{"task": "noop"}, ' + one + "]}"
    for path, body in (("/jobs", one), ("/jobs/batch", batch)):
        r = requests.post(generator.base + path, data=body, headers={"Content-Type": "application/json"}, timeout=2)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_task" and r.json()["error"]["field"] == "message"
    assert redis_client.llen("rq:queue:default") == 0


def test_ten_poison_jobs_in_one_batch_do_not_stall_the_worker(generator, poison_worker):
    jobs = [{"task": "fail", "args": {"message": f"poison {i} \x00\nValueError: forged"}} for i in range(10)]
    r = requests.post(generator.base + "/jobs/batch", json={"jobs": jobs}, timeout=2)
    assert r.status_code == 202, r.text
    assert_still_serving(generator.base, poison_worker)
    for job in r.json()["jobs"]:
        assert wait_status(generator.base, job["jobId"], {"failed"}, timeout=5)["error"].startswith("RuntimeError")


@pytest.mark.parametrize(
    ("func", "args", "status", "error"),
    [
        ("return_surrogate", [], "finished", None),
        ("raise_surrogate", [], "failed", "RuntimeError: bad text \udfff and \ud83d"),
        ("raise_unprintable", [], "failed", "UnprintableError: <UnprintableError: message not printable>"),
        ("return_set", [], "failed", "TypeError: Object of type set is not JSON serializable"),
        ("return_large", [70_000], "failed", "ResultTooLarge: the job's result is 70002 bytes of JSON"),
        ("raise_large", [2_000_000], "failed", "RuntimeError: " + "e" * 1000),
        ("raise_forged", [], "failed", "KeyError: 'boom\\nValueError: this line was written by the job'"),
    ],
)
def test_a_users_job_with_an_outcome_hard_to_store_ends_cleanly(
    generator, poison_worker, redis_client, func, args, status, error
):
    """Jobs of a team's own code, enqueued through RQ directly."""
    queue = Queue("default", connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue(f"tests.user_tasks.{func}", *args, job_timeout=30, result_ttl=600, failure_ttl=600)
    doc = wait_status(generator.base, job.id, {"finished", "failed"}, timeout=10)
    assert doc["status"] == status, doc
    if error is None:
        assert doc["result"] == "half a pair: \ud800"  # JSON carried the surrogate there and back
    else:
        assert doc["error"].startswith(error), doc["error"][:200]
        # Every failure's stored text is bounded, however long the job's message.
        assert stored_error_chars(redis_client, job.id) <= ERROR_TEXT_MAX + 1_200
    assert_still_serving(generator.base, poison_worker)
