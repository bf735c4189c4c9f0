"""Rendering the chart with the real Helm engine (helm-python-sdk, Helm v4 in-process) and reading the result.

No cluster: ``Chart.render`` and a client-side dry-run install run the same template engine as
``helm install``; ``lookup`` answers empty, as on a first install.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "taskqueue"
CRD_DIR = Path(__file__).resolve().parent / "crds"
VERSIONS_MK = ROOT / "k8s" / "versions.mk"

RELEASE = "taskqueue"
NAMESPACE = "taskqueue"


def versions() -> dict[str, str]:
    """``NAME := value`` pairs of k8s/versions.mk."""
    pairs = {}
    for line in VERSIONS_MK.read_text().splitlines():
        m = re.match(r"^([A-Z0-9_]+)\s*:?=\s*(.*?)\s*$", line)
        if m:
            pairs[m.group(1)] = m.group(2)
    return pairs


def kube_version() -> str:
    """The Kubernetes version of the pinned kind node image: the one objects are validated for."""
    return versions()["KUBERNETES_VERSION"]


@dataclass(frozen=True)
class Case:
    """One point of the values matrix, with the objects the user must provide for it."""

    name: str
    values: dict[str, Any]
    release: str = RELEASE
    namespace: str = NAMESPACE
    provided: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def _secret(name: str, namespace: str, data: dict[str, str], type_: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": type_,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


EXTERNAL_REDIS = {
    "externalRedis": {
        "enabled": True,
        "url": "rediss://redis.example.internal:6380/2",
        "existingSecret": "redis-credentials",
        "passwordKey": "password",
        "tls": {"caSecret": "redis-ca", "caKey": "ca.crt"},
    },
    "networkPolicy": {"externalRedisTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
}

# externalRedis.users: one ACL user a component, named by the external Redis's admin.
EXTERNAL_USERS = {
    c: {"username": f"tq-{c}", "passwordKey": f"{c}-key"} for c in ("generator", "worker", "exporter", "keda")
}

# values.yaml's networkPolicy.exporterEgress example: webhooks to named hosts over HTTPS, to any address
# but the private and link-local ones.
PUBLIC_HTTPS = {
    "to": [
        {
            "ipBlock": {
                "cidr": "0.0.0.0/0",
                "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
            }
        }
    ],
    "ports": [{"protocol": "TCP", "port": 443}],
}

# The ingress case: the API from outside through an nginx ingress controller, over TLS. It also narrows
# networkPolicy.apiFrom to the pods labelled API_CLIENT_LABEL, so the controller gets in only by the rule the
# Ingress adds (tests/chart/test_network_policy.py).
INGRESS_HOST = "taskqueue.example.com"
API_CLIENT_LABEL = ("taskqueue.example/client", "true")
INGRESS = {
    "generator": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"},
            "hosts": [{"host": INGRESS_HOST, "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "taskqueue-tls", "hosts": [INGRESS_HOST]}],
            "controllerPodSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        }
    },
    "networkPolicy": {"apiFrom": [{"podSelector": {"matchLabels": dict([API_CLIENT_LABEL])}}]},
}

# The auth-existing-secret case's tokens file (the user's Secret, key api-tokens).
USER_TOKENS = {"admin": "admin-token-of-the-user-0001", "read": "read-token-of-the-user-0001"}

CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("defaults", {}),
        Case("autoscaling-off", {"autoscaling": {"enabled": False}}),
        Case(
            "monitoring-crds-off",
            {"monitoring": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}}},
        ),
        Case(
            "external-redis",
            EXTERNAL_REDIS,
            provided=(
                _secret("redis-credentials", NAMESPACE, {"password": "s3cret"}),
                _secret("redis-ca", NAMESPACE, {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}),
            ),
        ),
        Case("persistence-off", {"redis": {"persistence": {"enabled": False}}}),
        # The Redis users' passwords from the user's own Secret, one key a user.
        Case(
            "redis-existing-secret",
            {"redis": {"auth": {"existingSecret": "my-redis-users"}}, "autoscaling": {"trigger": "redis-list"}},
            provided=(
                _secret(
                    "my-redis-users",
                    NAMESPACE,
                    {f"{u}-password": f"pw-of-{u}" for u in ("admin", "generator", "worker", "exporter", "keda")},
                ),
            ),
        ),
        # The plain Redis list trigger instead of the exporter's work remaining: in-release Redis,
        # and an external one over TLS (the TriggerAuthentication carries the password and the CA).
        Case("redis-list-trigger", {"autoscaling": {"trigger": "redis-list"}}),
        # ...with a Redis ACL user a component, each password under its own key of the Secret.
        Case(
            "redis-list-external",
            {
                "externalRedis": {**EXTERNAL_REDIS["externalRedis"], "users": EXTERNAL_USERS},
                "networkPolicy": EXTERNAL_REDIS["networkPolicy"],
                "autoscaling": {"trigger": "redis-list"},
            },
            provided=(
                _secret("redis-credentials", NAMESPACE, {f"{c}-key": f"s3cret-{c}" for c in EXTERNAL_USERS}),
                _secret("redis-ca", NAMESPACE, {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}),
            ),
        ),
        # Redis HA: three Redis pods with a Sentinel each, the pods required on nodes of their own; KEDA's trigger
        # asks the sentinels for the primary (redis-sentinel).
        Case(
            "redis-sentinel",
            {
                "redis": {"mode": "sentinel", "sentinel": {"antiAffinity": "hard"}},
                "autoscaling": {"trigger": "redis-list"},
            },
        ),
        # A managed Redis behind its own sentinels, with a password and a user of theirs.
        Case(
            "redis-sentinel-external",
            {
                "externalRedis": {
                    **EXTERNAL_REDIS["externalRedis"],
                    "sentinel": {
                        "addresses": ["sentinel-a.example.internal:26379", "sentinel-b.example.internal:26380"],
                        "masterName": "jobs",
                        "username": "tq-sentinel",
                        "passwordKey": "sentinel-key",
                    },
                },
                "networkPolicy": EXTERNAL_REDIS["networkPolicy"],
                "autoscaling": {"trigger": "redis-list"},
            },
            provided=(
                _secret("redis-credentials", NAMESPACE, {"password": "s3cret", "sentinel-key": "s3cret-sentinel"}),
                _secret("redis-ca", NAMESPACE, {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}),
            ),
        ),
        # A team's own tasks (README, "Your own tasks"): their images, and a module named by the setting.
        Case(
            "own-tasks",
            {
                "generator": {"image": {"repository": "csv-summary-generator"}},
                "worker": {"image": {"repository": "csv-summary-worker"}},
                "config": {"task_modules": "team_tasks.reports, team_tasks.mail"},
                # Its tasks call a third-party API: the workers, and only they, may reach it.
                "networkPolicy": {
                    "workerEgress": [
                        {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}
                    ]
                },
            },
        ),
        # Completion webhooks to a named host, a private network and one address: the key is generated, the
        # exporter may reach the two by address and, with the example rule, public addresses over HTTPS.
        Case(
            "webhooks",
            {
                "webhooks": {"allowedHosts": ["hooks.example.com", "10.1.2.0/24", "192.0.2.7"]},
                "networkPolicy": {"exporterEgress": [PUBLIC_HTTPS]},
            },
        ),
        # Webhooks to subdomains only (no address: no egress added), signed with the user's own Secret.
        Case(
            "webhooks-existing-secret",
            {"webhooks": {"allowedHosts": ["*.example.com"], "existingSecret": "mine"}},
            provided=(_secret("mine", NAMESPACE, {"webhook-secret": "s3cret"}),),
        ),
        # The API behind an Ingress (class, TLS, an annotation); the TLS Secret is the user's (or cert-manager's).
        Case(
            "ingress",
            INGRESS,
            provided=(
                _secret(
                    "taskqueue-tls",
                    NAMESPACE,
                    {"tls.crt": "-----BEGIN CERTIFICATE-----\n", "tls.key": "-----BEGIN PRIVATE KEY-----\n"},
                    "kubernetes.io/tls",
                ),
            ),
        ),
        # API tokens from the user's Secret instead of a generated one; anonymous requests may only read.
        Case(
            "auth-existing-secret",
            {"generator": {"auth": {"existingSecret": "taskqueue-tokens", "anonymousRole": "read"}}},
            provided=(
                _secret(
                    "taskqueue-tokens",
                    NAMESPACE,
                    {"api-tokens": "".join(f"{role} {token}\n" for role, token in USER_TOKENS.items())},
                ),
            ),
        ),
        # Another release and namespace, several worker processes, a longer job timeout, fast paths off.
        Case(
            "other-release",
            {
                "worker": {"processes": 3, "jobSlots": 4},
                "config": {"job_timeout": 600, "queues": "high,low", "fast_paths": "off"},
            },
            release="demo",
            namespace="jobs",
        ),
    )
}


@functools.cache
def _render(case_name: str) -> dict[str, str]:
    case = CASES[case_name]
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(
            copy.deepcopy(case.values) or None, name=case.release, namespace=case.namespace, is_install=True
        )


def render_values(
    values: dict[str, Any] | None, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """The objects of the chart rendered with any ``values`` (uncached; e.g. the autoscaling emulator's)."""
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(copy.deepcopy(values) or None, name=release, namespace=namespace, is_install=True)
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in parse_docs(text):
            doc.setdefault("metadata", {}).setdefault("namespace", namespace)
            out.append(doc)
    return out


def render(case: Case) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return _render(case.name)


def parse_docs(text: str) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(text):
        if doc:
            yield doc


@functools.cache
def _objects(case_name: str) -> tuple[dict[str, Any], ...]:
    case = CASES[case_name]
    out = []
    for path, text in sorted(_render(case_name).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in parse_docs(text):
            doc.setdefault("metadata", {}).setdefault("namespace", case.namespace)
            out.append(doc)
    return tuple(out)


def objects(case: Case) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects (deep copies: tests may not change the cache)."""
    return copy.deepcopy(list(_objects(case.name)))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None, component: str | None = None) -> dict:
    found = [
        o
        for o in by_kind(objs, kind)
        if (name is None or o["metadata"]["name"] == name)
        and (component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"expected one {kind} name={name} component={component}, found {len(found)}"
    return found[0]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against labels; {} selects everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def find(objs: list[dict[str, Any]], kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace:
            return o
    return None


def pod_name(pod_owner: dict[str, Any], ordinal: int = 0) -> str:
    """The name of one of a workload's pods: a StatefulSet's by its ordinal; a Deployment's, one made up."""
    name = pod_owner["metadata"]["name"]
    return f"{name}-{ordinal}" if pod_owner["kind"] == "StatefulSet" else f"{name}-5d8f7b9c4-x2k7q"


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) in an env value, as the kubelet expands it: a variable defined before it, else left as it is; $$ is $."""
    return re.sub(r"\$\$|\$\(([^)]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def resolve_env(
    pod_owner: dict[str, Any], container: dict[str, Any], objs: list[dict[str, Any]], ordinal: int = 0
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom first, then env (ConfigMap/Secret resolved, the
    pod's name and namespace from fieldRef, $(VAR) expanded); ``ordinal``: which of a StatefulSet's pods."""
    ns = pod_owner["metadata"]["namespace"]
    env: dict[str, str] = {}
    fields = {"metadata.name": pod_name(pod_owner, ordinal), "metadata.namespace": ns}

    def lookup(kind: str, name: str) -> dict[str, str]:
        obj = find(objs, kind, name, ns)
        assert obj is not None, f"{pod_owner['metadata']['name']}/{container['name']}: {kind} {name} does not exist"
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        return data

    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            env.update(lookup("ConfigMap", src["configMapRef"]["name"]))
        if "secretRef" in src:
            env.update(lookup("Secret", src["secretRef"]["name"]))
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = _expand(str(var["value"]), env)
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            assert path in fields, f"{container['name']}: fieldRef {path} not known to the tests"
            env[var["name"]] = fields[path]
            continue
        if "configMapKeyRef" in ref:
            data = lookup("ConfigMap", ref["configMapKeyRef"]["name"])
            key = ref["configMapKeyRef"]["key"]
        else:
            data = lookup("Secret", ref["secretKeyRef"]["name"])
            key = ref["secretKeyRef"]["key"]
        assert key in data, f"{container['name']}: key {key} missing in the referenced object"
        env[var["name"]] = data[key]
    return env


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    """The number of a container port given by number or name; None when the container has no such port."""
    for p in container.get("ports") or []:
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None
