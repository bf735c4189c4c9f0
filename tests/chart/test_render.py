"""The chart renders, lints (strict) and installs (client dry-run) with the real Helm engine, for every case."""

from __future__ import annotations

import base64
import copy

import helm_python as helm
import pytest
import yaml

from tests.chart.rendering import CASES, CHART_DIR, by_kind, kube_version, objects, one, render, render_values

CASE_NAMES = sorted(CASES)


def test_chart_metadata():
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == "0.1.0"
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.schema is not None, "values.schema.json is missing"
        chart.validate_schema(chart.values)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_lint_strict(case):
    c = CASES[case]
    report = helm.lint(
        CHART_DIR,
        copy.deepcopy(c.values) or None,
        strict=True,
        namespace=c.namespace,
        kube_version="v" + kube_version(),
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("case", CASE_NAMES)
def test_install_dry_run(case):
    c = CASES[case]
    with helm.Config(storage_driver="memory", namespace=c.namespace) as cfg:
        release = cfg.install(
            CHART_DIR, c.release, copy.deepcopy(c.values) or None, namespace=c.namespace, dry_run="client"
        )
    docs = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in objects(c)
    )
    assert "port-forward" in release["notes"]


def test_matrix_toggles_what_it_says():
    kinds = {name: {o["kind"] for o in objects(case)} for name, case in CASES.items()}
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule"} <= kinds["defaults"]
    # The metrics-api trigger reads the exporter over plain in-cluster HTTP: no credentials to hand KEDA.
    assert "TriggerAuthentication" not in kinds["defaults"]
    assert {"ScaledObject", "TriggerAuthentication"} <= kinds["redis-list-trigger"]
    assert not {"ScaledObject", "TriggerAuthentication"} & kinds["autoscaling-off"]
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds["monitoring-crds-off"]
    assert "StatefulSet" not in kinds["external-redis"]
    assert [name for name, k in kinds.items() if "Ingress" in k] == ["ingress"]
    sts = by_kind(objects(CASES["persistence-off"]), "StatefulSet")[0]
    assert "volumeClaimTemplates" not in sts["spec"]
    assert any(v["name"] == "data" and "emptyDir" in v for v in sts["spec"]["template"]["spec"]["volumes"])
    sts = by_kind(objects(CASES["defaults"]), "StatefulSet")[0]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # Autoscaling on: KEDA owns the replica count, the Deployment must not fight it on upgrades.
    worker = next(
        d for d in by_kind(objects(CASES["defaults"]), "Deployment") if d["metadata"]["name"].endswith("-worker")
    )
    assert "replicas" not in worker["spec"]
    worker = next(
        d for d in by_kind(objects(CASES["autoscaling-off"]), "Deployment") if d["metadata"]["name"].endswith("-worker")
    )
    assert worker["spec"]["replicas"] == 2
    fast_paths = {
        name: by_kind(objects(CASES[name]), "ConfigMap")[0]["data"]["TASKQUEUE_FAST_PATHS"]
        for name in ("defaults", "other-release")
    }
    assert fast_paths == {"defaults": "on", "other-release": "off"}
    # Sentinel mode: three Redis pods, each with a Sentinel, a disruption budget; standalone (the default): one.
    redis_pdbs = {
        name: [p for p in by_kind(objects(case), "PodDisruptionBudget") if p["metadata"]["name"].endswith("-redis")]
        for name, case in CASES.items()
    }
    assert [name for name, pdbs in redis_pdbs.items() if pdbs] == ["redis-sentinel"]
    for name, count in (("defaults", 1), ("redis-sentinel", 3)):
        sts = by_kind(objects(CASES[name]), "StatefulSet")[0]
        containers = [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]]
        assert (sts["spec"]["replicas"], containers) == (count, ["redis", "sentinel"][: 1 + (count > 1)])
    anti = by_kind(objects(CASES["redis-sentinel"]), "StatefulSet")[0]["spec"]["template"]["spec"]["affinity"]
    assert anti["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]  # the case's antiAffinity: hard
    anti = render_values({"redis": {"mode": "sentinel"}})
    anti = by_kind(anti, "StatefulSet")[0]["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(anti) == ["preferredDuringSchedulingIgnoredDuringExecution"]  # the default: soft (kind: one node)


@pytest.mark.parametrize(
    "bad",
    [
        {"worker": {"workerClass": "threads"}},
        {"worker": {"workerClass": "fork", "jobSlots": 4}},  # a forking worker runs one job a process
        {"worker": {"jobSlots": 0}},
        {"externalRedis": {"enabled": True}},
        {"externalRedis": {"enabled": True, "url": "redis://user:pw@host:6379/0"}},
        {"config": {"log_format": "xml"}},
        {"config": {"fast_paths": True}},  # a bare YAML on
        {"config": {"job_timeout": 0}},
        {"redis": {"appendfsync": "sometimes"}},
        {"extraEnv": {"PATH": "/evil"}},
        {"autoscalling": {"enabled": False}},
        {"webhooks": {"allowedHosts": "hooks.example.com"}},  # a list, not a comma-separated string
        {"webhooks": {"allowedHosts": ["https://hooks.example.com/done"]}},  # hosts, not URLs
        {"webhooks": {"concurrency": 0}},
        {"networkPolicy": {"exporterEgress": {"to": []}}},
        {"redis": {"mode": "cluster"}},
        {"redis": {"mode": "sentinel", "sentinel": {"quorum": 4}}},
        {"redis": {"sentinel": {"antiAffinity": "strict"}}},
        {"externalRedis": {"sentinel": {"addresses": "sentinel:26379"}}},  # a list
        {"externalRedis": {"sentinel": {"addresses": ["sentinel"]}}},  # host:port
    ],
)
def test_schema_rejects(bad):
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmError):
        chart.render(bad, name="taskqueue", namespace="taskqueue")


def test_redis_passwords_one_a_user_generated_once_and_kept():
    """A random password for each Redis user of files/redis-users.acl (but the default user, which is off) on
    install; `lookup` returns them on upgrades, a user new to the file gets one, and resource-policy keeps them."""
    from taskqueue import local

    objs = objects(CASES["defaults"])
    secret = one(objs, "Secret", component="redis")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    users = [name for name, _ in local.acl_users((CHART_DIR / "files" / "redis-users.acl").read_text())]
    assert users[0] == "default" and {"admin", "generator", "worker", "exporter", "keda"} <= set(users)
    assert sorted(secret["data"]) == sorted(f"{u}-password" for u in users[1:])
    passwords = [base64.b64decode(v).decode() for v in secret["data"].values()]
    assert len(set(passwords)) == len(passwords) and all(len(p) == 32 and p.isalnum() for p in passwords)
    with helm.Chart.load(CHART_DIR) as chart:
        again = chart.render(None, name="taskqueue", namespace="taskqueue", is_install=True)
    second = next(d for d in yaml.safe_load_all(again["taskqueue/templates/redis.yaml"]) if d and d["kind"] == "Secret")
    assert all(second["data"][k] != v for k, v in secret["data"].items()), "passwords must be random, not defaults"
    template = (CHART_DIR / "templates" / "redis.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert "hasKey $existing.data $key" in template  # each user's password kept by itself
    # The user's own Secret instead: nothing generated, Redis mounts theirs.
    objs = objects(CASES["redis-existing-secret"])
    assert not [s for s in objs if s["kind"] == "Secret" and s["metadata"]["name"].endswith("-redis")]
    redis = next(w for w in objs if w["kind"] == "StatefulSet")
    volume = next(v for v in redis["spec"]["template"]["spec"]["volumes"] if v["name"] == "passwords")
    assert volume["secret"]["secretName"] == "my-redis-users"


def test_notes_have_next_commands():
    notes = render(CASES["defaults"])["taskqueue/templates/NOTES.txt"]
    for text in ("port-forward", "curl", "autoscaling.keda.sh/paused-replicas", "rollout status"):
        assert text in notes
