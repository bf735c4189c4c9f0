"""``taskqueue-generator``: the API under gunicorn, with metrics aggregated across its processes.

gunicorn's worker processes count into prometheus-client's multiprocess directory; the gunicorn
master wipes it at start, marks exited workers dead, and serves the sum on the metrics port.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from taskqueue import config as config_module
from taskqueue import tasks
from taskqueue.observability import multiproc
from taskqueue.observability.logs import JobIdFilter, JsonFormatter
from taskqueue.server.balance import ConnectionShare


def logconfig(cfg: config_module.Config) -> dict[str, Any]:
    """gunicorn's and the app's logs as structured lines through one handler."""
    formatter: dict[str, Any] = (
        {"()": f"{JsonFormatter.__module__}.{JsonFormatter.__qualname__}"}
        if cfg.log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"job": {"()": f"{JobIdFilter.__module__}.{JobIdFilter.__qualname__}"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "filters": ["job"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": cfg.log_level.upper(), "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": cfg.log_level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


class GeneratorLogger(Logger):
    """gunicorn's logger, minus the access line's formatting when nothing would print it.

    With a ``logconfig_dict``, gunicorn builds every request's access-log atoms (a dict of ~20
    values) before its logger drops the line at our WARNING level (docs/performance-history.md).
    """

    def access(self, resp, req, environ, request_time) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


def web_worker_class(cfg: config_module.Config) -> str:
    """gunicorn's worker class for the generator: the fast path's, where one exists and fast paths are on."""
    if cfg.fast_paths and cfg.web_worker_class in config_module.FAST_WEB_WORKER_CLASSES:
        return config_module.FAST_WEB_WORKER_CLASSES[cfg.web_worker_class]
    return config_module.WEB_WORKER_CLASSES[cfg.web_worker_class]


class GeneratorServer(BaseApplication):
    """gunicorn configured from :class:`~taskqueue.config.Config` instead of a config file."""

    def __init__(self, cfg: config_module.Config, catalogue: tasks.Catalogue):
        self.cfg_app = cfg
        self.catalogue = catalogue
        # Made before the workers are forked, so that they share it (gevent's worker class uses it).
        self.connections = ConnectionShare(cfg.web_workers)
        super().__init__()

    def load_config(self) -> None:
        cfg = self.cfg_app
        settings = {
            "bind": [f"{cfg.http_host}:{cfg.http_port}"],
            "workers": cfg.web_workers,
            # gevent by measurement (docs/performance-history.md, change 9): a round trip to Redis costs a
            # thread switch or two under gthread, and with one event loop a process the enqueues in
            # flight share their Redis call (group_commit.py) for next to nothing.
            "worker_class": web_worker_class(cfg),
            "threads": cfg.web_threads if cfg.web_worker_class == "gthread" else 1,
            # gevent: the connections a process holds open, slow ones included (it serves web_connections
            # requests of them at once: gevent_worker.py); gthread: its connections. The rest wait in the
            # listen backlog.
            "worker_connections": cfg.web_max_connections if cfg.web_worker_class == "gevent" else cfg.web_connections,
            # The mount point (SCRIPT_NAME, and so statusUrl and Location) is the server's configuration: no
            # peer sets it with a header, not even one in forwarded_allow_ips (gunicorn's default: any peer on
            # 127.0.0.1 could). gunicorn then drops those headers (header_map "drop": their names hold "_").
            "forwarder_headers": "",
            # Under a read-only root filesystem the heartbeat files go to /tmp (an emptyDir in the chart).
            "worker_tmp_dir": os.environ.get("TMPDIR", "/tmp"),
            "graceful_timeout": 20,
            "keepalive": 5,
            # One listening socket shared by the worker processes. Whichever process accepts first takes
            # a connection, which can leave one process with most kept-alive connections; balance.py
            # evens that out. Per-process SO_REUSEPORT sockets measured worse: the kernel's hash of
            # the client's port split rounds unevenly (docs/performance-history.md, change 21).
            "reuse_port": False,
            "logconfig_dict": logconfig(cfg),
            "logger_class": f"{GeneratorLogger.__module__}.{GeneratorLogger.__qualname__}",
            "when_ready": self._when_ready,
            "post_fork": self._post_fork,
            "child_exit": self._child_exit,
            "worker_exit": self._worker_exit,
            "proc_name": "taskqueue-generator",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from taskqueue.api.app import create_app

        return create_app(self.cfg_app, self.catalogue)

    def _when_ready(self, server) -> None:
        if self.cfg_app.metrics_enabled:
            from taskqueue.observability import metrics

            port = self.cfg_app.metrics_port_for("generator")
            metrics.serve(self.cfg_app.metrics_host, port)
            server.log.info("metrics on %s:%s/metrics", self.cfg_app.metrics_host, port)

    @staticmethod
    def _post_fork(_server, worker) -> None:
        """In a new worker process: a SIGTERM from now on ends it. Until gunicorn installs the worker's own
        handlers, after gevent's patching and the app's imports, the child runs the master's handler, which
        drops the signal: a stop sent while a worker boots left it running until the graceful timeout
        killed it (20 s)."""
        signal.signal(signal.SIGTERM, worker.handle_exit)

    def _worker_exit(self, _server, _worker) -> None:
        """In the exiting worker process: its batched metric updates go out before it does."""
        from taskqueue.observability import metrics

        metrics.BATCHED.flush()

    def _child_exit(self, _server, worker) -> None:
        from taskqueue.observability import metrics

        metrics.mark_process_dead(worker.pid)
        self.connections.leave(worker.pid)


def main(argv: list[str] | None = None) -> None:
    _args, cfg = config_module.parse_cli("taskqueue-generator", "generator", __doc__.splitlines()[0], argv)
    catalogue = tasks.load_or_exit("taskqueue-generator", cfg.task_modules, cfg.queues)  # before any web worker starts
    # Must be decided before prometheus_client is first imported (it picks its storage then).
    default_dir = multiproc.tmp_path(f"taskqueue-metrics-{cfg.http_port}")
    metrics_dir = multiproc.use_fresh_dir(os.environ.get(multiproc.ENV) or default_dir)
    master = os.getpid()
    try:
        GeneratorServer(cfg, catalogue).run()
    finally:
        # The master's folder, not one the environment named, once the master ends: a gunicorn worker
        # process leaves through here too (its SystemExit unwinds the stack it forked with).
        if metrics_dir == default_dir and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
