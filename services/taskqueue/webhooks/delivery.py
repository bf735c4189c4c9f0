"""Sending completion webhooks: signed POSTs from the exporter, retried with backoff, never from a worker.

Each pass (:meth:`Deliverer.step`, twice a second) makes deliveries due for jobs that ended (store/outbox.py), then
leases as many due ones as it has free senders and hands each to a thread of its pool. An attempt:

- resolves the URL's host and checks each address (guard.py), then POSTs the JSON body to the checked
  address (http.client on a socket we open, TLS verified against the URL's host name), with
  ``X-Taskqueue-Signature: sha256=<hex HMAC-SHA256 of the body>`` keyed by ``TASKQUEUE_WEBHOOK_SECRET`` and
  ``X-Taskqueue-Delivery: <id>`` (the same id on every attempt, so a receiver can drop a repeat). Redirects
  are not followed.
- **2xx**: delivered. **Connection error, timeout, 5xx, 408, 429**: tried again after ``backoff`` seconds,
  doubling up to :data:`BACKOFF_MAX`, while the next attempt falls within ``retry_for`` seconds of the first
  (else given up as ``expired``). **3xx or another 4xx**: given up (``rejected``). **An address the guard
  refuses**: given up (``refused``).

An attempt has ``timeout`` seconds from its connection's start to the response's status line: then its socket
is shut, however slowly the receiver sends (a timeout a read would restart each byte). The host's name is
resolved before that, within the system resolver's own timeouts. A delivery leased by an attempt that
outlives its lease may be sent twice, and is recorded once (store/outbox.py's SETTLE_SCRIPT).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import logging
import random
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis import Redis

from taskqueue.store import outbox
from taskqueue.webhooks.guard import AllowList, Target, UrlRefused

if TYPE_CHECKING:  # config.py imports guard.py: this package sits below it, but for this type
    from taskqueue.config import Config

log = logging.getLogger("taskqueue.webhooks")

BACKOFF_MAX = 900.0  # seconds: the longest wait between two attempts
PASS_EVERY = 0.5  # seconds between the deliverer's passes
RETRY_STATUSES = frozenset({408, 429})
USER_AGENT = "taskqueue-webhooks/1"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Taskqueue-Signature`` of ``body``; a receiver recomputes it and compares in constant time."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempts: int, first: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``first`` doubled each time, at most BACKOFF_MAX, with ±10 % jitter
    so that deliveries to a receiver that came back do not all arrive in the same second."""
    return min(first * 2 ** min(attempts - 1, 30), BACKOFF_MAX) * random.uniform(0.9, 1.1)


class PinnedConnection(http.client.HTTPConnection):
    """HTTP, or HTTPS with ``tls``, to the address the guard checked, under the URL's host name: the Host header,
    and the name TLS's certificate must carry (``server_hostname``). :meth:`cut` shuts its socket from another
    thread, which ends a read that waits."""

    def __init__(self, target: Target, timeout: float, tls: ssl.SSLContext | None):
        super().__init__(target.host, target.port, timeout=timeout)
        self.default_port = 443 if tls is not None else 80  # (the Host header names a port only if another)
        self.target, self.tls = target, tls
        self.raw: socket.socket | None = None
        self.deadline = time.monotonic() + timeout
        self.was_cut = False

    def connect(self) -> None:
        self.raw = socket.create_connection((self.target.address, self.target.port), self.timeout)
        if self.was_cut or time.monotonic() > self.deadline:
            raise TimeoutError("timed out while connecting")
        self.sock = self.tls.wrap_socket(self.raw, server_hostname=self.target.host) if self.tls else self.raw

    def cut(self) -> None:
        self.was_cut = True
        if self.raw is not None:
            with contextlib.suppress(OSError):
                self.raw.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Attempt:
    """One attempt at a delivery: its job, the delivery's id, its number (1 for the first) and when it was due."""

    job_id: str
    delivery: str
    number: int
    first_at: float


