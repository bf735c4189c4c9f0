"""The generator's Flask application factory."""

from __future__ import annotations

import re
import time
from functools import cache

from flask import Flask, Response, request

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


class GeneratorApp(Flask):
    """Flask, with every request counted and timed when metrics are on."""

    count_requests = False

    def full_dispatch_request(self) -> Response:
        """Count and time the request around Flask's dispatch (routing errors and handled errors included).

        One override instead of before/after-request hooks: the hooks' dispatch and ``g`` cost several
        times the metric updates themselves (bench: ``python -m bench.metrics_inprocess``).
        """
        if not self.count_requests:
            return super().full_dispatch_request()
        started = time.perf_counter()
        response = super().full_dispatch_request()
        req = request._get_current_object()  # one context lookup, not one an attribute
        rule, method = req.url_rule, req.method
        requests_total, duration = _request_series(
            rule.rule if rule is not None else None,
            method if method in HTTP_METHODS else "other",  # clients choose it: keep the label set bounded
            response.status_code,
        )
        metrics.BATCHED.inc(requests_total)
        metrics.BATCHED.observe(duration, time.perf_counter() - started)
        return response


def create_app(cfg: config_module.Config | None = None) -> Flask:
    """Build the generator app from ``cfg`` (default: the environment)."""
    cfg = cfg or config_module.load()
    app = GeneratorApp(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["taskqueue"] = JobService(cfg, connect(cfg))
    errors.register(app)
    app.register_blueprint(bp)
    if cfg.metrics_enabled:
        metrics.init_generator_series(cfg.queue, TASKS)
        app.count_requests = True
    return app


def _route_label(rule: str | None) -> str:
    """'/status/<job_id:job_id>' -> '/status/<job_id>': the route template without converters."""
    return CONVERTER.sub("<", rule) if rule is not None else "unmatched"


@cache  # routes x methods x statuses, all bounded: the label lookups were a third of the metrics' cost
def _request_series(rule: str | None, method: str, status: int):
    """The request counter's and duration histogram's series for one URL rule, method and status."""
    route = _route_label(rule)
    return metrics.HTTP_REQUESTS.labels(route, method, str(status)), metrics.HTTP_DURATION.labels(route, method)
