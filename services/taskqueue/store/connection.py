"""Redis connections with short timeouts and bounded retries, built from the config.

Redis is one server (``TASKQUEUE_REDIS_URL``), or the primary that Redis Sentinel names
(``TASKQUEUE_REDIS_SENTINELS``): redis-py's :class:`~redis.sentinel.Sentinel` asks the sentinels for the
primary's address at each new connection, so after a failover the next connection goes to the new primary,
without a restart. While there is no primary, and when a write reaches a primary that was demoted
(``READONLY``) or that has too few replicas to accept it (``NOREPLICAS``, ``min-replicas-to-write``), the
caller gets a :class:`ConnectionError`: the store is briefly unavailable (the API answers 503 with
Retry-After, a worker retries), never a job lost or a loop crashed.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    ExecAbortError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from taskqueue.config import Config, host_port

# Errors that mean "Redis is not reachable right now" rather than a bug.
UNAVAILABLE_ERRORS = (ConnectionError, TimeoutError, BusyLoadingError, OSError)
# Errors that mean "Redis is full" (maxmemory with noeviction): a write refused, or a transaction
# refused whole because one of its writes was.
STORE_FULL_ERRORS = (OutOfMemoryError, ExecAbortError)
# Replies of a Redis that cannot take writes for now, which redis-py raises as a plain ResponseError: too few
# replicas (min-replicas-to-write), a replica cut off from its primary (replica-serve-stale-data no).
NOT_WRITABLE_PREFIXES = ("NOREPLICAS ", "MASTERDOWN ")


class StoreNotWritable(ConnectionError):
    """This Redis cannot take the command now (a demoted primary, too few replicas): try again shortly."""


class _NotWritableAsUnavailable:
    """Raise :class:`StoreNotWritable` for the replies of a Redis that cannot take writes for now.

    A demoted primary's READONLY also drops the connection, so the next one asks where the primary is now
    (redis-py's Sentinel connections do the same for their own; a DNS name that moved to a new primary
    is looked up again). Mixed into redis-py's connection classes, given as their ``connection_class``.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ReadOnlyError as exc:
            self.disconnect()  # type: ignore[attr-defined]
            raise StoreNotWritable(f"READONLY {exc}") from exc
        except ResponseError as exc:
            if str(exc).startswith(NOT_WRITABLE_PREFIXES):
                raise StoreNotWritable(str(exc)) from exc
            raise


class StoreConnection(_NotWritableAsUnavailable, Connection):
    pass


class StoreSSLConnection(_NotWritableAsUnavailable, SSLConnection):
    pass


class StoreUnixConnection(_NotWritableAsUnavailable, UnixDomainSocketConnection):
    pass


class SentinelStoreConnection(_NotWritableAsUnavailable, SentinelManagedConnection):
    pass


class SentinelStoreSSLConnection(_NotWritableAsUnavailable, SentinelManagedSSLConnection):
    pass


def connect(cfg: Config, *, retries: int = 2, max_connections: int | None = None) -> Redis:
    """A client of the store (one Redis, or Sentinel's primary); every command fails within a bounded time
    when Redis is down.

    ``max_connections``: the most its pool opens at once (redis-py's default, 100, is too few for a process
    whose job slots share one client).
    """
    kwargs: dict[str, Any] = {
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
    tls = cfg.redis_url.startswith("rediss://")
    if tls and cfg.redis_ca_cert:
        kwargs["ssl_ca_certs"] = cfg.redis_ca_cert
    if cfg.redis_sentinels:
        return _sentinel_primary(cfg, kwargs, tls)
    if tls:
        kwargs["connection_class"] = StoreSSLConnection
    elif cfg.redis_url.startswith("unix://"):
        kwargs["connection_class"] = StoreUnixConnection
    else:
        kwargs["connection_class"] = StoreConnection
    return Redis.from_url(cfg.redis_url, **kwargs)


def _sentinel_primary(cfg: Config, kwargs: dict[str, Any], tls: bool) -> Redis:
    """A client of the primary that the sentinels name: the URL gives only its database, user and password."""
    from_url = parse_url(cfg.redis_url)
    for name in ("db", "username", "password"):
        if name in from_url:
            kwargs[name] = from_url[name]  # as Redis.from_url: the URL's credentials win
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": cfg.redis_timeout,
        "socket_timeout": cfg.redis_timeout,
        "driver_info": None,
        # One try per sentinel: the next sentinel is the retry. redis-py's default (10 tries, backoff to 1 s) spends
        # seconds on a dead sentinel before asking the next, at each new connection, while its pod is lost.
        "retry": Retry(NoBackoff(), 0),
    }
    if cfg.redis_sentinel_username:
        sentinel_kwargs["username"] = cfg.redis_sentinel_username
    if cfg.redis_sentinel_password:
        sentinel_kwargs["password"] = cfg.redis_sentinel_password
    if tls:  # TLS to the sentinels too, as KEDA's redis-sentinel scaler speaks it: one address list serves both
        sentinel_kwargs["ssl"] = True
        if cfg.redis_ca_cert:
            sentinel_kwargs["ssl_ca_certs"] = cfg.redis_ca_cert
    sentinels = Sentinel([host_port(a) for a in cfg.redis_sentinels], sentinel_kwargs=sentinel_kwargs)
    connection_class = SentinelStoreSSLConnection if tls else SentinelStoreConnection
    return sentinels.master_for(cfg.redis_master_name, connection_class=connection_class, **kwargs)
