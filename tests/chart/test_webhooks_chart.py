"""Completion webhooks in the chart: the settings reach the generator and the exporter, the exporter's signing key
comes from a Secret (generated once and kept, or the user's), and its NetworkPolicy opens the listed addresses.

The matrix's ``webhooks`` and ``webhooks-existing-secret`` cases also go through every other chart test
(validation, cross-references, the NetworkPolicy evaluator, checkov, lint); these check what is particular to
webhooks, with ``defaults`` as webhooks off.
"""

from __future__ import annotations

import base64
import json

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from taskqueue import config as tq_config
from taskqueue.webhooks.guard import AllowList
from tests.chart.rendering import (
    CASES,
    CHART_DIR,
    PUBLIC_HTTPS,
    by_kind,
    component,
    find,
    kube_version,
    objects,
    one,
    pod_spec,
    render,
    render_values,
    resolve_env,
    workloads,
)

WEBHOOKS = CASES["webhooks"]
SECRET_NAME = "taskqueue-webhook"


def all_objects(case):
    return objects(case) + [dict(o) for o in case.provided]


def app_config(objs, comp):
    """taskqueue.config as the component's container loads it from the environment the chart gives it."""
    w = next(w for w in workloads(objs) if component(w) == comp)
    return tq_config.load(resolve_env(w, pod_spec(w)["containers"][0], objs))


def exporter_env_var(objs, name):
    w = next(w for w in workloads(objs) if component(w) == "exporter")
    return next((v for v in pod_spec(w)["containers"][0]["env"] if v["name"] == name), None)


def egress(objs, comp):
    return one(objs, "NetworkPolicy", component=comp)["spec"]["egress"]


def ip_block_rules(rules):
    return [r for r in rules if any("ipBlock" in peer for peer in r.get("to") or [])]


def test_off_by_default():
    """No hosts: the setting is there and empty (webhooks refused at enqueue), no key, no egress added."""
    objs = all_objects(CASES["defaults"])
    for comp in ("generator", "exporter"):
        cfg = app_config(objs, comp)
        assert cfg.webhook_allowed_hosts == ()
        assert not AllowList.parse(cfg.webhook_allowed_hosts).enabled
    assert one(objs, "ConfigMap", name="taskqueue")["data"]["TASKQUEUE_WEBHOOK_ALLOWED_HOSTS"] == ""
    assert find(objs, "Secret", SECRET_NAME, "taskqueue") is None
    assert exporter_env_var(objs, "TASKQUEUE_WEBHOOK_SECRET") is None
    # The exporter's egress is the generator's: DNS and Redis only.
    assert egress(objs, "exporter") == egress(objs, "generator")
    assert not ip_block_rules(egress(objs, "exporter"))
    assert "webhook" not in render(CASES["defaults"])["taskqueue/templates/NOTES.txt"].lower()


def test_hosts_and_settings_reach_the_generator_and_the_exporter():
    objs = all_objects(WEBHOOKS)
    hosts = ("hooks.example.com", "10.1.2.0/24", "192.0.2.7")
    assert one(objs, "ConfigMap", name="taskqueue")["data"]["TASKQUEUE_WEBHOOK_ALLOWED_HOSTS"] == ",".join(hosts)
    generator, exporter = app_config(objs, "generator"), app_config(objs, "exporter")
    assert generator.webhook_allowed_hosts == exporter.webhook_allowed_hosts == hosts
    AllowList.parse(hosts)  # what the generator and exporter do at start
    # The chart's defaults are the app's.
    app_defaults = {s.name: s.parse(s.default) for s in tq_config.SETTINGS}
    chart_defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["webhooks"]
    for key, setting in {"timeout": "webhook_timeout", "retryFor": "webhook_retry_for",
                         "backoff": "webhook_backoff", "concurrency": "webhook_concurrency"}.items():  # fmt: skip
        assert getattr(exporter, setting) == chart_defaults[key] == app_defaults[setting], key
    # Set ones arrive as set (numbers as the app parses them, not 8.64e+04).
    objs = render_values({"webhooks": {"allowedHosts": ["10.0.0.0/8"], "timeout": 2.5, "retryFor": 3600000,
                                       "backoff": 1, "concurrency": 32}})  # fmt: skip
    objs += list(WEBHOOKS.provided)
    cfg = app_config(objs, "exporter")
    assert (cfg.webhook_timeout, cfg.webhook_retry_for, cfg.webhook_backoff, cfg.webhook_concurrency) == (
        2.5,
        3600000,
        1,
        32,
    )


