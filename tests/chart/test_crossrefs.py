"""Cross-references between the rendered objects resolve, and they agree with the app's own config code.

For every case of the matrix: selectors select the pods they are meant to, every port a Service,
probe or NetworkPolicy names exists on the container, every Secret/ConfigMap a pod or KEDA reads
exists, the ScaledObject reads the queue key and Redis address the app itself computes (through
``taskqueue.config``), the ServiceMonitor finds our Services' metrics ports, the pods are hardened,
and the environment the chart gives each container is a valid configuration of the app.
"""

from __future__ import annotations

import base64
import inspect
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from rq import Queue

from taskqueue import config as tq_config
from tests.chart.rendering import (
    CASES,
    CHART_DIR,
    ROOT,
    by_kind,
    component,
    container_port,
    find,
    objects,
    one,
    pod_spec,
    render_values,
    resolve_env,
    selector_matches,
    workloads,
)

CASE_NAMES = sorted(CASES)
APP_COMPONENTS = ("generator", "worker", "exporter")
SETTING_ENVS = {s.env for s in tq_config.SETTINGS}


def all_objects(case):
    """The rendered objects plus the ones the user provides for this case (e.g. an external Redis's Secret)."""
    return objects(case) + [dict(o) for o in case.provided]


def workload(objs, comp):
    return next(w for w in workloads(objs) if component(w) == comp)


def values_of(case):
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        return chart.merge_values(case.values or None)


