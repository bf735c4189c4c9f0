"""`make -n kind-up` shows the whole sequence, with every tool, chart and image at its pinned version."""

from __future__ import annotations

import functools
import os
import re
import subprocess

import yaml

from tests.chart.rendering import CHART_DIR, ROOT, versions


@functools.cache
def make_dry_run(*targets: str, **variables: str) -> str:
    """`make -n` output (nothing runs). A clean ./bin is simulated with BIN= a fresh path."""
    env = {**os.environ, "MAKEFLAGS": ""}
    cmd = ["make", "--no-print-directory", "-n", *targets, *(f"{k}={v}" for k, v in variables.items())]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fresh():
    return {"BIN": "/nonexistent-bin"}


def test_kind_up_sequence_in_order():
    out = make_dry_run("kind-up", **fresh())
    steps = [
        r"curl .*kind-linux-",  # tools
        r"curl .*/kubectl$",
        r"curl .*helm-v",
        r"build -f services/Dockerfile --target generator",  # images
        r"build -f services/Dockerfile --target worker",
        # The cluster is created only when missing (idempotent).
        r"kind get clusters .*\|\| +\S*kind create cluster --name taskqueue --config kind-config.yaml --image ",
        r"kind load docker-image --name taskqueue ",
        r"upgrade --install keda keda ",
        r"upgrade --install kube-prometheus-stack kube-prometheus-stack ",
        r"create namespace taskqueue --dry-run=client -o yaml \| .* apply -f -",
        r"label namespace taskqueue .*pod-security.kubernetes.io/enforce=restricted",
        r"upgrade --install taskqueue helm/taskqueue --namespace taskqueue --wait",
        r"rollout status statefulset/taskqueue-redis",
        r"rollout status deployment/taskqueue-generator",
        r"rollout status deployment/taskqueue-worker",
        r"rollout status deployment/taskqueue-exporter",
        r"port-forward",
    ]
    lines = out.replace("\\\n", " ").splitlines()
    pos = 0
    for step in steps:
        for i in range(pos, len(lines)):
            if re.search(step, lines[i]):
                pos = i + 1
                break
        else:
            raise AssertionError(f"step {step!r} missing or out of order in:\n{out}")


def test_kind_up_installs_pinned_versions():
    v = versions()
    out = make_dry_run("kind-up", **fresh())
    flat = out.replace("\\\n", " ")
    assert f"/dl/{v['KIND_VERSION']}/kind-" in flat
    assert f"/release/{v['KUBECTL_VERSION']}/bin/" in flat
    assert f"/helm-{v['HELM_VERSION']}-" in flat
    assert f"--image {v['KIND_NODE_IMAGE']}" in flat
    assert re.search(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}$", v["KIND_NODE_IMAGE"])
    assert v["KIND_NODE_IMAGE"].startswith(f"kindest/node:v{v['KUBERNETES_VERSION']}@")
    keda = next(line for line in flat.splitlines() if "upgrade --install keda " in line)
    assert f"--repo {v['KEDA_CHART_REPO']} --version {v['KEDA_CHART_VERSION']}" in keda
    assert "-f k8s/keda-values.yaml" in keda and "--namespace keda" in keda
    kps = next(line for line in flat.splitlines() if "upgrade --install kube-prometheus-stack " in line)
    assert f"--repo {v['KPS_CHART_REPO']}" in kps and f"--version {v['KPS_CHART_VERSION']}" in kps
    assert "-f k8s/kube-prometheus-stack-values.yaml" in kps and "--namespace monitoring" in kps
    # Every downloaded tool is checked against its published checksum.
    assert flat.count("sha256sum -c -") == 3
    # Every pinned version is a fixed version, never "latest".
    for name, value in v.items():
        assert "latest" not in value.lower(), name
    # Every kubectl/helm call targets the kind cluster's context, never the current one.
    calls = [seg.strip() for line in flat.splitlines() for seg in re.split(r"\|\||&&|\|", line)]
    calls = [c for c in calls if re.match(r"/nonexistent-bin/(kubectl|helm) ", c)]
    assert len(calls) >= 8
    for call in calls:
        assert re.match(r"\S+ (--context|--kube-context) kind-taskqueue ", call), call


def test_versions_agree_with_the_chart_tests():
    """The helm CLI users get is the Helm the tests render with; the CRDs are the installed charts'."""
    import helm_python

    v = versions()
    assert helm_python.helm_sdk_version() == v["HELM_VERSION"]
    crd_note = (ROOT / "tests" / "chart" / "crds" / "README.md").read_text()
    assert f"v{v['KEDA_CHART_VERSION']}" in crd_note
    assert f"kube-prometheus-stack {v['KPS_CHART_VERSION']}" in crd_note
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert make_dry_run("images").count(f":{app_version} ") == 2


