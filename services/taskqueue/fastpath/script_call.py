"""A Lua script called over a connection of its own: one send and one read, no pool in between.

The generator calls its enqueue script once per group of concurrent enqueues (group_commit.py), from one
caller at a time per process; other enqueues (``/jobs/batch``, an ``Idempotency-Key``) call it too, and
take redis-py's path while the connection is busy. Through redis-py, each call takes a pooled connection,
wraps the send and the read in its retry loop and telemetry hooks, and gives the connection back: about
half of the call's CPU in a ``/start`` request, the system calls being the other half
(docs/performance-history.md). :class:`OwnConnectionScript` keeps one connection for the script and sends
EVALSHA on it directly. It keeps the pool's checks: that the connection holds no reply nobody read (under
gevent a ``poll``, one turn of the event loop, which also lets the process's other connections move
first: without it the p99 at 16 connections rose), and a server's notice to reconnect. Whatever it cannot
finish goes to redis-py's path, which handles it as before: a second concurrent caller (the connection is
busy), a Redis that has forgotten the script (NOSCRIPT: redis-py loads it), a lost connection or a
timeout (redis-py retries as configured). A retry must therefore be safe: the caller's script has to do
nothing when it has run already, as the enqueue script does. The call on the own connection is a single
attempt, never a repeat: a script can skip that check there (``as_repeat`` gives redis-py's path its arguments).

:meth:`OwnConnectionScript.check` runs those checks ahead of the next call, which then skips them: the
group commit runs it before it gathers a call's jobs, so the callers that the check's turn of the event
loop lets in go in the same call (group_commit.py, ``before_batch``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError
from redis.retry import Retry

from taskqueue.fastpath.redis_pipeline import exchange


class OwnConnectionScript:
    """Call ``script`` as ``script(keys=..., args=...)`` does, on a connection of its own when free."""

    def __init__(self, script: Script, as_repeat: Callable[[Sequence[Any]], Sequence[Any]] | None = None):
        """``as_repeat``: a call's arguments as redis-py's path, which may run the call twice, sends them."""
        self.script = script
        self._as_repeat = as_repeat
        self._lock = threading.Lock()  # held by the call on the own connection
        self._conn: AbstractConnection | None = None
        self._pid = 0  # the process that made _conn (a forked child makes its own)
        self._checked = False  # check() ran since the last call

    def check(self) -> None:
        """The connection's checks, now rather than in the next call (the next call only, whichever path
        it takes). A connection found closed is dropped: the call connects anew."""
        if not self._lock.acquire(blocking=False):
            return  # in a call: the next one checks for itself
        try:
            self._check(self._connection())
        except (ConnectionError, TimeoutError):
            pass  # dropped by _check
        finally:
            self._lock.release()
        self._checked = True

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        checked, self._checked = self._checked, False
        if self._lock.acquire(blocking=False):
            try:
                return self._call(keys, args, checked)
            except (NoScriptError, ConnectionError, TimeoutError):
                pass  # not run, or not known to have run: redis-py's path below loads, retries
            finally:
                self._lock.release()
        return self.script(keys=keys, args=args if self._as_repeat is None else self._as_repeat(args))

    def _call(self, keys: Sequence[Any], args: Sequence[Any], checked: bool) -> Any:
        conn = self._connection()
        if not checked:
            self._check(conn)
        reply = exchange(conn, [("EVALSHA", self.script.sha, len(keys), *keys, *args)], 1)[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    @staticmethod
    def _check(conn: AbstractConnection) -> None:
        """The pool's checks: a reply nobody read, a server's notice to reconnect; either drops the connection."""
        try:
            stale = conn.is_connected and (conn.should_reconnect() or conn.can_read())
        except BaseException:  # a closed connection: dropped, and the error raised (the call goes redis-py's way)
            conn.disconnect()
            raise
        if stale:
            conn.disconnect()

    def _connection(self) -> AbstractConnection:
        if self._conn is None or self._pid != os.getpid():
            pool = self.script.registered_client.connection_pool
            # One connect attempt: redis-py's path, which the call falls back to, retries as configured.
            kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            self._conn, self._pid = pool.connection_class(**kwargs), os.getpid()
        return self._conn
