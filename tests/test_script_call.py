"""taskqueue.script_call.OwnConnectionScript: a script called on a connection of its own, and
redis-py's path for whatever that connection cannot finish.

Real redis-server, the generator's kind of client (redis-py retries twice). Calls that take redis-py's
path are counted by wrapping ``Script.__call__``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from redis.commands.core import Script
from redis.exceptions import ConnectionError, TimeoutError

from taskqueue.fastpath.script_call import OwnConnectionScript
from taskqueue.store.connection import connect

# Appends its argument to a list and returns the list's length; does nothing when the marker key
# exists (as the enqueue script does for a job that exists), so a retry of a call that ran is harmless.
APPEND_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1')
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


@pytest.fixture
def client(cfg):
    c = connect(cfg)
    yield c
    c.close()


@pytest.fixture
def redis_py_calls(monkeypatch):
    """The calls that went through redis-py's ``Script.__call__``."""
    calls = []
    real = Script.__call__

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("args"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Script, "__call__", counted)
    return calls


def call(script: OwnConnectionScript, n: int):
    return script(keys=["list", f"marker-{n}"], args=[f"item-{n}"])


def test_calls_go_over_its_own_connection_and_give_the_scripts_replies(client, redis_client, redis_py_calls):
    script = OwnConnectionScript(client.register_script(APPEND_ONCE))
    assert call(script, 1) == 1
    assert redis_py_calls == [["item-1"]]  # the script is not in Redis yet (NOSCRIPT): redis-py loads it
    redis_py_calls.clear()
    assert [call(script, n) for n in range(2, 6)] == [2, 3, 4, 5]
    assert redis_py_calls == []
    assert redis_client.lrange("list", 0, -1) == [f"item-{n}".encode() for n in range(1, 6)]
    pool = client.connection_pool
    assert script._conn is not None and script._conn not in pool._available_connections + list(pool._in_use_connections)


def test_repeat_arguments_go_to_redis_pys_path_only(client, redis_client, redis_py_calls):
    """Its own connection makes one attempt, never a repeat; redis-py's path, which may repeat a call
    whose reply it lost, gets the arguments ``as_repeat`` makes (a script's check that it has run already)."""
    script = OwnConnectionScript(client.register_script("return ARGV[1]"), as_repeat=lambda args: ["again"])
    assert script(keys=[], args=["first"]) == b"again"  # NOSCRIPT: redis-py's path
    assert script(keys=[], args=["first"]) == b"first"  # its own connection
    with script._lock:  # busy, as with a concurrent call: redis-py's path
        assert script(keys=[], args=["first"]) == b"again"
    assert redis_py_calls == [["again"], ["again"]]


def test_a_redis_that_forgot_the_script_gets_it_through_redis_py(client, redis_client, redis_py_calls):
    script = OwnConnectionScript(client.register_script(APPEND_ONCE))
    assert call(script, 1) == 1
    redis_py_calls.clear()
    redis_client.script_flush()  # a restarted Redis
    assert call(script, 2) == 2
    assert redis_py_calls == [["item-2"]]  # NOSCRIPT on its own connection: redis-py's path loaded it
    assert call(script, 3) == 3 and len(redis_py_calls) == 1


def test_a_lost_connection_is_retried_by_redis_py_and_runs_the_script_once(client, redis_client, redis_py_calls):
    script = OwnConnectionScript(client.register_script(APPEND_ONCE))
    call(script, 1)
    redis_py_calls.clear()
    redis_client.client_kill_filter(_type="normal", skipme=True)  # drops its own connection
    assert call(script, 2) == 2
    assert redis_py_calls == [["item-2"]] and redis_client.lrange("list", 0, -1) == [b"item-1", b"item-2"]
    assert call(script, 3) == 3 and len(redis_py_calls) == 1  # reconnected: its own connection again


def test_an_unreachable_redis_costs_one_attempt_more_than_redis_pys_retries(redis_py_calls):
    """Connects time out (a listener whose backlog is full): its own connection tries once, with no
    retries of its own, then redis-py's path tries as configured (three attempts) and raises."""
    from taskqueue import config as config_module

    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(listener.getsockname())  # the backlog's one place, taken
    port = listener.getsockname()[1]
    env = {"TASKQUEUE_REDIS_URL": f"redis://127.0.0.1:{port}/0", "TASKQUEUE_REDIS_TIMEOUT": "0.2"}
    down = connect(config_module.load(environ=env))
    script = OwnConnectionScript(down.register_script(APPEND_ONCE))
    attempts = []
    connection_class = type(script._connection())
    real = connection_class._connect

    def counted(conn):
        attempts.append(conn is script._conn)
        return real(conn)

    try:
        connection_class._connect = counted
        with pytest.raises((ConnectionError, TimeoutError)):
            call(script, 1)
    finally:
        connection_class._connect = real
        down.close()
        filler.close()
        listener.close()
    assert attempts == [True, False, False, False] and redis_py_calls == [["item-1"]]


def test_a_call_that_times_out_is_retried_by_redis_py_and_runs_once(client, redis_client, redis_py_calls):
    """Redis holds writes longer than the client's timeout (1 s): the own connection's call times
    out, redis-py's path retries until Redis answers; the script runs once."""
    script = OwnConnectionScript(client.register_script(APPEND_ONCE))
    call(script, 1)
    redis_py_calls.clear()
    redis_client.execute_command("CLIENT", "PAUSE", 1300, "WRITE")
    started = time.monotonic()
    assert call(script, 2) == 2
    assert 1.0 <= time.monotonic() - started < 5
    assert redis_py_calls == [["item-2"]] and redis_client.lrange("list", 0, -1) == [b"item-1", b"item-2"]


