"""The seed's ``GET /start`` in its plain form, answered without a Flask request context.

Flask spends more CPU on a request around the view (a request and an app context pushed and popped,
URL routing, a session opened and saved, a ``Response`` object built and turned back into WSGI) than
the view spends enqueueing the job (docs/performance.md). :class:`PlainStart` is WSGI middleware, set
as the Flask app's ``wsgi_app`` the way Flask documents for middleware: it takes only ``GET /start``
with no query or ``?delay=<digits>``, no ``Idempotency-Key``, no ``Authorization`` and no mount point (and
only while anonymous requests may submit), and hands the delay
to ``answer``, the API's own code for ``/start`` outside a request context
(``taskqueue.api.app.GeneratorApp.plain_start``), which enqueues, counts and renders the same JSON,
status and headers as the Flask view. Any other request, and a delay out of range, goes to Flask
unchanged, so every refusal and its error keep one implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# The status line, the headers and the body of an answer.
Answer = tuple[str, list[tuple[str, str]], bytes]

PATH = "/start"
PLAIN_QUERY = re.compile(r"delay=([0-9]{1,10})")  # fullmatch: one parameter, ASCII digits, nothing else


class PlainStart:
    """Answer plain ``GET /start`` requests with ``answer(delay)`` (``None``: no query), the rest with ``app``."""

    def __init__(self, app: WSGIApp, answer: Callable[[int | None], Answer], delay_limit: int):
        self.app = app
        self.answer = answer
        self.delay_limit = delay_limit

    def plain(self, environ: dict[str, Any]) -> tuple[bool, int | None]:
        """Whether the request is a plain ``GET /start``, and its delay (``None``: no query)."""
        if (
            environ["PATH_INFO"] != PATH
            or environ["REQUEST_METHOD"] != "GET"
            or environ.get("SCRIPT_NAME")
            or "HTTP_IDEMPOTENCY_KEY" in environ
            or "HTTP_AUTHORIZATION" in environ  # a token is checked by the Flask view (api/auth.py)
        ):
            return False, None
        query = environ.get("QUERY_STRING")
        if not query:
            return True, None
        match = PLAIN_QUERY.fullmatch(query)
        if match is None or int(match[1]) > self.delay_limit:
            return False, None
        return True, int(match[1])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        plain, delay = self.plain(environ)
        if not plain:
            return self.app(environ, start_response)
        status, headers, body = self.answer(delay)
        start_response(status, headers)
        return [body]
