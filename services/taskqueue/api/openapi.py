"""The OpenAPI 3.1 document of the generator's API, built from the same limits the code enforces."""

from __future__ import annotations

from typing import Any

from taskqueue import __version__
from taskqueue.api.auth import Role
from taskqueue.api.jobs import IDEMPOTENCY_KEY_PATTERN, JOB_ID_PATTERN, LIST_STATES, STATUSES
from taskqueue.config import Config
from taskqueue.tasks import Catalogue, Task

MAX_BATCH = 1000
MAX_LIST_LIMIT = 1000
MAX_OFFSET = 999_999_999


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(ref: str, description: str, headers: dict | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait."}}
UNAVAILABLE = {**_error("Redis is unreachable."), "headers": RETRY_AFTER}
UNAVAILABLE_OR_FULL = {
    **_error(
        "Redis is unreachable (`redis_unavailable`) or full (`redis_full`: it holds"
        " `TASKQUEUE_REDIS_MEMORY_LIMIT` percent of its maxmemory)."
    ),
    "headers": RETRY_AFTER,
}
BACKLOG = {**_error("The queue holds `TASKQUEUE_MAX_BACKLOG` jobs."), "headers": RETRY_AFTER}
JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
}
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    "description": "The same key with the same request returns the same job for `TASKQUEUE_RESULT_TTL` seconds.",
}


def args_schema(task: Task, cfg: Config) -> dict[str, Any]:
    """The JSON Schema of a task's ``args``; the built-in sleep's bound is the configured delay limit."""
    schema = task.args_schema()
    if task.path == "taskqueue.tasks.builtin.sleep":
        schema["properties"]["seconds"]["maximum"] = cfg.delay_limit
    return schema


def task_document(task: Task, cfg: Config) -> dict[str, Any]:
    """A task as ``GET /tasks`` lists it: its own queue, timeout and retries, or the generator's settings."""
    return {
        "name": task.name,
        "description": task.description,
        "schema": args_schema(task, cfg),
        "queue": task.queue or cfg.queue,
        "timeout": cfg.job_timeout if task.timeout is None else task.timeout,
        "retries": cfg.retries if task.retries is None else task.retries,
    }


def _task_request(cfg: Config, catalogue: Catalogue) -> dict[str, Any]:
    """One schema per catalogue task, from the task's own type hints."""
    variants = []
    for name, task in catalogue.items():
        args = args_schema(task, cfg)
        variants.append(
            {
                "type": "object",
                "description": task.description,
                "properties": {
                    "task": {"const": name},
                    "args": args,
                    "queue": {
                        "enum": list(cfg.queues),
                        "description": "The queue to wait on (TASKQUEUE_QUEUES, in priority order); default: the "
                        f"task's own ({task.queue or cfg.queue}).",
                    },
                    **_schedule(cfg),
                    # Only while webhooks are on (TASKQUEUE_WEBHOOK_ALLOWED_HOSTS): else the field is refused.
                    **({"callbackUrl": CALLBACK_URL} if cfg.webhook_allowed_hosts else {}),
                },
                "required": ["task", "args"] if args.get("required") else ["task"],
                "not": {"required": ["runAt", "delaySeconds"]},
                "additionalProperties": False,
            }
        )
    return {"oneOf": variants}


RUN_AT = {"type": "string", "format": "date-time", "description": "A scheduled job: when it is to run (UTC)."}
CALLBACK_URL = {
    "type": "string",
    "format": "uri",
    "maxLength": 2048,
    "description": "An http(s) URL to POST the job's outcome to when it ends (signed; docs/webhooks.md). Its host "
    "must be in TASKQUEUE_WEBHOOK_ALLOWED_HOSTS, else 400 invalid_callback_url.",
}


def _schedule(cfg: Config) -> dict[str, Any]:
    """A job's optional time to run: one of ``runAt`` and ``delaySeconds``."""
    return {
        "runAt": {
            "type": "string",
            "format": "date-time",
            "description": "Run no earlier than this time (ISO 8601 with a zone; rounded up to the second; a time "
            f"past runs now), at most {cfg.max_schedule_delay} s ahead.",
        },
        "delaySeconds": {
            "type": "number",
            "minimum": 0,
            "maximum": cfg.max_schedule_delay,
            "description": "Run no earlier than this many seconds from now (rounded up to the second).",
        },
    }


