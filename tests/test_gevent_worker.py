"""The generator's gevent worker takes turns between connections and answers in one send
(services/taskqueue/gevent_worker.py)."""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response
from gunicorn.workers.ggevent import GeventWorker

from taskqueue.fastpath.gevent_worker import HeadersWithBody, ReadOnceConfig
from taskqueue.server.workers import FairGeventWorker

PIPELINED = 400
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
STATUS_LINE = b"HTTP/1.1 200 "
DATE = re.compile(rb"Date: [^\r]*\r\n")


def _count_responses(sock: socket.socket, want: int, seen: list[int]) -> None:
    """Read from ``sock`` until ``want`` response status lines have come, counting them in ``seen[0]``."""
    data = b""
    while seen[0] < want:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
        seen[0] = data.count(STATUS_LINE)


def test_a_client_pipelining_requests_does_not_hold_up_another_connection(processes):
    """One process, one client with 400 requests pipelined on its connection: a request sent on a
    second, open connection once the first answers have come is answered after a few more of them,
    not after all (stock GeventWorker: after all 400, checked by hand)."""
    gen = processes.generator(web_workers=1)
    busy = socket.create_connection(("127.0.0.1", gen.port), timeout=30)
    other = socket.create_connection(("127.0.0.1", gen.port), timeout=30)
    with busy, other:
        seen = [0]
        reader = threading.Thread(target=_count_responses, args=(busy, PIPELINED, seen), daemon=True)
        reader.start()
        busy.sendall(REQUEST * PIPELINED)
        deadline = time.monotonic() + 10
        while seen[0] == 0 and time.monotonic() < deadline:  # the process is busy with the pipeline
            time.sleep(0.0005)
        other.sendall(REQUEST)
        answer = other.recv(65536)
        served_before = seen[0]  # the reader may lag: an undercount, bounded by what it has read
        reader.join(timeout=30)
        assert answer.startswith(STATUS_LINE)
        assert seen[0] == PIPELINED, "every pipelined request is answered"
        assert served_before < PIPELINED // 4, f"the other connection waited for {served_before} requests"


# -- one send a response: gunicorn's own Response writing to a socket that keeps message boundaries --


