"""The header work a serving process keeps instead of redoing each request gives what gunicorn and Werkzeug
give (services/taskqueue/header_shortcuts.py)."""

from __future__ import annotations

import email.utils
import random
import socket
import time

import pytest
import requests
from gunicorn import util as gunicorn_util
from gunicorn.config import Config
from gunicorn.http import message as gunicorn_message
from gunicorn.http.parser import RequestParser
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response
from werkzeug.wrappers import response as werkzeug_response

from taskqueue import header_shortcuts
from taskqueue.gevent_worker import FairGeventWorker
from taskqueue.header_shortcuts import KnownPeers, PerSecondDate, PlainPathFirst
from tests.support import Generator

ORIGINALS = {
    (gunicorn_util, "http_date"): gunicorn_util.http_date,
    (gunicorn_message, "_ip_in_allow_list"): gunicorn_message._ip_in_allow_list,
    (werkzeug_response, "iri_to_uri"): werkzeug_response.iri_to_uri,
}


@pytest.fixture
def restored(monkeypatch):
    """The three functions as gunicorn and Werkzeug define them, put back after the test."""
    for (module, name), original in ORIGINALS.items():
        monkeypatch.setattr(module, name, original)


class Counting:
    """A function, counting its calls."""

    def __init__(self, func):
        self.func = func
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.func(*args)


def test_the_date_header_is_formatted_once_a_second_as_gunicorn_formats_it():
    clock = iter([1_700_000_000.25, 1_700_000_000.75, 1_700_000_000.99, 1_700_000_001.5, 1_700_000_001.6])
    fmt = Counting(ORIGINALS[(gunicorn_util, "http_date")])
    date = PerSecondDate(fmt)
    date.clock = lambda: next(clock)
    texts = [date() for _ in range(5)]
    seconds = [1_700_000_000] * 3 + [1_700_000_001] * 2
    assert texts == [email.utils.formatdate(t, usegmt=True) for t in seconds]
    assert texts[0] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert fmt.calls == 2  # one a second, not one a response
    assert date(86_400.0) == "Fri, 02 Jan 1970 00:00:00 GMT" and fmt.calls == 3  # a given timestamp: as asked


ALLOW_LISTS = [["127.0.0.1", "::1"], ["10.0.0.0/8"], ["*"], ["192.168.1.1", "fd00::/8"]]
PEERS = ["127.0.0.1", "10.1.2.3", "192.168.1.1", "192.168.1.2", "::1", "fd00::5", "not-an-address", ""]


def _networks(allow_list: list[str]) -> list:
    cfg = Config()
    cfg.set("forwarded_allow_ips", ",".join(allow_list))
    return cfg.forwarded_allow_networks()


def test_a_peer_is_trusted_exactly_when_gunicorn_would_trust_it_and_asked_once():
    check = Counting(ORIGINALS[(gunicorn_message, "_ip_in_allow_list")])
    known = KnownPeers(check)
    for _ in range(3):
        for allow_list in ALLOW_LISTS:
            networks = _networks(allow_list)
            for peer in PEERS:
                assert known(peer, allow_list, networks) == check.func(peer, allow_list, networks), (peer, allow_list)
    assert check.calls == len(ALLOW_LISTS) * len(PEERS)  # the first round asked; the next two were kept
    assert {known("127.0.0.1", a, _networks(a)) for a in ALLOW_LISTS[:2]} == {True, False}  # per allow list


def test_the_kept_answers_start_over_when_there_are_too_many(monkeypatch):
    monkeypatch.setattr(header_shortcuts, "MAX_PEERS", 4)
    check = Counting(ORIGINALS[(gunicorn_message, "_ip_in_allow_list")])
    known = KnownPeers(check)
    allow, networks = ["10.0.0.0/8"], _networks(["10.0.0.0/8"])
    for i in range(10):
        assert known(f"10.0.0.{i}", allow, networks)
    assert len(known._known) <= 4 and check.calls == 10
    assert known("10.0.0.9", allow, networks) and check.calls == 10  # the newest is kept


def _scheme(peer: str, cfg: Config) -> str:
    """gunicorn's parser on a request that claims HTTPS through X-Forwarded-Proto, from ``peer``."""
    client, server = socket.socketpair()
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Forwarded-Proto: https\r\n\r\n")
        return next(iter(RequestParser(cfg, server, (peer, 40000)))).scheme
    finally:
        client.close()
        server.close()


