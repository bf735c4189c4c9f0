"""Every rendered object is valid for the Kubernetes version kind runs: built-in kinds against
kubernetes-validate's strict schemas (unknown fields rejected), KEDA and Prometheus Operator kinds
against their CRDs' schemas (vendored in crds/). Any other kind fails: it would have no schema."""

from __future__ import annotations

import copy
import functools

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.rendering import CASES, CRD_DIR, kube_version, objects

CRD_GROUPS = ("keda.sh", "monitoring.coreos.com")


def _strict(schema):
    """A CRD's structural schema, with unknown fields rejected as the API server's strict field
    validation does (except where the schema preserves them)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern[1:]:
            # Go's RE2 takes inline flags anywhere; Python only at the start.
            schema["pattern"] = "(?i)" + pattern.replace("(?i)", "")
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON schema, from the vendored CRDs."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                # metadata is ObjectMeta (validated by the API server itself); keep it open here.
                schema["properties"]["metadata"] = {"type": "object"}
                out[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return out


def validate_custom(obj):
    key = (obj["apiVersion"], obj["kind"])
    schema = crd_schemas().get(key)
    assert schema is not None, f"no vendored CRD for {key}: add it to tests/chart/crds/"
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
    name = obj["metadata"]["name"]
    assert len(name) <= 63 and name == name.lower(), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_valid_for_kind_kubernetes(case):
    version = kube_version()
    failures = []
    for obj in objects(CASES[case]):
        ident = f"{obj['kind']}/{obj['metadata']['name']}"
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        try:
            if group in CRD_GROUPS:
                validate_custom(obj)
            else:
                kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            failures.append(f"{ident}: {getattr(exc, 'message', exc)}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{ident}: no schema ({exc}); only {CRD_GROUPS} custom kinds are allowed")
    assert not failures, "\n".join(failures)


def test_validator_catches_mistakes():
    """The validators are not vacuous: unknown fields and wrong types fail, unknown kinds too."""
    objs = objects(CASES["defaults"])
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    deployment["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kube_version(), strict=True)
    scaled = next(o for o in objs if o["kind"] == "ScaledObject")
    scaled["spec"]["pollingIntervall"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(scaled)
    monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(monitor)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
                                     kube_version(), strict=True)  # fmt: skip
