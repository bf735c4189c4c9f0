"""API tokens and the Ingress in the chart: the generator reads its tokens from a Secret mounted as a directory
(generated once and kept, or the user's), anonymous requests get generator.auth.anonymousRole, and an optional
Ingress reaches the API through the ingress controller, which the generator's NetworkPolicy then admits.

The matrix's ``ingress`` and ``auth-existing-secret`` cases also go through every other chart test (lint, dry-run
install, validation, cross-references, the NetworkPolicy evaluator, checkov); these check what is particular to
them, with ``defaults`` as the generated Secret and the Ingress off.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import helm_python as helm
import pytest

from taskqueue import config as tq_config
from taskqueue.api.auth import Role, Tokens, parse
from tests.chart.rendering import (
    API_CLIENT_LABEL,
    CASES,
    CHART_DIR,
    INGRESS,
    INGRESS_HOST,
    USER_TOKENS,
    by_kind,
    component,
    find,
    objects,
    one,
    pod_spec,
    render,
    render_values,
    resolve_env,
    workloads,
)
from tests.chart.test_network_policy import allowed, build_model

DEFAULTS = CASES["defaults"]
EXISTING = CASES["auth-existing-secret"]
INGRESS_CASE = CASES["ingress"]
SECRET_NAME = "taskqueue-api-tokens"
NOTES = "taskqueue/templates/NOTES.txt"


def all_objects(case):
    return objects(case) + [dict(o) for o in case.provided]


def generator(objs):
    return next(w for w in workloads(objs) if component(w) == "generator")


def tokens_volume(objs):
    """The generator's volume of the tokens Secret, and the container's mount of it."""
    spec = pod_spec(generator(objs))
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-tokens"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume, mount


def tokens_text(secret) -> str:
    return base64.b64decode(secret["data"]["api-tokens"]).decode()


def token_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def kubelet_files(objs, namespace: str, tmp_path: Path) -> Path:
    """The tokens volume as kubelet writes it (each item a file in the mount's directory); the app's file path."""
    volume, mount = tokens_volume(objs)
    secret = find(objs, "Secret", volume["secret"]["secretName"], namespace)
    assert secret is not None
    root = tmp_path / mount["mountPath"].lstrip("/")
    root.mkdir(parents=True)
    for item in volume["secret"]["items"]:
        (root / item["path"]).write_bytes(base64.b64decode(secret["data"][item["key"]]))
    env = resolve_env(generator(objs), pod_spec(generator(objs))["containers"][0], objs)
    return tmp_path / tq_config.load(env).api_tokens_file.lstrip("/")


def generator_env(objs) -> dict[str, str]:
    return resolve_env(generator(objs), pod_spec(generator(objs))["containers"][0], objs)


def rejects(values) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmError):
        chart.render(values, name="taskqueue", namespace="taskqueue")


# -- the tokens Secret ---------------------------------------------------------------------------


def test_tokens_secret_is_generated_random_and_kept():
    secret = one(objects(DEFAULTS), "Secret", name=SECRET_NAME)
    assert component(secret) == "generator" and secret["type"] == "Opaque"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert list(secret["data"]) == ["api-tokens"]
    text = tokens_text(secret)
    (line,) = token_lines(text)
    role, token = line
    assert role == "admin" and len(token) == 32 and token.isalnum()
    # The app reads it so: one admin token, nothing logged as malformed.
    assert [r for _digest, r in parse(text)] == [Role.ADMIN]
    # Random: another first install, another token.
    again = one(render_values(DEFAULTS.values), "Secret", name=SECRET_NAME)
    assert token_lines(tokens_text(again))[0][1] != token
    # Kept across upgrades: lookup reads the Secret back (helm_python renders as a first install, where
    # lookup answers nothing, so the template is what shows it), as for the Redis password.
    template = (CHART_DIR / "templates" / "generator.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $secretName' in template
    assert 'hasKey $existing.data "api-tokens"' in template
    assert "randAlphaNum 32" in template


def test_tokens_are_mounted_as_a_directory_and_the_file_setting_points_into_it(tmp_path):
    objs = all_objects(DEFAULTS)
    volume, mount = tokens_volume(objs)
    assert volume["secret"]["secretName"] == SECRET_NAME
    assert volume["secret"]["items"] == [{"key": "api-tokens", "path": "api-tokens"}]
    # Readable by the pod's fsGroup (the app's group), nobody else.
    assert pod_spec(generator(objs))["securityContext"]["fsGroup"] == 10001
    assert volume["secret"]["defaultMode"] == 0o440
    # A directory, never subPath (a subPath file is never updated: a rotated Secret would need a restart).
    assert mount["readOnly"] is True
    assert not [m for m in pod_spec(generator(objs))["containers"][0]["volumeMounts"] if "subPath" in m]
    env = generator_env(objs)
    cfg = tq_config.load(env)
    assert cfg.api_tokens_file == f"{mount['mountPath']}/api-tokens"
    assert Path(cfg.api_tokens_file).parent.as_posix() == mount["mountPath"]
    # The generator, given the file as kubelet writes it, takes the admin token and the anonymous role.
    path = kubelet_files(objs, DEFAULTS.namespace, tmp_path)
    secret = one(objs, "Secret", name=SECRET_NAME)
    token = token_lines(tokens_text(secret))[0][1]
    tokens = Tokens(str(path), Role.named(cfg.anonymous_role))
    assert tokens.decide(f"Bearer {token}").role is Role.ADMIN
    assert tokens.decide(None).role is Role.SUBMIT
    assert tokens.decide("Bearer not-the-token-at-all").role is Role.NONE
    # Only the generator answers the API: the worker and the exporter neither mount nor name the tokens.
    for w in workloads(objs):
        if component(w) != "generator":
            assert "TASKQUEUE_API_TOKENS_FILE" not in resolve_env(w, pod_spec(w)["containers"][0], objs)
            assert not [v for v in pod_spec(w).get("volumes") or [] if v["name"] == "api-tokens"]


def test_without_an_fs_group_the_file_is_readable_by_the_apps_user():
    objs = render_values({"podSecurityContext": {"fsGroup": None}})
    assert "fsGroup" not in pod_spec(generator(objs))["securityContext"]
    volume, _mount = tokens_volume(objs)
    assert volume["secret"]["defaultMode"] == 0o444


def test_existing_secret_is_used_and_none_is_generated(tmp_path):
    objs = all_objects(EXISTING)
    assert find(objs, "Secret", SECRET_NAME, EXISTING.namespace) is None
    assert not [s for s in by_kind(objects(EXISTING), "Secret") if component(s) == "generator"]
    volume, _mount = tokens_volume(objs)
    assert volume["secret"]["secretName"] == "taskqueue-tokens"
    cfg = tq_config.load(generator_env(objs))
    tokens = Tokens(str(kubelet_files(objs, EXISTING.namespace, tmp_path)), Role.named(cfg.anonymous_role))
    assert tokens.decide(f"Bearer {USER_TOKENS['admin']}").role is Role.ADMIN
    assert tokens.decide(f"Bearer {USER_TOKENS['read']}").role is Role.READ
    assert tokens.decide(None).role is Role.READ  # the case's anonymousRole
    notes = render(EXISTING)[NOTES]
    assert "get secret taskqueue-tokens -o jsonpath='{.data.api-tokens}' | base64 -d" in notes
    assert "made at install" not in notes


# -- the anonymous role ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["none", "read", "submit"])
def test_anonymous_role_reaches_the_generator(role):
    objs = render_values({"generator": {"auth": {"anonymousRole": role}}})
    assert one(objs, "ConfigMap", name="taskqueue")["data"]["TASKQUEUE_ANONYMOUS_ROLE"] == role
    env = generator_env(objs)
    assert env["TASKQUEUE_ANONYMOUS_ROLE"] == role
    assert tq_config.load(env).anonymous_role == role


def test_anonymous_role_default_is_the_apps():
    app_default = next(s.default for s in tq_config.SETTINGS if s.name == "anonymous_role")
    assert generator_env(all_objects(DEFAULTS))["TASKQUEUE_ANONYMOUS_ROLE"] == app_default == "submit"


@pytest.mark.parametrize("bad", ["admin", "", "Submit", "write", 1, None])
def test_schema_refuses_other_anonymous_roles(bad):
    rejects({"generator": {"auth": {"anonymousRole": bad}}})


def test_schema_refuses_unknown_auth_keys():
    rejects({"generator": {"auth": {"existingSecrets": "mine"}}})
    rejects({"generator": {"auth": {"existingSecret": 5}}})


@pytest.mark.parametrize(("role", "anonymous_submits"), [("submit", True), ("read", False), ("none", False)], ids=str)
def test_notes_tell_how_to_read_and_use_the_admin_token(role, anonymous_submits):
    with helm.Chart.load(CHART_DIR) as chart:
        notes = chart.render({"generator": {"auth": {"anonymousRole": role}}}, name="taskqueue", namespace="tq")[NOTES]
    read = f"kubectl -n tq get secret {SECRET_NAME} -o jsonpath='{{.data.api-tokens}}' | base64 -d"
    assert read in notes
    assert "export TASKQUEUE_TOKEN=$(" + read in notes
    assert 'curl -s -H "Authorization: Bearer $TASKQUEUE_TOKEN" -X DELETE localhost:8000/jobs/<jobId>' in notes
    assert f"Requests without a token may {'do nothing' if role == 'none' else role}" in notes
    # The seed's curl commands: as they are when anonymous requests may enqueue, else with the token.
    assert ("curl -s localhost:8000/start" in notes) is anonymous_submits
    assert (
        'curl -s -H "Authorization: Bearer $TASKQUEUE_TOKEN" localhost:8000/start' in notes
    ) is not anonymous_submits


# -- the Ingress ----------------------------------------------------------------------------------


def generator_policy(objs):
    return one(objs, "NetworkPolicy", component="generator")


def without_secret_data(objs):
    """The objects with the generated Secrets' random values blanked (two renders differ only there)."""
    out = copy.deepcopy(objs)
    for o in out:
        if o["kind"] == "Secret":
            o["data"] = dict.fromkeys(o["data"], "")
    return out


def test_ingress_off_renders_no_ingress_and_no_extra_rule():
    objs = objects(DEFAULTS)
    assert not by_kind(objs, "Ingress")
    rules = generator_policy(objs)["spec"]["ingress"]
    # The API port from anyone, the metrics port from Prometheus: as before the Ingress existed.
    assert rules[0] == {"ports": [{"protocol": "TCP", "port": 8000}]}
    assert [r["ports"] for r in rules[1:]] == [[{"protocol": "TCP", "port": 9100}]]
    assert "ingress-nginx" not in str(generator_policy(objs))
    # The other ingress values change nothing while it is off, also with the API narrowed.
    off = copy.deepcopy(INGRESS)
    off["generator"]["ingress"]["enabled"] = False
    assert without_secret_data(render_values(off)) == without_secret_data(
        render_values({"networkPolicy": INGRESS["networkPolicy"]})
    )
    assert without_secret_data(render_values({"generator": {"ingress": {"enabled": False}}})) == without_secret_data(
        objects(DEFAULTS)
    )
    assert "Ingress" not in render(DEFAULTS)[NOTES]


def test_ingress_on_renders_class_tls_annotation_and_the_rule():
    objs = objects(INGRESS_CASE)
    ingress = one(objs, "Ingress")
    assert component(ingress) == "generator"
    assert ingress["metadata"]["name"] == "taskqueue-generator"
    assert ingress["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"}
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "taskqueue-tls", "hosts": [INGRESS_HOST]}]
    assert spec["rules"] == [
        {
            "host": INGRESS_HOST,
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "taskqueue-generator", "port": {"name": "http"}}},
                    }
                ]
            },
        }
    ]
    assert f"https://{INGRESS_HOST}/" in render(INGRESS_CASE)[NOTES]