# -- selectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_NAMES)
def test_workload_selectors_match_their_pod_labels(case):
    objs = objects(CASES[case])
    for w in workloads(objs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selector_matches(w["spec"]["selector"], labels), w["metadata"]["name"]
        others = [o for o in workloads(objs) if o is not w]
        for other in others:
            assert not selector_matches(w["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]), (
                f"{w['metadata']['name']}'s selector also selects {other['metadata']['name']}'s pods"
            )


@pytest.mark.parametrize("case", CASE_NAMES)
def test_services_select_their_pods_and_target_existing_ports(case):
    objs = objects(CASES[case])
    for svc in by_kind(objs, "Service"):
        selected = [
            w
            for w in workloads(objs)
            if selector_matches({"matchLabels": svc["spec"]["selector"]}, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert [component(w) for w in selected] == [component(svc)], svc["metadata"]["name"]
        containers = pod_spec(selected[0])["containers"]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(container_port(c, target) for c in containers), f"{svc['metadata']['name']}: {target}"
            # The Service port name equals the container port name: ServiceMonitors and humans find it.
            assert any(container_port(c, port["name"]) for c in containers)
    sts = by_kind(objs, "StatefulSet")
    for s in sts:
        headless = find(objs, "Service", s["spec"]["serviceName"], s["metadata"]["namespace"])
        assert headless is not None and headless["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("case", CASE_NAMES)
def test_pdbs_and_network_policies_select_a_workload(case):
    objs = objects(CASES[case])
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind(objs, kind):
            sel = obj["spec"]["selector"] if kind == "PodDisruptionBudget" else obj["spec"]["podSelector"]
            hits = [w for w in workloads(objs) if selector_matches(sel, w["spec"]["template"]["metadata"]["labels"])]
            assert [component(w) for w in hits] == [component(obj)], obj["metadata"]["name"]
    # Every workload has a NetworkPolicy; the ones with several replicas have a PDB.
    for w in workloads(objs):
        assert any(component(n) == component(w) for n in by_kind(objs, "NetworkPolicy"))
    for comp in ("generator", "worker"):
        assert any(component(p) == comp for p in by_kind(objs, "PodDisruptionBudget"))


# -- ports and probes -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_NAMES)
def test_probes_use_existing_ports_and_every_container_has_all_three(case):
    for w in workloads(objects(CASES[case])):
        for c in pod_spec(w)["containers"]:
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(probe_name)
                assert probe, f"{w['metadata']['name']}/{c['name']}: no {probe_name}"
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler:
                    assert container_port(c, handler["port"]), f"{c['name']} {probe_name} port {handler['port']}"
                else:
                    assert probe["exec"]["command"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_app_ports_are_the_ports_the_app_listens_on(case):
    """The containerPorts equal what taskqueue.config makes of the container's environment."""
    c = CASES[case]
    objs = all_objects(c)
    for comp in APP_COMPONENTS:
        w = workload(objs, comp)
        container = pod_spec(w)["containers"][0]
        cfg = tq_config.load(resolve_env(w, container, objs))
        assert container_port(container, "metrics") == cfg.metrics_port_for(comp)
        if comp == "generator":
            assert container_port(container, "http") == cfg.http_port
            assert cfg.http_host == "0.0.0.0"
        assert cfg.metrics_host == "0.0.0.0" and cfg.metrics_enabled


# -- Secrets and ConfigMaps -------------------------------------------------------------------


def _refs(obj):
    """(kind, name) of every Secret/ConfigMap an object reads."""
    out = []
    if obj["kind"] in ("Deployment", "StatefulSet"):
        spec = pod_spec(obj)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for src in c.get("envFrom") or []:
                if "configMapRef" in src:
                    out.append(("ConfigMap", src["configMapRef"]["name"], None))
                if "secretRef" in src:
                    out.append(("Secret", src["secretRef"]["name"], None))
            for var in c.get("env") or []:
                ref = var.get("valueFrom") or {}
                if "secretKeyRef" in ref:
                    out.append(("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
                if "configMapKeyRef" in ref:
                    out.append(("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]))
        for vol in spec.get("volumes") or []:
            if "secret" in vol:
                for item in vol["secret"].get("items") or [{"key": None}]:
                    out.append(("Secret", vol["secret"]["secretName"], item["key"]))
            if "configMap" in vol:
                for item in vol["configMap"].get("items") or [{"key": None}]:
                    out.append(("ConfigMap", vol["configMap"]["name"], item["key"]))
        for sa in [spec.get("serviceAccountName")] if spec.get("serviceAccountName") else []:
            out.append(("ServiceAccount", sa, None))
    if obj["kind"] == "TriggerAuthentication":
        for ref in obj["spec"].get("secretTargetRef") or []:
            out.append(("Secret", ref["name"], ref["key"]))
        for ref in obj["spec"].get("configMapTargetRef") or []:
            out.append(("ConfigMap", ref["name"], ref["key"]))
    if obj["kind"] == "Ingress":
        for tls in obj["spec"].get("tls") or []:
            out.append(("Secret", tls["secretName"], "tls.crt"))
        for backend in _ingress_backends(obj):
            out.append(("Service", backend["service"]["name"], None))
    if obj["kind"] == "ScaledObject":
        for t in obj["spec"]["triggers"]:
            if "authenticationRef" in t:
                out.append(("TriggerAuthentication", t["authenticationRef"]["name"], None))
        out.append(("Deployment", obj["spec"]["scaleTargetRef"]["name"], None))
    return out


def _ingress_backends(ingress):
    backends = [ingress["spec"]["defaultBackend"]] if "defaultBackend" in ingress["spec"] else []
    for rule in ingress["spec"].get("rules") or []:
        backends += [p["backend"] for p in rule["http"]["paths"]]
    return backends


@pytest.mark.parametrize("case", CASE_NAMES)
def test_ingress_sends_to_the_generators_http_port(case):
    """Every Ingress backend is the generator Service's http port, which targets the container's http port."""
    objs = objects(CASES[case])
    for ingress in by_kind(objs, "Ingress"):
        for backend in _ingress_backends(ingress):
            svc = find(objs, "Service", backend["service"]["name"], ingress["metadata"]["namespace"])
            assert svc is not None and component(svc) == "generator"
            want = backend["service"]["port"]
            (port,) = [p for p in svc["spec"]["ports"] if want in ({"name": p["name"]}, {"number": p["port"]})]
            container = pod_spec(workload(objs, "generator"))["containers"][0]
            assert container_port(container, port["targetPort"]) == container_port(container, "http")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_referenced_object_and_key_exists(case):
    objs = all_objects(CASES[case])
    missing = []
    for obj in objs:
        for kind, name, key in _refs(obj):
            target = find(objs, kind, name, obj["metadata"]["namespace"])
            if target is None:
                missing.append(f"{obj['kind']}/{obj['metadata']['name']} -> {kind}/{name}")
            elif key is not None and key not in (target.get("data") or {}):
                missing.append(f"{obj['kind']}/{obj['metadata']['name']} -> {kind}/{name}[{key}]")
    assert not missing, missing


@pytest.mark.parametrize("case", CASE_NAMES)
def test_container_env_is_a_valid_app_config(case):
    """Each app container's environment (ConfigMap + Secret resolved) loads with taskqueue.config,
    sets only variables the app knows, and points at the Redis the chart deploys or the external one."""
    c = CASES[case]
    objs = all_objects(c)
    values = values_of(c)
    for comp in APP_COMPONENTS:
        w = workload(objs, comp)
        container = pod_spec(w)["containers"][0]
        env = resolve_env(w, container, objs)
        unknown = {k for k in env if k.startswith("TASKQUEUE_")} - SETTING_ENVS
        assert not unknown, f"{comp}: variables the app does not read: {unknown}"
        cfg = tq_config.load(env)
        assert cfg.redis_password, "Redis without a password"
        assert cfg.job_timeout == values["config"]["job_timeout"]
        if values["externalRedis"]["enabled"]:
            assert cfg.redis_url == values["externalRedis"]["url"]
            assert Path(cfg.redis_ca_cert).parent.as_posix() in [m["mountPath"] for m in container["volumeMounts"]]
            user = values["externalRedis"]["users"][comp]  # empty: Redis's default user, with passwordKey
            assert cfg.redis_username == user["username"]
            key = user["passwordKey"] or values["externalRedis"]["passwordKey"]
            data = find(objs, "Secret", values["externalRedis"]["existingSecret"], c.namespace)["data"]
            assert base64.b64decode(data[key]).decode() == cfg.redis_password
        else:
            redis_svc = one(objs, "Service", component="redis")
            host = urlparse(cfg.redis_url).hostname
            assert host == f"{redis_svc['metadata']['name']}.{c.namespace}.svc.cluster.local"
            assert urlparse(cfg.redis_url).port == redis_svc["spec"]["ports"][0]["port"]
            # Each component logs in as its own Redis user, with the password Redis's start script hashes into
            # its ACL file: the file <user>-password of the Secret mounted in the Redis pod.
            redis = workload(objs, "redis")
            mounted = next(v["secret"]["secretName"] for v in pod_spec(redis)["volumes"] if v["name"] == "passwords")
            data = find(objs, "Secret", mounted, c.namespace)["data"]
            assert cfg.redis_username == comp
            assert base64.b64decode(data[f"{comp}-password"]).decode() == cfg.redis_password, "app and Redis disagree"
        if comp == "worker":
            assert cfg.worker_processes == values["worker"]["processes"]
            assert cfg.job_slots == values["worker"]["jobSlots"]


# -- worker shutdown --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_NAMES)
def test_worker_grace_period_outlasts_the_job_timeout(case):
    c = CASES[case]
    objs = all_objects(c)
    w = workload(objs, "worker")
    cfg = tq_config.load(resolve_env(w, pod_spec(w)["containers"][0], objs))
    grace = pod_spec(w)["terminationGracePeriodSeconds"]
    assert grace > cfg.job_timeout
    assert grace == cfg.job_timeout + values_of(c)["worker"]["shutdownGraceSeconds"]


# -- KEDA -------------------------------------------------------------------------------------


def _scaled_object(c):
    objs = all_objects(c)
    so = one(objs, "ScaledObject")
    w = workload(objs, "worker")
    target = so["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"), target["name"]) == (
        "apps/v1",
        "Deployment",
        w["metadata"]["name"],
    )
    assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    hpa = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert hpa["scaleDown"]["stabilizationWindowSeconds"] > hpa["scaleUp"]["stabilizationWindowSeconds"]
    (trigger,) = so["spec"]["triggers"]
    return objs, so, w, trigger


SCALED = [n for n in CASE_NAMES if n != "autoscaling-off"]


@pytest.mark.parametrize("case", [n for n in SCALED if values_of(CASES[n])["autoscaling"]["trigger"] == "redis-list"])
def test_redis_list_trigger_reads_the_queue_and_redis_the_app_uses(case):
    c = CASES[case]
    objs, _so, w, trigger = _scaled_object(c)
    env = resolve_env(w, pod_spec(w)["containers"][0], objs)
    cfg = tq_config.load(env)
    meta = trigger["metadata"]
    # The list RQ pushes the generator's jobs onto.
    assert meta["listName"] == Queue.redis_queue_namespace_prefix + cfg.queue == f"rq:queue:{cfg.queue}"
    url = urlparse(cfg.redis_url)
    if cfg.redis_sentinels:  # KEDA asks the apps' sentinels for the apps' primary, with their password
        assert trigger["type"] == "redis-sentinel"
        assert meta["addresses"] == ",".join(cfg.redis_sentinels)
        assert meta["sentinelMaster"] == cfg.redis_master_name
        assert meta.get("sentinelUsername", "") == cfg.redis_sentinel_username
    else:
        assert trigger["type"] == "redis"
        assert meta["address"] == f"{url.hostname}:{url.port or 6379}"
    assert int(meta.get("databaseIndex", "0")) == int(url.path.lstrip("/") or 0)
    assert (meta.get("enableTLS") == "true") == (url.scheme == "rediss")
    # KEDA authenticates from the Secret the worker reads its password from, as its own user (the chart's
    # Redis: keda, whose password is keda-password; an external Redis: externalRedis.users.keda).
    auth = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"], c.namespace)
    password_ref = next(v["valueFrom"]["secretKeyRef"] for v in pod_spec(w)["containers"][0]["env"]
                        if v["name"] == "TASKQUEUE_REDIS_PASSWORD")  # fmt: skip
    params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    external = values_of(c)["externalRedis"]
    keda = external["users"]["keda"] if external["enabled"] else {"username": "keda", "passwordKey": "keda-password"}
    assert meta.get("username", "") == keda["username"]
    key = keda["passwordKey"] or external["passwordKey"]
    assert (params["password"]["name"], params["password"]["key"]) == (password_ref["name"], key)
    assert key in find(objs, "Secret", password_ref["name"], c.namespace)["data"]
    if cfg.redis_sentinels:
        sentinel_ref = next(v["valueFrom"]["secretKeyRef"] for v in pod_spec(w)["containers"][0]["env"]
                            if v["name"] == "TASKQUEUE_REDIS_SENTINEL_PASSWORD")  # fmt: skip
        assert (params["sentinelPassword"]["name"], params["sentinelPassword"]["key"]) == (
            sentinel_ref["name"],
            sentinel_ref["key"],
        )
    if cfg.redis_ca_cert:
        vol = next(v for v in pod_spec(w)["volumes"] if v["name"] == "redis-ca")
        assert params["ca"]["name"] == vol["secret"]["secretName"]
        assert params["ca"]["key"] == Path(cfg.redis_ca_cert).name


@pytest.mark.parametrize("case", [n for n in SCALED if values_of(CASES[n])["autoscaling"]["trigger"] == "metrics-api"])
def test_metrics_api_trigger_reads_the_exporters_work_remaining(case):
    """The URL is the exporter Service's metrics port at /scale, the value is the key the exporter
    answers, the target is the job slots of one worker pod, and no credentials are involved."""
    from taskqueue.exporter.collector import QueueState

    c = CASES[case]
    objs, so, w, trigger = _scaled_object(c)
    assert trigger["type"] == "metrics-api"
    assert trigger.get("metricType", "AverageValue") == "AverageValue"  # fallback needs AverageValue
    assert "authenticationRef" not in trigger
    assert not by_kind(objs, "TriggerAuthentication")
    meta = trigger["metadata"]
    url = urlparse(meta["url"])
    exporter = workload(objs, "exporter")
    pod_labels = exporter["spec"]["template"]["metadata"]["labels"]
    svc = next(
        s for s in by_kind(objs, "Service") if selector_matches({"matchLabels": s["spec"]["selector"]}, pod_labels)
    )
    assert url.scheme == "http" and url.path == "/scale"
    assert url.hostname == f"{svc['metadata']['name']}.{c.namespace}.svc.cluster.local"
    port = next(p for p in svc["spec"]["ports"] if p["port"] == url.port)
    assert container_port(pod_spec(exporter)["containers"][0], port["targetPort"]) is not None
    assert meta.get("format", "json") == "json"
    # The key the exporter's /scale answers with (tests/test_exporter.py checks the values).
    assert meta["valueLocation"] == "workRemaining"
    assert '"workRemaining"' in inspect.getsource(QueueState.work_remaining)
    env = resolve_env(w, pod_spec(w)["containers"][0], objs)
    cfg = tq_config.load(env)
    assert float(meta["targetValue"]) == cfg.worker_processes * cfg.job_slots  # job slots per replica
    assert float(meta["activationTargetValue"]) == values_of(c)["autoscaling"]["activationTargetValue"]
    # The exporter schedules retries and cleans up; the worker pods (maybe zero of them) need not.
    assert cfg.worker_maintenance is False
    if "fallback" in so["spec"]:
        assert so["spec"]["fallback"]["replicas"] <= so["spec"]["maxReplicaCount"]


# -- monitoring -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [n for n in CASE_NAMES if n != "monitoring-crds-off"])
def test_service_monitor_selects_our_metrics_services(case):
    c = CASES[case]
    objs = objects(c)
    sm = one(objs, "ServiceMonitor")
    assert c.namespace in sm["spec"]["namespaceSelector"]["matchNames"]
    selected = [
        s for s in by_kind(objs, "Service") if selector_matches(sm["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert sorted(component(s) for s in selected) == sorted(APP_COMPONENTS)
    port_names = {e["port"] for e in sm["spec"]["endpoints"]}
    for svc in selected:
        assert port_names & {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]["name"]
    # kube-prometheus-stack (installed by make kind-up as release "kube-prometheus-stack") selects
    # ServiceMonitors and PrometheusRules by its release label.
    release = kps_release_name()
    assert sm["metadata"]["labels"]["release"] == release
    assert one(objs, "PrometheusRule")["metadata"]["labels"]["release"] == release
    # The alert rules' job matchers (TargetDown) see the jobs the ServiceMonitor creates (job = Service name).
    for regex in alert_job_regexes():
        for svc in selected:
            assert re.fullmatch(regex, svc["metadata"]["name"]), (regex, svc["metadata"]["name"])


def kps_release_name():
    text = (ROOT / "k8s" / "kind.mk").read_text()
    m = re.search(r"upgrade --install (\S+) kube-prometheus-stack", text)
    assert m, "kind.mk does not install kube-prometheus-stack"
    return m.group(1)


def alert_job_regexes():
    text = (CHART_DIR / "files" / "alerts.yml").read_text()
    return re.findall(r'job=~"([^"]+)"', text)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_prometheus_rule_and_dashboard_come_from_the_files(case):
    c = CASES[case]
    objs = objects(c)
    values = values_of(c)
    rule_file = yaml.safe_load((CHART_DIR / "files" / "alerts.yml").read_text())
    rules = by_kind(objs, "PrometheusRule")
    if values["monitoring"]["prometheusRule"]["enabled"]:
        assert rules[0]["spec"] == {"groups": rule_file["groups"]}
    else:
        assert not rules
    dash = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboards"))
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART_DIR / "files" / "dashboards").glob("*.json"))
    assert sorted(dash["data"]) == [f.name for f in files]
    for f in files:
        assert json.loads(dash["data"][f.name]) == json.loads(f.read_text())


@pytest.mark.parametrize("case", CASE_NAMES)
def test_scrape_annotations_point_at_the_metrics_port(case):
    for w in workloads(objects(CASES[case])):
        ann = w["spec"]["template"]["metadata"].get("annotations") or {}
        if component(w) in APP_COMPONENTS:
            assert ann["prometheus.io/scrape"] == "true"
            assert container_port(pod_spec(w)["containers"][0], int(ann["prometheus.io/port"]))
            assert container_port(pod_spec(w)["containers"][0], "metrics") == int(ann["prometheus.io/port"])


# -- hardening --------------------------------------------------------------------------------

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_pods_meet_the_restricted_pod_security_standard(case):
    objs = objects(CASES[case])
    for w in workloads(objs):
        spec = pod_spec(w)
        name = w["metadata"]["name"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert psc.get("runAsUser", 1) != 0
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        assert spec["automountServiceAccountToken"] is False, name
        sa = find(objs, "ServiceAccount", spec["serviceAccountName"], w["metadata"]["namespace"])
        assert sa is not None and sa["automountServiceAccountToken"] is False
        for vol in spec.get("volumes") or []:
            assert set(vol) - {"name"} <= RESTRICTED_VOLUME_TYPES, vol
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
            assert not sc.get("privileged"), name
            assert sc.get("runAsUser", psc.get("runAsUser")) != 0
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            mounts = {m["mountPath"] for m in c.get("volumeMounts") or []}
            if component(w) in APP_COMPONENTS:
                assert "/tmp" in mounts, f"{name}: gunicorn and prometheus-client need a writable /tmp"
            elif c["name"] == "sentinel":  # Sentinel rewrites its config as it learns: a tmpfs of its own
                assert {"/run/sentinel", "/tmp"} <= mounts
            else:
                assert "/data" in mounts


def test_app_pods_share_one_security_context():
    objs = objects(CASES["defaults"])
    contexts = {json.dumps(pod_spec(workload(objs, comp))["containers"][0]["securityContext"], sort_keys=True)
                for comp in APP_COMPONENTS}  # fmt: skip
    assert len(contexts) == 1
    assert {pod_spec(workload(objs, comp))["securityContext"]["runAsUser"] for comp in APP_COMPONENTS} == {10001}


def test_redis_is_durable_and_keeps_its_password_off_the_command_line():
    objs = objects(CASES["defaults"])
    conf = one(objs, "ConfigMap", component="redis")["data"]["redis.conf"]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in conf.splitlines() if line and line[0] != "#"}
    assert lines["appendonly"] == "yes" and lines["appendfsync"] == "everysec"
    assert lines["maxmemory-policy"] == "noeviction"
    # The users come from the ACL file start.sh writes on the run tmpfs (tests/test_redis_acl.py runs it).
    assert lines["aclfile"] == "/run/redis/users.acl" and "requirepass" not in lines
    redis = workload(objs, "redis")
    container = pod_spec(redis)["containers"][0]
    assert container["command"] == ["/bin/sh", "/etc/redis/start.sh"] and not container.get("args")
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(redis)["volumes"]}
    assert mounts["run"]["mountPath"] == "/run/redis" and volumes["run"]["emptyDir"]["medium"] == "Memory"
    assert mounts["passwords"]["mountPath"] == "/etc/redis-auth" and mounts["passwords"]["readOnly"]
    assert volumes["passwords"]["secret"]["secretName"] == one(objs, "Secret", component="redis")["metadata"]["name"]
    image = container["image"]
    assert re.fullmatch(r"docker\.io/library/redis:[78]\.\d+\.\d+-(alpine|bookworm)@sha256:[0-9a-f]{64}", image), image


# -- images -----------------------------------------------------------------------------------

DIGEST = "@sha256:" + "0123456789abcdef" * 4


def test_every_pulled_image_is_pinned_by_digest_and_tags_may_carry_one():
    """The images a cluster pulls (Redis; and the Dockerfile's base, and compose's Redis) are pinned by digest
    by default; ours are built and loaded by make, under a tag of each build. Both accept tag@sha256:."""
    for case in CASE_NAMES:
        for w in workloads(objects(CASES[case])):
            image = pod_spec(w)["containers"][0]["image"]
            if not re.match(r"(csv-summary|taskqueue)-(generator|worker):", image):
                assert re.search(r"@sha256:[0-9a-f]{64}$", image), (case, image)
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:[\d.]+-slim-bookworm@sha256:[0-9a-f]{64}$", dockerfile, re.M)
    assert re.search(r"image: docker\.io/library/redis:\S+@sha256:[0-9a-f]{64}$", (ROOT / "compose.yaml").read_text(),
                     re.M)  # fmt: skip
    objs = render_values({"image": {"registry": "ghcr.io/acme", "tag": "0.1.0" + DIGEST},
                          "redis": {"image": {"tag": "8.2.3-alpine" + DIGEST}}})  # fmt: skip
    images = {component(w): pod_spec(w)["containers"][0]["image"] for w in workloads(objs)}
    assert images == {
        "generator": f"ghcr.io/acme/taskqueue-generator:0.1.0{DIGEST}",
        "exporter": f"ghcr.io/acme/taskqueue-generator:0.1.0{DIGEST}",
        "worker": f"ghcr.io/acme/taskqueue-worker:0.1.0{DIGEST}",
        "redis": f"docker.io/library/redis:8.2.3-alpine{DIGEST}",
    }
    import helm_python as helm

    for bad in ({"image": {"tag": "0.1.0@sha256:abc"}}, {"redis": {"image": {"tag": "8.2.2-alpine@md5:00"}}}):
        with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmError):
            chart.render(bad, name="taskqueue", namespace="taskqueue")


def test_images_are_the_ones_make_builds_and_loads():
    """values.yaml's repositories + appVersion == what k8s/kind.mk builds and `kind load`s."""
    from tests.chart.test_kind_make import make_dry_run

    objs = objects(CASES["defaults"])
    images = {component(w): pod_spec(w)["containers"][0]["image"] for w in workloads(objs)}
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert images["generator"] == images["exporter"] == f"taskqueue-generator:{app_version}"
    assert images["worker"] == f"taskqueue-worker:{app_version}"
    # make kind-up builds and loads its own tag, and installs the chart with it: the images the pods run.
    out = make_dry_run("kind-up")
    tag = re.search(r"--set image\.tag=(\S+)", out).group(1)
    objs = render_values({"image": {"tag": tag}})
    images = {component(w): pod_spec(w)["containers"][0]["image"] for w in workloads(objs)}
    assert images["generator"] == images["exporter"] == f"taskqueue-generator:{tag}"
    load = next(line for line in out.splitlines() if " load docker-image " in line)
    assert f"for image in {images['generator']} {images['worker']};" in load
    builds = [line for line in out.splitlines() if " build " in line and "services/Dockerfile" in line]
    assert {b.split(" -t ")[1].split()[0] for b in builds} == {images["generator"], images["worker"]}
    assert " --target generator " in builds[0] + " " and " --target worker " in builds[1] + " "
    versions_mk = (ROOT / "k8s" / "versions.mk").read_text().splitlines()
    assert images["redis"] == next(x for x in versions_mk if x.startswith("REDIS_IMAGE")).split(":=")[1].strip()


def test_own_tasks_images_and_modules_reach_every_component():
    """A team's images replace ours in each pod that loads the catalogue (the exporter runs the generator's),
    and TASKQUEUE_TASK_MODULES reaches all three: every process must load the same catalogue."""
    objs = objects(CASES["own-tasks"])
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    apps = {component(w): w for w in workloads(objs) if component(w) != "redis"}
    images = {name: pod_spec(w)["containers"][0]["image"] for name, w in apps.items()}
    assert images == {
        "generator": f"csv-summary-generator:{app_version}",
        "exporter": f"csv-summary-generator:{app_version}",
        "worker": f"csv-summary-worker:{app_version}",
    }
    for name, w in apps.items():
        env = resolve_env(w, pod_spec(w)["containers"][0], objs)
        assert env["TASKQUEUE_TASK_MODULES"] == "team_tasks.reports, team_tasks.mail", name


@pytest.mark.parametrize("case", [n for n in CASE_NAMES if values_of(CASES[n])["redis"]["mode"] == "sentinel"])
def test_sentinel_mode_the_apps_find_the_redis_pods_sentinels_with_the_secrets_passwords(case):
    """Every process's sentinels are the three Redis pods' DNS names (the StatefulSet's pods through its headless
    Service) at the Sentinel containers' port, which the Service publishes before the pods are ready; the pods'
    own start script gets the same list; the Secret holds the passwords replicas, Sentinel and the apps use."""
    c = CASES[case]
    objs = objects(c)
    sts = next(s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"].endswith("-redis"))
    assert sts["spec"]["replicas"] == 3
    svc = find(objs, "Service", sts["spec"]["serviceName"], c.namespace)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pod = sts["spec"]["template"]["spec"]
    assert selector_matches({"matchLabels": svc["spec"]["selector"]}, sts["spec"]["template"]["metadata"]["labels"])
    containers = {k["name"]: k for k in pod["containers"]}
    port = next(p["containerPort"] for p in containers["sentinel"]["ports"] if p["name"] == "sentinel")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["sentinel"] == port
    domain = f"{svc['metadata']['name']}.{c.namespace}.svc.cluster.local"
    pods = [f"{sts['metadata']['name']}-{i}.{domain}" for i in range(3)]
    expected = tuple(f"{host}:{port}" for host in pods)
    for comp in APP_COMPONENTS:
        w = workload(objs, comp)
        cfg = tq_config.load(resolve_env(w, pod_spec(w)["containers"][0], objs))
        assert cfg.redis_sentinels == expected, comp
        assert cfg.redis_master_name == values_of(c)["redis"]["sentinel"]["masterName"]
    for name in ("redis", "sentinel"):
        env = {e["name"]: e.get("value") for e in containers[name]["env"]}
        assert env["SENTINELS"].split() == list(expected)
        assert env["FIRST_PRIMARY"] == f"{pods[0]}:{values_of(c)['redis']['port']}"
        assert env["ANNOUNCE_HOST"] == f"$(POD_NAME).{svc['metadata']['name']}.{c.namespace}.svc.cluster.local"
    secret = find(objs, "Secret", sts["metadata"]["name"], c.namespace)
    for key in ("replica-password", "sentinel-password", "sentinel-requirepass"):
        assert key in secret["data"], key
    assert pod["affinity"]["podAntiAffinity"]
    pdb = next(p for p in by_kind(objs, "PodDisruptionBudget") if p["metadata"]["name"] == sts["metadata"]["name"])
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selector_matches(pdb["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
