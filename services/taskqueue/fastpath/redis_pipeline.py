"""``send(pipe)``: what ``pipe.execute()`` does for a plain pipeline, without redis-py's per-call layers.

The worker sends two pipelines a job (:mod:`taskqueue.fastpath.job_path`). redis-py 8 wraps each one's
single write and in-order reads in a retry loop, an HIMPORT pre-flight that scans every command, and
telemetry hooks. The worker's connection retries nothing (RQ's loop reconnects), and the worker uses
neither HIMPORT nor redis-py's telemetry, so :func:`send` does the write (``pack_commands``,
``send_packed_command``) and the reads (``read_response``) itself, with redis-py's public connection
methods, and gives the same replies and errors. Anything else (a client that retries, scripts, WATCH,
reply options, HIMPORT) goes through ``pipe.execute()``. Interrupted between its write and its last read
(a signal, a timeout), it drops the connection, so no later call reads a reply meant for this one.
"""

from __future__ import annotations

import functools
from typing import Any

from redis.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline
from redis.connection import AbstractConnection
from redis.exceptions import ExecAbortError, ResponseError


def send(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
    """Send ``pipe``'s queued commands in one write and return their replies, as ``pipe.execute()`` does."""
    stack = pipe.command_stack
    if not _plain(pipe):
        return pipe.execute(raise_on_error)
    pool = pipe.connection_pool
    conn = None
    delegate = False
    try:
        conn = pool.get_connection()
        delegate = conn.retry.get_retries() > 0
        if not delegate:
            commands = [args for args, _ in stack]
            if pipe.transaction or pipe.explicit_transaction:
                replies = _transaction(pipe, conn, commands)
            else:
                replies = exchange(conn, commands, len(commands))
    finally:
        if conn is not None:
            pool.release(conn)
        if not delegate:
            pipe.reset()
    if delegate:  # a client whose redis-py loop retries: that loop, on a connection of its own
        return pipe.execute(raise_on_error)
    return _with_callbacks(pipe, stack, replies, raise_on_error)


def _plain(pipe: Pipeline) -> bool:
    """Queued commands only: no scripts, WATCH, reply options or HIMPORT (redis-py prepares those),
    on a client without client-side caching."""
    if not pipe.command_stack or pipe.scripts or pipe.watching or pipe.connection is not None:
        return False
    if getattr(pipe.connection_pool, "cache", None) is not None:  # client-side caching wraps connections
        return False
    for args, options in pipe.command_stack:
        if options and (EMPTY_RESPONSE in options or NEVER_DECODE in options):
            return False
        if type(args[0]) not in (str, bytes) or _is_himport(args[0]):
            return False
    return True


@functools.lru_cache(maxsize=256)  # the few command names a process sends: one lookup a command
def _is_himport(name: str | bytes) -> bool:
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.upper().startswith("HIMPORT")


def exchange(conn: AbstractConnection, commands: list[tuple], n: int) -> list[Any]:
    """``commands`` in one write, then the next ``n`` replies, error replies returned rather than
    raised (so every reply is read); interrupted in between (a lost connection, a signal, a killed
    greenlet), the connection is dropped, so no later call reads a reply meant for this one."""
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        return [_reply(conn) for _ in range(n)]
    except BaseException:
        conn.disconnect()
        raise


def _reply(conn: AbstractConnection) -> Any:
    """The next reply, an error reply returned rather than raised (so every reply is read)."""
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


def _transaction(pipe: Pipeline, conn: AbstractConnection, commands: list[tuple]) -> list[Any]:
    """MULTI, the commands, EXEC in one write; EXEC's replies, or the first error that aborted it."""
    # OK, then QUEUED or an error each, then EXEC's replies
    *queued, replies = exchange(conn, [("MULTI",), *commands, ("EXEC",)], len(commands) + 2)
    if isinstance(replies, ExecAbortError):
        for number, reply in enumerate(queued[1:], start=1):
            if isinstance(reply, ResponseError):
                pipe.annotate_exception(reply, number, commands[number - 1])
                raise reply
    if isinstance(replies, ResponseError):
        raise replies
    if len(replies) != len(commands):
        conn.disconnect()
        raise ResponseError("Wrong number of response items from pipeline execution")
    return replies


def _with_callbacks(pipe: Pipeline, stack: list, replies: list[Any], raise_on_error: bool) -> list[Any]:
    """redis-py's reply conversions (HGETALL to a dict, ...); an error reply raised or left in place."""
    callbacks = pipe.response_callbacks
    out = []
    for number, (reply, (args, options)) in enumerate(zip(replies, stack, strict=True), start=1):
        if isinstance(reply, Exception):  # not converted; redis-py raises only the ResponseErrors
            if raise_on_error and isinstance(reply, ResponseError):
                pipe.annotate_exception(reply, number, args)
                raise reply
        else:
            callback = callbacks.get(args[0])
            if callback is not None:
                options.pop("keys", None)  # as redis-py does: the key list is for its client-side cache
                reply = callback(reply, **options)
        out.append(reply)
    return out