@contextlib.contextmanager
def _response_to(method: str, wrap: Callable[[socket.socket], object]) -> Iterator[tuple[Response, socket.socket]]:
    """gunicorn's Response for a real ``method /`` request, writing to ``wrap(sock)``, where ``sock``
    is a SOCK_SEQPACKET socket: every send arrives as one message at the peer it yields."""
    cfg = Config()
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        client.sendall(f"{method} / HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        req = next(iter(RequestParser(cfg, server, ("127.0.0.1", 1))))
        yield Response(req, wrap(out), cfg), peer
    finally:
        for s in (client, server, out, peer):
            s.close()


def _messages(peer: socket.socket) -> list[bytes]:
    """Every message the peer has been sent so far (the Date header's value blanked: runs differ in it)."""
    peer.settimeout(0.2)
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(DATE.sub(b"Date: -\r\n", peer.recv(1 << 20)))
    return got


def _respond(resp: Response, body: list[bytes], length: bool = True) -> None:
    headers = [("Content-Type", "application/json")]
    if length:
        headers.append(("Content-Length", str(sum(map(len, body)))))
    resp.start_response("200 OK", headers)
    for chunk in body:
        resp.write(chunk)
    resp.close()


def test_headers_and_body_leave_in_one_send_where_gunicorn_makes_two():
    body = [b'{"jobId": "x"}\n']
    with _response_to("GET", lambda s: s) as (resp, peer):
        _respond(resp, body)
        stock = _messages(peer)
    with _response_to("GET", HeadersWithBody) as (resp, peer):
        _respond(resp, body)
        resp.sock.flush()
        ours = _messages(peer)
    assert len(stock) == 2, stock  # what the wrapper is for: status line and headers, then the body
    assert ours == [b"".join(stock)]
    assert ours[0].startswith(b"HTTP/1.1 200 OK\r\n") and ours[0].endswith(b"\r\n\r\n" + body[0])


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_a_response_without_body_bytes_is_sent_whole_at_its_end(method):
    """HEAD (gunicorn drops the body) and an empty body: the held headers go out when the worker
    flushes after the request, once."""
    with _response_to(method, HeadersWithBody) as (resp, peer):
        _respond(resp, [b"ignored"] if method == "HEAD" else [])
        before = _messages(peer)
        resp.sock.flush()
        after = _messages(peer)
        resp.sock.flush()
        again = _messages(peer)
    assert before == []  # no write follows the headers: they wait for the flush
    sent = before + after
    assert len(sent) == 1 and sent[0].startswith(b"HTTP/1.1 200 OK\r\n") and sent[0].endswith(b"\r\n\r\n")
    assert again == []


def test_a_streamed_response_sends_its_headers_with_the_first_chunk_and_the_rest_as_written():
    chunks = [b"first", b"second", b"third"]
    with _response_to("GET", lambda s: s) as (resp, peer):
        _respond(resp, chunks, length=False)  # no length: gunicorn sends it chunked
        stock = _messages(peer)
    with _response_to("GET", HeadersWithBody) as (resp, peer):
        _respond(resp, chunks, length=False)
        resp.sock.flush()
        ours = _messages(peer)
    assert b"".join(ours) == b"".join(stock)
    assert len(ours) == len(stock) - 1 and ours[0] == stock[0] + stock[1]


def test_any_other_use_of_the_socket_sends_the_held_headers_first():
    """gunicorn's sendfile path (and anything else reaching for the raw socket) keeps the byte order."""
    with _response_to("GET", HeadersWithBody) as (resp, peer):
        resp.start_response("200 OK", [("Content-Length", "4")])
        resp.send_headers()
        assert _messages(peer) == []
        resp.sock.send(b"body")  # not sendall: the raw socket's own method
        sent = _messages(peer)
    assert len(sent) == 2 and sent[0].endswith(b"\r\n\r\n") and sent[1] == b"body"


def test_the_generator_answers_pipelined_get_and_head_requests_whole(processes):
    """Through gunicorn and the gevent worker: keep-alive answers of both kinds, each complete, in order."""
    gen = processes.generator(web_workers=1)
    with socket.create_connection(("127.0.0.1", gen.port), timeout=10) as conn:
        head = b"HEAD /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
        conn.sendall(REQUEST + head + REQUEST + b"GET /list HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    answers = [b"HTTP/1.1 " + a for a in data.split(b"HTTP/1.1 ")[1:]]
    assert [a[9:12] for a in answers] == [b"200"] * 4, data
    healthz = answers[0].partition(b"\r\n\r\n")
    length = int(next(h for h in healthz[0].split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    assert len(healthz[2]) == length > 0  # GET: its body, whole
    assert answers[1].endswith(b"\r\n\r\n") and answers[1].partition(b"\r\n\r\n")[2] == b""  # HEAD: none
    assert b'"jobs"' in answers[3] or b"[" in answers[3]


def test_the_worker_hands_gunicorn_the_held_socket_and_flushes_it_when_the_connection_ends(monkeypatch):
    """FairGeventWorker's wiring. gunicorn's own handle_request is replaced here (a stand-in, not the
    real one: this checks what our override passes down and does after it, the rest is the tests above)
    by one that writes headers and ends the connection, as a HEAD with ``Connection: close`` does."""
    got = []

    def gunicorn_handle_request(self, listener_name, req, sock, addr):
        got.append(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        raise StopIteration  # gunicorn: the connection is done

    monkeypatch.setattr(GeventWorker, "handle_request", gunicorn_handle_request)
    out, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(StopIteration):
            FairGeventWorker.handle_request(object.__new__(FairGeventWorker), "l", None, out, None)
        assert isinstance(got[0], HeadersWithBody)
        assert _messages(peer) == [b"HTTP/1.1 200 OK\r\n\r\n"]
    finally:
        out.close()
        peer.close()


class CountingConfig(Config):
    """gunicorn's Config, counting the settings looked up through its ``__getattr__``."""

    def __init__(self):
        super().__init__()
        self.lookups: list[str] = []

    def __getattr__(self, name):
        if name != "settings":
            self.__dict__.setdefault("lookups", []).append(name)
        return super().__getattr__(name)


def test_a_worker_looks_each_setting_up_in_gunicorns_config_once():
    cfg = CountingConfig()
    cfg.set("keepalive", 7)
    once = ReadOnceConfig(cfg)
    assert [once.keepalive for _ in range(3)] == [7, 7, 7]
    assert [once.is_ssl for _ in range(2)] == [None, None]  # a Config property (certfile or keyfile), computed once
    assert cfg.lookups.count("keepalive") == 1 and cfg.lookups.count("certfile") == 1
    for _ in range(2):
        with pytest.raises(AttributeError):
            once.no_such_setting  # noqa: B018  # unknown: an error each time, like Config, never kept
    assert cfg.lookups.count("no_such_setting") == 2


def test_the_read_once_view_can_be_copied_like_a_config():
    """A hook may copy the worker's ``cfg``: copy.copy makes the copy without ``_cfg`` set, and asks for it."""
    cfg = Config()
    cfg.set("keepalive", 9)
    once = ReadOnceConfig(cfg)
    assert once.keepalive == 9
    assert copy.copy(once).keepalive == copy.deepcopy(once).keepalive == 9


def test_the_worker_reads_its_settings_once_from_the_start_of_its_process(monkeypatch):
    """FairGeventWorker's wiring: gunicorn's init_process (a stand-in here, recording what it sees; the real
    one would run the worker) already finds the read-once view, wrapping the Config the arbiter passed."""
    seen = []
    monkeypatch.setattr(GeventWorker, "init_process", lambda self: seen.append(self.cfg))
    worker = object.__new__(FairGeventWorker)
    worker.cfg, worker.app = (cfg := Config()), None  # not the generator's app: no shared connection counts
    FairGeventWorker.init_process(worker)
    assert isinstance(seen[0], ReadOnceConfig) and seen[0]._cfg is cfg and worker.cfg is seen[0]