class Deliverer:
    """Sends due deliveries from a pool of ``webhook_concurrency`` threads."""

    def __init__(self, cfg: Config, redis: Redis, allow: AllowList | None = None):
        self.redis = redis
        self.allow = allow if allow is not None else AllowList.parse(cfg.webhook_allowed_hosts)
        self.secret = cfg.webhook_secret.encode()
        self.timeout = cfg.webhook_timeout
        self.tls = ssl.create_default_context()  # the system's CAs (SSL_CERT_FILE, when set); names checked
        self.retry_for = cfg.webhook_retry_for
        self.first_backoff = cfg.webhook_backoff
        self.senders = cfg.webhook_concurrency
        self.lease = cfg.webhook_timeout * 2 + 5  # past any attempt's end: only a dead deliverer's come back
        self._pool = ThreadPoolExecutor(self.senders, thread_name_prefix="webhook")
        self._busy = 0
        self._lock = threading.Lock()

    def step(self) -> int:
        """One pass: move ended jobs' deliveries to due, start the due ones there are senders for; how many."""
        outbox.move_ended(self.redis)
        with self._lock:
            free = self.senders - self._busy
        if free <= 0:
            return 0
        ids = outbox.claim_due(self.redis, free, self.lease)
        for job_id in ids:
            with self._lock:
                self._busy += 1
            self._pool.submit(self._deliver, job_id)
        return len(ids)

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop``; then wait for the attempts under way."""
        while not stop.wait(PASS_EVERY):
            try:
                self.step()
            except Exception as exc:  # Redis down: the deliveries wait in Redis, the next pass tries again
                log.warning("webhook pass failed: %s", exc)
        self._pool.shutdown(wait=True)

    def _deliver(self, job_id: str) -> None:
        try:
            self.attempt(job_id)
        except Exception as exc:  # Redis went away mid-attempt: the lease ends, the delivery is due again
            log.warning("webhook of job %s not recorded: %s", job_id, exc)
        finally:
            with self._lock:
                self._busy -= 1

    def attempt(self, job_id: str) -> str:
        """Make one attempt at a leased delivery and record it; its outcome."""
        rec = outbox.read(self.redis, job_id)
        if "body" not in rec or "url" not in rec:  # re-armed by a requeue meanwhile, or gone: nothing owed now
            outbox.drop_due(self.redis, job_id)
            return "skipped"
        attempt = Attempt(job_id, rec["delivery"], int(rec.get("attempts") or 0) + 1, float(rec["firstAttemptAt"]))
        body = rec["body"].encode()
        try:
            target = self.allow.resolve(rec["url"])
            status = self._post(target, body, attempt.delivery)
        except UrlRefused as exc:
            return self._settle(attempt, "refused", str(exc), None)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:  # (a name that resolves to nothing too)
            return self._retry_or_expire(attempt, f"{type(exc).__name__}: {exc}"[:500])
        except ValueError as exc:  # a URL the checks let through that the resolver or http.client cannot use
            return self._settle(attempt, "refused", f"{type(exc).__name__}: {exc}"[:500], None)
        if 200 <= status < 300:
            return self._settle(attempt, "delivered", "", None)
        error = f"HTTP {status}"
        if status >= 500 or status in RETRY_STATUSES:
            return self._retry_or_expire(attempt, error)
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return self._settle(attempt, "rejected", error, None)

    def _retry_or_expire(self, attempt: Attempt, error: str) -> str:
        retry_at = time.time() + backoff(attempt.number, self.first_backoff)
        if retry_at > attempt.first_at + self.retry_for:
            return self._settle(attempt, "expired", f"{error}; gave up after {self.retry_for} s", None)
        return self._settle(attempt, "retry", error, retry_at)

    def _settle(self, attempt: Attempt, outcome: str, error: str, retry_at: float | None) -> str:
        job_id, number = attempt.job_id, attempt.number
        if not outbox.settle(self.redis, job_id, attempt.delivery, number, outcome, error, retry_at):
            log.info("webhook of job %s: attempt %d not recorded (its job was requeued, or it outlived its lease)",
                     job_id, number)  # fmt: skip
            return "stale"
        level = logging.INFO if outcome in ("delivered", "retry") else logging.WARNING
        log.log(level, "webhook of job %s: %s (attempt %d)%s", job_id, outcome, number, f": {error}" if error else "")
        return outcome

    def _post(self, target: Target, body: bytes, delivery: str) -> int:
        """POST ``body`` to the checked address of ``target`` within the timeout; the response's status (its body
        is never read)."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Taskqueue-Signature": sign(self.secret, body),
            "X-Taskqueue-Delivery": delivery,
        }
        conn = PinnedConnection(target, self.timeout, self.tls if target.scheme == "https" else None)
        watchdog = threading.Timer(self.timeout, conn.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            return conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            if conn.was_cut:
                raise TimeoutError(f"no answer within {self.timeout:g} s") from exc
            raise
        finally:
            watchdog.cancel()
            conn.close()
