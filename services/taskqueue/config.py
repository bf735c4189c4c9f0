"""Every setting of both processes, read from the environment (and, for the CLIs, from flags).

One table, ``SETTINGS``, is the single source: the dataclass fields, the CLI flags, the
environment variable names and the README's configuration table all come from it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from taskqueue.webhooks.guard import AllowList


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _int_list(raw: str) -> tuple[int, ...]:
    return tuple(int(part) for part in raw.split(",") if part.strip())


def _str_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a pair; ValueError when it is not one."""
    host, sep, port = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def _is_host_port(address: str) -> bool:
    try:
        host_port(address)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Setting:
    """One configuration option: its field name, default, parser and help text."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    roles: tuple[str, ...] = ("generator", "worker", "exporter")

    @property
    def env(self) -> str:
        return "TASKQUEUE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


G, W, E = "generator", "worker", "exporter"
DEFAULT_QUEUE = "default"


def default_queue(names: Sequence[str]) -> str:
    """Of these queue names, the one where jobs whose request and task name none wait: ``default`` if listed,
    else the first."""
    return DEFAULT_QUEUE if DEFAULT_QUEUE in names else names[0]


SETTINGS: tuple[Setting, ...] = (
    Setting("redis_url", "redis://127.0.0.1:6379/0", str, "Redis URL (`redis://` or `rediss://` for TLS)."),
    Setting(
        "redis_username",
        "",
        str,
        "Redis ACL user (the chart's Redis and local mode have one a component: `generator`, `worker`,"
        " `exporter`); empty: Redis's `default` user. A user and password in the URL win over these settings:"
        " keep them out of the URL.",
    ),
    Setting(
        "redis_password",
        "",
        str,
        "Redis password (of `TASKQUEUE_REDIS_USERNAME`), so the URL can stay free of secrets.",
    ),
    Setting("redis_ca_cert", "", str, "CA bundle file to verify a `rediss://` server (and its sentinels) with."),
    Setting(
        "redis_sentinels",
        "",
        _str_list,
        "Comma-separated Redis Sentinel addresses (`host:port`): Redis is then the primary they name, followed"
        " across failovers; `TASKQUEUE_REDIS_URL` gives only its scheme (`rediss://`: TLS to Redis and to the"
        " sentinels), database and credentials. Each sentinel is tried once before the next. Empty: the URL's"
        " server.",
    ),
    Setting("redis_master_name", "taskqueue", str, "The name the sentinels monitor the primary by."),
    Setting("redis_sentinel_username", "", str, "User to log in to the sentinels as; empty: their default user."),
    Setting("redis_sentinel_password", "", str, "Password of the sentinels (their `requirepass`); empty: none."),
    Setting("redis_timeout", "1.0", float, "Redis connect and socket timeout, seconds."),
    Setting(
        "queues",
        "high,default,low",
        _str_list,
        "Comma-separated queue names in priority order: workers take from the first non-empty one. A job goes"
        " to the queue its request names, else its task's own, else `default` (if listed; else the first).",
    ),
    Setting(
        "task_modules",
        "",
        _str_list,
        "Comma-separated modules whose `@task` functions join the catalogue, beside the built-in tasks and"
        " installed packages' `taskqueue.tasks` entry points; every process must load the same.",
    ),
    Setting("job_timeout", "180", int, "Seconds a job may run before it is stopped and failed.", (G,)),
    Setting("result_ttl", "3600", int, "Seconds a finished job and its result are kept.", (G, W)),
    Setting("failure_ttl", "86400", int, "Seconds a failed job is kept.", (G,)),
    Setting("retries", "2", int, "How many times a failed job is retried (0: never).", (G,)),
    Setting(
        "retry_intervals",
        "5,15",
        _int_list,
        "Seconds to wait before each retry, comma-separated (the last repeats).",
        (G,),
    ),
    Setting("delay_min", "20", int, "Lower bound of the seed's random `/start` delay, seconds.", (G,)),
    Setting("delay_max", "30", int, "Upper bound of the seed's random `/start` delay, seconds.", (G,)),
    Setting(
        "delay_limit",
        "120",
        int,
        "Largest `?delay=` or sleep `seconds` a client may ask for; must be below `job_timeout`.",
        (G,),
    ),
    Setting(
        "max_schedule_delay",
        "2592000",
        int,
        "Seconds ahead a job may be scheduled (`runAt`, `delaySeconds`); 30 days by default.",
        (G,),
    ),
    Setting(
        "api_tokens_file",
        "",
        str,
        "File of API tokens, one `ROLE TOKEN` a line (`read`, `submit`, `admin`; `#` comments), re-read when it"
        " changes; clients send `Authorization: Bearer TOKEN` (docs/reliability.md#security).",
        (G,),
    ),
    Setting(
        "anonymous_role",
        "submit",
        str,
        "What a request without a token may do: `submit` (read and enqueue: the seed's `curl /start`), `read`"
        " or `none`. Cancel and requeue always need an `admin` token.",
        (G,),
    ),
    Setting("max_backlog", "100000", int, "Queued jobs beyond which enqueue answers 429 (0: no limit).", (G,)),
    Setting(
        "redis_memory_limit",
        "80",
        int,
        "Percent of Redis's `maxmemory` above which enqueue answers 503 and `/readyz` fails, so running jobs"
        " can still record their results (0: no check).",
        (G,),
    ),
    Setting(
        "max_result_bytes",
        "65536",
        int,
        "Largest result a job may store, in bytes of JSON; a larger one fails the job (`ResultTooLarge`).",
        (W,),
    ),
    Setting("http_host", "0.0.0.0", str, "Address the generator's API listens on.", (G,)),
    Setting("http_port", "8000", int, "Port of the generator's API.", (G,)),
    Setting("web_workers", "2", int, "gunicorn worker processes of the generator.", (G,)),
    Setting(
        "web_worker_class",
        "gevent",
        str,
        "gunicorn worker class of the generator: `gevent` (one event loop a process that takes turns between "
        "connections and sends each response in one write; enqueues in flight share a Redis call), `gthread` "
        "(`web_threads` threads a process) or `sync`.",
        (G,),
    ),
    Setting("web_threads", "4", int, "Threads per gunicorn worker process (`gthread` only).", (G,)),
    Setting(
        "web_connections",
        "100",
        int,
        "Requests a gunicorn worker process serves at once (`gevent` only; connections for `gthread`), and so"
        " its Redis connections; more wait their turn.",
        (G,),
    ),
    Setting(
        "web_max_connections",
        "1000",
        int,
        "Connections a gunicorn worker process holds open (`gevent` only): idle, sending their request (for at"
        " most 5 s) or served; more wait to be accepted. A slow client holds one of these, not a request slot.",
        (G,),
    ),
    Setting("metrics_host", "0.0.0.0", str, "Address the `/metrics` endpoint listens on."),
    Setting(
        "metrics_port",
        "0",
        int,
        "Port of `/metrics` (0: the role's default, 9100 generator, 9200 worker, 9300 exporter).",
    ),
    Setting("metrics_enabled", "true", _bool, "Count and serve Prometheus metrics (`false`: neither).", (G, W)),
    Setting(
        "fast_paths",
        "on",
        _bool,
        "`on`: the code in `taskqueue/fastpath/` that exists only for speed (plain `GET /start` without "
        "Flask's dispatch, the enqueue script and group commit, the worker's job path (two round trips a job, "
        "short jobs in takes), gevent's turns and one send a response); `off`: "
        "stock RQ, redis-py and gunicorn, with the same API answers, metrics and recovery (docs/architecture.md).",
        (G, W),
    ),
    Setting(
        "worker_class",
        "simple",
        str,
        "`simple` runs jobs in the worker process, `fork` forks a work-horse per job.",
        (W,),
    ),
    Setting("worker_processes", "1", int, "Worker processes per container (each its own RQ worker).", (W,)),
    Setting(
        "job_slots",
        "1",
        int,
        "Jobs each worker process runs at once, one thread each (each slot its own RQ worker): many for jobs"
        " that wait (I/O, third-party APIs, the seed's sleep), 1 for CPU-bound jobs (docs/architecture.md).",
        (W,),
    ),
    Setting("worker_name", "", str, "RQ worker name prefix (default: host name and pid).", (W,)),
    Setting(
        "maintenance_interval",
        "30",
        int,
        "Seconds between a worker's maintenance passes (re-queues jobs of dead workers).",
        (W,),
    ),
    Setting(
        "worker_maintenance",
        "true",
        _bool,
        "Also run RQ's scheduler and registry maintenance in the worker; the exporter always does.",
        (W,),
    ),
    Setting(
        "heartbeat_ttl",
        "30",
        int,
        "Seconds a running job stays claimed without a heartbeat; then it is retried as abandoned.",
        (W,),
    ),
    Setting(
        "shutdown_mode",
        "finish",
        str,
        "On SIGTERM: `finish` the running job, or `requeue` it at once (at-least-once).",
        (W,),
    ),
    Setting("cleanup_interval", "15", int, "Seconds between the exporter's passes over abandoned jobs.", (E,)),
    Setting(
        "webhook_allowed_hosts",
        "",
        _str_list,
        "Comma-separated hosts a job's `callbackUrl` may name: host names (`*.example.com` for subdomains) and"
        " IPs or CIDRs; a name must resolve to public addresses, or to ones listed here. Empty: webhooks"
        " refused with 400 (docs/webhooks.md).",
        (G, E),
    ),
    Setting(
        "webhook_secret",
        "",
        str,
        "Key of each webhook's `X-Taskqueue-Signature` (HMAC-SHA256 of the body); needed when"
        " `webhook_allowed_hosts` is set.",
        (E,),
    ),
    Setting("webhook_timeout", "10", float, "Seconds a webhook attempt may take (connect and each read).", (E,)),
    Setting(
        "webhook_retry_for",
        "86400",
        int,
        "Seconds after its first attempt a webhook is still retried (connection errors, 5xx, 408, 429).",
        (E,),
    ),
    Setting(
        "webhook_backoff",
        "10",
        float,
        "Seconds before a webhook's second attempt; doubled for each next one, up to 15 minutes.",
        (E,),
    ),
    Setting("webhook_concurrency", "8", int, "Webhook attempts the exporter makes at once.", (E,)),
    Setting("log_format", "json", str, "`json` (one object a line) or `text`."),
    Setting("log_level", "INFO", str, "Python log level name."),
    Setting(
        "log_job_lines",
        "false",
        _bool,
        "Also log RQ's INFO lines for every job (taken, OK); failures and retries are logged either way.",
        (W,),
    ),
)

ROLE_METRICS_PORT = {G: 9100, W: 9200, E: 9300}

VALID_WORKER_CLASSES = ("simple", "fork")
VALID_LOG_FORMATS = ("json", "text")
# TASKQUEUE_WEB_WORKER_CLASS -> gunicorn's worker_class: gunicorn's, subclassed to answer what gunicorn refuses
# itself in JSON; gevent's also bounds the requests served at once (server/workers.py). With fast paths on,
# gevent's takes turns between connections and sends a response in one write (fastpath/gevent_worker.py).
WEB_WORKER_CLASSES = {
    "gevent": "taskqueue.server.workers.BoundedGeventWorker",
    "gthread": "taskqueue.server.workers.JsonThreadWorker",
    "sync": "taskqueue.server.workers.JsonSyncWorker",
}
FAST_WEB_WORKER_CLASSES = {"gevent": "taskqueue.server.workers.FairGeventWorker"}
VALID_WEB_WORKER_CLASSES = tuple(WEB_WORKER_CLASSES)
VALID_SHUTDOWN_MODES = ("finish", "requeue")
VALID_ANONYMOUS_ROLES = ("none", "read", "submit")
MAX_JOB_SLOTS = 500  # threads and Redis connections (two a slot) per process


@dataclass(frozen=True)
class Config:
    """Typed settings; build with :func:`load`."""

    redis_url: str
    redis_username: str
    redis_password: str
    redis_ca_cert: str
    redis_sentinels: tuple[str, ...]
    redis_master_name: str
    redis_sentinel_username: str
    redis_sentinel_password: str
    redis_timeout: float
    queues: tuple[str, ...]
    task_modules: tuple[str, ...]
    job_timeout: int
    result_ttl: int
    failure_ttl: int
    retries: int
    retry_intervals: tuple[int, ...]
    delay_min: int
    delay_max: int
    delay_limit: int
    max_schedule_delay: int
    api_tokens_file: str
    anonymous_role: str
    max_backlog: int
    redis_memory_limit: int
    max_result_bytes: int
    http_host: str
    http_port: int
    web_workers: int
    web_worker_class: str
    web_threads: int
    web_connections: int
    web_max_connections: int
    metrics_host: str
    metrics_port: int
    metrics_enabled: bool
    fast_paths: bool
    worker_class: str
    worker_processes: int
    job_slots: int
    worker_name: str
    maintenance_interval: int
    worker_maintenance: bool
    heartbeat_ttl: int
    shutdown_mode: str
    cleanup_interval: int
    webhook_allowed_hosts: tuple[str, ...]
    webhook_secret: str
    webhook_timeout: float
    webhook_retry_for: int
    webhook_backoff: float
    webhook_concurrency: int
    log_format: str
    log_level: str
    log_job_lines: bool

    @property
    def queue(self) -> str:
        """The queue of the jobs whose request and task name none (see :func:`default_queue`)."""
        return default_queue(self.queues)

    def metrics_port_for(self, role: str) -> int:
        return self.metrics_port or ROLE_METRICS_PORT[role]


def _validate(cfg: Config) -> None:
    problems = []
    if not cfg.queues:
        problems.append("queues: at least one queue name is needed")
    if not 0 <= cfg.delay_min <= cfg.delay_max <= cfg.delay_limit:
        problems.append("need 0 <= delay_min <= delay_max <= delay_limit")
    if cfg.delay_limit >= cfg.job_timeout:
        problems.append(
            f"delay_limit ({cfg.delay_limit}) must be below job_timeout ({cfg.job_timeout}):"
            " a longer sleep could only time out and be retried"
        )
    if not 0 <= cfg.redis_memory_limit <= 100:
        problems.append("redis_memory_limit: a percent from 0 to 100")
    if cfg.max_result_bytes < 1:
        problems.append("max_result_bytes: must be >= 1")
    if cfg.retries < 0:
        problems.append("retries: must be >= 0")
    if cfg.retries and not cfg.retry_intervals:
        problems.append("retry_intervals: give at least one interval when retries > 0")
    if any(i < 0 for i in cfg.retry_intervals):
        problems.append("retry_intervals: must be >= 0")
    for name in (
        "job_timeout",
        "web_workers",
        "web_threads",
        "web_connections",
        "web_max_connections",
        "worker_processes",
        "job_slots",
        "max_schedule_delay",
        "maintenance_interval",
        "cleanup_interval",
        "webhook_retry_for",
        "webhook_concurrency",
    ):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}: must be >= 1")
    if cfg.worker_class not in VALID_WORKER_CLASSES:
        problems.append(f"worker_class: one of {', '.join(VALID_WORKER_CLASSES)}")
    if cfg.job_slots > MAX_JOB_SLOTS:
        problems.append(f"job_slots: at most {MAX_JOB_SLOTS} a process")
    if cfg.job_slots > 1 and cfg.worker_class != "simple":
        problems.append("job_slots: more than 1 needs worker_class simple (a forking worker runs one job a process)")
    if cfg.shutdown_mode not in VALID_SHUTDOWN_MODES:
        problems.append(f"shutdown_mode: one of {', '.join(VALID_SHUTDOWN_MODES)}")
    if cfg.heartbeat_ttl < 3:
        problems.append("heartbeat_ttl: must be >= 3")
    if cfg.anonymous_role not in VALID_ANONYMOUS_ROLES:
        problems.append(f"anonymous_role: one of {', '.join(VALID_ANONYMOUS_ROLES)} (admin needs a token)")
    if cfg.web_worker_class not in VALID_WEB_WORKER_CLASSES:
        problems.append(f"web_worker_class: one of {', '.join(VALID_WEB_WORKER_CLASSES)}")
    if cfg.log_format not in VALID_LOG_FORMATS:
        problems.append(f"log_format: one of {', '.join(VALID_LOG_FORMATS)}")
    if not (cfg.webhook_timeout > 0 and cfg.webhook_backoff > 0):
        problems.append("webhook_timeout, webhook_backoff: must be > 0")
    try:
        AllowList.parse(cfg.webhook_allowed_hosts)
    except ValueError as exc:
        problems.append(str(exc))
    if not cfg.redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("redis_url: must start with redis://, rediss:// or unix://")
    if cfg.redis_sentinels:
        if cfg.redis_url.startswith("unix://"):
            problems.append("redis_sentinels: Sentinel names a host and port, not a unix:// socket")
        bad = [a for a in cfg.redis_sentinels if not _is_host_port(a)]
        if bad:
            problems.append(f"redis_sentinels: host:port expected, not {', '.join(bad)}")
        if not cfg.redis_master_name:
            problems.append("redis_master_name: the sentinels' name of the primary is needed")
    if problems:
        raise ConfigError("; ".join(problems))


def load(environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from the environment, with CLI ``overrides`` (raw strings) on top."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = overrides.get(setting.name)
        if raw is None:
            raw = environ.get(setting.env, setting.default)
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}={raw!r}: {exc}") from None
    cfg = Config(**values)
    _validate(cfg)
    return cfg


def add_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Add a flag for every setting that applies to ``role``; each defaults to its env var."""
    for setting in SETTINGS:
        if role in setting.roles:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                default=None,
                metavar=setting.name.upper(),
                help=f"{setting.help} Env {setting.env}, default {setting.default!r}.",
            )


