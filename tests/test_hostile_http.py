"""Hostile HTTP against the real stack (issue 20): never a 5xx, always the API's JSON error, and the request
does what it says or nothing. Real redis-server, real gunicorn (each web worker class where the server's own
code answers), raw sockets on 127.0.0.1 for what no HTTP client would send."""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import FAST_ENV
from tests.support import Generator, Service, wait_for

MAX_BODY = 1024 * 1024  # app.config MAX_CONTENT_LENGTH
WEB_WORKER_CLASSES = ("gevent", "gthread", "sync")
IO_TIMEOUT = 10.0


# -- raw HTTP over a socket -------------------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP response as read off the socket."""

    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def error(self) -> dict[str, str]:
        """The ``error`` object of a JSON error body; fails the test if the answer is anything else."""
        assert self.headers.get("content-type") == "application/json", (self.status, self.headers, self.body)
        doc = json.loads(self.body)
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
        assert all(isinstance(v, str) and v for v in doc["error"].values()), doc
        return doc["error"]


def _send(sock: socket.socket, data: bytes, shut: bool) -> None:
    """Send ``data`` (then end the sending side if ``shut``); a server that answered and closed early is fine."""
    with contextlib.suppress(OSError):
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)


def exchange(port: int, data: bytes, *, shut: bool = False) -> Answer:
    """Send raw bytes to 127.0.0.1:``port`` and read one response (by its Content-Length).

    The bytes go from another thread, so a server that answers before it has read them all (a refusal)
    cannot leave both sides waiting on full socket buffers.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sender = threading.Thread(target=_send, args=(sock, data, shut), daemon=True)
        sender.start()
        raw = b""
        with contextlib.suppress(ConnectionResetError):  # closed with bytes unread: what came stays
            while b"\r\n\r\n" not in raw:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head_bytes, _, body = raw.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1."), raw[:300]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        with contextlib.suppress(ConnectionResetError):  # closed with bytes unread: what came stays
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        sender.join(IO_TIMEOUT)
    return Answer(int(lines[0].split()[1]), headers, body)


def post(path: str, body: bytes, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    """A JSON POST: ``body`` sent as is, after a Content-Length or a chunked Transfer-Encoding header."""
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % len(body)
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\n" + extra + framing + b"\r\n" + body
    )


def chunks(data: bytes, size: int = 65536) -> bytes:
    """``data`` as a well-formed chunked body."""
    parts = [b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def jobs_in_redis(redis_client) -> int:
    """Jobs stored or queued: ``rq:job:*`` hashes plus the default queue's length."""
    return sum(1 for _ in redis_client.scan_iter(match="rq:job:*", count=1000)) + redis_client.llen("rq:queue:default")


def _shared_generator(redis_server, tmp_path_factory, worker_class: str) -> Generator:
    env = {**redis_server.env(), **FAST_ENV, "TASKQUEUE_WEB_WORKER_CLASS": worker_class}
    return Generator(env, tmp_path_factory.mktemp(f"web-{worker_class}")).start()


@pytest.fixture(scope="module", params=WEB_WORKER_CLASSES)
def web(request, redis_server, tmp_path_factory) -> Iterator[Generator]:
    """The generator under each web worker class, for what the server answers itself (each test flushes Redis)."""
    gen = _shared_generator(redis_server, tmp_path_factory, request.param)
    yield gen
    gen.kill()


@pytest.fixture(scope="module")
def app_web(redis_server, tmp_path_factory) -> Iterator[Generator]:
    """The default generator (gevent), shared by the module's tests of what the app answers."""
    gen = _shared_generator(redis_server, tmp_path_factory, "gevent")
    yield gen
    gen.kill()


JOB = b'{"task": "noop", "args": {}}'
BATCH = b'{"jobs": [{"task": "noop", "args": {}}]}'


# -- 1. JSON nested thousands deep ---------------------------------------------------------------------------

DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        b'{"task": "noop", "args": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        b'{"jobs": [' + b"[" * DEEP + b"]" * DEEP + b"]}",
    ],
    ids=["lists", "objects", "deep-args", "deep-batch-item"],
)
@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch"])
def test_json_nested_thousands_deep_is_a_400_and_enqueues_nothing(app_web, redis_client, path, body):
    answer = exchange(app_web.port, post(path, body))
    assert answer.status == 400, answer
    assert answer.error()["code"] == "invalid_json"
    assert jobs_in_redis(redis_client) == 0
    # The process is fine after it: the same route still serves.
    assert exchange(app_web.port, post(path, JOB if path == "/jobs" else BATCH)).status == 202


