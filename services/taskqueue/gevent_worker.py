"""gunicorn's gevent worker, made to take turns between kept-alive connections and to answer in one send.

**Turns.** A gevent greenlet runs until it blocks. gunicorn's worker serves a kept-alive connection in
one greenlet, and reading the next request blocks only when none has arrived yet: a client that
pipelines requests, or answers faster than the process serves, keeps that greenlet busy, and the
process's other connections (and its accept loop) wait for it to run dry. So after a request that
never waited for I/O (the event loop did not turn while it ran: ``/healthz``, a refused request), the
greenlet waits for the loop's next turn, which polls for I/O and runs every connection ready by
then first. (``gevent.sleep(0)`` would not do: gevent runs callbacks queued meanwhile in the same
pass and polls only every 50 of them.) A request that waited on Redis has let the others run
already; yielding after it too cost ~4 % of ``/start``'s throughput. See docs/performance-history.md,
change 10, for the figures.

**One send.** gunicorn writes a response's status line and headers with one ``sendall`` and its body
with another: two system calls, and on loopback two deliveries and two wake-ups of the client.
The worker hands gunicorn a :class:`HeadersWithBody` socket for each request, which holds the
headers until the first body bytes (or the end of the request's handling) and sends both at once:
~5 % less CPU a ``/start`` (docs/performance-history.md, change 11). So the first write of a response waits
for the second: an app that sends 103 Early Hints, or writes to ``environ["gunicorn.socket"]``
itself and then waits for the client (a protocol upgrade), would need the raw socket; this one does
neither.

**Settings read once.** gunicorn's ``Config`` looks a setting up on every read (``Config.__getattr__``:
find it, then its ``get()``), and a request reads ~20 of them. A worker's settings do not change once
it runs (a reload starts new workers), so the worker reads them through :class:`ReadOnceConfig`.

**Header work kept.** The worker process also installs header_shortcuts.py: the Date header formatted
once a second, a peer's trust for forwarding headers decided once, a plain Location kept as it is.

**Connections apart from requests.** gunicorn bounds a gevent process's connections (``worker_connections``),
and a connection holds its slot while its client sends the request's head, however slowly (up to
``keepalive`` seconds). A few hundred clients trickling headers took every slot and left everyone else in
the listen backlog (slowloris: ``/start`` at p99 4.9 s). The worker holds many connections
(``TASKQUEUE_WEB_MAX_CONNECTIONS``, a greenlet and a socket each) and serves at most
``TASKQUEUE_WEB_CONNECTIONS`` requests at once (a semaphore taken once a request's head is read): the bound
on the requests in a process, and so on its Redis connections, stays; a slow head holds neither.

**JSON errors.** gunicorn answers what its parser refuses (a request line too long, too many header
fields, a bad chunk size, an unknown transfer coding...) with an HTML page of its own. :class:`JsonErrors`
overrides the worker's ``handle_error`` to answer with the same status and the API's JSON error; it is
mixed into each web worker class (gevent, gthread, sync: ``config.WEB_WORKER_CLASSES``).
"""

from __future__ import annotations

import ssl
from typing import Any

import gevent
import gevent.lock
from gunicorn import util as gunicorn_util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from . import header_shortcuts
from .errors import raw_error_response

# A timer this short fires at the loop's next turn, after its poll for I/O.
NEXT_TURN = 1e-6
# What gunicorn's own handle_error answers each error it meets with (the first entry that matches), but for
# ConfigurationProblem: gunicorn raises it only for a path outside the server's SCRIPT_NAME, a path this
# server does not serve (404), not a fault of the server (gunicorn: 500).
ERROR_STATUS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    ((http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName), 500),  # the app's headers
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ExpectationFailed, 417),
    ((http_errors.ForbiddenProxyRequest, ssl.SSLError), 403),
    (http_errors.ConfigurationProblem, 404),
    (http_errors.ParseException, 400),  # any other malformed request: line, method, version, header, chunk
)
MAX_MESSAGE = 200  # a parser error can quote the client's bytes (a request line of 4 KiB): a prefix is enough


def error_status(exc: BaseException) -> int:
    """The status of the answer to an error gunicorn meets while serving a connection (500: not the client's)."""
    for types, status in ERROR_STATUS:
        if isinstance(exc, types):
            return status
    return 500


class JsonErrors:
    """A gunicorn worker mixin: the errors gunicorn answers itself get the API's JSON error, with the status
    gunicorn gives them, instead of its HTML page (README: every error is JSON)."""

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's ``Worker.handle_error``: log the error and answer it, here as JSON; the connection then closes."""
        status = error_status(exc)
        if status == 500:
            self.log.exception("Error handling request")  # called while handling ``exc``, as gunicorn's is
            message = "internal error"
        else:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
            message = "the requested URL was not found on the server" if status == 404 else str(exc)
        try:
            gunicorn_util.write_nonblock(client, raw_error_response(status, message[:MAX_MESSAGE]))
        except Exception:  # the client is gone: nothing to answer
            self.log.debug("Failed to send error message.")


class JsonThreadWorker(JsonErrors, ThreadWorker):
    """gunicorn's gthread worker with JSON errors."""


class JsonSyncWorker(JsonErrors, SyncWorker):
    """gunicorn's sync worker with JSON errors."""


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


class FairGeventWorker(JsonErrors, GeventWorker):
    """:class:`GeventWorker` that gives the process's other greenlets a turn after a request that had
    none, sends each response's headers with its body, reads its settings once (header work too), serves
    ``TASKQUEUE_WEB_CONNECTIONS`` requests at once of its many connections, and answers errors in JSON."""

    serving: gevent.lock.Semaphore | gevent.lock.DummySemaphore = gevent.lock.DummySemaphore()  # run() bounds it

    def init_process(self) -> None:
        # In the worker process, after the fork: the arbiter keeps its live Config and the stock functions.
        self.cfg = ReadOnceConfig(self.cfg)
        header_shortcuts.install()
        super().init_process()

    def run(self) -> None:
        # Made here, in the worker process after gevent's hub is set up: the semaphore waits on that hub.
        self.serving = gevent.lock.BoundedSemaphore(self.requests_at_once())
        super().run()

    def requests_at_once(self) -> int:
        """The generator's TASKQUEUE_WEB_CONNECTIONS; else (another gunicorn app) one a connection."""
        settings = getattr(self.app, "cfg_app", None)
        return getattr(settings, "web_connections", None) or self.worker_connections

    def handle_request(self, listener_name, req, sock, addr):
        loop = gevent.get_hub().loop
        turns = loop.iteration  # libev's count of loop turns (libuv's loop says -1 always: always yields)
        out = HeadersWithBody(sock)
        _closing_if_killed(self.serving.acquire)  # the head is read: wait for a turn among the requests served
        try:
            super().handle_request(listener_name, req, out, addr)  # StopIteration: the connection is done
        finally:
            self.serving.release()
            _closing_if_killed(out.flush)  # a response without body bytes (HEAD, 204, 304), or cut short
        if loop.iteration == turns:
            _closing_if_killed(gevent.sleep, NEXT_TURN)


def _closing_if_killed(step, *args) -> None:
    """Run a step the worker adds after gunicorn's handling; killed in it (shutdown), the connection is
    closed (StopIteration), where gunicorn would log an error or write a 500 after the headers."""
    try:
        step(*args)
    except (gevent.GreenletExit, SystemExit):
        raise StopIteration from None
