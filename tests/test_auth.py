"""API tokens and roles (api/auth.py) against real generator processes (gunicorn) and a real Redis.

Each generator reads a tokens file of its own with one token a role; what a request may do is checked route by
route for each caller, with each anonymous role.
"""

from __future__ import annotations

import os
import secrets
import statistics
import time

import pytest
import requests

from tests.support import wait_for

TOKENS = {role: secrets.token_urlsafe(24) for role in ("read", "submit", "admin")}
LEVEL = {"none": 0, "read": 1, "submit": 2, "admin": 3}

# (method, path, JSON body, the role it needs; None: open to all). {job} is a queued job's id.
ROUTES = [
    ("GET", "/start?delay=0", None, "submit"),
    ("POST", "/jobs", {"task": "noop"}, "submit"),
    ("POST", "/jobs/batch", {"jobs": [{"task": "noop"}]}, "submit"),
    ("GET", "/status/{job}", None, "read"),
    ("GET", "/jobs/{job}", None, "read"),
    ("GET", "/list", None, "read"),
    ("GET", "/tasks", None, "read"),
    ("DELETE", "/jobs/{job}", None, "admin"),
    ("POST", "/jobs/{job}/requeue", None, "admin"),
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),
    ("GET", "/openapi.json", None, None),
]


def write_tokens(path, tokens: dict[str, str]) -> None:
    """Replace the file at once, as kubelet updates a mounted Secret (a new file renamed over the old)."""
    tmp = path.with_suffix(".new")
    tmp.write_text("# test tokens\n" + "".join(f"{role} {token}\n" for role, token in tokens.items()))
    os.replace(tmp, path)


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "api-tokens"
    write_tokens(path, TOKENS)
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("anonymous", ["submit", "read", "none"])
def test_each_role_against_each_route(processes, app_env, tokens_file, anonymous):
    """The table: anonymous (with TASKQUEUE_ANONYMOUS_ROLE), each role's token, an unknown token and another
    scheme, against every route. Allowed: neither 401 nor 403. Refused: 401 without a valid token (with
    WWW-Authenticate: Bearer), 403 with a valid token whose role is too low (without it)."""
    env = {**app_env, "TASKQUEUE_API_TOKENS_FILE": str(tokens_file), "TASKQUEUE_ANONYMOUS_ROLE": anonymous}
    gen = processes.generator(env=env, web_workers=1)
    job = requests.post(gen.base + "/jobs", json={"task": "noop"}, headers=bearer(TOKENS["submit"]), timeout=5)
    assert job.status_code == 202, job.text
    callers = {
        "anonymous": ({}, LEVEL[anonymous], False),
        **{role: (bearer(token), LEVEL[role], True) for role, token in TOKENS.items()},
        "unknown token": (bearer(secrets.token_urlsafe(24)), 0, False),
        "basic scheme": ({"Authorization": f"Basic {TOKENS['admin']}"}, 0, False),
    }
    for method, path, body, needs in ROUTES:
        url = gen.base + path.format(job=job.json()["jobId"])
        for caller, (headers, level, valid) in callers.items():
            r = requests.request(method, url, json=body, headers=headers, timeout=5)
            where = (method, path, caller, anonymous, r.status_code, r.text[:200])
            if needs is None or level >= LEVEL[needs]:
                assert r.status_code not in (401, 403), where
                continue
            assert r.headers["Content-Type"] == "application/json", where
            if valid:
                assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", where
                assert "WWW-Authenticate" not in r.headers, where
                assert f"needs the {needs} role" in r.json()["error"]["message"], where
            else:
                assert r.status_code == 401, where
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), where
                assert r.json()["error"]["code"] == ("unauthorized" if not headers else "invalid_token"), where


def test_a_rotated_token_takes_effect_within_5_s_without_a_restart(processes, app_env, tokens_file):
    """The submit token is replaced in the file: the old one is refused and the new one accepted by every
    process of the generator within 5 s (each process looks at the file once a second)."""
    env = {**app_env, "TASKQUEUE_API_TOKENS_FILE": str(tokens_file), "TASKQUEUE_ANONYMOUS_ROLE": "none"}
    gen = processes.generator(env=env, web_workers=2)
    old, new = TOKENS["submit"], secrets.token_urlsafe(24)

    def status(token: str) -> int:
        return requests.post(gen.base + "/jobs", json={"task": "noop"}, headers=bearer(token), timeout=5).status_code

    assert status(old) == 202 and status(new) == 401
    write_tokens(tokens_file, {**TOKENS, "submit": new})
    rotated = time.monotonic()
    # Several requests a round, so both gunicorn processes answer (each reads the file on its own).
    wait_for(lambda: all(status(new) == 202 and status(old) == 401 for _ in range(6)), timeout=5, what="rotation")
    assert time.monotonic() - rotated <= 5.0
    gen.stop()
    logs = gen.log()
    for token in (*TOKENS.values(), new):
        assert token not in logs  # never logged, also when refused


def test_a_wrong_token_of_the_right_length_takes_as_long_as_one_of_another_length(processes, app_env, tokens_file):
    """400 requests in turn (bounded): a wrong token as long as the admin token and differing only in its last
    character, and a wrong token of 5 characters. Their median answer times differ by less than 10 % (noise over
    HTTP is far larger than a byte-by-byte comparison's difference; the comparison itself hashes the presented
    token and compares digests with hmac.compare_digest, so there is none to find)."""
    env = {**app_env, "TASKQUEUE_API_TOKENS_FILE": str(tokens_file), "TASKQUEUE_ANONYMOUS_ROLE": "none"}
    gen = processes.generator(env=env, web_workers=1)
    admin = TOKENS["admin"]
    near = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    times: dict[str, list[float]] = {"same length": [], "short": []}
    session = requests.Session()
    for i in range(400):
        name, token = ("same length", near) if i % 2 == 0 else ("short", "abcde")
        started = time.perf_counter()
        r = session.get(gen.base + "/list", headers=bearer(token), timeout=5)
        times[name].append(time.perf_counter() - started)
        assert r.status_code == 401
    session.close()
    same, short = statistics.median(times["same length"]), statistics.median(times["short"])
    assert abs(same - short) / min(same, short) < 0.10, (same, short)
