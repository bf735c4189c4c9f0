"""The generator's Flask application factory."""

from __future__ import annotations

import re
import time
from functools import cache

from flask import Flask, g, request

from . import config as config_module
from . import errors, metrics
from .api import bp
from .connection import connect
from .jobs import JobService
from .tasks import TASKS

MAX_BODY_BYTES = 1024 * 1024
CONVERTER = re.compile(r"<[^:>]+:")
# Label values for the request method; any other (a client can send any token) counts as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(cfg: config_module.Config | None = None) -> Flask:
    """Build the generator app from ``cfg`` (default: the environment)."""
    cfg = cfg or config_module.load()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["taskqueue"] = JobService(cfg, connect(cfg))
    errors.register(app)
    app.register_blueprint(bp)
    if cfg.metrics_enabled:
        metrics.init_generator_series(cfg.queue, TASKS)
        _instrument(app)
    return app


@cache  # a handful of rules, looked up on every request
def _route_label(rule: str) -> str:
    """'/status/<job_id:job_id>' -> '/status/<job_id>': the route template without converters."""
    return CONVERTER.sub("<", rule)


@cache  # routes x methods x statuses, all bounded: the label lookups were a third of the metrics' cost
def _request_series(route: str, method: str, status: str):
    """The request counter's and duration histogram's series for one route, method and status."""
    return metrics.HTTP_REQUESTS.labels(route, method, status), metrics.HTTP_DURATION.labels(route, method)


def _instrument(app: Flask) -> None:
    """Count every request and time it, labelled by route template (bounded cardinality)."""

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _record(response):
        started = g.pop("started", None)
        if started is not None:
            route = _route_label(request.url_rule.rule) if request.url_rule else "unmatched"
            method = request.method if request.method in HTTP_METHODS else "other"  # clients choose it
            requests_total, duration = _request_series(route, method, str(response.status_code))
            requests_total.inc()
            duration.observe(time.perf_counter() - started)
        return response
