"""taskqueue.redis_pipeline.send gives what redis-py's Pipeline.execute gives: replies, errors, a usable connection.

Real redis-server; each case runs the same commands through ``pipe.execute()`` and through ``send``.
"""

from __future__ import annotations

import threading

import pytest
import redis
import redis.backoff
import redis.retry
from redis.client import Pipeline

from taskqueue.connection import connect
from taskqueue.redis_pipeline import send


def queue_commands(pipe: Pipeline) -> None:
    """Commands of the worker's pipelines, with replies redis-py converts (dict, set, bool, None)."""
    pipe.hset("job", mapping={"status": "started", "worker": "w1"})
    pipe.hgetall("job")
    pipe.hgetall("missing")
    pipe.zadd("registry", {"job": 12.5})
    pipe.zadd("registry", {"job": 1}, incr=True)  # callbacks that take the command's options
    pipe.zrange("registry", 0, -1, withscores=True)
    pipe.zscore("registry", "job")
    pipe.sadd("workers", "w1", "w2")
    pipe.smembers("workers")
    pipe.xadd("results", {"type": "1"}, id="1-1")
    pipe.expire("job", 60)
    pipe.persist("job")
    pipe.rpush("queue", "a", "b")
    pipe.lmove("queue", "intermediate")
    pipe.lmove("empty", "intermediate")
    pipe.lpos("intermediate", "a")
    pipe.lrem("intermediate", 1, "a")
    pipe.delete("job")


@pytest.fixture
def client(cfg):
    """The worker's kind of client: no retries in redis-py."""
    c = connect(cfg, retries=0)
    yield c
    c.close()


@pytest.mark.parametrize("transaction", [True, False], ids=["multi-exec", "pipeline"])
def test_the_replies_are_redis_pys(client, redis_client, transaction):
    with client.pipeline(transaction=transaction) as pipe:
        queue_commands(pipe)
        expected = pipe.execute()
    redis_client.flushall()
    with client.pipeline(transaction=transaction) as pipe:
        queue_commands(pipe)
        got = send(pipe)
        assert pipe.command_stack == []  # sent and cleared, as execute leaves it
    assert got == expected
    assert got[1] == {b"status": b"started", b"worker": b"w1"} and got[2] == {} and got[8] == {b"w1", b"w2"}
    assert got[4] == 13.5 and got[5] == [(b"job", 13.5)] and got[13] == b"a" and got[14] is None and got[10] is True


def run_failing(client, runner, transaction: bool, raise_on_error: bool = True):
    """SET, a command that fails when it runs (WRONGTYPE; one redis-py converts the reply of), SET:
    what ``runner`` returns or raises."""
    with client.pipeline(transaction=transaction) as pipe:
        pipe.set("k", "v")
        pipe.hgetall("k")
        pipe.set("after", "1")
        try:
            return runner(pipe, raise_on_error)
        except redis.exceptions.ResponseError as exc:
            return exc


@pytest.mark.parametrize("transaction", [True, False], ids=["multi-exec", "pipeline"])
def test_an_error_reply_is_raised_as_redis_py_raises_it_and_the_connection_stays_in_step(
    client, redis_client, transaction
):
    expected = run_failing(client, Pipeline.execute, transaction)
    redis_client.flushall()
    got = run_failing(client, send, transaction)
    assert type(got) is type(expected) is redis.exceptions.ResponseError
    assert str(got) == str(expected) and "Command # 2 (HGETALL k)" in str(got) and "WRONGTYPE" in str(got)
    assert redis_client.get("after") == b"1"  # Redis ran the rest, as it does
    assert client.ping() and client.get("k") == b"v"  # every reply was read: the pooled connection is in step

    redis_client.flushall()
    replies = run_failing(client, send, transaction, raise_on_error=False)
    assert replies[0] is True and isinstance(replies[1], redis.exceptions.ResponseError) and replies[2] is True
    redis_client.flushall()
    assert str(run_failing(client, Pipeline.execute, transaction, raise_on_error=False)[1]) == str(replies[1])


def test_an_error_of_another_kind_inside_a_transaction_is_left_in_place(client, redis_client):
    """A reply that parses to a ConnectionError subclass (a failed AUTH) is neither raised nor converted."""

    def run(runner):
        redis_client.flushall()
        with client.pipeline() as pipe:
            pipe.set("a", "1")
            pipe.execute_command("AUTH", "nobody", "wrong")
            pipe.get("a")
            return runner(pipe)

    expected, got = run(Pipeline.execute), run(send)
    assert isinstance(got[1], redis.exceptions.AuthenticationError) and type(got[1]) is type(expected[1])
    assert (got[0], got[2]) == (expected[0], expected[2]) == (True, b"1")


