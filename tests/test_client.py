"""taskqueue.client and the ``taskqueue`` command against the real stack: redis-server, gunicorn, a worker."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from taskqueue.api.errors import RETRY_AFTER_UNAVAILABLE
from taskqueue.client import BacklogFull, BadRequest, Client, NotFound, Unavailable, WaitTimeout
from tests.support import ADMIN_TOKEN, BIN, ROOT, RedisServer, free_port


@pytest.fixture
def team_env(app_env):
    return {**app_env, "PYTHONPATH": str(ROOT), "TASKQUEUE_TASK_MODULES": "tests.team_tasks"}


def test_the_client_enqueues_waits_reads_lists_and_cancels(team_env, processes):
    gen = processes.generator(env=team_env)
    client = Client(gen.base, token=ADMIN_TOKEN)
    assert {t["name"] for t in client.tasks()} >= {"sleep", "team.summarize"}
    waiting = client.enqueue("sleep", seconds=30)  # no worker yet: it waits in the queue
    assert client.status(waiting)["status"] == "queued"
    assert client.cancel(waiting)["status"] == "canceled"
    processes.worker(env=team_env)
    job_id = client.enqueue("team.summarize", values=[1, 2, 6], statistic="max")
    polls: list[str] = []
    doc = client.wait(job_id, timeout=15, on_poll=lambda d, _elapsed: polls.append(d["status"]))
    assert doc["status"] == "finished" and doc["result"]["max"] == 6.0 and polls[-1] == "finished"
    first, second = client.enqueue_many([("noop", {}), ("hash", {"rounds": 3})])
    assert client.wait(second, timeout=15)["result"]["rounds"] == 3
    assert client.wait(first, timeout=15)["status"] == "finished"
    with pytest.raises(BadRequest) as bad:
        client.enqueue("team.summarize", values=[1], digits=True)
    assert (bad.value.status, bad.value.code, bad.value.field) == (400, "invalid_task", "digits")
    with pytest.raises(NotFound):
        client.status("0" * 32)
    slow = client.enqueue("sleep", seconds=5)
    with pytest.raises(WaitTimeout) as late:
        client.wait(slow, timeout=0.5)
    assert late.value.status["status"] in {"queued", "started"}


def test_enqueue_honours_retry_after_on_429_and_enqueues_once(app_env, processes, redis_client):
    gen = processes.generator(env={**app_env, "TASKQUEUE_MAX_BACKLOG": "1"})
    client = Client(gen.base)
    client.enqueue("noop")
    with pytest.raises(BacklogFull) as full:
        client.enqueue("noop")  # not asked to retry: at once
    assert full.value.retry_after == 10
    # Asked to retry: a worker drains the queue meanwhile; the next try after Retry-After gets in.
    threading.Timer(0.5, lambda: processes.worker(env=app_env)).start()
    started = time.monotonic()
    job_id = client.enqueue("hash", rounds=1, retry_for=25)
    assert time.monotonic() - started >= 10  # it waited the Retry-After, not less
    assert client.wait(job_id, timeout=15)["status"] == "finished"
    # Every try carried one Idempotency-Key: one hash job, however many tries.
    described = [redis_client.hget(k, "description") for k in redis_client.scan_iter("rq:job:*")]
    assert sum(d.startswith(b"taskqueue.tasks.builtin.hash_chain(") for d in described) == 1


def test_enqueue_raises_unavailable_while_redis_is_down(processes):
    server = processes.add(RedisServer()).start()
    gen = processes.generator(env=server.env())
    client = Client(gen.base)
    client.enqueue("noop")
    server.stop()
    with pytest.raises(Unavailable) as down:
        client.enqueue("noop")
    got = (down.value.status, down.value.code, down.value.retry_after)
    assert got == (503, "redis_unavailable", RETRY_AFTER_UNAVAILABLE)
    with pytest.raises(Unavailable):
        client.enqueue("noop", retry_for=1)  # a shorter wish than the Retry-After: no retry, the error


def run_cli(base: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "taskqueue"), "--url", base, *args], capture_output=True, text=True, timeout=timeout
    )


def test_the_command_enqueues_waits_with_progress_and_reports_errors(team_env, processes):
    gen, _ = processes.generator(env=team_env), processes.worker(env=team_env)
    tasks = run_cli(gen.base, "tasks")
    assert tasks.returncode == 0 and "team.summarize" in {t["name"] for t in json.loads(tasks.stdout)}
    done = run_cli(gen.base, "enqueue", "team.summarize", "values=[1, 2.5]", "label=two numbers", "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"label": "two numbers", "mean": 1.75, "count": 2, "tags": []}
    assert done.stderr.splitlines()[-1].startswith("finished after ")  # the progress lines
    job_id = run_cli(gen.base, "enqueue", "sleep", "seconds=1").stdout.strip()
    waited = run_cli(gen.base, "wait", job_id)
    assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "finished"
    assert json.loads(run_cli(gen.base, "status", job_id).stdout)["result"].startswith("Processed message")
    failed = run_cli(gen.base, "enqueue", "fail", "message=on purpose", "--wait")
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "failed"
    bad = run_cli(gen.base, "enqueue", "sleep", "seconds=true")
    assert bad.returncode == 2 and json.loads(bad.stderr)["error"]["field"] == "seconds"
    gone = run_cli(f"http://127.0.0.1:{free_port()}", "tasks")
    assert gone.returncode == 2 and json.loads(gone.stderr)["error"]["code"] == "unreachable"
