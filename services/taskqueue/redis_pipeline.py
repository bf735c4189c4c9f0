"""``send(pipe)``: what ``pipe.execute()`` does for a plain pipeline, without redis-py's per-call layers.

The worker sends two pipelines a job (:mod:`taskqueue.job_path`). redis-py 8 wraps each one's single
write and in-order reads in a retry loop, an HIMPORT pre-flight that scans every command, and
telemetry hooks: ~100 µs of the ~1,300 µs of CPU a no-op job costs the worker (bench/, docs/performance-history.md).
The worker's connection retries nothing (RQ's loop reconnects), and the worker uses neither HIMPORT
nor redis-py's telemetry, so :func:`send` does the write and the reads itself and gives the same
replies and errors. With hiredis (the worker's case) it also packs each command with hiredis
directly and takes the replies a socket read has already buffered from hiredis's reader, without
redis-py's wrappers around each command and each reply (another ~10-13 % of a job). Anything else (a
client that retries, scripts, WATCH, reply options, HIMPORT) goes through ``pipe.execute()``.
Interrupted between its write and its last read (a signal, a timeout), it drops the connection, so
no later call reads a reply meant for this one.
"""

from __future__ import annotations

import functools
from typing import Any

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline
from redis.connection import AbstractConnection, HiredisRespSerializer
from redis.exceptions import ConnectionError, ExecAbortError, ResponseError


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
        conn.send_packed_command(pack(conn, commands))
        return _replies(conn, n)
    except BaseException:
        conn.disconnect()
        raise


def pack(conn: AbstractConnection, commands: list[tuple]) -> list[bytes]:
    """The commands as RESP, as ``conn.pack_commands`` packs them, in one buffer.

    With redis-py's hiredis packer, each command goes to ``hiredis.pack_command`` directly: redis-py's
    wrapper only splits a command name holding a space and turns bytearray/memoryview arguments into
    bytes. Those commands take its packer still (hiredis packs a strided memoryview's underlying
    memory, not the view), and so do the arguments hiredis refuses (redis-py refuses them too).
    """
    if type(conn._command_packer) is not HiredisRespSerializer:
        return conn.pack_commands(commands)
    packed = []
    for args in commands:
        if not _splits(args[0]) and memoryview not in map(type, args):
            try:
                packed.append(hiredis.pack_command(args))
                continue
            except TypeError:  # bytearray, which redis-py converts, or what it refuses
                pass
        packed.extend(conn._command_packer.pack(*args))
    return [b"".join(packed)]


@functools.lru_cache(maxsize=256)
def _splits(name: str | bytes) -> bool:
    """Whether redis-py's packer splits this command name into words (``"CLIENT SETNAME"``)."""
    return name.split() != [name] if isinstance(name, str) else b" " in name


def _replies(conn: AbstractConnection, n: int) -> list[Any]:
    """The next ``n`` replies, each as :func:`_reply` gives it.

    A reply already in the hiredis reader's buffer (after the first, usually all of them: one socket
    read takes them all) is taken from it directly and treated as redis-py's hiredis parser treats it
    (a RESP3 push message handed to its handlers, a connection error raised); the rest go through
    ``conn.read_response()``, with the socket's timeouts and errors.
    """
    parser = conn._parser
    reader = getattr(parser, "_reader", None)
    if type(parser) is not _HiredisParser or reader is None:
        return [_reply(conn) for _ in range(n)]
    push = parser._hiredis_PushNotificationType
    out: list[Any] = []
    while len(out) < n:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            out.append(_reply(conn))
        elif isinstance(reply, ConnectionError):
            raise reply
        elif push is not None and isinstance(reply, push):
            parser.handle_push_response(reply)  # not a reply to a command: the next one is
        elif type(reply) is list and reply and isinstance(reply[0], ConnectionError):
            raise reply[0]
        else:
            out.append(reply)
    return out


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
