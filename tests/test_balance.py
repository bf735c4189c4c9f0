"""Connections spread over the generator's processes (server/balance.py): the counts are shared between
real forked processes, and a process over its share answers with ``Connection: close``."""

from __future__ import annotations

import multiprocessing

import requests
from gunicorn.workers.ggevent import GeventWorker

from taskqueue.server.balance import ConnectionShare
from taskqueue.server.workers import BoundedGeventWorker
from tests.support import Generator


def _hold(share: ConnectionShare, n: int, ready, done) -> None:
    share.join()
    for _ in range(n):
        share.opened()
    ready.put(share.over())
    done.wait(10)


def test_processes_forked_after_it_is_made_see_each_others_counts():
    share = ConnectionShare(2)  # made in the master, as GeneratorServer makes it
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Queue(), ctx.Event()
    other = ctx.Process(target=_hold, args=(share, 6, ready, done))
    other.start()
    try:
        assert ready.get(timeout=10) is True  # it holds 6 of 6: its share is 3
        share.join()  # this process as the second worker
        for _ in range(3):
            share.opened()
        assert share.over() is False  # 3 of 9: share 5
        for _ in range(5):
            share.opened()
        assert share.over() is True  # 8 of 14: share 7
        for _ in range(5):
            share.closed()
    finally:
        done.set()
        other.join(10)
    assert share.over() is False  # 3 of 9 still: the ended process's slot still counts...
    share.leave(other.pid)  # ...until the master frees it
    assert share.over() is True  # 3 of 3: share 2


def test_a_process_over_its_share_closes_the_connection_after_the_response(monkeypatch):
    """The wiring, with gunicorn's handle_request replaced by a stand-in that records the request."""
    seen = []
    monkeypatch.setattr(GeventWorker, "handle_request", lambda self, name, req, sock, addr: seen.append(req))

    class Req:
        must_close = False

    worker = object.__new__(BoundedGeventWorker)
    worker.share = ConnectionShare(2)
    worker.share.join()
    worker.share.opened()
    worker.handle_request("l", Req(), None, None)  # 1 of 1 connection, share 1: not over
    worker.share.opened()
    worker.handle_request("l", Req(), None, None)  # 2 of 2, share 1: over
    assert [r.must_close for r in seen] == [False, True]


def test_the_generator_answers_connection_close_only_to_rebalance(app_env, tmp_path):
    """One process, many connections: never over its share, so no kept-alive connection is closed."""
    gen = Generator(app_env, tmp_path, web_workers=1).start()
    try:
        sessions = [requests.Session() for _ in range(8)]
        answers = [s.get(gen.base + "/healthz", timeout=5).headers.get("Connection", "") for s in sessions * 3]
        assert "close" not in {a.lower() for a in answers}
    finally:
        gen.stop()
