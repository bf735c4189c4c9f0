"""gunicorn's gevent worker, made to take turns between kept-alive connections.

A gevent greenlet runs until it blocks. gunicorn's worker serves a kept-alive connection in one
greenlet, and reading the next request blocks only when none has arrived yet: a client that
pipelines requests, or answers faster than the process serves, keeps that greenlet busy, and the
process's other connections (and its accept loop) wait for it to run dry. So after a request that
never waited for I/O (the event loop did not turn while it ran: ``/healthz``, a refused request), the
greenlet yields to the event loop, and the connection goes to the back of the line. A request that
waited on Redis has let the others run already; yielding after it too cost ~4 % of ``/start``'s
throughput. Under wrk at 8 connections this cut the p99 of ``/healthz`` from ~90 ms to ~20 ms
(docs/performance.md, change 10).
"""

from __future__ import annotations

import gevent
from gunicorn.workers.ggevent import GeventWorker


class FairGeventWorker(GeventWorker):
    """:class:`GeventWorker` that gives the process's other greenlets a turn after a request that had none."""

    def handle_request(self, listener_name, req, sock, addr):
        loop = gevent.get_hub().loop
        turns = getattr(loop, "iteration", None)  # libev's loop count; a loop without one: always yield
        handled = super().handle_request(listener_name, req, sock, addr)
        if turns is None or loop.iteration == turns:
            gevent.sleep(0)  # a connection that is done raised StopIteration above: no turn to give up
        return handled
