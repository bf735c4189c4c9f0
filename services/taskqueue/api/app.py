"""The generator's Flask application factory."""

from __future__ import annotations

import re
import time
from functools import cache
from typing import Any

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import Rule

from taskqueue import config as config_module
from taskqueue.api import errors, routes
from taskqueue.api.auth import Role, Tokens
from taskqueue.api.jobs import JobService
from taskqueue.fastpath.plain_start import PlainStart
from taskqueue.observability import metrics
from taskqueue.store.connection import connect
from taskqueue.tasks import Catalogue

MAX_BODY_BYTES = 1024 * 1024
CONVERTER = re.compile(r"<[^:>]+:")
START_RULE = "/start"
# Label values for the request method; any other (a client can send any token) counts as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class DepthSafeJSON(DefaultJSONProvider):
    """Flask's JSON, where a document nested deeper than the parser can follow is invalid JSON, not a crash.

    ``json.loads`` recurses once a level and raises RecursionError past the interpreter's limit (about
    1,000 levels): here a ValueError, which ``request.get_json`` treats as any invalid body (400).
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


class SideEffectRule(Rule):
    """A URL rule that can refuse HEAD (``head=False``): Werkzeug otherwise answers HEAD with the GET view,
    which for a route with a side effect (``/start`` enqueues) would do the work and drop the answer."""

    def __init__(self, string: str, *, head: bool = True, **kwargs: Any) -> None:
        super().__init__(string, **kwargs)
        self.head = head
        if not head and self.methods is not None:
            self.methods.discard("HEAD")  # routing answers HEAD 405, with Allow naming the rest

    def get_empty_kwargs(self) -> Any:
        """The arguments a copy of this rule is made with (Rule.empty), ``head`` included."""
        return {**super().get_empty_kwargs(), "head": self.head}


class GeneratorApp(Flask):
    """Flask, with every request counted and timed when metrics are on."""

    json_provider_class = DepthSafeJSON
    url_rule_class = SideEffectRule
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
        rule, method = request.url_rule, request.method
        self.count_request(
            rule.rule if rule is not None else None,
            method if method in HTTP_METHODS else "other",  # clients choose it: keep the label set bounded
            response.status_code,
            started,
        )
        return response

    def count_request(self, rule: str | None, method: str, status: int, started: float) -> None:
        """Count a request and its duration since ``started`` (a ``perf_counter()``)."""
        requests_total, duration = _request_series(rule, method, status)
        metrics.BATCHED.inc(requests_total)
        metrics.BATCHED.observe(duration, time.perf_counter() - started)

    def plain_start(self, delay: int | None) -> tuple[str, list[tuple[str, str]], bytes]:
        """``GET /start`` answered outside a request context (fastpath/plain_start.py): the view's job and
        JSON (``delay`` None: the random default), the error handlers' answers, counted as a dispatch is."""
        started = time.perf_counter()
        svc: JobService = self.extensions["taskqueue"]
        try:
            req = routes.start_request(svc, routes.random_delay(svc.cfg) if delay is None else delay)
            payload, headers = routes.accepted(*routes.enqueue_job(svc, req), "")
            status = 200
        except Exception as exc:  # what the Flask view would raise: answered as its error handler does
            err = errors.as_api_error(exc)
            status, payload, headers = (
                err.status,
                errors.error_payload(err.code, err.message, err.field),
                errors.error_headers(err.retry_after),
            )
        body = self.json.dumps(payload, indent=None, separators=(",", ":")).encode() + b"\n"  # jsonify's bytes
        if self.count_requests:
            self.count_request(START_RULE, "GET", status, started)
        head = [("Content-Type", self.json.mimetype), ("Content-Length", str(len(body))), *headers.items()]
        return _status_line(status), head, body


def create_app(cfg: config_module.Config | None = None, catalogue: Catalogue | None = None) -> Flask:
    """Build the generator app from ``cfg`` (default: the environment) for the ``catalogue``'s tasks
    (default: loaded from ``cfg.task_modules``)."""
    cfg = cfg or config_module.load()
    app = GeneratorApp(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["taskqueue"] = JobService(cfg, connect(cfg), catalogue)
    anonymous = Role.named(cfg.anonymous_role)
    app.extensions["taskqueue.tokens"] = Tokens(cfg.api_tokens_file, anonymous)
    errors.register(app)
    app.register_blueprint(routes.bp)
    if cfg.metrics_enabled:
        svc = app.extensions["taskqueue"]
        metrics.init_generator_series((svc.task_queue(t), t.name) for t in svc.catalogue.values())
        app.count_requests = True
    # (debug: Flask indents its JSON; a request with a token, or anonymous ones that may not submit, go to Flask.)
    if cfg.fast_paths and not app.debug and anonymous >= Role.SUBMIT:
        # Flask's documented way to add WSGI middleware; the Flask app still answers all but plain /start.
        app.wsgi_app = PlainStart(app.wsgi_app, app.plain_start, cfg.delay_limit)  # type: ignore[method-assign]
    return app


def _route_label(rule: str | None) -> str:
    """'/status/<job_id:job_id>' -> '/status/<job_id>': the route template without converters."""
    return CONVERTER.sub("<", rule) if rule is not None else "unmatched"


@cache
def _status_line(status: int) -> str:
    """Werkzeug's status line for a status code (``200 OK``, ``429 TOO MANY REQUESTS``)."""
    return GeneratorApp.response_class(status=status).status


@cache  # routes x methods x statuses, all bounded: the label lookups were a third of the metrics' cost
def _request_series(rule: str | None, method: str, status: int):
    """The request counter's and duration histogram's series for one URL rule, method and status."""
    route = _route_label(rule)
    return metrics.HTTP_REQUESTS.labels(route, method, str(status)), metrics.HTTP_DURATION.labels(route, method)
