"""The generator's gunicorn worker classes: gunicorn's, answering errors in JSON, and gevent's serving a
bounded number of requests at once of its many connections.

**JSON errors.** gunicorn answers what its parser refuses (a request line too long, too many header
fields, a bad chunk size, an unknown transfer coding...) with an HTML page of its own. :class:`JsonErrors`
overrides the worker's ``handle_error`` to answer with the same status and the API's JSON error; it is
mixed into each web worker class (gevent, gthread, sync: ``config.WEB_WORKER_CLASSES``).

**Connections apart from requests.** gunicorn bounds a gevent process's connections (``worker_connections``),
and a connection holds its slot while its client sends the request's head, however slowly (up to
``keepalive`` seconds). A few hundred clients trickling headers took every slot and left everyone else in
the listen backlog (slowloris). :class:`BoundedGeventWorker` holds many connections
(``TASKQUEUE_WEB_MAX_CONNECTIONS``, a greenlet and a socket each) and serves at most
``TASKQUEUE_WEB_CONNECTIONS`` requests at once (a semaphore taken once a request's head is read): the bound
on the requests in a process, and so on its Redis connections, stays; a slow head holds neither.

With fast paths on (``TASKQUEUE_FAST_PATHS``), gevent's class is :class:`FairGeventWorker`: this one, with
turns between connections and one send a response (``taskqueue/fastpath/gevent_worker.py``).
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

from taskqueue.api.errors import raw_error_response
from taskqueue.fastpath.gevent_worker import FairTurns
from taskqueue.server.balance import ConnectionShare

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


class BoundedGeventWorker(JsonErrors, GeventWorker):
    """:class:`GeventWorker` that serves ``TASKQUEUE_WEB_CONNECTIONS`` requests at once of its many
    connections, keeps no more than its share of the generator's connections (balance.py), and answers
    errors in JSON."""

    serving: gevent.lock.Semaphore | gevent.lock.DummySemaphore = gevent.lock.DummySemaphore()  # run() bounds it
    share: ConnectionShare | None = None

    def init_process(self) -> None:
        # In the worker process, after the fork: the master made the shared counts (GeneratorServer).
        self.share = getattr(self.app, "connections", None)
        if self.share is not None:
            self.share.join()
        super().init_process()

    def handle(self, listener, client, addr):
        """gunicorn's serving of one connection, counted while it is open."""
        if self.share is None:
            return super().handle(listener, client, addr)
        self.share.opened()
        try:
            return super().handle(listener, client, addr)
        finally:
            self.share.closed()

    def run(self) -> None:
        # Made here, in the worker process after gevent's hub is set up: the semaphore waits on that hub.
        self.serving = gevent.lock.BoundedSemaphore(self.requests_at_once())
        super().run()

    def requests_at_once(self) -> int:
        """The generator's TASKQUEUE_WEB_CONNECTIONS; else (another gunicorn app) one a connection."""
        settings = getattr(self.app, "cfg_app", None)
        return getattr(settings, "web_connections", None) or self.worker_connections

    def handle_request(self, listener_name, req, sock, addr):
        if self.share is not None and self.share.over():
            req.must_close = True  # answered with Connection: close; the client's next connection lands anew
        try:
            self.serving.acquire()  # the head is read: wait for a turn among the requests served
        except (gevent.GreenletExit, SystemExit):  # killed while waiting (shutdown): close the connection
            raise StopIteration from None
        try:
            return super().handle_request(listener_name, req, sock, addr)  # StopIteration: the connection is done
        finally:
            self.serving.release()


class FairGeventWorker(FairTurns, BoundedGeventWorker):
    """The gevent worker with fast paths on: :class:`BoundedGeventWorker` with turns between connections, one
    send a response and its settings read once (fastpath/gevent_worker.py)."""
