"""The OpenAPI document is true: it lists exactly the app's routes, and schemathesis finds no violation."""

from __future__ import annotations

import re
import subprocess

import requests

from taskqueue import config
from taskqueue.api.app import create_app
from tests.support import BIN

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
ANY_TIME = 253402300799  # seconds from 1970 to the end of the year 9999: more than any date-time is ahead


def test_document_lists_exactly_the_apps_routes(generator):
    doc = requests.get(generator.base + "/openapi.json", timeout=2).json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    app = create_app(config.load({}))
    served = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods & HTTP_METHODS
    }
    assert documented == served


def test_each_operation_declares_the_role_its_route_checks():
    """The document's roles (openapi.OPERATION_ROLES) are the ones the routes' @needs check, route by route."""
    from taskqueue.api.openapi import OPERATION_ROLES

    app = create_app(config.load({}))
    checked = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method.lower()): view.role.label
        for rule in app.url_map.iter_rules()
        if hasattr(view := app.view_functions[rule.endpoint], "role")
        for method in rule.methods & HTTP_METHODS
    }
    assert checked == OPERATION_ROLES


def test_schemathesis_finds_no_server_error_or_schema_violation(processes, app_env):
    """Property-based requests from the document: 0 server errors, 0 schema violations (bounded run).

    One check is off: ``use_after_free``. DELETE /jobs/<id> cancels or stops a job and keeps its
    record on purpose, so that a client can still read that it was canceled (status "canceled").
    A job's ``runAt`` is bounded relative to now (TASKQUEUE_MAX_SCHEDULE_DELAY), which a schema cannot
    say: this generator allows any time up to the year 9999, and tests/test_scheduled_jobs.py tests the bound.
    """
    generator = processes.generator(env={**app_env, "TASKQUEUE_MAX_SCHEDULE_DELAY": str(ANY_TIME)})
    proc = subprocess.run(
        [str(BIN / "schemathesis"), "run", generator.base + "/openapi.json", "--checks", "all",
         "--exclude-checks", "use_after_free",
         "--max-examples", "25", "--seed", "1", "--request-timeout", "5", "--no-color"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = proc.stdout[-3000:]
    assert proc.returncode == 0, summary
    assert "Tested: 11" in proc.stdout, summary  # every operation of the document (GET /tasks the 11th)
