"""gunicorn's gevent worker, made to take turns between kept-alive connections.

A gevent greenlet runs until it blocks. gunicorn's worker serves a kept-alive connection in one
greenlet, and reading the next request blocks only when none has arrived yet: a client that
pipelines requests, or answers faster than the process serves, keeps that greenlet busy, and the
process's other connections (and its accept loop) wait for it to run dry. So after a request that
never waited for I/O (the event loop did not turn while it ran: ``/healthz``, a refused request), the
greenlet waits for the loop's next turn, which polls for I/O and runs every connection ready by
then first. (``gevent.sleep(0)`` would not do: gevent runs callbacks queued meanwhile in the same
pass and polls only every 50 of them.) A request that waited on Redis has let the others run
already; yielding after it too cost ~4 % of ``/start``'s throughput. See docs/performance.md,
change 10, for the figures.
"""

from __future__ import annotations

import gevent
from gunicorn.workers.ggevent import GeventWorker

# A timer this short fires at the loop's next turn, after its poll for I/O.
NEXT_TURN = 1e-6


class FairGeventWorker(GeventWorker):
    """:class:`GeventWorker` that gives the process's other greenlets a turn after a request that had none."""

    def handle_request(self, listener_name, req, sock, addr):
        loop = gevent.get_hub().loop
        turns = loop.iteration  # libev's count of loop turns (libuv's loop says -1 always: always yields)
        super().handle_request(listener_name, req, sock, addr)  # StopIteration: the connection is done
        if loop.iteration == turns:
            try:
                gevent.sleep(NEXT_TURN)
            except (gevent.GreenletExit, SystemExit):  # killed while in line (shutdown): close, no error
                raise StopIteration from None
