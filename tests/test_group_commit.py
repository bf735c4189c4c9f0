"""Group commit: concurrent enqueues share a Redis call, each caller gets its own job or error.

The first tests drive :class:`GroupCommit` with real threads and a send function that records its
calls (it is our own concurrency code, so nothing is mocked); the last ones go through gunicorn's
gevent workers and a real Redis, paused with CLIENT PAUSE so that requests pile up behind a call.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time

import pytest
import requests

from taskqueue.fastpath.group_commit import GroupCommit
from tests.support import Generator, wait_for


class Recorder:
    """A send function: records each call's items; the first call waits for ``gate`` if given."""

    def __init__(self, gate: threading.Event | None = None, fail_on: object = None, error: Exception | None = None):
        self.calls: list[list] = []
        self.gate = gate
        self.fail_on = fail_on
        self.error = error
        self.in_call = threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        self.in_call.set()
        if self.gate is not None and len(self.calls) == 1:
            assert self.gate.wait(10)
        if self.fail_on in items:
            raise self.error or ConnectionError(f"lost the connection carrying {self.fail_on}")
        return [f"result-{item}" for item in items]


def _queued(commit: GroupCommit, n: int) -> None:
    """Wait until ``n`` callers are queued behind the call in flight."""
    wait_for(lambda: len(commit._waiting) >= n, timeout=5, what=f"{n} waiting callers")


def test_a_lone_caller_sends_at_once_and_gets_its_result():
    send = Recorder()
    commit = GroupCommit(send)
    assert commit.submit("a") == "result-a"
    assert commit.submit("b") == "result-b"
    assert send.calls == [["a"], ["b"]]


def test_callers_arriving_during_a_call_go_together_in_the_next_in_arrival_order():
    gate = threading.Event()
    send = Recorder(gate)
    commit = GroupCommit(send)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(commit.submit, 0)
        assert send.in_call.wait(5)
        rest = []
        for i in range(1, 6):
            rest.append(pool.submit(commit.submit, i))
            _queued(commit, i)  # one at a time, so the arrival order is known
        gate.set()
        assert first.result(5) == "result-0"
        assert [f.result(5) for f in rest] == [f"result-{i}" for i in range(1, 6)]
    assert send.calls == [[0], [1, 2, 3, 4, 5]]


class GatedStep:
    """A ``before_batch`` step: records each run; the first waits for ``gate`` (or raises ``error`` then)."""

    def __init__(self, gate: threading.Event, error: BaseException | None = None):
        self.runs = 0
        self.gate = gate
        self.error = error
        self.in_step = threading.Event()

    def __call__(self):
        self.runs += 1
        if self.runs == 1:
            self.in_step.set()
            assert self.gate.wait(10)
            if self.error is not None:
                raise self.error