def test_generated_key_is_random_kept_and_read_by_the_exporter():
    objs = all_objects(WEBHOOKS)
    secret = find(objs, "Secret", SECRET_NAME, WEBHOOKS.namespace)
    assert secret is not None and component(secret) == "exporter"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["webhook-secret"]).decode()
    assert len(key) == 32 and key.isalnum()
    ref = exporter_env_var(objs, "TASKQUEUE_WEBHOOK_SECRET")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": SECRET_NAME, "key": "webhook-secret"}
    # The exporter refuses to start with hosts and no key: it has the key; the generator and worker do not.
    assert app_config(objs, "exporter").webhook_secret == key
    assert app_config(objs, "generator").webhook_secret == app_config(objs, "worker").webhook_secret == ""
    # A new key each first install (no fixed default); upgrades read it back with lookup.
    again = one(render_values(WEBHOOKS.values), "Secret", name=SECRET_NAME)
    assert again["data"] != secret["data"]
    template = (CHART_DIR / "templates" / "exporter.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $secretName' in template
    notes = render(WEBHOOKS)["taskqueue/templates/NOTES.txt"]
    assert f"get secret {SECRET_NAME}" in notes
    assert "hooks.example.com add a rule" not in notes  # the case has an exporterEgress rule


def test_a_key_given_in_values_goes_into_the_secret():
    objs = render_values({"webhooks": {"allowedHosts": ["*.example.com"], "secret": "not-so-s3cret"}})
    secret = one(objs, "Secret", name=SECRET_NAME)
    assert base64.b64decode(secret["data"]["webhook-secret"]).decode() == "not-so-s3cret"
    assert app_config(objs, "exporter").webhook_secret == "not-so-s3cret"


def test_existing_secret_is_used_and_none_is_made():
    case = CASES["webhooks-existing-secret"]
    objs = all_objects(case)
    assert find(objs, "Secret", SECRET_NAME, case.namespace) is None
    assert not [s for s in by_kind(objects(case), "Secret") if component(s) == "exporter"]
    ref = exporter_env_var(objs, "TASKQUEUE_WEBHOOK_SECRET")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mine", "key": "webhook-secret"}
    assert app_config(objs, "exporter").webhook_secret == "s3cret"
    # Host names only: a NetworkPolicy cannot name them, so nothing is added (NOTES says what to do).
    assert egress(objs, "exporter") == egress(objs, "generator")
    assert "*.example.com add a rule to networkPolicy.exporterEgress" in render(case)["taskqueue/templates/NOTES.txt"]


def test_listed_addresses_open_the_exporters_egress_only():
    objs = objects(WEBHOOKS)
    rules = egress(objs, "exporter")
    defaults = objects(CASES["defaults"])
    # DNS and Redis as before, then the listed addresses (a bare IP as /32) on any TCP port, then exporterEgress.
    assert rules[:2] == egress(defaults, "exporter")
    assert rules[2] == {
        "to": [{"ipBlock": {"cidr": "10.1.2.0/24"}}, {"ipBlock": {"cidr": "192.0.2.7/32"}}],
        "ports": [{"protocol": "TCP"}],
    }
    assert rules[3:] == [PUBLIC_HTTPS]
    for comp in ("generator", "worker", "redis"):
        assert egress(objs, comp) == egress(defaults, comp), comp


def test_ipv6_entries_become_128_blocks():
    objs = render_values({"webhooks": {"allowedHosts": ["2001:db8::1", "2001:db8:1::/48", "hooks.example.com"]}})
    policy = one(objs, "NetworkPolicy", component="exporter")
    kubernetes_validate.validate(policy, kube_version(), strict=True)
    (rule,) = ip_block_rules(policy["spec"]["egress"])
    assert [p["ipBlock"]["cidr"] for p in rule["to"]] == ["2001:db8::1/128", "2001:db8:1::/48"]


@pytest.mark.parametrize(
    "hosts",
    [
        ["hooks.example.com", "*.example.com", "Hooks.Example.COM.", "localhost", "my-receiver"],
        ["10.0.0.0/8", "192.0.2.7", "2001:db8::1", "2001:db8::/32", "::1"],
    ],
)
def test_schema_takes_what_the_app_takes(hosts):
    AllowList.parse(hosts)
    with helm.Chart.load(CHART_DIR) as chart:
        chart.render({"webhooks": {"allowedHosts": hosts}}, name="taskqueue", namespace="taskqueue")


def test_dashboard_and_alerts_cover_webhooks():
    """The Webhooks row's panels read both metrics; the two alerts are in the rule file the chart ships."""
    dashboard = json.loads((CHART_DIR / "files" / "dashboards" / "taskqueue.json").read_text())
    panels = dashboard["panels"]
    row = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Webhooks")
    exprs = " ".join(t["expr"] for p in panels[row + 1 :] for t in p["targets"])
    assert "taskqueue_webhook_deliveries_total" in exprs and "taskqueue_webhooks_pending" in exprs
    rules = yaml.safe_load((CHART_DIR / "files" / "alerts.yml").read_text())["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules}
    assert 'outcome=~"rejected|expired|refused"' in alerts["TaskqueueWebhooksFailing"]["expr"]
    assert 'taskqueue_webhooks_pending{state="due"}' in alerts["TaskqueueWebhookBacklog"]["expr"]
    for name in ("TaskqueueWebhooksFailing", "TaskqueueWebhookBacklog"):
        assert alerts[name]["labels"]["severity"] == "warning"
        assert {"summary", "description"} <= set(alerts[name]["annotations"])