def test_ingress_without_a_host_takes_any_host_and_no_class():
    objs = render_values(
        {"generator": {"ingress": {"enabled": True, "hosts": [{"paths": [{"path": "/", "pathType": "Prefix"}]}]}}}
    )
    spec = one(objs, "Ingress")["spec"]
    assert "host" not in spec["rules"][0] and "ingressClassName" not in spec and "tls" not in spec
    assert "annotations" not in one(objs, "Ingress")["metadata"]


def test_ingress_on_the_policy_admits_the_controllers_namespace():
    objs = objects(INGRESS_CASE)
    rules = generator_policy(objs)["spec"]["ingress"]
    controller_rule = {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8000}],
    }
    # The API rule (narrowed by the case's apiFrom), then the controller's, then Prometheus's; egress unchanged.
    assert rules[0]["from"] == INGRESS["networkPolicy"]["apiFrom"]
    assert rules[1] == controller_rule
    assert rules[2] == generator_policy(objects(DEFAULTS))["spec"]["ingress"][1]
    assert generator_policy(objs)["spec"]["egress"] == generator_policy(objects(DEFAULTS))["spec"]["egress"]
    # Without controllerPodSelector, every pod of the namespace.
    values = copy.deepcopy(INGRESS)
    del values["generator"]["ingress"]["controllerPodSelector"]
    (rule,) = [r for r in generator_policy(render_values(values))["spec"]["ingress"] if "ingress-nginx" in str(r)]
    assert rule["from"] == [{"namespaceSelector": controller_rule["from"][0]["namespaceSelector"]}]


