"""taskqueue.redis_pipeline.send gives what redis-py's Pipeline.execute gives: replies, errors, a usable connection.

Real redis-server; each case runs the same commands through ``pipe.execute()`` and through ``send``,
on the worker's kind of client (hiredis, RESP3), on hiredis with RESP2, and on redis-py's pure-Python
parsers.
"""

from __future__ import annotations

import threading

import pytest
import redis
import redis.backoff
import redis.retry
from redis._parsers import _HiredisParser, _RESP3Parser
from redis.client import Pipeline

from taskqueue.fastpath import redis_pipeline
from taskqueue.fastpath.redis_pipeline import send
from taskqueue.store.connection import connect

READERS = {  # connection settings: the worker's (redis-py's defaults), and the other parsers
    "hiredis-resp3": {},
    "hiredis-resp2": {"protocol": 2},
    "python-resp3": {"parser_class": _RESP3Parser},
}


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


def make_client(cfg, kind: str) -> redis.Redis:
    """The worker's kind of client (no retries in redis-py), reading replies as ``kind`` says."""
    pool = connect(cfg, retries=0).connection_pool
    pool.connection_kwargs.update(READERS[kind])
    c = redis.Redis(connection_pool=pool)  # its reply callbacks follow the pool's protocol
    conn = pool.get_connection()
    assert (type(conn._parser) is _HiredisParser) == kind.startswith("hiredis")
    assert conn.protocol == int(kind[-1])
    pool.release(conn)
    return c


@pytest.fixture(params=list(READERS))
def client(cfg, request):
    c = make_client(cfg, request.param)
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


def test_a_client_side_caching_client_is_left_to_redis_py(cfg):
    """redis-py's client-side cache wraps each pooled connection: such a client's pipelines take
    ``pipe.execute()``. (Decided before any connection is made; this Redis, 7.0, cannot serve the
    cache itself, which redis-py requires from 7.4.)"""
    from redis.cache import CacheConfig

    kwargs = connect(cfg, retries=0).connection_pool.connection_kwargs
    cached = redis.Redis(connection_pool=redis.ConnectionPool(**kwargs, protocol=3, cache_config=CacheConfig()))
    with cached.pipeline() as pipe:
        pipe.get("k")
        assert redis_pipeline._plain(pipe) is False
    with make_client(cfg, "hiredis-resp3").pipeline() as pipe:
        pipe.get("k")
        assert redis_pipeline._plain(pipe) is True


@pytest.mark.parametrize("kind", ["hiredis-resp3", "python-resp3"])  # RESP2 has no push messages
def test_a_push_message_among_the_replies_goes_to_redis_pys_handler(cfg, redis_client, kind):
    """RESP3: an invalidation message (client-side tracking) among a call's replies - the call itself
    changes a key the connection reads - is handed to the parser's push handler, as redis-py's parser
    does, and not taken for a reply."""
    client = make_client(cfg, kind)
    for runner in (Pipeline.execute, send):
        redis_client.set("tracked", "old")
        conn = client.connection_pool.get_connection()
        pushed = []
        conn._parser.set_invalidation_push_handler(pushed.append)
        conn.send_command("CLIENT", "TRACKING", "ON")
        assert conn.read_response() == b"OK"
        client.connection_pool.release(conn)
        with client.pipeline(transaction=False) as pipe:
            pipe.get("tracked")
            pipe.set("tracked", "new")  # Redis pushes an invalidation of "tracked" to this connection
            pipe.get("other")
            pipe.get("tracked")
            assert runner(pipe) == [b"old", True, None, b"new"]
        assert len(pushed) == 1 and pushed[0][1] == [b"tracked"]
        conn.disconnect()  # tracking off
    client.close()


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


def test_an_error_of_another_kind_is_left_in_place_or_raised_as_by_redis_py(client, redis_client):
    """A reply that parses to a ConnectionError subclass (a failed AUTH): inside a transaction, hiredis
    leaves it in EXEC's replies (neither raised nor converted) unless it is the first of them, and
    redis-py's Python parser raises it; outside one, it is raised and the connection dropped.
    ``send`` does what ``execute`` does in each case."""

    def run(runner, transaction, auth_at):
        redis_client.flushall()
        with client.pipeline(transaction=transaction) as pipe:
            pipe.set("a", "1")
            pipe.get("a")
            pipe.command_stack.insert(auth_at, (("AUTH", "nobody", "wrong"), {}))
            try:
                return runner(pipe)
            except redis.exceptions.AuthenticationError as exc:
                return exc
            finally:
                assert client.get("a") == b"1" and client.ping()  # Redis ran the rest; the next call is in step

    conn = client.connection_pool.get_connection()
    python_parser = type(conn._parser) is not _HiredisParser
    client.connection_pool.release(conn)
    for transaction in (True, False):
        for auth_at in (1, 0):
            expected, got = run(Pipeline.execute, transaction, auth_at), run(send, transaction, auth_at)
            if transaction and auth_at and not python_parser:
                assert isinstance(got[1], redis.exceptions.AuthenticationError) and type(got[1]) is type(expected[1])
                assert (got[0], got[2]) == (expected[0], expected[2]) == (True, b"1")
            else:
                assert type(got) is type(expected) is redis.exceptions.AuthenticationError, (transaction, auth_at)
                assert str(got) == str(expected)


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
    it as its own. The interruption is injected by wrapping the module's reader of a reply: it reads
    the first, then raises."""
    client.set("a", "A")
    client.set("b", "B")
    real_reply = redis_pipeline._reply
    read = []

    def interrupted(conn):
        if read:
            raise KeyboardInterrupt
        read.append(real_reply(conn))
        return read[0]

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
