"""JSON errors for every failure the API can meet: ``{"error": {"code", "message"}}``, never HTML."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from taskqueue.store.connection import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

RETRY_AFTER_UNAVAILABLE = 2  # a restart or a Sentinel failover (seconds): worth asking again soon
RETRY_AFTER_BACKLOG = 10
RETRY_AFTER_STORE_FULL = 30  # finished jobs expire and workers drain the queue: not within seconds


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: int | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.field = field  # the request's argument at fault, when one is
        self.headers = headers or {}  # more headers of the answer (WWW-Authenticate)


def error_payload(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_headers(retry_after: int | None) -> dict[str, str]:
    return {} if retry_after is None else {"Retry-After": str(retry_after)}


def error_response(
    status: int, code: str, message: str, retry_after: int | None = None, field: str | None = None
) -> Response:
    response = jsonify(error_payload(code, message, field))
    response.status_code = status
    response.headers.update(error_headers(retry_after))
    return response


def as_api_error(exc: Exception) -> ApiError:
    """The answer to an exception: its own for an ApiError, 503 while Redis is unreachable, else 500 (logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UNAVAILABLE_ERRORS):
        log.warning("redis unavailable: %s", exc)
        return ApiError(
            503, "redis_unavailable", "the job store is unavailable, try again shortly", RETRY_AFTER_UNAVAILABLE
        )
    log.error("unhandled error", exc_info=exc)
    return ApiError(500, "internal_error", "internal error")


def _code_for(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        414: "uri_too_long",
        415: "unsupported_media_type",
        417: "expectation_failed",
        429: "too_many_requests",
        431: "request_header_fields_too_large",
        500: "internal_error",
        501: "not_implemented",
    }.get(status, "http_error")


def raw_error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error response, JSON like every other, that closes the connection: for the server's
    own refusals (gunicorn's parser), which come before or around the app."""
    body = json.dumps(error_payload(_code_for(status), message)).encode() + b"\n"
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def register(app: Flask) -> None:
    """Install handlers so that no request ends in an HTML page or a stack trace."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        response = error_response(status, _code_for(status), exc.description or exc.name)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)  # ApiError included
    def _unexpected(exc: Exception):
        err = as_api_error(exc)
        response = error_response(err.status, err.code, err.message, err.retry_after, err.field)
        response.headers.update(err.headers)
        return response
