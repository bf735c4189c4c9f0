"""Every PromQL expression the project ships: dashboard, alert rules, docs, autoscaling triggers.

Each is a :class:`Query` with where it came from and the forms to execute: the expression itself
(must not error) and the parts that must return data. An alert's expression returns nothing while
it does not fire, so for alerts each operand of its top-level ``and``/``or``/``unless``, with its
threshold comparison removed (and ``absent(x)`` read as ``x``), must return data instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

GRAFANA_INTERVALS = ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}", "$__range")


@dataclass
class Query:
    source: str
    expr: str
    data_parts: list[str] = field(default_factory=list)

    @property
    def needs_data(self) -> bool:
        return "taskqueue_" in self.expr


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables: intervals with 1m, any dashboard variable with the regex ``.*``."""
    for name in GRAFANA_INTERVALS:
        expr = expr.replace(name, "1m")
    expr = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}", ".*", expr)
    return re.sub(r"\$[A-Za-z_][A-Za-z0-9_]*", ".*", expr)


def _label_values(query: str) -> str | None:
    """``label_values(metric, label)`` -> ``metric`` (a Grafana variable query is not PromQL)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return m.group(1) if m else None


def dashboard_queries(path: Path) -> list[Query]:
    doc = json.loads(path.read_text())
    found: list[Query] = []

    def walk_panels(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    found.append(Query(f"{path.name}: panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk_panels(p.get("panels", []))

    walk_panels(doc.get("panels", []))
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        inner = _label_values(q or "")
        found.append(Query(f"{path.name}: variable ${var['name']}", inner if inner is not None else q))
    for q in found:
        q.expr = grafana_to_promql(q.expr)
        q.data_parts = [q.expr]
    return found


def _split_top(expr: str) -> list[str]:
    """The operands of ``expr``'s top-level set operators (and, or, unless, with on/ignoring)."""
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(and|or|unless)\b(\s*(on|ignoring)\s*\([^)]*\))?", expr[i:])
            if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
                parts.append(expr[start:i])
                i += m.end()
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
COMPARISON = re.compile(rf"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?{NUMBER}\s*$")


def _data_part(operand: str) -> str:
    operand = COMPARISON.sub("", operand).strip()
    m = re.fullmatch(r"absent\((.*)\)", operand, re.S)
    return m.group(1) if m else operand


def rule_queries(path: Path) -> list[Query]:
    doc = yaml.safe_load(path.read_text())
    found = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            expr = rule["expr"].strip()
            parts = [_data_part(p) for p in _split_top(expr)] if "alert" in rule else [expr]
            found.append(Query(f"{path.name}: {name}", expr, parts))
    return found


def docs_queries(path: Path) -> list[Query]:
    """Each ```promql block: queries separated by blank lines, ``#`` lines are comments."""
    found = []
    for n, block in enumerate(re.findall(r"```promql\n(.*?)```", path.read_text(), re.S), 1):
        for chunk in re.split(r"\n\s*\n", block):
            lines = [ln for ln in chunk.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if lines:
                expr = "\n".join(lines)
                found.append(Query(f"{path.name}: block {n}", expr, [expr]))
    return found


def values_queries(path: Path) -> list[Query]:
    """Any ``query:`` string in the chart's values (an autoscaler's Prometheus trigger)."""
    if not path.exists():
        return []
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "query" and isinstance(v, str) and v.strip():
                    found.append(Query(f"{path.name}: {where}.query", v.strip(), [v.strip()]))
                else:
                    walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(yaml.safe_load(path.read_text()), "")
    return found