def _started(fn, *args) -> concurrent.futures.Future:
    """``fn(*args)`` in a daemon thread: a caller a bug leaves waiting fails its test rather than hang the run."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run():
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the test, KeyboardInterrupt included
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def test_callers_arriving_during_the_step_before_a_batch_go_in_that_batch():
    """What the step is for: it lets others run (under gevent, a turn of the loop) before the batch is taken."""
    gate, send = threading.Event(), Recorder()
    step = GatedStep(gate)
    commit = GroupCommit(send, before_batch=step)
    first = _started(commit.submit, 0)
    assert step.in_step.wait(5)
    rest = []
    for i in range(1, 4):
        rest.append(_started(commit.submit, i))
        _queued(commit, i + 1)  # behind the sender, which is still in line during its step
    gate.set()
    assert [f.result(5) for f in [first, *rest]] == [f"result-{i}" for i in range(4)]
    assert send.calls == [[0, 1, 2, 3]] and step.runs == 1
    assert commit.submit(4) == "result-4" and step.runs == 2  # one step a call, a lone caller's too


def test_a_sender_failing_in_its_step_leaves_the_line_and_the_next_caller_sends():
    """Killed in the step (gevent), or the step failed: that caller raises, the others are served."""
    gate, send = threading.Event(), Recorder()
    step = GatedStep(gate, KeyboardInterrupt())
    commit = GroupCommit(send, before_batch=step)
    leader = _started(commit.submit, "leader")
    assert step.in_step.wait(5)
    followers = []
    for i in range(2):
        followers.append(_started(commit.submit, f"f{i}"))
        _queued(commit, i + 2)  # in a known order
    gate.set()
    with pytest.raises(KeyboardInterrupt):
        leader.result(5)
    assert [f.result(5) for f in followers] == ["result-f0", "result-f1"]
    assert send.calls == [["f0", "f1"]]  # the leader's item was never sent
    assert commit.submit("after") == "result-after" and not commit._waiting


class Uncopyable(Exception):
    """An exception whose __init__ does not take its own args: copy.copy() cannot rebuild it."""

    def __init__(self, message: str, *, code: int):
        super().__init__(message)
        self.code = code


@pytest.mark.parametrize(
    ("error", "raised", "match"),
    [
        (None, ConnectionError, "carrying bad"),
        (Uncopyable("bad reply", code=7), Uncopyable, "bad reply"),  # reaches every caller as it is
    ],
)
def test_every_caller_of_a_failed_batch_gets_the_error_and_the_next_batch_still_goes(error, raised, match):
    gate = threading.Event()
    send = Recorder(gate, fail_on="bad", error=error)
    commit = GroupCommit(send)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(commit.submit, "first")
        assert send.in_call.wait(5)
        batch = [pool.submit(commit.submit, item) for item in ("x", "bad", "y")]
        _queued(commit, 3)
        gate.set()
        assert first.result(5) == "result-first"
        for f in batch:
            with pytest.raises(raised, match=match):
                f.result(5)
    assert commit.submit("after") == "result-after"  # the turn was passed on, not left taken
    assert send.calls[-1] == ["after"]


def test_a_batch_is_at_most_max_batch_items():
    gate = threading.Event()
    send = Recorder(gate)
    commit = GroupCommit(send, max_batch=2)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(commit.submit, 0)]
        assert send.in_call.wait(5)
        for i in range(1, 6):
            futures.append(pool.submit(commit.submit, i))
            _queued(commit, i)
        gate.set()
        assert [f.result(5) for f in futures] == [f"result-{i}" for i in range(6)]
    assert send.calls == [[0], [1, 2], [3, 4], [5]]


def test_a_sender_interrupted_by_a_base_exception_keeps_it_and_its_batch_gets_an_error():
    entered, gate = threading.Event(), threading.Event()

    def send(items):
        if items == ["leader"]:
            entered.set()
            assert gate.wait(5)
            raise KeyboardInterrupt  # e.g. a signal landing in the sending thread
        return [f"result-{item}" for item in items]

    commit = GroupCommit(send)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        leader = pool.submit(commit.submit, "leader")
        assert entered.wait(5)
        follower = pool.submit(commit.submit, "follower")
        _queued(commit, 1)
        gate.set()
        with pytest.raises(KeyboardInterrupt):
            leader.result(5)
        assert follower.result(5) == "result-follower"  # it was in the next batch, which went fine


def second_call_raises(error: BaseException, gate: threading.Event, calls: list[list]):
    """A send function: its first call waits for ``gate``, its second raises ``error``."""

    def send(items):
        calls.append(list(items))
        if len(calls) == 1:
            assert gate.wait(5)
            return ["result-first"]
        if len(calls) == 2:
            raise error
        return [f"result-{item}" for item in items]

    return send


def test_a_follower_in_an_interrupted_batch_gets_a_runtime_error():
    gate, calls = threading.Event(), []
    commit = GroupCommit(second_call_raises(KeyboardInterrupt(), gate, calls))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(commit.submit, "first")
        wait_for(lambda: calls, timeout=5, what="the first call")
        second = pool.submit(commit.submit, "second")
        _queued(commit, 1)
        third = pool.submit(commit.submit, "third")
        _queued(commit, 2)
        gate.set()
        assert first.result(5) == "result-first"
        with pytest.raises(KeyboardInterrupt):
            second.result(5)  # the sender of batch 2 keeps its interrupt
        with pytest.raises(RuntimeError, match="interrupted"):
            third.result(5)
    assert calls[1] == ["second", "third"]


# A gevent program (as in gunicorn's gevent workers): a caller waiting in line is killed, once while
# it waits and once after it was given the turn to send; the others still get their results and
# the next call goes out. Before the fix, a killed caller that had been given the turn kept it forever.
GEVENT_KILLED_WAITER = r"""
from gevent import monkey; monkey.patch_all()
import gevent, gevent.event
from taskqueue.fastpath.group_commit import GroupCommit