def document(cfg: Config, catalogue: Catalogue) -> dict[str, Any]:
    """The whole OpenAPI document for ``cfg`` (its delay limit bounds the sleep task) and the catalogue."""
    enqueue_errors = {
        "409": {
            **_error(
                "`idempotency_conflict`: another request with this Idempotency-Key is still being processed (see"
                " Retry-After); `idempotency_key_reused`: the key was first used with another request (route,"
                " query or body), so a new request needs a new key (no Retry-After)."
            ),
            "headers": RETRY_AFTER,
        },
        "429": BACKLOG,
        "503": UNAVAILABLE_OR_FULL,
    }
    body_errors = {
        "400": _error("Invalid JSON (or nested too deeply), task or arguments; or a body that cannot be read."),
        "413": _error("Body over 1 MiB."),
        "415": _error("Body is not JSON."),
    }
    accepted_headers = {"Location": {"schema": {"type": "string"}, "description": "The job's status URL."}}
    return _secured(cfg, {
        "openapi": "3.1.0",
        "info": {"title": "taskqueue generator", "version": __version__},
        "paths": {
            "/start": {
                "get": {
                    "summary": "The seed's route: enqueue the sleep task.",
                    "parameters": [
                        {
                            "name": "delay",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": cfg.delay_limit},
                            "description": f"Seconds; default random {cfg.delay_min}-{cfg.delay_max}.",
                        },
                        IDEMPOTENCY,
                    ],
                    "responses": {
                        "200": _json("Accepted", "Enqueued.", accepted_headers),
                        "400": _error("Invalid delay or Idempotency-Key."),
                        **enqueue_errors,
                    },
                }
            },
            "/jobs": {
                "post": {
                    "summary": "Enqueue one task from the allow-list.",
                    "parameters": [IDEMPOTENCY],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
                    },
                    "responses": {
                        "202": _json("Accepted", "Enqueued.", accepted_headers),
                        **body_errors,
                        **enqueue_errors,
                    },
                }
            },
            "/jobs/batch": {
                "post": {
                    "summary": f"Enqueue up to {MAX_BATCH} jobs in one Redis pipeline.",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
                    },
                    "responses": {
                        "202": _json("BatchAccepted", "Enqueued."),
                        **body_errors,
                        "413": _error("Body over 1 MiB, or more jobs than `TASKQUEUE_MAX_BACKLOG` (never enqueued)."),
                        **enqueue_errors,
                    },
                }
            },
            "/status/{job_id}": {"get": _status_op("The seed's route: a job's result and lifecycle.")},
            "/jobs/{job_id}": {
                "get": _status_op("A job's result and lifecycle (same as /status/{job_id})."),
                "delete": {
                    "summary": "Cancel a waiting job or stop a running one.",
                    "parameters": [JOB_ID],
                    "responses": {
                        "200": _json("JobStatus", "Canceled or stopping."),
                        "404": _error("No such job."),
                        "409": _error("The job has already ended."),
                        "503": UNAVAILABLE,
                    },
                },
            },
            "/jobs/{job_id}/requeue": {
                "post": {
                    "summary": "Requeue a failed, stopped or canceled job.",
                    "parameters": [JOB_ID],
                    "responses": {
                        "200": _json("JobStatus", "Requeued."),
                        "404": _error("No such job."),
                        "409": _error("The job is not failed, stopped or canceled."),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/list": {
                "get": {
                    "summary": "The seed's route: running job ids; `state` lists another state.",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(LIST_STATES)}},
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
                        },
                    ],
                    "responses": {
                        "200": _json("JobList", "A page of job ids."),
                        "400": _error("Invalid state, offset or limit."),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/healthz": {"get": {"summary": "The process is alive.", "responses": {"200": _json("Health", "Alive.")}}},
            "/readyz": {
                "get": {
                    "summary": "Redis answers and has room for new jobs.",
                    "responses": {"200": _json("Health", "Ready."), "503": UNAVAILABLE_OR_FULL},
                }
            },
            "/tasks": {
                "get": {
                    "summary": "The task catalogue: what POST /jobs accepts, with each task's arguments' schema.",
                    "responses": {"200": _json("TaskList", "The tasks.")},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {"schemas": _schemas(cfg, catalogue)},
    })  # fmt: skip


# The role each operation needs (the routes' @needs, api/auth.py; tests/test_openapi.py holds them equal); the
# others need none.
OPERATION_ROLES = {
    ("/start", "get"): "submit",
    ("/jobs", "post"): "submit",
    ("/jobs/batch", "post"): "submit",
    ("/status/{job_id}", "get"): "read",
    ("/jobs/{job_id}", "get"): "read",
    ("/jobs/{job_id}", "delete"): "admin",
    ("/jobs/{job_id}/requeue", "post"): "admin",
    ("/list", "get"): "read",
    ("/tasks", "get"): "read",
}


def _secured(cfg: Config, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the bearer scheme declared per operation: a token of the operation's role, or none where
    anonymous requests (``TASKQUEUE_ANONYMOUS_ROLE``) may; the health routes and this document need none."""
    doc["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token of TASKQUEUE_API_TOKENS_FILE, of the role read, submit or admin (each may do"
            " what the ones before it may).",
        }
    }
    anonymous = Role.named(cfg.anonymous_role)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            role = OPERATION_ROLES.get((path, method))
            if role is None:
                op["security"] = []
                continue
            op["security"] = [{"bearer": []}] + ([{}] if anonymous >= Role.named(role) else [])
            op["description"] = f"Role: {role}."
            op["responses"]["401"] = {
                **_error("No valid token where one is needed (`unauthorized`, `invalid_token`)."),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            }
            op["responses"]["403"] = _error("The token's role is below this operation's (`forbidden`).")
    return doc


def _status_op(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [JOB_ID],
        "responses": {
            "200": _json("JobStatus", "The job."),
            "404": _error("No such job (or it expired)."),
            "503": UNAVAILABLE,
        },
    }


def _schemas(cfg: Config, catalogue: Catalogue) -> dict[str, Any]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "The argument at fault (`invalid_task`)."},
                    },
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
        "Accepted": {
            "type": "object",
            "required": ["jobId", "timeOfEnqueue", "message", "statusUrl"],
            "properties": {
                "jobId": {"type": "string"},
                "timeOfEnqueue": {"type": "string", "format": "date-time"},
                "message": {"type": "string"},
                "statusUrl": {"type": "string"},
                "runAt": RUN_AT,
            },
            "additionalProperties": False,
        },
        "BatchAccepted": {
            "type": "object",
            "required": ["count", "jobs"],
            "properties": {
                "count": {"type": "integer"},
                "jobs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["jobId", "timeOfEnqueue", "statusUrl"],
                        "properties": {
                            "jobId": {"type": "string"},
                            "timeOfEnqueue": {"type": "string", "format": "date-time"},
                            "statusUrl": {"type": "string"},
                            "runAt": RUN_AT,
                        },
                    },
                },
            },
        },
        "JobRequest": _task_request(cfg, catalogue),
        "TaskList": {
            "type": "object",
            "required": ["tasks"],
            "properties": {
                "tasks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "description", "schema", "queue", "timeout", "retries"],
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "schema": {"type": "object", "description": "The JSON Schema of the task's `args`."},
                            "queue": {"type": "string"},
                            "timeout": {"type": "integer", "description": "Seconds a job of it may run."},
                            "retries": {"type": "integer"},
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
        "BatchRequest": {
            "type": "object",
            "required": ["jobs"],
            "properties": {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": {"$ref": "#/components/schemas/JobRequest"},
                }
            },
            "additionalProperties": False,
        },
        "JobStatus": {
            "type": "object",
            "required": [
                "jobId",
                "task",
                "status",
                "result",
                "error",
                "enqueuedAt",
                "startedAt",
                "endedAt",
                "retriesLeft",
                "queue",
                "runAt",
                "progress",
            ],
            "properties": {
                "jobId": {"type": "string"},
                "task": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "result": {"description": "The task's return value once finished, else null."},
                "error": {"type": ["string", "null"]},
                "enqueuedAt": nullable_time,
                "startedAt": nullable_time,
                "endedAt": nullable_time,
                "retriesLeft": {"type": ["integer", "null"]},
                "queue": {"type": "string"},
                "runAt": {**nullable_time, "description": "When a scheduled job asked to run, else null."},
                "progress": {
                    "description": "What the task last reported with taskqueue.tasks.progress (written at most "
                    "every 0.5 s), else null.",
                    "type": ["object", "null"],
                    "required": ["current", "total", "message", "updatedAt"],
                    "properties": {
                        "current": {"type": "number"},
                        "total": {"type": ["number", "null"]},
                        "message": {"type": ["string", "null"], "maxLength": 200},
                        "updatedAt": {"type": "string", "format": "date-time"},
                    },
                    "additionalProperties": False,
                },
                "callback": {
                    "description": "Only for a job enqueued with a callbackUrl: its webhook's delivery (pending "
                    "until the job ends and the receiver answers 2xx; failed once given up).",
                    "type": "object",
                    "required": ["status", "attempts", "lastError"],
                    "properties": {
                        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                        "attempts": {"type": "integer", "minimum": 0},
                        "lastError": {"type": ["string", "null"]},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        "JobList": {
            "type": "object",
            "required": ["jobs", "state", "total", "offset", "limit"],
            "properties": {
                "jobs": {"type": "array", "items": {"type": "string"}},
                "state": {"type": "string", "enum": list(LIST_STATES)},
                "total": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    }
