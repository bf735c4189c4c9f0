"""The HTTP API: the seed's routes (`/start`, `/list`, `/status/<id>`) and the job routes around them."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, current_app, jsonify, request
from pydantic import AwareDatetime, TypeAdapter, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from taskqueue.api.auth import Role
from taskqueue.api.errors import RETRY_AFTER_BACKLOG, RETRY_AFTER_STORE_FULL, ApiError, error_response
from taskqueue.api.jobs import (
    IDEMPOTENCY_KEY_RE,
    JOB_ID_REGEX,
    LIST_STATES,
    BacklogFull,
    IdempotencyMismatch,
    JobNotFound,
    JobRequest,
    JobService,
    JobStateConflict,
    StoreFull,
    iso,
)
from taskqueue.api.openapi import MAX_BATCH, MAX_LIST_LIMIT, MAX_OFFSET, document, task_document
from taskqueue.config import Config
from taskqueue.observability import metrics
from taskqueue.store.enqueue import Enqueued
from taskqueue.tasks import TaskInputError
from taskqueue.tasks.builtin import seed_message
from taskqueue.webhooks.guard import UrlRefused

View = TypeVar("View", bound=Callable[..., Any])


class JobIdConverter(BaseConverter):
    """Route only well-formed job ids; anything else is a JSON 404 from routing, never a Redis lookup."""

    regex = JOB_ID_REGEX


bp = Blueprint("api", __name__)
BEARER = 'Bearer realm="taskqueue"'  # WWW-Authenticate of a 401 (RFC 6750)


def needs(role: Role) -> Callable[[View], View]:
    """A view that answers only requests whose role (api/auth.py) is ``role`` or above: else 401 when no valid
    token came and one is needed, 403 when a valid token's role is too low. Checked before the body is read."""

    def wrap(view: View) -> View:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            _authorize(role)
            return view(*args, **kwargs)

        checked.role = role  # type: ignore[attr-defined]  # what the OpenAPI document must declare
        return checked  # type: ignore[return-value]

    return wrap


def _authorize(needed: Role) -> None:
    decision = current_app.extensions["taskqueue.tokens"].decide(request.headers.get("Authorization"))
    if decision.role >= needed:
        return
    if not decision.presented:
        raise ApiError(401, "unauthorized", f"this needs a token of the {needed.label} role or above: send "
                       "Authorization: Bearer <token>", headers={"WWW-Authenticate": BEARER})  # fmt: skip
    if decision.role is Role.NONE:
        raise ApiError(401, "invalid_token", "the token is not valid (unknown, revoked, or not a Bearer token)",
                       headers={"WWW-Authenticate": BEARER + ', error="invalid_token"'})  # fmt: skip
    raise ApiError(403, "forbidden", f"this needs the {needed.label} role; the token has {decision.role.label}")


# Registered before any route of the blueprint, so the rules below can use <job_id:...>.
bp.record_once(lambda state: state.app.url_map.converters.setdefault("job_id", JobIdConverter))


def _store_full(exc: StoreFull) -> ApiError:
    return ApiError(503, "redis_full", f"the job store is full ({exc}); try again later", RETRY_AFTER_STORE_FULL)


@bp.errorhandler(StoreFull)
def _refuse_store_full(exc: StoreFull):
    """Redis is (nearly) full: no new job on any route until finished ones expire or workers drain it."""
    metrics.ENQUEUE_REJECTED.labels("redis_full").inc()
    err = _store_full(exc)
    return error_response(err.status, err.code, err.message, err.retry_after)


DIGITS = re.compile(r"[0-9]{1,10}")  # ASCII digits; used with fullmatch: with match, "$" lets a trailing "\n" through
STATUS_PATH = "/status/"  # the seed's status route; statusUrl is it plus the job id


def _status_prefix() -> str:
    """The status URL of a job, less its id (under the app's mount point, as url_for would give it)."""
    return request.script_root + STATUS_PATH


def service() -> JobService:
    return current_app.extensions["taskqueue"]


def _int_param(name: str, default: int, low: int, high: int) -> int:
    if not request.query_string:  # no query at all (the seed's ``GET /start``): nothing to parse
        return default
    raw = request.args.get(name)
    if raw is None:
        return default
    if not DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ApiError(400, f"invalid_{name}", f"'{name}' must be an integer from {low} to {high}")
    return int(raw)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 128 visible ASCII characters")
    return key


