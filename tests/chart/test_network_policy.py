"""The NetworkPolicies admit every connection the app makes, and no other.

A small evaluator applies the rendered policies (Kubernetes semantics: a pod selected by a policy of
a direction only allows what some such policy allows; peers are pod/namespace selectors or ipBlocks;
ports by number or by the destination container's port name) to a model of the cluster: our pods,
Prometheus, the KEDA operator (to the exporter's /scale, or to Redis with the redis-list trigger),
CoreDNS, a stranger pod in our namespace and one elsewhere, an API client pod, the ingress controller
and another pod of its namespace, the external Redis, and webhook receivers outside the cluster. Every
(source, destination, port) among them is decided, and the allowed set must equal the set of connections
the app needs.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, field

import pytest

from tests.chart.rendering import (
    API_CLIENT_LABEL,
    CASES,
    by_kind,
    component,
    container_port,
    objects,
    pod_spec,
    workloads,
)


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None  # None: outside the cluster (an ipBlock address)
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()  # (name, number)
    ip: str | None = None
    ours: bool = False

    @property
    def label_dict(self):
        return dict(self.labels)


@dataclass
class Model:
    endpoints: list[Endpoint] = field(default_factory=list)

    def get(self, name):
        return next(e for e in self.endpoints if e.name == name)


def ns_labels(ns):
    return {"kubernetes.io/metadata.name": ns}


def build_model(case) -> tuple[Model, list[dict]]:
    objs = objects(case)
    model = Model()
    for w in workloads(objs):
        containers = pod_spec(w)["containers"]
        ports = tuple((p.get("name", ""), p["containerPort"]) for c in containers for p in c.get("ports") or [])
        labels = tuple(sorted(w["spec"]["template"]["metadata"]["labels"].items()))
        model.endpoints.append(Endpoint(component(w), case.namespace, labels, ports, ours=True))
    model.endpoints += [
        Endpoint("prometheus", "monitoring", (("app.kubernetes.io/name", "prometheus"),), (("http-web", 9090),)),
        Endpoint("keda-operator", "keda", (("app.kubernetes.io/name", "keda-operator"),), (("metrics", 8080),)),
        Endpoint("coredns", "kube-system", (("k8s-app", "kube-dns"),), (("dns", 53), ("dns-tcp", 53))),
        Endpoint("stranger", case.namespace, (("app", "stranger"),), (("http", 8080),)),
        Endpoint("stranger-elsewhere", "default", (("app", "stranger"),), (("http", 8080),)),
        # A pod of ours the cases that narrow networkPolicy.apiFrom let call the API (by its label).
        Endpoint("api-client", case.namespace, (API_CLIENT_LABEL,), (("http", 8080),)),
        # ingress-nginx's controller (values' generator.ingress.controllerNamespaceSelector), and another pod there.
        Endpoint(
            "ingress-controller",
            "ingress-nginx",
            (("app.kubernetes.io/component", "controller"), ("app.kubernetes.io/name", "ingress-nginx")),
            (("http", 80), ("https", 443)),
        ),
        Endpoint("ingress-neighbour", "ingress-nginx", (("app", "neighbour"),), (("http", 8080),)),
        Endpoint("internet", None, ip="203.0.113.7"),
    ]
    if case.values.get("externalRedis", {}).get("enabled"):
        # With externalRedis.sentinel.addresses, the managed Redis's sentinels too, in its network (the policies
        # name networks: networkPolicy.externalRedisTo).
        sentinels = tuple(("sentinel", port) for port in external_sentinel_ports(case))
        model.endpoints.append(Endpoint("external-redis", None, ports=(("redis", 6380), *sentinels), ip="10.20.1.5"))
    if case.values.get("webhooks", {}).get("allowedHosts"):
        model.endpoints += [
            # In 10.1.2.0/24 and at 192.0.2.7 (the webhooks case's allowedHosts), on ports of their own;
            # the next address, and a private one no entry lists.
            Endpoint("receiver-in-network", None, ports=(("http", 8080),), ip="10.1.2.9"),
            Endpoint("receiver-at-address", None, ports=(("https-alt", 8443),), ip="192.0.2.7"),
            Endpoint("receiver-next-address", None, ports=(("https-alt", 8443),), ip="192.0.2.8"),
            Endpoint("private-unlisted", None, ports=(("https", 443),), ip="10.9.9.9"),
        ]
    return model, objs


def webhook_networks(case) -> list:
    """The IPs and CIDRs of webhooks.allowedHosts, as the exporter's SSRF guard reads them."""
    out = []
    for entry in case.values.get("webhooks", {}).get("allowedHosts", []):
        with contextlib.suppress(ValueError):  # a host name
            out.append(ipaddress.ip_network(entry, strict=False))
    return out