gate, calls = gevent.event.Event(), []
def send(items):
    calls.append(list(items))
    if len(calls) == 1:
        gate.wait()
    return [f"r-{i}" for i in items]

commit = GroupCommit(send)
leader = gevent.spawn(commit.submit, "leader"); gevent.sleep(0.05)
killed_in_line = gevent.spawn(commit.submit, "killed-in-line"); gevent.sleep(0.01)
next_sender = gevent.spawn(commit.submit, "next-sender"); gevent.sleep(0.01)
killed_in_line.kill()
# The hub resumes the leader first (callbacks run in order): it hands the turn to next-sender,
# then the kill lands in next-sender before it wakes up.
gate.set()
next_sender.kill(block=False)
assert leader.get(timeout=5) == "r-leader"
with gevent.Timeout(5):
    assert commit.submit("after") == "r-after"
assert calls == [["leader"], ["after"]], calls
print("OK", calls)
"""


def test_a_killed_waiting_caller_takes_itself_out_of_line_and_passes_its_turn_on():
    out = subprocess.run([sys.executable, "-c", GEVENT_KILLED_WAITER], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stdout + out.stderr


# -- through gunicorn (gevent) and a real Redis -----------------------------------------------------


def _held(client) -> bool:
    """A client of Redis waits in an EVALSHA (the pause holds it)."""
    return any(c.get("cmd") == "evalsha" for c in client.client_list())


def _connections_to(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (the server's ends, from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if int(r[1].rsplit(":", 1)[1], 16) == port and r[3] == "01")


def _evalsha_calls(client) -> int:
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_concurrent_starts_share_redis_calls_and_each_gets_its_own_job(app_env, tmp_path, redis_client):
    env = {**app_env, "TASKQUEUE_MAX_BACKLOG": "0", "TASKQUEUE_REDIS_TIMEOUT": "10"}
    gen = Generator(env, tmp_path, web_workers=1).start()
    try:
        requests.get(gen.base + "/start?delay=1", timeout=5).raise_for_status()  # the script is loaded
        redis_client.config_resetstat()
        n = 30
        # Redis holds writes (well within the client's timeout) until every request has been sent:
        # the first request's script call waits, the others queue up behind it.
        redis_client.execute_command("CLIENT", "PAUSE", 8000, "WRITE")
        try:
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                futures = [pool.submit(requests.get, gen.base + "/start?delay=1", timeout=20) for _ in range(n)]
                wait_for(lambda: _held(redis_client) and _connections_to(gen.port) >= n, timeout=7,
                         what="every request's connection open and the first script call held by Redis")  # fmt: skip
                redis_client.execute_command("CLIENT", "UNPAUSE")
                replies = [f.result() for f in futures]
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
        assert [r.status_code for r in replies] == [200] * n
        ids = [r.json()["jobId"] for r in replies]
        assert len(set(ids)) == n
        queued = {i.decode() for i in redis_client.lrange("rq:queue:default", 0, -1)}
        assert set(ids) <= queued
        for job_id in ids:
            assert redis_client.hget(f"rq:job:{job_id}", "status") == b"queued"
        calls = _evalsha_calls(redis_client)
        assert 2 <= calls <= n // 3, f"{calls} script calls for {n} concurrent requests"
    finally:
        gen.stop()
    assert "Using worker: taskqueue.server.workers.FairGeventWorker" in gen.log()  # the default, gevent


def test_a_redis_outage_answers_every_waiting_request_with_503(app_env, tmp_path, redis_server, redis_client):
    gen = Generator({**app_env, "TASKQUEUE_REDIS_TIMEOUT": "0.5"}, tmp_path, web_workers=1).start()
    try:
        requests.get(gen.base + "/start?delay=1", timeout=5).raise_for_status()
        # Writes held for longer than the client's timeout and its retries, for two batches in a row.
        redis_client.execute_command("CLIENT", "PAUSE", 6000, "WRITE")
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(lambda _: requests.get(gen.base + "/start?delay=1", timeout=15), range(10)))
        assert {r.status_code for r in replies} == {503}, [r.text for r in replies]
        assert all(r.json()["error"]["code"] == "redis_unavailable" for r in replies)
        assert time.monotonic() - t0 < 10
        redis_client.execute_command("CLIENT", "UNPAUSE")
        wait_for(lambda: requests.get(gen.base + "/start?delay=1", timeout=5).status_code == 200, timeout=10,
                 what="enqueue after the outage")  # fmt: skip
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
        gen.stop()