def _body() -> bytes:
    """The request body, whole, or an error: 413 past MAX_CONTENT_LENGTH (chunked too), 400 when unreadable."""
    try:
        data = request.get_data(cache=True)
        # Werkzeug ends a body without a Content-Length (chunked) at the size limit without a word (the
        # document, cut there, would be "invalid JSON"): a byte more from the server means it was longer.
        limit = request.max_content_length
        at_limit = request.content_length is None and limit is not None and len(data) >= limit
        if at_limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        raise
    except Exception:  # the server's framing errors (a bad chunk size, a missing CRLF), a body cut short
        raise ApiError(
            400, "invalid_body", "the request body could not be read: bad chunked framing or cut short"
        ) from None
    return data


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send a JSON body with Content-Type: application/json")
    _body()
    body = request.get_json(silent=True)  # parses what _body() read (and kept)
    if body is None:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON")
    return body


def _job_request(item: Any) -> JobRequest:
    if not isinstance(item, dict):
        raise ApiError(400, "invalid_body", "a job must be an object with 'task' and 'args'")
    unknown = sorted(set(item) - {"task", "args", "queue", "callbackUrl", *SCHEDULE_FIELDS})
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
    svc = service()
    try:
        task, args = svc.catalogue.validate(
            item.get("task"), item.get("args", {}), {"delay_limit": svc.cfg.delay_limit}
        )
    except TaskInputError as exc:
        raise ApiError(400, "invalid_task", str(exc), field=exc.field) from None
    queue = item.get("queue")
    if "queue" in item and (not isinstance(queue, str) or queue not in svc.queues):
        known = ", ".join(svc.queues)
        raise ApiError(400, "unknown_queue", f"queue must be one of TASKQUEUE_QUEUES: {known}", field="queue")
    callback_url = None
    if "callbackUrl" in item:
        try:
            svc.webhooks.check_url(item["callbackUrl"])
        except UrlRefused as exc:
            code = "invalid_callback_url" if svc.webhooks.enabled else "webhooks_disabled"
            raise ApiError(400, code, str(exc), field="callbackUrl") from None
        callback_url = item["callbackUrl"]
    run_at = _run_at(item, svc.cfg.max_schedule_delay)
    return JobRequest(task, args, run_at=run_at, queue=queue, callback_url=callback_url)


SCHEDULE_FIELDS = ("runAt", "delaySeconds")
RUN_AT = TypeAdapter(AwareDatetime)  # RFC 3339 / ISO 8601 with a zone (also a lower-case t and z)


def _run_at(item: dict[str, Any], limit: int) -> datetime | None:
    """When a job asks to run (``runAt``, ISO 8601 with a zone, or ``delaySeconds``), at most ``limit`` seconds
    ahead: rounded up to the whole second, since RQ's scheduler keeps whole seconds and a job must not start
    early. None to run now (neither given, or a time already past)."""
    if "runAt" in item and "delaySeconds" in item:
        raise ApiError(400, "invalid_schedule", "give runAt or delaySeconds, not both", field="delaySeconds")
    now = datetime.now(UTC)
    if "runAt" in item:
        field, raw = "runAt", item["runAt"]
        try:
            delay = (RUN_AT.validate_python(raw) - now).total_seconds() if isinstance(raw, str) else None
        except (ValidationError, OverflowError):
            delay = None
        if delay is None:
            raise ApiError(
                400, "invalid_schedule", "runAt must be an ISO 8601 time with a zone: 2026-12-04T15:00:00Z", field=field
            )
    elif "delaySeconds" in item:
        field, delay = "delaySeconds", item["delaySeconds"]
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise ApiError(400, "invalid_schedule", "delaySeconds must be a number of seconds, 0 or more", field=field)
    else:
        return None
    if delay > limit:
        raise ApiError(
            400, "invalid_schedule", f"{field} is more than {limit} s ahead (TASKQUEUE_MAX_SCHEDULE_DELAY)", field=field
        )
    if delay <= 0:
        return None
    try:
        return datetime.fromtimestamp(math.ceil(now.timestamp() + delay), UTC)
    except (ValueError, OverflowError, OSError):  # rounded up past the year 9999 (a limit that large allows it)
        return datetime.max.replace(microsecond=0, tzinfo=UTC)


def _fingerprint() -> str:
    """What an Idempotency-Key is bound to: the route and what the client asked for (query and JSON body)."""
    asked = [request.method, request.path, sorted(request.args.items(multi=True)), request.get_json(silent=True)]
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:32]