def test_a_call_interrupted_before_its_reply_does_not_leave_it_to_the_next(client, redis_client, monkeypatch):
    """A killed greenlet or a signal between the send and the read: the connection is dropped, so the
    next call reads its own reply, not the interrupted one's. The interruption is injected into the
    connection's read."""
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) in (b"warm", "warm")
    conn = script._conn

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conn, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        script(keys=[], args=["first"])
    monkeypatch.undo()
    assert script(keys=[], args=["second"]) == b"second"


def test_a_second_caller_meanwhile_takes_redis_pys_path(client, redis_client, redis_py_calls):
    """Calls come one at a time from the group commit, but a call with an Idempotency-Key does not
    wait for it: while the own connection is busy, redis-py's pooled path serves."""
    script = OwnConnectionScript(client.register_script(APPEND_ONCE))
    call(script, 1)
    redis_py_calls.clear()
    in_call, release = threading.Event(), threading.Event()
    conn = script._conn
    real_read = conn.read_response

    def slow_read(*args, **kwargs):
        in_call.set()
        release.wait(5)
        return real_read(*args, **kwargs)

    conn.read_response = slow_read
    results = {}
    first = threading.Thread(target=lambda: results.update(first=call(script, 2)))
    first.start()
    assert in_call.wait(5)
    results["second"] = call(script, 3)  # the own connection is busy
    release.set()
    first.join(5)
    del conn.read_response
    assert redis_py_calls == [["item-3"]] and sorted(results.values()) == [2, 3]
    assert sorted(redis_client.lrange("list", 0, -1)) == [b"item-1", b"item-2", b"item-3"]


def test_a_forked_process_makes_its_own_connection(client, redis_client):
    script = OwnConnectionScript(client.register_script(APPEND_ONCE))
    call(script, 1)
    parents = script._conn
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a call of its own, on a connection of its own
        try:
            ok = call(script, 2) == 2 and script._conn is not parents
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert call(script, 3) == 3 and script._conn is parents  # the parent's is untouched


def test_a_reply_left_unread_on_its_connection_is_not_taken_for_the_calls(client, redis_client):
    """The pool's check, kept: a connection holding a reply nobody read is replaced before the call."""
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) == b"warm"
    script._conn.send_command("ECHO", "stale")  # sent, its reply never read
    assert script._conn.can_read(timeout=2)  # the reply is there
    assert script(keys=[], args=["fresh"]) == b"fresh"


def test_a_connection_marked_for_reconnect_is_replaced_before_the_call(client, redis_client):
    """The pool's other check, kept: a server's notice (RESP3 maintenance) marks a connection to be
    replaced; redis-py replaces it when it goes back to the pool, this at its next call."""
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) == b"warm"
    before = script._conn._sock
    script._conn.mark_for_reconnect()
    assert script(keys=[], args=["after"]) == b"after"
    assert script._conn._sock is not before and not script._conn.should_reconnect()


@pytest.fixture
def checks(monkeypatch):
    """The connection checks OwnConnectionScript runs (each a ``poll``, under gevent a turn of the loop)."""
    seen = []
    real = OwnConnectionScript._check

    def counted(conn):
        seen.append(conn)
        return real(conn)

    monkeypatch.setattr(OwnConnectionScript, "_check", staticmethod(counted))
    return seen


def test_a_check_ahead_of_a_call_stands_in_for_that_calls_own(client, redis_client, redis_py_calls, checks):
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) == b"warm"  # loads the script (redis-py's path)
    checks.clear()
    assert script(keys=[], args=["a"]) == b"a" and len(checks) == 1  # a call checks for itself
    script.check()
    assert len(checks) == 2
    assert script(keys=[], args=["b"]) == b"b" and len(checks) == 2  # ... or is checked ahead, once
    assert script(keys=[], args=["c"]) == b"c" and len(checks) == 3  # the next call: for itself again
    redis_py_calls.clear()
    script.check()
    with script._lock:  # the connection busy: this call goes redis-py's way, and uses up the check
        assert script(keys=[], args=["d"]) == b"d"
    assert redis_py_calls == [["d"]]
    assert script(keys=[], args=["e"]) == b"e" and len(checks) == 5


def test_a_check_while_a_call_holds_the_connection_leaves_the_next_call_to_check(client, redis_client, checks):
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) == b"warm"
    checks.clear()
    with script._lock:
        script.check()
    assert checks == []
    assert script(keys=[], args=["a"]) == b"a" and len(checks) == 1


def test_a_check_drops_a_connection_with_a_reply_nobody_read(client, redis_client, redis_py_calls):
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) == b"warm"
    redis_py_calls.clear()
    script._conn.send_command("ECHO", "stale")
    assert script._conn.can_read(timeout=2)
    script.check()
    assert script._conn._sock is None  # dropped by the check, not by the call
    assert script(keys=[], args=["fresh"]) == b"fresh" and redis_py_calls == []  # connects anew, its own way


def test_a_check_drops_a_connection_redis_closed(client, redis_client, redis_py_calls):
    script = OwnConnectionScript(client.register_script("return ARGV[1]"))
    assert script(keys=[], args=["warm"]) == b"warm"
    redis_py_calls.clear()
    script._conn.send_command("CLIENT", "ID")
    own_id = script._conn.read_response()
    assert redis_client.execute_command("CLIENT", "KILL", "ID", own_id) == 1
    time.sleep(0.2)  # the close reaches this end
    script.check()  # the poll sees the end of the stream: the connection is dropped, no error
    assert script._conn._sock is None
    assert script(keys=[], args=["after"]) == b"after" and redis_py_calls == []