def test_the_controller_reaches_the_api_only_with_the_ingress_on():
    """With the API narrowed to labelled clients, the controller gets to the http port only by the Ingress's rule,
    and to no other port; another pod of its namespace does not (the case's controllerPodSelector)."""
    model, objs = build_model(INGRESS_CASE)
    on = by_kind(objs, "NetworkPolicy")
    off_values = copy.deepcopy(INGRESS)
    off_values["generator"]["ingress"]["enabled"] = False
    off = by_kind(render_values(off_values), "NetworkPolicy")
    controller, neighbour = model.get("ingress-controller"), model.get("ingress-neighbour")
    client, stranger, api = model.get("api-client"), model.get("stranger"), model.get("generator")
    assert API_CLIENT_LABEL in client.labels
    assert allowed(on, controller, api, 8000, "TCP") and not allowed(off, controller, api, 8000, "TCP")
    assert not allowed(on, controller, api, 9100, "TCP")
    assert not allowed(on, neighbour, api, 8000, "TCP")
    for policies in (on, off):
        assert allowed(policies, client, api, 8000, "TCP") and not allowed(policies, stranger, api, 8000, "TCP")


@pytest.mark.parametrize(
    "bad",
    [
        {"enabled": "yes"},
        {"hosts": []},
        {"hosts": [{"host": "taskqueue.local"}]},  # no paths
        {"hosts": [{"host": "https://taskqueue.local", "paths": [{"path": "/", "pathType": "Prefix"}]}]},
        {"hosts": [{"host": "taskqueue.local", "paths": [{"path": "/", "pathType": "Regex"}]}]},
        {"hosts": [{"host": "taskqueue.local", "paths": [{"path": "api", "pathType": "Prefix"}]}]},
        {"tls": [{"hosts": ["taskqueue.local"]}]},  # no secretName
        {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": 1}},  # annotation values are strings
        {"controllerNamespaceSelector": {"matchLabel": {"name": "ingress-nginx"}}},
        {"controllerPodSelector": "ingress-nginx"},
        {"class": "nginx"},
    ],
    ids=str,
)
def test_schema_refuses_bad_ingress_values(bad):
    rejects({"generator": {"ingress": {"enabled": True, **bad}}})
