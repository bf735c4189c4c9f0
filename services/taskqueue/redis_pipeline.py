"""``send(pipe)``: what ``pipe.execute()`` does for a plain pipeline, without redis-py's per-call layers.

The worker sends two pipelines a job (:mod:`taskqueue.job_path`). redis-py 8 wraps each one's single
write and in-order reads in a retry loop, an HIMPORT pre-flight that scans every command, and
telemetry hooks: ~100 µs of the ~1,300 µs of CPU a no-op job costs the worker (bench/, docs/performance.md).
The worker's connection retries nothing (RQ's loop reconnects), and the worker uses neither HIMPORT
nor redis-py's telemetry, so :func:`send` does the write and the reads itself and gives the same
replies and errors. Anything else (a client that retries, scripts, WATCH, reply options) goes
through ``pipe.execute()``.
"""

from __future__ import annotations

from typing import Any

from redis.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline
from redis.connection import AbstractConnection
from redis.exceptions import ExecAbortError, ResponseError, WatchError

PLAIN_ONLY = (EMPTY_RESPONSE, NEVER_DECODE)  # command options only redis-py's own path handles


def send(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
    """Send ``pipe``'s queued commands in one write and return their replies, as ``pipe.execute()`` does."""
    stack = pipe.command_stack
    if not stack or pipe.scripts or pipe.watching or pipe.connection is not None:
        return pipe.execute(raise_on_error)
    if any(opt in options for _, options in stack for opt in PLAIN_ONLY):
        return pipe.execute(raise_on_error)
    pool = pipe.connection_pool
    conn = pool.get_connection()
    try:
        if conn.retry.get_retries():  # redis-py's loop retries; keep its semantics
            return pipe.execute(raise_on_error)
        commands = [args for args, _ in stack]
        transaction = pipe.transaction or pipe.explicit_transaction
        try:
            if transaction:
                replies = _transaction(pipe, conn, commands)
            else:
                conn.send_packed_command(conn.pack_commands(commands))
                replies = [_reply(conn) for _ in commands]
        except ResponseError:
            raise
        except BaseException:  # the connection's state is unknown: a fresh one next time, as redis-py does
            conn.disconnect()
            raise
    finally:
        pool.release(conn)
        pipe.reset()
    return _with_callbacks(pipe, stack, replies, raise_on_error)


def _reply(conn: AbstractConnection) -> Any:
    """The next reply, an error reply returned rather than raised (so every reply is read)."""
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


def _transaction(pipe: Pipeline, conn: AbstractConnection, commands: list[tuple]) -> list[Any]:
    """MULTI, the commands, EXEC in one write; EXEC's replies, or the first error that aborted it."""
    conn.send_packed_command(conn.pack_commands([("MULTI",), *commands, ("EXEC",)]))
    queued = [_reply(conn) for _ in range(len(commands) + 1)]  # OK, then QUEUED or an error each
    replies = _reply(conn)
    if isinstance(replies, ExecAbortError):
        for number, reply in enumerate(queued[1:], start=1):
            if isinstance(reply, ResponseError):
                pipe.annotate_exception(reply, number, commands[number - 1])
                raise reply
    if isinstance(replies, ResponseError):
        raise replies
    if replies is None:
        raise WatchError("Watched variable changed.")
    if len(replies) != len(commands):
        conn.disconnect()
        raise ResponseError("Wrong number of response items from pipeline execution")
    return replies


def _with_callbacks(pipe: Pipeline, stack: list, replies: list[Any], raise_on_error: bool) -> list[Any]:
    """redis-py's reply conversions (HGETALL to a dict, ...), errors raised or left in place."""
    callbacks = pipe.response_callbacks
    out = []
    for number, (reply, (args, options)) in enumerate(zip(replies, stack, strict=True), start=1):
        if isinstance(reply, ResponseError):
            if raise_on_error:
                pipe.annotate_exception(reply, number, args)
                raise reply
        else:
            callback = callbacks.get(args[0])
            if callback is not None:
                reply = callback(reply, **{k: v for k, v in options.items() if k != "keys"})
        out.append(reply)
    return out