def from_args(args: argparse.Namespace) -> Config:
    """Load the config with the flags that were given taking precedence over the environment."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}
    return load(overrides=overrides)


def parse_cli(
    prog: str, role: str, description: str, argv: list[str] | None = None, extra: Callable | None = None
) -> tuple[argparse.Namespace, Config]:
    """Flags for ``role`` (plus ``extra(parser)``'s), parsed; a bad setting exits 2 with the reason, no trace."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, role)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        return args, from_args(args)
    except ConfigError as exc:
        parser.exit(2, f"{prog}: configuration error: {exc}\n")


def markdown_table(settings: Sequence[Setting] = SETTINGS) -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    rows = ["| Variable | Flag | Default | Used by | Meaning |", "| --- | --- | --- | --- | --- |"]
    for s in settings:
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | `{s.flag}` | {default} | {', '.join(s.roles)} | {s.help} |")
    return "\n".join(rows)


TABLE_START, TABLE_END = "<!-- config-table:start -->\n", "<!-- config-table:end -->"


def update_readme(path: str) -> None:
    """Rewrite the configuration table between the README's markers (``make docs``)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index(TABLE_START) + len(TABLE_START)
    end = text.index(TABLE_END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + markdown_table() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        update_readme(sys.argv[2])
    else:
        print(markdown_table())
