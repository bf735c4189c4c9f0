"""Sending completion webhooks: signed POSTs from the exporter, retried with backoff, never from a worker.

Each pass (:meth:`Deliverer.step`, twice a second) makes deliveries due for jobs that ended (store/outbox.py), then
leases as many due ones as it has free senders and hands each to a thread of its pool. An attempt:

- resolves the URL's host and checks each address (guard.py), then POSTs the JSON body to the checked
  address, with ``X-Taskqueue-Signature: sha256=<hex HMAC-SHA256 of the body>`` keyed by
  ``TASKQUEUE_WEBHOOK_SECRET`` and ``X-Taskqueue-Delivery: <id>`` (the same id on every attempt, so a
  receiver can drop a repeat). Redirects are not followed.
- **2xx**: delivered. **Connection error, timeout, 5xx, 408, 429**: tried again after ``backoff`` seconds,
  doubling up to :data:`BACKOFF_MAX`, while the next attempt falls within ``retry_for`` seconds of the first
  (else given up as ``expired``). **3xx or another 4xx**: given up (``rejected``). **An address the guard
  refuses**: given up (``refused``).

A receiver that hangs holds one sender for at most ``timeout`` seconds, and only the exporter's.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import urllib3
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
    return min(first * 2 ** (attempts - 1), BACKOFF_MAX) * random.uniform(0.9, 1.1)


class Deliverer:
    """Sends due deliveries from a pool of ``webhook_concurrency`` threads."""

    def __init__(self, cfg: Config, redis: Redis, allow: AllowList | None = None):
        self.redis = redis
        self.allow = allow if allow is not None else AllowList.parse(cfg.webhook_allowed_hosts)
        self.secret = cfg.webhook_secret.encode()
        self.timeout = urllib3.Timeout(connect=min(5.0, cfg.webhook_timeout), total=cfg.webhook_timeout)
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
        if "body" not in rec:  # re-armed by a requeue meanwhile, or gone: nothing owed now
            self.redis.zrem(outbox.DUE_KEY, job_id)
            return "skipped"
        attempts = int(rec.get("attempts") or 0) + 1
        body = rec["body"].encode()
        try:
            target = self.allow.resolve(rec["url"])
            status = self._post(target, body, rec["delivery"])
        except UrlRefused as exc:
            return self._settle(job_id, "refused", attempts, str(exc), None)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            return self._retry_or_expire(job_id, attempts, error, float(rec.get("firstAttemptAt") or 0))
        if 200 <= status < 300:
            return self._settle(job_id, "delivered", attempts, "", None)
        error = f"HTTP {status}"
        if status >= 500 or status in RETRY_STATUSES:
            return self._retry_or_expire(job_id, attempts, error, float(rec.get("firstAttemptAt") or 0))
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return self._settle(job_id, "rejected", attempts, error, None)

    def _retry_or_expire(self, job_id: str, attempts: int, error: str, first_at: float) -> str:
        retry_at = time.time() + backoff(attempts, self.first_backoff)
        if retry_at > first_at + self.retry_for:
            return self._settle(job_id, "expired", attempts, f"{error}; gave up after {self.retry_for} s", None)
        return self._settle(job_id, "retry", attempts, error, retry_at)

    def _settle(self, job_id: str, outcome: str, attempts: int, error: str, retry_at: float | None) -> str:
        outbox.settle(self.redis, job_id, outcome, attempts, error, retry_at)
        level = logging.INFO if outcome in ("delivered", "retry") else logging.WARNING
        log.log(level, "webhook of job %s: %s (attempt %d)%s", job_id, outcome, attempts, f": {error}" if error else "")
        return outcome

    def _post(self, target: Target, body: bytes, delivery: str) -> int:
        """POST ``body`` to the checked address of ``target``; the response's status."""
        host = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 address
        default_port = 443 if target.scheme == "https" else 80
        headers = {
            "Host": host if target.port == default_port else f"{host}:{target.port}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Taskqueue-Signature": sign(self.secret, body),
            "X-Taskqueue-Delivery": delivery,
        }
        options = {"timeout": self.timeout, "retries": False, "maxsize": 1}
        if target.scheme == "https":  # the name is what TLS checks, the address is where it goes
            pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                target.address, target.port, server_hostname=target.host, assert_hostname=target.host, **options
            )
        else:
            pool = urllib3.HTTPConnectionPool(target.address, target.port, **options)
        with pool:  # closed with its connection: the response's body is never read
            response = pool.urlopen(
                "POST", target.path, body=body, headers=headers, redirect=False, assert_same_host=False,
                preload_content=False,
            )  # fmt: skip
            return response.status