def peer_matches(peer, other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False  # ipBlocks are meant for addresses outside the cluster
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(other.ip)
        if addr not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(addr in ipaddress.ip_network(x) for x in block.get("except") or [])
    if other.namespace is None:
        return False
    from tests.chart.rendering import selector_matches

    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels(other.namespace)):
            return False
    elif other.namespace != policy_ns:
        return False
    if "podSelector" in peer:
        return selector_matches(peer["podSelector"], other.label_dict)
    return True


def port_matches(rule_ports, dst: Endpoint, port: int, proto: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        if "port" not in p:
            return True
        want = p["port"]
        if isinstance(want, str):
            number = container_port({"ports": [{"name": n, "containerPort": v} for n, v in dst.ports]}, want)
            if number == port:
                return True
        elif want <= port <= p.get("endPort", want):
            return True
    return False


def direction_allows(policies, pod: Endpoint, other: Endpoint, dst: Endpoint, port, proto, direction) -> bool:
    """Whether the policies selecting ``pod`` for ``direction`` let the connection through."""
    from tests.chart.rendering import selector_matches

    key = "ingress" if direction == "Ingress" else "egress"
    peer_key = "from" if direction == "Ingress" else "to"
    selecting = [
        p
        for p in policies
        if pod.namespace == p["metadata"]["namespace"]
        and selector_matches(p["spec"]["podSelector"], pod.label_dict)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for pol in selecting:
        for rule in pol["spec"].get(key) or []:
            peers = rule.get(peer_key)
            if peers and not any(peer_matches(x, other, pol["metadata"]["namespace"]) for x in peers):
                continue
            if port_matches(rule.get("ports"), dst, port, proto):
                return True
    return False


def allowed(policies, src: Endpoint, dst: Endpoint, port: int, proto: str) -> bool:
    return direction_allows(policies, src, dst, dst, port, proto, "Egress") and direction_allows(
        policies, dst, src, dst, port, proto, "Ingress"
    )


# Private (RFC 1918: pods, nodes) and link-local (the cloud's metadata service) addresses.
NOT_PUBLIC = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")]


def external_sentinel_ports(case) -> list[int]:
    """The ports of the case's externalRedis.sentinel.addresses."""
    addresses = case.values.get("externalRedis", {}).get("sentinel", {}).get("addresses", [])
    return sorted({int(a.rsplit(":", 1)[1]) for a in addresses})


def candidate_ports(model: Model) -> set[tuple[int, str]]:
    return {(n, "TCP") for e in model.endpoints for _, n in e.ports} | {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def needed_connections(case, model: Model, objs) -> set[tuple[str, str, int, str]]:
    """What the app does (and the cluster around it needs)."""
    ours = [e for e in model.endpoints if e.ours]
    apps = [e for e in ours if e.name in ("generator", "worker", "exporter")]
    ports = {e.name: dict(e.ports) for e in ours}
    need = set()
    redis = "external-redis" if any(e.name == "external-redis" for e in model.endpoints) else "redis"
    redis_port = dict(model.get(redis).ports)["redis"]
    for app in apps:
        need.add((app.name, redis, redis_port, "TCP"))
        need |= {(app.name, "coredns", 53, "UDP"), (app.name, "coredns", 53, "TCP")}
        need.add(("prometheus", app.name, ports[app.name]["metrics"], "TCP"))
    # Sentinel mode: every process (and KEDA's trigger) asks the sentinels for the primary; the Redis pods replicate
    # and watch each other, and resolve each other's names.
    sentinel_ports = [port for name, port in model.get(redis).ports if name == "sentinel"]
    if redis == "redis" and sentinel_ports:
        need |= {("redis", "coredns", 53, "UDP"), ("redis", "coredns", 53, "TCP")}
    for app in apps:
        need |= {(app.name, redis, port, "TCP") for port in sentinel_ports}
    for so in by_kind(objs, "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            if trigger["type"] in ("redis", "redis-sentinel") and redis == "redis":
                need.add(("keda-operator", "redis", redis_port, "TCP"))
            if trigger["type"] == "redis-sentinel" and redis == "redis":  # (KEDA's egress out is not ours)
                need |= {("keda-operator", "redis", port, "TCP") for port in sentinel_ports}
            if trigger["type"] == "metrics-api":
                # KEDA's metrics-api scaler GETs the exporter's /scale on its metrics port.
                need.add(("keda-operator", "exporter", ports["exporter"]["metrics"], "TCP"))
    # networkPolicy.workerEgress: the workers' calls out for their tasks (the case's rule: 443 to 203.0.113.0/24).
    if case.values.get("networkPolicy", {}).get("workerEgress"):
        need.add(("worker", "internet", 443, "TCP"))
    # Webhooks: the exporter POSTs to any address inside webhooks.allowedHosts' networks, on whatever TCP port
    # the callback URL names; with the case's networkPolicy.exporterEgress (HTTPS to public addresses), to the
    # public addresses a listed host name may resolve to, on 443.
    for e in (e for e in model.endpoints if e.ip is not None):
        addr = ipaddress.ip_address(e.ip)
        if any(addr in n for n in webhook_networks(case)):
            need |= {("exporter", e.name, port, "TCP") for port, proto in candidate_ports(model) if proto == "TCP"}
        if case.values.get("networkPolicy", {}).get("exporterEgress") and not any(addr in n for n in NOT_PUBLIC):
            need.add(("exporter", e.name, 443, "TCP"))
    # The API is public: any client pod may call it (our own pods never do: their egress is closed), unless
    # networkPolicy.apiFrom narrows it (the cases that do: to the pods labelled API_CLIENT_LABEL). With the
    # Ingress on, its controller's pods may call it too (all of the namespace's without a controllerPodSelector).
    api_from = case.values.get("networkPolicy", {}).get("apiFrom")
    ingress = case.values.get("generator", {}).get("ingress", {})
    for client in model.endpoints:
        if client.ours or client.namespace is None:
            continue
        labelled = client.namespace == case.namespace and API_CLIENT_LABEL in client.labels
        via_ingress = (
            ingress.get("enabled")
            and client.namespace == "ingress-nginx"
            and (client.name == "ingress-controller" or not ingress.get("controllerPodSelector"))
        )
        if not api_from or labelled or via_ingress:
            need.add((client.name, "generator", ports["generator"]["http"], "TCP"))
    return need


@pytest.mark.parametrize("case", sorted(CASES))
def test_policies_admit_exactly_the_needed_connections(case):
    c = CASES[case]
    model, objs = build_model(c)
    policies = by_kind(objs, "NetworkPolicy")
    allowed_set = set()
    for src in model.endpoints:
        for dst in model.endpoints:
            if src is dst or not (src.ours or dst.ours):
                continue
            if src.namespace is None:
                continue  # nothing outside the cluster connects in
            for port, proto in candidate_ports(model):
                if allowed(policies, src, dst, port, proto):
                    allowed_set.add((src.name, dst.name, port, proto))
    need = needed_connections(c, model, objs)
    missing = need - allowed_set
    extra = allowed_set - need
    assert not missing, f"connections the app needs but the policies block: {sorted(missing)}"
    assert not extra, f"connections the policies allow but nobody needs: {sorted(extra)}"


def test_evaluator_is_not_vacuous():
    """Without policies everything is allowed, and the test above would report it."""
    c = CASES["defaults"]
    model, _objs = build_model(c)
    stranger, redis = model.get("stranger"), model.get("redis")
    assert allowed([], stranger, redis, 6379, "TCP")
    policies = by_kind(objects(c), "NetworkPolicy")
    assert not allowed(policies, stranger, redis, 6379, "TCP")
    assert allowed(policies, model.get("worker"), redis, 6379, "TCP")
    assert not allowed(policies, model.get("generator"), model.get("internet"), 443, "TCP")
