"""Every PromQL expression the project ships runs against the real Prometheus without error and, when it
reads a taskqueue_ metric, returns data (after the workload, so every series has samples)."""

from __future__ import annotations

import subprocess

import pytest

from tests.observability import promql
from tests.support import ROOT

ALERTS = ROOT / "helm" / "taskqueue" / "files" / "alerts.yml"
DASHBOARD = ROOT / "helm" / "taskqueue" / "files" / "dashboards" / "taskqueue.json"
DOCS = ROOT / "docs" / "metrics.md"
VALUES = ROOT / "helm" / "taskqueue" / "values.yaml"
ALERT_TESTS = ROOT / "tests" / "observability" / "alerts_test.yml"


def all_queries() -> list[promql.Query]:
    return [
        *promql.dashboard_queries(DASHBOARD),
        *promql.rule_queries(ALERTS),
        *promql.docs_queries(DOCS),
        *promql.values_queries(VALUES),
    ]


def test_promtool_check_rules():
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules():
    out = subprocess.run(
        ["promtool", "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_firing_and_quiet_unit_tests():
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r}
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"


def test_the_sources_hold_the_queries_we_expect():
    """The extraction finds them all: a broken extractor must not pass this module vacuously."""
    queries = all_queries()
    sources = {q.source.split(":")[0] for q in queries}
    assert {DASHBOARD.name, ALERTS.name, DOCS.name} <= sources
    assert len([q for q in queries if q.source.startswith(DASHBOARD.name)]) >= 20
    assert len([q for q in queries if q.source.startswith(DOCS.name)]) >= 15
    assert len([q for q in queries if q.source.startswith(ALERTS.name)]) >= 5
    assert all("$" not in q.expr for q in queries if q.source.startswith(DASHBOARD.name))


@pytest.mark.parametrize("query", all_queries(), ids=lambda q: q.source)
def test_query_runs_and_returns_data(stack, workload, query):
    prom = stack["prometheus"]
    prom.query(query.expr)  # raises on any PromQL error
    if not query.needs_data:
        return
    for part in query.data_parts:
        assert prom.query(part), f"{query.source}: no data for {part!r}"


def test_dashboard_is_provisionable():
    """Stable uid, the data source as a variable, every panel and target on it, unique panel ids."""
    import json

    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "taskqueue" and doc["id"] is None
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["queue"]["datasource"]["uid"] == "${datasource}"
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in panels).lower()
    for needed in ("enqueue vs completion", "outcome", "backlog", "in flight", "workers", "run time", "wait time",
                   "failure ratio"):  # fmt: skip
        assert needed in titles, needed
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