def test_a_transaction_redis_refuses_to_queue_runs_nothing(client, redis_client):
    """A command Redis rejects while queueing aborts the whole MULTI/EXEC, with that command's error."""

    def attempt(runner):
        with client.pipeline() as pipe:
            pipe.set("k", "v")
            pipe.execute_command("NO-SUCH-COMMAND", "x")
            with pytest.raises(redis.exceptions.ResponseError) as info:
                runner(pipe)
        return str(info.value)

    expected = attempt(Pipeline.execute)
    assert attempt(send) == expected and "unknown command" in expected
    assert redis_client.get("k") is None and client.ping()


def test_a_connection_lost_mid_call_raises_and_the_next_send_reconnects(client, redis_client):
    """Redis drops the connection while the pipeline waits on a reply: ConnectionError, and a fresh
    connection for the next call (the pooled one is not reused half-read)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.set("k", "v")
        pipe.blpop(["nothing"], timeout=0.5)  # keeps the call in flight
        killer = threading.Timer(0.15, lambda: redis_client.client_kill_filter(_type="normal", skipme=True))
        killer.start()
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                send(pipe)
        finally:
            killer.join()
    with client.pipeline() as pipe:
        pipe.set("k", "v2")
        pipe.get("k")
        assert send(pipe) == [True, b"v2"]


def test_interrupted_between_replies_the_connection_is_dropped(client, monkeypatch):
    """A signal's exception between two reads (the second reply unread): the next call must not read
    it as its own. The interruption is injected by wrapping the module's reply reader."""
    from taskqueue import redis_pipeline

    client.set("a", "A")
    client.set("b", "B")
    real_reply, reads = redis_pipeline._reply, []

    def interrupted(conn):
        reads.append(1)
        if len(reads) == 2:
            raise KeyboardInterrupt
        return real_reply(conn)

    monkeypatch.setattr(redis_pipeline, "_reply", interrupted)
    with client.pipeline(transaction=False) as pipe:
        pipe.get("a")
        pipe.get("b")
        with pytest.raises(KeyboardInterrupt):
            send(pipe)
    monkeypatch.undo()
    assert client.get("a") == b"A"


@pytest.mark.parametrize("retries", [0, 2], ids=["own-path", "redis-py-path"])
def test_it_holds_one_connection_and_gives_it_back(redis_server, retries):
    """On a pool of one connection, calls in a row go through (one that kept its connection, or took a
    second one, would wait for one and fail)."""
    pool = redis.BlockingConnectionPool(
        host="127.0.0.1",
        port=redis_server.port,
        password=redis_server.password,
        max_connections=1,
        timeout=0.5,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), retries),  # the pool's connections carry it
    )
    c = redis.Redis(connection_pool=pool)
    conn = pool.get_connection()
    assert conn.retry.get_retries() == retries  # the path under test: send's own, or redis-py's
    pool.release(conn)
    try:
        for transaction in (True, False, True):
            with c.pipeline(transaction=transaction) as pipe:
                pipe.set("k", "v")
                pipe.get("k")
                assert send(pipe) == [True, b"v"]
    finally:
        c.close()


def test_what_it_does_not_handle_goes_through_redis_py(cfg, client, redis_client, monkeypatch):
    """A client that retries, WATCH and scripts take ``pipe.execute()`` (counted through a wrapper)."""
    calls = []
    real_execute = Pipeline.execute

    def counted(pipe, *args, **kwargs):
        calls.append(pipe)
        return real_execute(pipe, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", counted)
    for transaction in (True, False):  # the worker's two kinds: its own path
        with client.pipeline(transaction=transaction) as pipe:
            pipe.set("k", "1")
            assert send(pipe) == [True]
    assert calls == []

    retrying = connect(cfg)  # the generator's client: redis-py retries, so its loop must run
    try:
        with retrying.pipeline() as pipe:
            pipe.set("k", "2")
            assert send(pipe) == [True]
    finally:
        retrying.close()
    assert len(calls) == 1

    with client.pipeline() as pipe:
        pipe.watch("k")
        redis_client.set("k", "changed")
        pipe.multi()
        pipe.set("k", "3")
        with pytest.raises(redis.exceptions.WatchError):
            send(pipe)
    assert len(calls) == 2 and redis_client.get("k") == b"changed"

    with client.pipeline() as pipe:  # redis-py's HIMPORT (Redis 8.x) needs its pre-flight; this Redis refuses it
        pipe.execute_command("himport", "SET", "h", "fields", "1")
        with pytest.raises(redis.exceptions.ResponseError):
            send(pipe)
    assert len(calls) == 3

    script = client.register_script("return redis.call('GET', KEYS[1])")
    with client.pipeline() as pipe:
        script(keys=["k"], client=pipe)
        assert send(pipe) == [b"changed"]
    assert len(calls) == 4