# -- 2. chunked framing --------------------------------------------------------------------------------------

BAD_FRAMING = {
    "bad-size": b"zz\r\n" + JOB + b"\r\n0\r\n\r\n",
    "size-not-hex": b"1g\r\n{\r\n0\r\n\r\n",
    "no-crlf-after-chunk": b"%x\r\n%sXX0\r\n\r\n" % (len(JOB), JOB),
    "bare-cr-extension": b"%x;a\rb\r\n%s\r\n0\r\n\r\n" % (len(JOB), JOB),
    "truncated-chunk": b"%x\r\n%s" % (len(JOB) + 40, JOB),
    "no-last-chunk": b"%x\r\n%s\r\n" % (len(JOB), JOB),
}


@pytest.mark.parametrize("framing", list(BAD_FRAMING))
@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch"])
def test_malformed_chunked_framing_is_a_400_and_enqueues_nothing(web, redis_client, path, framing):
    """The body ends where the client stops sending (the cut-short cases): never read as a whole request."""
    answer = exchange(web.port, post(path, BAD_FRAMING[framing], chunked=True), shut=True)
    assert answer.status == 400, answer
    assert answer.error()["code"] == "invalid_body"
    assert jobs_in_redis(redis_client) == 0


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_over_the_limit_is_a_413_however_it_is_framed_and_one_at_the_limit_is_served(
    app_web, redis_client, chunked
):
    at_limit = JOB + b" " * (MAX_BODY - len(JOB))  # valid JSON, exactly MAX_CONTENT_LENGTH bytes
    over = at_limit + b" "
    for body, status in ((over, 413), (over + b" " * MAX_BODY, 413), (at_limit, 202)):
        framed = chunks(body) if chunked else body
        answer = exchange(app_web.port, post("/jobs", framed, chunked=chunked))
        assert answer.status == status, (len(body), answer.status, answer.body[:200])
        if status == 413:
            assert answer.error()["code"] == "payload_too_large"
            assert jobs_in_redis(redis_client) == 0
    assert jobs_in_redis(redis_client) == 2  # the one at the limit: its hash and its queue entry


# -- 3. gunicorn's own refusals --------------------------------------------------------------------------------