def test_gunicorn_still_takes_forwarding_headers_from_trusted_proxies_only(restored):
    header_shortcuts.install()
    cfg = Config()
    cfg.set("forwarded_allow_ips", "10.0.0.0/8")
    assert isinstance(gunicorn_message._ip_in_allow_list, KnownPeers)
    for _ in range(2):  # the second time from what was kept
        assert _scheme("10.9.8.7", cfg) == "https"
        assert _scheme("127.0.0.1", cfg) == "http"
    assert set(gunicorn_message._ip_in_allow_list._known) == {
        ("10.9.8.7", ("10.0.0.0/8",)),
        ("127.0.0.1", ("10.0.0.0/8",)),
    }


# Characters around the edges of what iri_to_uri quotes, and the URL parts it splits on.
ALPHABET = "az09-._~!$&'()*+,;=:@/%?#[] \"<>\\^`{|}\té€\u2603"


def _outcome(convert, iri: str) -> tuple[str, str]:
    """What ``convert`` gives for ``iri``: its result, or the error it raises (a malformed host does)."""
    try:
        return "uri", convert(iri)
    except ValueError as exc:
        return "error", repr(exc)


def test_a_location_is_converted_exactly_as_werkzeug_converts_it():
    rnd = random.Random(7)
    convert = Counting(iri_to_uri)
    shortcut = PlainPathFirst(convert)
    samples = ["/", "/status/0f8fad5b-d9cb-469f-a165-70867728950e", "/api/status/x%20y", "//host/p", "/a?", "/a#"]
    samples += ["/" + "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 12))) for _ in range(3000)]
    samples += ["".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 12))) for _ in range(1000)]
    for s in samples:
        assert _outcome(shortcut, s) == _outcome(iri_to_uri, s), s
    assert 0 < convert.calls < len(samples)  # both ways were taken
    convert.calls = 0
    shortcut("/status/0f8fad5b-d9cb-469f-a165-70867728950e")
    assert convert.calls == 0  # the API's status URLs: as they are


def test_a_response_location_is_what_werkzeug_would_send(restored):
    iri = "/caf\u00e9/status/1?x=\u2603"
    stock = Response(status=202, headers={"Location": iri}).get_wsgi_headers({})["Location"]
    header_shortcuts.install()
    ours = Response(status=202, headers={"Location": iri}).get_wsgi_headers({})["Location"]
    assert ours == stock == "/caf%C3%A9/status/1?x=%E2%98%83"


def test_install_is_idempotent(restored):
    header_shortcuts.install()
    installed = (gunicorn_util.http_date, gunicorn_message._ip_in_allow_list, werkzeug_response.iri_to_uri)
    header_shortcuts.install()
    assert (gunicorn_util.http_date, gunicorn_message._ip_in_allow_list, werkzeug_response.iri_to_uri) == installed
    assert isinstance(installed[0], PerSecondDate)
    assert installed[0].format_date is ORIGINALS[(gunicorn_util, "http_date")]


def test_the_worker_installs_them_before_it_serves(restored, monkeypatch):
    """FairGeventWorker's wiring: gunicorn's init_process (a stand-in here; the real one would run the
    worker) already finds the shortcuts in place."""
    seen = []
    monkeypatch.setattr(
        GeventWorker, "init_process", lambda self: seen.append((gunicorn_util.http_date, werkzeug_response.iri_to_uri))
    )
    worker = object.__new__(FairGeventWorker)
    worker.cfg = Config()
    FairGeventWorker.init_process(worker)
    assert isinstance(seen[0][0], PerSecondDate) and isinstance(seen[0][1], PlainPathFirst)
    assert isinstance(gunicorn_message._ip_in_allow_list, KnownPeers)


def test_the_generator_sends_the_current_date_and_its_status_location(app_env, tmp_path):
    """Through gunicorn and the worker that installs the shortcuts: a Date of now, a Location as before."""
    gen = Generator(app_env, tmp_path, web_workers=1).start()
    try:
        for _ in range(3):
            r = requests.get(f"http://127.0.0.1:{gen.port}/start?delay=0", timeout=10)
            sent = email.utils.parsedate_to_datetime(r.headers["Date"])
            assert abs(sent.timestamp() - time.time()) < 2, r.headers["Date"]
            assert r.headers["Location"] == r.json()["statusUrl"] == f"/status/{r.json()['jobId']}"
    finally:
        gen.stop()