def test_tools_are_fetched_only_when_missing(tmp_path):
    for name in ("kind", "kubectl", "helm"):
        version = versions()[f"{name.upper()}_VERSION"]
        (tmp_path / f".{name}-{version}").touch()
    assert "curl" not in make_dry_run("tools", BIN=str(tmp_path))
    assert make_dry_run("tools", **fresh()).count("curl -fsSLo") == 3


def test_scale_pauses_keda_and_autoscale_resumes():
    out = make_dry_run("scale", REPLICAS="3")
    assert "annotate scaledobject/taskqueue-worker --overwrite autoscaling.keda.sh/paused-replicas=3" in out
    assert "scale deployment/taskqueue-worker --replicas=3" in out  # without a ScaledObject
    assert "autoscaling.keda.sh/paused-replicas-" in make_dry_run("autoscale")
    proc = subprocess.run(["make", "-s", "scale"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "usage: make scale REPLICAS=n" in proc.stderr


def test_other_targets_and_help():
    assert "delete cluster --name taskqueue" in make_dry_run("kind-down")
    assert "k8s/port-forward.sh" in make_dry_run("port-forward")
    load = make_dry_run("load", LOAD_JOBS="50")
    assert "LOAD_JOBS=50" in load and "k8s/load.sh" in load
    help_text = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    help_text = re.sub(r"\x1b\[[0-9;]*m", "", help_text)
    for target in ("tools", "images", "kind-up", "kind-down", "port-forward", "scale", "autoscale", "load"):
        assert re.search(rf"^\s*{target}\s+\S", help_text, re.M), target
    for script in ("port-forward.sh", "load.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "k8s" / script)], check=True)
        assert os.access(ROOT / "k8s" / script, os.X_OK)


def test_kind_config():
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in cfg["nodes"]].count("control-plane") == 1
    # kindnet (the default CNI) enforces NetworkPolicies; another CNI must be chosen on purpose.
    assert not cfg.get("networking", {}).get("disableDefaultCNI")


def test_kind_up_with_a_tasks_package_builds_loads_and_installs_its_images():
    """TASKS_PACKAGE: examples/Dockerfile on each of our images, those two loaded, the chart pointed at them."""
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    out = make_dry_run("kind-up", TASKS_PACKAGE="examples/csv_summary", **fresh())
    lines = out.replace("\\\n", " ").splitlines()
    builds = [line for line in lines if "build -f examples/Dockerfile" in line]
    assert builds == [
        f"docker build -f examples/Dockerfile --build-arg BASE_IMAGE=taskqueue-{c}:{app_version} "
        f"-t csv-summary-{c}:{app_version} examples/csv_summary"
        for c in ("generator", "worker")
    ]
    load = next(line for line in lines if "kind load docker-image" in line)
    assert load.endswith(f" csv-summary-generator:{app_version} csv-summary-worker:{app_version}")
    install = next(line for line in lines if "upgrade --install taskqueue " in line)
    assert "--set generator.image.repository=csv-summary-generator" in install
    assert "--set worker.image.repository=csv-summary-worker" in install
    # Without it, nothing of the above.
    plain = make_dry_run("kind-up", **fresh())
    assert "examples/Dockerfile" not in plain and "csv-summary" not in plain


def test_kind_up_prints_how_to_read_the_admin_token():
    """The last words of kind-up name the API tokens Secret and key the chart renders, in kind's context."""
    from tests.chart.rendering import render_values

    for release, namespace in (("taskqueue", "taskqueue"), ("demo", "jobs")):
        out = make_dry_run("kind-up", RELEASE=release, NAMESPACE=namespace, **fresh())
        (line,) = [x for x in out.splitlines() if x.startswith("echo ") and "api-tokens" in x]
        printed = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout
        secret = next(o for o in render_values(None, release, namespace) if o["kind"] == "Secret"
                      and o["metadata"]["name"].endswith("-api-tokens"))  # fmt: skip
        command = (
            f"/nonexistent-bin/kubectl --context kind-taskqueue -n {namespace} get secret "
            f"{secret['metadata']['name']} -o jsonpath='{{.data.api-tokens}}' | base64 -d"
        )
        assert printed.strip().startswith(command), printed
        assert "api-tokens" in secret["data"] and "TASKQUEUE_TOKEN" in printed
        # The same command as the chart's NOTES give.
        notes = render_notes(release, namespace)
        assert (
            f"-n {namespace} get secret {secret['metadata']['name']} -o jsonpath='{{.data.api-tokens}}' | base64 -d"
            in notes
        )
    # After the other next steps, before kind-down's.
    lines = make_dry_run("kind-up", **fresh()).splitlines()
    at = next(i for i, x in enumerate(lines) if "api-tokens" in x)
    assert any("port-forward" in x for x in lines[at - 3 : at]) and any("kind-down" in x for x in lines[at:])


def render_notes(release: str, namespace: str) -> str:
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(None, name=release, namespace=namespace, is_install=True)["taskqueue/templates/NOTES.txt"]