GET = b"GET /healthz HTTP/1.1\r\nHost: test\r\n"
REFUSALS = {
    "request-line-too-long": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", {414}),
    "too-many-header-fields": (GET + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", {431, 400}),
    "header-field-too-large": (GET + b"X-Big: " + b"a" * 8200 + b"\r\n\r\n", {431, 400}),
    "invalid-request-line": (b"GARBAGE\r\n\r\n", {400}),
    "invalid-method": (b"G@T /healthz HTTP/1.1\r\nHost: test\r\n\r\n", {400}),
    "invalid-version": (b"GET /healthz HTTP/9.9\r\nHost: test\r\n\r\n", {400}),
    "invalid-header-name": (GET + b"Bad Header: x\r\n\r\n", {400}),
    "two-content-lengths": (GET + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", {400}),
    "unsupported-transfer-encoding": (GET + b"Transfer-Encoding: frobnicate\r\n\r\n", {501}),
    "chunked-then-gzip": (GET + b"Transfer-Encoding: chunked, gzip\r\n\r\n", {400}),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_gunicorns_own_refusals_are_json_with_gunicorns_status(web, refusal):
    data, statuses = REFUSALS[refusal]
    answer = exchange(web.port, data, shut=True)
    assert answer.status in statuses, answer
    error = answer.error()
    assert error["code"] != "internal_error" and len(error["message"]) <= 200
    assert answer.headers.get("connection") == "close"
    # Refused before the app: the server goes on serving.
    assert requests.get(web.base + "/healthz", timeout=IO_TIMEOUT).json() == {"status": "ok"}


# -- 4. the mount point is the server's, not the client's -------------------------------------------------------

MOUNT_HEADERS = [
    b"SCRIPT_NAME: /evil\r\n",  # not a prefix of the path (gunicorn: 500 HTML, before)
    b"script_name: /evil\r\n",
    b"SCRIPT_NAME: /start\r\n",  # a prefix of /start: would move the route and the URLs (before: 404)
    b"Script_Name: /jobs\r\n",
    b"SCRIPT_NAME: /evil\r\nSCRIPT_NAME: /x\r\n",
]


def _enqueue_requests(extra: bytes) -> list[tuple[str, bytes]]:
    """The routes that answer with status URLs, each sent with the ``extra`` header lines."""
    get = b"GET /start?delay=1 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + extra + b"\r\n"
    return [
        ("start", get),
        ("jobs", post("/jobs", JOB, extra=extra)),
        ("batch", post("/jobs/batch", BATCH, extra=extra)),
    ]


@pytest.mark.parametrize("header", MOUNT_HEADERS, ids=lambda h: h.decode().strip().replace("\r\n", "+"))
def test_a_script_name_header_from_a_trusted_peer_moves_nothing(web, redis_client, header):
    """127.0.0.1 is in gunicorn's forwarded_allow_ips by default; the header is ignored all the same."""
    for route, data in _enqueue_requests(header):
        answer = exchange(web.port, data)
        assert answer.status in {200, 202}, (route, answer)
        doc = json.loads(answer.body)
        jobs = doc["jobs"] if route == "batch" else [doc]
        for job in jobs:
            assert job["statusUrl"] == "/status/" + job["jobId"], (route, job)
            got = requests.get(web.base + job["statusUrl"], timeout=IO_TIMEOUT)
            assert got.status_code == 200 and got.json()["jobId"] == job["jobId"]
        if route != "batch":
            assert answer.headers["location"] == doc["statusUrl"]
    assert jobs_in_redis(redis_client) == 2 * 3  # three jobs: each a hash and a queue entry


def test_a_mount_point_set_by_the_server_is_kept_and_a_path_outside_it_is_a_json_404(app_env, tmp_path, processes):
    """gunicorn's SCRIPT_NAME environment variable mounts the app: statusUrl carries it; elsewhere, 404 JSON."""
    gen = processes.add(Generator({**app_env, "SCRIPT_NAME": "/tq"}, tmp_path))
    Service.start(gen)  # without Generator.start's probe of /healthz: it is /tq/healthz here
    wait_for(lambda: requests.get(gen.base + "/tq/healthz", timeout=1).ok, what="mounted generator")
    for extra in (b"", b"SCRIPT_NAME: /evil\r\n"):
        data = b"GET /tq/start?delay=1 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + extra + b"\r\n"
        doc = json.loads(exchange(gen.port, data).body)
        assert doc["statusUrl"] == "/tq/status/" + doc["jobId"]
    for path in ("/start?delay=1", "/healthz", "/t"):
        answer = exchange(gen.port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: test\r\n\r\n", shut=True)
        assert answer.status == 404, (path, answer)
        assert answer.error()["code"] == "not_found"


# -- 5. HEAD has no side effect ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/start", "/start?delay=1", "/start?delay=0&x=1"],
)
@pytest.mark.parametrize("idempotency_key", [None, "head-key-1"])
def test_head_on_a_route_that_enqueues_is_405_and_enqueues_nothing(app_web, redis_client, target, idempotency_key):
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    r = requests.head(app_web.base + target, headers=headers, timeout=IO_TIMEOUT)
    assert r.status_code == 405
    assert set(r.headers["Allow"].replace(" ", "").split(",")) == {"GET", "OPTIONS"}
    assert r.headers["Content-Type"] == "application/json" and "Location" not in r.headers
    assert jobs_in_redis(redis_client) == 0 and not redis_client.keys("taskqueue:idempotency:*")
    # The same request as GET does what it says, once (and PUT names the same methods).
    assert requests.get(app_web.base + target, headers=headers, timeout=IO_TIMEOUT).status_code == 200
    assert jobs_in_redis(redis_client) == 2
    put = requests.put(app_web.base + target, timeout=IO_TIMEOUT)
    assert put.status_code == 405 and put.headers["Allow"] == r.headers["Allow"]


@pytest.mark.parametrize("path", ["/healthz", "/list", "/openapi.json"])
def test_head_on_a_read_only_route_still_answers_200_without_a_body(app_web, redis_client, path):
    r = requests.head(app_web.base + path, timeout=IO_TIMEOUT)
    assert r.status_code == 200 and r.content == b""
    assert jobs_in_redis(redis_client) == 0


# -- 6. integer parameters: ASCII digits, all of it ---------------------------------------------------------------

NOT_INTEGERS = ["1\n", "1\r", "1\r\n", "1 ", " 1", "+1", "\u0661", "1\u0661", "0x1", "1.0", "", "-0"]


@pytest.mark.parametrize("raw", NOT_INTEGERS, ids=repr)
@pytest.mark.parametrize(("path", "name"), [("/start", "delay"), ("/list", "limit"), ("/list", "offset")])
def test_an_integer_parameter_is_ascii_digits_and_nothing_else(app_web, redis_client, path, name, raw):
    r = requests.get(app_web.base + path, params={name: raw}, timeout=IO_TIMEOUT)
    assert r.status_code == 400, (r.url, r.text)
    assert r.json()["error"]["code"] == f"invalid_{name}"
    assert jobs_in_redis(redis_client) == 0
    assert requests.get(app_web.base + path, params={name: "1"}, timeout=IO_TIMEOUT).status_code == 200


# -- 7. a batch that can never fit ---------------------------------------------------------------------------------

SMALL_BACKLOG = 5


@pytest.fixture
def small_backlog(app_env, tmp_path) -> Iterator[Generator]:
    gen = Generator({**app_env, "TASKQUEUE_MAX_BACKLOG": str(SMALL_BACKLOG)}, tmp_path).start()
    yield gen
    gen.kill()


def _batch(n: int) -> dict:
    return {"jobs": [{"task": "noop", "args": {}}] * n}


def test_a_batch_larger_than_the_backlog_is_413_naming_the_limit_not_a_429(small_backlog, redis_client):
    for n in (SMALL_BACKLOG + 1, 50, 1000):
        r = requests.post(small_backlog.base + "/jobs/batch", json=_batch(n), timeout=IO_TIMEOUT)
        assert r.status_code == 413, (n, r.text)
        assert "Retry-After" not in r.headers
        error = r.json()["error"]
        assert error["code"] == "batch_over_backlog"
        assert "TASKQUEUE_MAX_BACKLOG" in error["message"] and str(SMALL_BACKLOG) in error["message"]
        assert jobs_in_redis(redis_client) == 0
    # One that fits is served; then one that fits the limit but not the room left is the 429 that can clear.
    assert requests.post(small_backlog.base + "/jobs/batch", json=_batch(3), timeout=IO_TIMEOUT).status_code == 202
    full = requests.post(small_backlog.base + "/jobs/batch", json=_batch(SMALL_BACKLOG), timeout=IO_TIMEOUT)
    assert full.status_code == 429 and int(full.headers["Retry-After"]) > 0
    assert redis_client.llen("rq:queue:default") == 3


# -- 8. slowloris -------------------------------------------------------------------------------------------------

SLOW_CONNECTIONS = 200
SLOW_SECONDS = 20.0
SLOW_BYTE_EVERY = 2.0  # seconds between two bytes of a slow request head
START_EVERY = 0.1  # seconds between two /start requests of the measuring client
P99_BUDGET = 1.0


def slow_heads(port: int, connections: int, seconds: float, stop: threading.Event, counts: dict[str, int]) -> None:
    """Keep ``connections`` connections sending a request head a byte every SLOW_BYTE_EVERY seconds, for
    ``seconds``; one the server closes is opened again. ``counts``: those opened, and closed by the server."""
    head = GET
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[float]] = {}  # socket -> [bytes sent, when to send the next]
    counts.update(opened=0, closed_by_server=0)

    def open_one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        state[sock] = [0, time.monotonic()]
        sel.register(sock, selectors.EVENT_READ)
        counts["opened"] += 1

    for _ in range(connections):
        open_one()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not stop.is_set():
            for key, _ in sel.select(timeout=0.2):  # readable: the server answered or closed
                sock = key.fileobj
                sel.unregister(sock)
                sock.close()
                del state[sock]
                counts["closed_by_server"] += 1
                open_one()
            now = time.monotonic()
            for sock, st in state.items():
                if now >= st[1]:
                    sent = int(st[0])
                    with contextlib.suppress(OSError):  # not connected yet, or closed: the select above sees it
                        sock.send(head[sent : sent + 1] if sent < len(head) else b"X")
                    st[0], st[1] = sent + 1, now + SLOW_BYTE_EVERY
    finally:
        for sock in state:
            sock.close()
        sel.close()


def start_latencies(port: int, seconds: float) -> tuple[list[float], list[str]]:
    """``GET /start?delay=1`` on a new connection every START_EVERY seconds for ``seconds``: each one's time
    to its whole answer (a failure counts as IO_TIMEOUT), and the failures."""
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(latencies) < int(seconds / START_EVERY) + 1:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
            conn.request("GET", "/start?delay=1")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status != 200:
                failures.append(str(response.status))
            latencies.append(time.monotonic() - started)
        except OSError as exc:
            failures.append(repr(exc))
            latencies.append(IO_TIMEOUT)
        time.sleep(max(0.0, START_EVERY - (time.monotonic() - started)))
    return latencies, failures


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_slow_request_heads_do_not_hold_up_other_clients(generator: Generator):
    """200 connections trickle request heads for 20 s while another client calls /start: p99 <= 1 s.

    Before (2 processes x 100 connection slots): p99 4.9 s; ``TASKQUEUE_WEB_MAX_CONNECTIONS=100`` shows it again.
    """
    stop = threading.Event()
    attack: dict[str, int] = {}
    attacker = threading.Thread(
        target=slow_heads, args=(generator.port, SLOW_CONNECTIONS, SLOW_SECONDS + 5, stop, attack), daemon=True
    )
    attacker.start()
    try:
        wait_for(lambda: attack.get("opened", 0) >= SLOW_CONNECTIONS, timeout=5, what="the slow connections")
        latencies, failures = start_latencies(generator.port, SLOW_SECONDS)
    finally:
        stop.set()
        attacker.join(IO_TIMEOUT)
    figure = f"/start p99 {p99(latencies) * 1000:.0f} ms over {len(latencies)} requests; slow connections {attack}"
    print(figure)
    assert attack["opened"] >= SLOW_CONNECTIONS
    assert p99(latencies) <= P99_BUDGET, figure
    assert not failures, (failures[:5], figure)
    assert len(latencies) >= SLOW_SECONDS / START_EVERY / 2, figure


def test_slow_heads_take_no_request_slot_and_requests_in_flight_stay_bounded(app_env, processes):
    """One process, TASKQUEUE_WEB_CONNECTIONS=2: 50 slow heads leave /healthz served; two requests in flight
    (their bodies still coming) hold both request slots, so a third waits until one of them is done."""
    gen = processes.generator(web_workers=1, env={**app_env, "TASKQUEUE_WEB_CONNECTIONS": "2"})
    stop = threading.Event()
    heads: dict[str, int] = {}
    attacker = threading.Thread(target=slow_heads, args=(gen.port, 50, 30, stop, heads), daemon=True)
    in_flight = [socket.create_connection(("127.0.0.1", gen.port), timeout=IO_TIMEOUT) for _ in range(2)]
    waiting = socket.create_connection(("127.0.0.1", gen.port), timeout=IO_TIMEOUT)
    try:
        attacker.start()
        wait_for(lambda: heads.get("opened", 0) >= 50, timeout=5, what="the slow connections")
        assert requests.get(gen.base + "/healthz", timeout=IO_TIMEOUT).status_code == 200
        request = post("/jobs", JOB, extra=b"Expect: 100-continue\r\n")
        for sock in in_flight:  # gunicorn says "100 Continue" once it serves the request: it holds a slot
            sock.sendall(request[: -len(JOB)])
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(JOB[:5])  # and the app waits for the rest of the body
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        waiting.settimeout(1.0)
        with pytest.raises(TimeoutError):
            waiting.recv(65536)  # both request slots are held: no answer yet
        in_flight[0].sendall(JOB[5:])
        assert in_flight[0].recv(65536).startswith(b"HTTP/1.1 202 ")
        waiting.settimeout(IO_TIMEOUT)
        assert waiting.recv(65536).startswith(b"HTTP/1.1 200 ")  # served as soon as a slot was free
    finally:
        stop.set()
        attacker.join(IO_TIMEOUT)
        for sock in [*in_flight, waiting]:
            sock.close()
