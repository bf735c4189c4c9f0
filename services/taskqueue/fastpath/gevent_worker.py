"""gunicorn's gevent worker, made to take turns between kept-alive connections and to answer in one send.

**Turns.** A gevent greenlet runs until it blocks. gunicorn's worker serves a kept-alive connection in
one greenlet, and reading the next request blocks only when none has arrived yet: a client that
pipelines requests, or answers faster than the process serves, keeps that greenlet busy, and the
process's other connections (and its accept loop) wait for it to run dry. So after a request that
never waited for I/O (the event loop did not turn while it ran: ``/healthz``, a refused request), the
greenlet waits for the loop's next turn, which polls for I/O and runs every connection ready by
then first. (``gevent.sleep(0)`` would not do: gevent runs callbacks queued meanwhile in the same
pass and polls only every 50 of them.) A request that waited on Redis has let the others run
already; yielding after it too cost throughput (docs/performance-history.md, change 10).

**One send.** gunicorn writes a response's status line and headers with one ``sendall`` and its body
with another: two system calls, and on loopback two deliveries and two wake-ups of the client.
The worker hands gunicorn a :class:`HeadersWithBody` socket for each request, which holds the
headers until the first body bytes (or the end of the request's handling) and sends both at once
(docs/performance-history.md, change 11). So the first write of a response waits
for the second: an app that sends 103 Early Hints, or writes to ``environ["gunicorn.socket"]``
itself and then waits for the client (a protocol upgrade), would need the raw socket; this one does
neither.

**Settings read once.** gunicorn's ``Config`` looks a setting up on every read (``Config.__getattr__``:
find it, then its ``get()``), and a request reads ~20 of them. A worker's settings do not change once
it runs (a reload starts new workers), so the worker reads them through :class:`ReadOnceConfig`.

:class:`FairTurns` adds the three to a gevent worker class: ``taskqueue.server.workers.FairGeventWorker``
is ``BoundedGeventWorker`` (JSON errors, bounded requests, balanced connections) with them.
"""

from __future__ import annotations

from typing import Any

import gevent

# A timer this short fires at the loop's next turn, after its poll for I/O.
NEXT_TURN = 1e-6


class HeadersWithBody:
    """A connection's socket as one response writes to it: the first write (gunicorn's status line and
    headers) is held and sent with the next one (the first body bytes) in one send.

    Anything else asked of the socket (``sendfile``, ``fileno``, ``shutdown``...) sends what is held
    first, so bytes leave in the order they were written; :meth:`flush` sends it at the response's end.
    """

    __slots__ = ("_held", "_sock", "_wrote")

    def __init__(self, sock):
        self._sock = sock
        self._held = b""
        self._wrote = False

    def sendall(self, data) -> None:
        if not self._wrote:
            self._wrote = True
            self._held = bytes(data)
            return
        held, self._held = self._held, b""
        if held:
            data = held + data
        sent = self._sock.send(data)  # a response that fits the socket's buffer: one system call ...
        if sent < len(data):
            self._sock.sendall(memoryview(data)[sent:])  # ... else gevent's loop for the rest

    def flush(self) -> None:
        """Send the held write, if any."""
        held, self._held = self._held, b""
        if held:
            self._sock.sendall(held)

    def __getattr__(self, name: str):
        self.flush()
        return getattr(self._sock, name)


class ReadOnceConfig:
    """A worker's view of gunicorn's ``Config``: each setting (or property) read from it once, then kept."""

    def __init__(self, cfg):
        self._cfg = cfg

    def __getattr__(self, name: str):
        if name == "_cfg":  # not set yet (a copy or an unpickling in progress): no lookup through itself
            raise AttributeError(name)
        value = getattr(self._cfg, name)  # an unknown name raises AttributeError, as Config does, and is not kept
        self.__dict__[name] = value  # methods stay bound to the real Config (its own caches still work)
        return value


class FairTurns:
    """A gunicorn gevent worker mixin (first in the bases): gives the process's other greenlets a turn after
    a request that had none, sends each response's headers with its body, and reads its settings once."""

    cfg: Any

    def init_process(self) -> None:
        # In the worker process, after the fork: the arbiter keeps its live Config.
        self.cfg = ReadOnceConfig(self.cfg)
        super().init_process()  # type: ignore[misc]

    def handle_request(self, listener_name, req, sock, addr):
        loop = gevent.get_hub().loop
        turns = loop.iteration  # libev's count of loop turns (libuv's loop says -1 always: always yields)
        out = HeadersWithBody(sock)
        try:
            super().handle_request(listener_name, req, out, addr)  # type: ignore[misc]  # StopIteration: done
        finally:
            closing_if_killed(out.flush)  # a response without body bytes (HEAD, 204, 304), or cut short
        if loop.iteration == turns:
            closing_if_killed(gevent.sleep, NEXT_TURN)


def closing_if_killed(step, *args) -> None:
    """Run a step the worker adds after gunicorn's handling; killed in it (shutdown), the connection is
    closed (StopIteration), where gunicorn would log an error or write a 500 after the headers."""
    try:
        step(*args)
    except (gevent.GreenletExit, SystemExit):
        raise StopIteration from None
