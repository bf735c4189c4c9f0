"""fastpath/plain_start.py: plain ``GET /start`` answered outside Flask, byte for byte as the Flask view answers.

In-process (Flask's test client drives the WSGI app, real Redis), the same requests to an app with fast
paths on and one with them off; the generator processes of the other tests serve the same through gunicorn.
"""

from __future__ import annotations

import random
import re

import pytest
from flask import Flask, request

from taskqueue import config as config_module
from taskqueue.api.app import create_app
from taskqueue.fastpath.plain_start import PlainStart
from tests.support import free_port

PLAIN = ["/start", "/start?delay=0", "/start?delay=7", "/start?", "/start?delay=0000000012"]
NOT_PLAIN = [
    ("GET", "/start?delay=x", {}),  # 400 from Flask's view
    ("GET", "/start?delay=1&delay=2", {}),
    ("GET", "/start?delay=99999999", {}),  # over the limit: Flask's 400
    ("GET", "/start?x=1", {}),
    ("GET", "/start/", {}),
    ("HEAD", "/start", {}),
    ("POST", "/start", {}),
    ("GET", "/start?delay=1", {"Idempotency-Key": "key-of-{}"}),  # a key of its own for each app
    ("GET", "/start?delay=1", {"Authorization": "Bearer not-a-token-of-this-app"}),  # checked by the view: 401
]
JOB_ID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")  # RQ's ids, or ours (hex)
TIME = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+Z?")


def app_for(env: dict[str, str], switch: str) -> Flask:
    return create_app(config_module.load(environ={**env, "TASKQUEUE_FAST_PATHS": switch}))


def answer(
    app: Flask, method: str, url: str, headers: dict[str, str] | None = None, base_url: str = "http://localhost"
):
    """Status line, headers and body of one request, with the job id and times made comparable."""
    headers = {k: v.format(id(app)) for k, v in (headers or {}).items()}
    random.seed(url)  # the same random delay for the same URL
    r = app.test_client().open(url, method=method, headers=headers, base_url=base_url)
    same = lambda text: TIME.sub("<time>", JOB_ID.sub("<id>", text))  # noqa: E731
    return r.status, [(k, same(v)) for k, v in r.headers.items()], same(r.get_data(as_text=True))


def flask_dispatches(app: Flask) -> list[str]:
    """The paths Flask's own dispatch saw (a before-request hook), from now on."""
    seen: list[str] = []
    app.before_request(lambda: seen.append(request.full_path))
    return seen


def test_plain_starts_answer_as_the_flask_view_does(app_env, redis_client):
    on, off = app_for(app_env, "on"), app_for(app_env, "off")
    assert isinstance(on.wsgi_app, PlainStart) and not isinstance(off.wsgi_app, PlainStart)
    for url in PLAIN:
        fast, flask = answer(on, "GET", url), answer(off, "GET", url)
        assert fast[0] == "200 OK" and fast == flask, url
        if "delay=7" in url:
            assert "delay: 7 with id: <id>" in fast[2]
    enqueued = 2 * len(PLAIN)
    for method, url, headers in NOT_PLAIN:
        fast = answer(on, method, url, headers)
        assert fast == answer(off, method, url, headers), url
        enqueued += 2 * (fast[0] == "200 OK")  # ?x=1 and ?delay=1&delay=2 too: Flask reads the first delay
    assert redis_client.llen("rq:queue:default") == enqueued == 2 * len(PLAIN) + 6


def test_refusals_of_a_plain_start_answer_as_the_flask_view_does(app_env, redis_client):
    """Backlog full (429), Redis full (503) and Redis unreachable (503): the error handlers' answers."""
    full = {**app_env, "TASKQUEUE_MAX_BACKLOG": "1"}
    assert answer(app_for(full, "on"), "GET", "/start")[0] == "200 OK"
    for url in ("/start", "/start?delay=3"):
        fast, flask = answer(app_for(full, "on"), "GET", url), answer(app_for(full, "off"), "GET", url)
        assert fast[0] == "429 TOO MANY REQUESTS" and fast == flask
        assert ("Retry-After", "10") in fast[1]
    redis_client.flushall()
    maxmemory = redis_client.config_get("maxmemory")["maxmemory"]
    redis_client.config_set("maxmemory", redis_client.info("memory")["used_memory"] + 100_000)
    try:
        fast, flask = answer(app_for(app_env, "on"), "GET", "/start"), answer(app_for(app_env, "off"), "GET", "/start")
    finally:
        redis_client.config_set("maxmemory", maxmemory)
    assert fast[0] == "503 SERVICE UNAVAILABLE" and '"redis_full"' in fast[2] and fast == flask
    gone = {**app_env, "TASKQUEUE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens
    fast, flask = answer(app_for(gone, "on"), "GET", "/start"), answer(app_for(gone, "off"), "GET", "/start")
    assert fast[0] == "503 SERVICE UNAVAILABLE" and '"redis_unavailable"' in fast[2] and fast == flask


@pytest.mark.parametrize("switch", ["on", "off"])
def test_the_fast_path_takes_plain_starts_and_flask_the_rest(app_env, switch):
    """Fails if the fast path stops applying (Flask dispatches a plain /start) or takes what is not plain."""
    app = app_for(app_env, switch)
    seen = flask_dispatches(app)
    for url in PLAIN:
        assert answer(app, "GET", url)[0] == "200 OK"
    assert answer(app, "GET", "/start?delay=1", base_url="http://localhost/tq")[0] == "200 OK"  # a mount point
    assert len(seen) == (1 if switch == "on" else len(PLAIN) + 1)
    for method, url, headers in NOT_PLAIN:  # routing errors (404, 405) are dispatched too
        before = len(seen)
        answer(app, method, url, headers)
        assert len(seen) == before + 1, (method, url)
