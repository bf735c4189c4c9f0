"""Redis connections with short timeouts and bounded retries, built from the config."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, ExecAbortError, OutOfMemoryError, TimeoutError
from redis.retry import Retry

from taskqueue.config import Config

# Errors that mean "Redis is not reachable right now" rather than a bug.
UNAVAILABLE_ERRORS = (ConnectionError, TimeoutError, BusyLoadingError, OSError)
# Errors that mean "Redis is full" (maxmemory with noeviction): a write refused, or a transaction
# refused whole because one of its writes was.
STORE_FULL_ERRORS = (OutOfMemoryError, ExecAbortError)


def connect(cfg: Config, *, retries: int = 2, max_connections: int | None = None) -> Redis:
    """A client for ``cfg.redis_url``; every command fails within a bounded time when Redis is down.

    ``max_connections``: the most its pool opens at once (redis-py's default, 100, is too few for a process
    whose job slots share one client).
    """
    kwargs: dict = {
        "socket_connect_timeout": cfg.redis_timeout,
        "socket_timeout": cfg.redis_timeout,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries),
        "retry_on_error": [BusyLoadingError],
        # No CLIENT SETINFO (two round trips a new connection; a process of 200 job slots opens 400 at start).
        "driver_info": None,
    }
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if cfg.redis_username:
        kwargs["username"] = cfg.redis_username
    if cfg.redis_password:
        kwargs["password"] = cfg.redis_password
    if cfg.redis_url.startswith("rediss://") and cfg.redis_ca_cert:
        kwargs["ssl_ca_certs"] = cfg.redis_ca_cert
    return Redis.from_url(cfg.redis_url, **kwargs)