def enqueue_job(
    svc: JobService, req: JobRequest, idempotency_key: str | None = None, fingerprint: str = ""
) -> tuple[Enqueued, bool]:
    """Enqueue one job (see JobService.enqueue); a refusal is an ApiError (429, 409, 503 when Redis is full)."""
    try:
        job, created = svc.enqueue(req, idempotency_key, fingerprint)
    except BacklogFull as exc:
        metrics.ENQUEUE_REJECTED.labels("backlog_full").inc()
        raise ApiError(429, "backlog_full", str(exc), RETRY_AFTER_BACKLOG) from None
    except StoreFull as exc:
        metrics.ENQUEUE_REJECTED.labels("redis_full").inc()
        raise _store_full(exc) from None
    except JobStateConflict as exc:
        raise ApiError(409, "idempotency_conflict", str(exc), 1) from None
    except IdempotencyMismatch as exc:
        raise ApiError(409, "idempotency_key_reused", f"{exc}; use a new key for a new request") from None
    if created and svc.cfg.metrics_enabled:
        metrics.BATCHED.inc(metrics.jobs_enqueued(svc.request_queue(req), req.task.name))
    return job, created


def _enqueue(req: JobRequest) -> tuple[Enqueued, bool]:
    key = _idempotency_key()
    return enqueue_job(service(), req, key, _fingerprint() if key is not None else "")


def _message(job: Enqueued, when: str | None) -> str:
    """The seed's message: what was enqueued, its id and when (or when it is to run)."""
    what = seed_message(job.args[-1]) if job.task == "sleep" and job.args else f"task {job.task}"
    if job.run_at is not None:
        return f"{what} with id: {job.id} scheduled at {when} to run at {iso(job.run_at)}"
    return f"{what} with id: {job.id} added to queue at {when}"


def accepted(job: Enqueued, created: bool, script_root: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON and the headers (beyond Content-Type and -Length) that answer an enqueued job."""
    status_url = script_root + STATUS_PATH + job.id  # url_for's URL, without its URL building
    when = iso(job.enqueued_at)
    payload = {"jobId": job.id, "timeOfEnqueue": when, "message": _message(job, when), "statusUrl": status_url}
    if job.run_at is not None:
        payload["runAt"] = iso(job.run_at)
    headers = {"Location": status_url}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return payload, headers


def _accepted(job: Enqueued, created: bool, status: int):
    payload, headers = accepted(job, created, request.script_root)
    response = jsonify(payload)
    response.status_code = status
    response.headers.update(headers)
    return response


def random_delay(cfg: Config) -> int:
    """The seed's delay when none is asked for: 20-30 s (the configured range)."""
    return random.randint(cfg.delay_min, cfg.delay_max)


def start_request(svc: JobService, delay: int) -> JobRequest:
    """The seed's job: the sleep task for ``delay`` seconds (checked already: 0 to the delay limit)."""
    return JobRequest(svc.catalogue["sleep"], [delay])


# HEAD /start answers 405 (Allow: GET, OPTIONS) and enqueues nothing: a HEAD must have no side effect, and an
# empty 200 would describe a job (its Location) that does not exist. (Werkzeug would run the GET view for it.)
@bp.get("/start", head=False)
@needs(Role.SUBMIT)
def start():
    """The seed's route: enqueue the sleep task with ``?delay=`` or a random 20-30 s.

    With fast paths on, fastpath/plain_start.py answers the plain requests (no query or only ``delay``)
    through GeneratorApp.plain_start, which enqueues and renders with the functions this view uses.
    """
    svc = service()
    delay = _int_param("delay", random_delay(svc.cfg), 0, svc.cfg.delay_limit)
    job, created = _enqueue(start_request(svc, delay))
    return _accepted(job, created, 200)


@bp.post("/jobs")
@needs(Role.SUBMIT)
def create_job():
    """Enqueue one task from the allow-list: ``{"task": "hash", "args": {"rounds": 100000}}``."""
    req = _job_request(_json_body())
    job, created = _enqueue(req)
    return _accepted(job, created, 202)


@bp.post("/jobs/batch")
@needs(Role.SUBMIT)
def create_batch():
    """Enqueue up to MAX_BATCH jobs in one Redis pipeline: ``{"jobs": [{"task": ..., "args": ...}, ...]}``."""
    body = _json_body()
    items = body.get("jobs") if isinstance(body, dict) and set(body) == {"jobs"} else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ApiError(400, "invalid_body", f"'jobs' must be a list of 1 to {MAX_BATCH} jobs")
    svc = service()
    backlog = svc.cfg.max_backlog
    if backlog and len(items) > backlog:  # could never be enqueued, however long the client waits: not a 429
        raise ApiError(
            413, "batch_over_backlog", f"a batch of {len(items)} jobs exceeds TASKQUEUE_MAX_BACKLOG ({backlog} jobs)"
        )
    reqs = [_job_request(item) for item in items]
    try:
        jobs = svc.enqueue_batch(reqs)
    except BacklogFull as exc:
        metrics.ENQUEUE_REJECTED.labels("backlog_full").inc(len(reqs))
        raise ApiError(429, "backlog_full", str(exc), RETRY_AFTER_BACKLOG) from None
    if svc.cfg.metrics_enabled:
        for (queue, name), n in Counter((svc.request_queue(r), r.task.name) for r in reqs).items():
            metrics.BATCHED.inc(metrics.jobs_enqueued(queue, name), n)
    status_prefix = _status_prefix()
    response = jsonify(
        {
            "count": len(jobs),
            "jobs": [
                {"jobId": j.id, "timeOfEnqueue": iso(j.enqueued_at), "statusUrl": status_prefix + j.id}
                | ({"runAt": iso(j.run_at)} if j.run_at is not None else {})
                for j in jobs
            ],
        }
    )
    response.status_code = 202
    return response


@bp.get("/jobs/<job_id:job_id>", endpoint="job")
@bp.get(STATUS_PATH + "<job_id:job_id>")
@needs(Role.READ)
def status(job_id: str):
    """The seed's route: a job's ``result`` plus its lifecycle."""
    svc = service()
    try:
        return jsonify(svc.describe(svc.fetch(job_id)))
    except JobNotFound:
        raise ApiError(404, "job_not_found", "no job with that id (it may have expired)") from None


@bp.get("/list")
@needs(Role.READ)
def list_jobs():
    """The seed's route: running job ids; ``?state=`` lists another state, ``offset``/``limit`` page it."""
    state = request.args.get("state", "started")
    if state not in LIST_STATES:
        raise ApiError(400, "invalid_state", f"'state' must be one of: {', '.join(LIST_STATES)}")
    offset = _int_param("offset", 0, 0, MAX_OFFSET)
    limit = _int_param("limit", 100, 1, MAX_LIST_LIMIT)
    ids, total = service().list_ids(state, offset, limit)
    return jsonify({"jobs": ids, "state": state, "total": total, "offset": offset, "limit": limit})


@bp.delete("/jobs/<job_id:job_id>")
@needs(Role.ADMIN)
def cancel_job(job_id: str):
    """Cancel a waiting job or stop a running one."""
    return _change(job_id, service().cancel)


@bp.post("/jobs/<job_id:job_id>/requeue")
@needs(Role.ADMIN)
def requeue_job(job_id: str):
    """Requeue a failed, stopped or canceled job."""
    return _change(job_id, service().requeue)


def _change(job_id: str, operation):
    svc = service()
    try:
        return jsonify(svc.describe(operation(job_id)))
    except JobNotFound:
        raise ApiError(404, "job_not_found", "no job with that id (it may have expired)") from None
    except JobStateConflict as exc:
        raise ApiError(409, "invalid_job_state", str(exc)) from None


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document of this API."""
    svc = service()
    return jsonify(document(svc.cfg, svc.catalogue))


@bp.get("/tasks")
@needs(Role.READ)
def list_tasks():
    """The task catalogue: each task's name, description, arguments' JSON Schema, queue, timeout and retries."""
    svc = service()
    return jsonify({"tasks": [task_document(t, svc.cfg) for t in svc.catalogue.values()]})


@bp.get("/healthz")
def healthz():
    """The process is alive (does not touch Redis, so a Redis outage causes no restart loop)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready to serve: Redis answers and has room for new jobs."""
    svc = service()
    try:
        full = svc.store_full()
        svc.redis.ping()
    except Exception as exc:  # any failure to reach Redis means "not ready"
        raise ApiError(503, "redis_unavailable", f"redis is not reachable: {type(exc).__name__}", 5) from None
    if full:
        raise _store_full(StoreFull(f"redis holds {svc.cfg.redis_memory_limit} % of its maxmemory or more"))
    return jsonify({"status": "ready"})
