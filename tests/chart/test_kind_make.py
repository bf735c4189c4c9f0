"""`make -n kind-up` shows the whole sequence, with every tool, chart and image at its pinned version."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

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
        r"build .*-f services/Dockerfile --target generator",  # images
        r"build .*-f services/Dockerfile --target worker",
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
    assert flat.count("| sha256sum -c -") == 3
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


def image_tag() -> str:
    return subprocess.run(
        ["sh", "k8s/image-tag.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_each_build_gets_a_tag_of_its_own_that_kind_load_and_the_chart_both_use():
    """A rebuild of changed code must roll out: the tag is the build's (k8s/image-tag.sh), not the chart's
    appVersion with imagePullPolicy IfNotPresent (which kept the old image running)."""
    tag = image_tag()
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty-[0-9a-f]{8})?|dev-\d{14}", tag), tag
    for target in ("kind-up", "kind-load"):
        lines = make_dry_run(target, **fresh()).replace("\\\n", " ").splitlines()
        builds = [x for x in lines if " build " in x and "services/Dockerfile" in x]
        assert [x.split(" -t ")[1].split()[0] for x in builds] == [
            f"taskqueue-{c}:{tag}" for c in ("generator", "worker")
        ]
        assert all("--provenance=false" in x for x in builds)  # kind#3795: no attestation to trip kind load
        load = next(x for x in lines if "kind load docker-image" in x)
        assert f"for image in taskqueue-generator:{tag} taskqueue-worker:{tag};" in load
        assert "kind load image-archive" in load  # the fallback where docker-image fails
        install = next(x for x in lines if "upgrade --install taskqueue helm/taskqueue" in x)
        assert f"--set image.tag={tag}" in install
        assert lines.index(install) > lines.index(load) > lines.index(builds[-1])
    # kind-load rebuilds first, then rolls the pods out (waiting on each rollout).
    assert any("rollout status deployment/taskqueue-worker" in x for x in make_dry_run("kind-load").splitlines())
    # IMAGE_TAG=... names one.
    assert make_dry_run("images", IMAGE_TAG="v7").count(":v7 ") == 2


def git(cwd, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_the_image_tag_changes_with_every_change_of_the_code(tmp_path):
    (tmp_path / "k8s").mkdir()
    script = tmp_path / "k8s" / "image-tag.sh"
    script.write_text((ROOT / "k8s" / "image-tag.sh").read_text())

    def tag() -> str:
        return subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout.strip()

    assert re.fullmatch(r"dev-\d{14}", tag())  # not a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "app.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    clean = tag()
    assert clean == git(tmp_path, "rev-parse", "--short=12", "HEAD") and tag() == clean
    (tmp_path / "app.py").write_text("x = 2\n")
    first = tag()
    assert first.startswith(clean + "-dirty-") and tag() == first  # stable while nothing changes
    (tmp_path / "app.py").write_text("x = 3\n")
    second = tag()
    assert second.startswith(clean + "-dirty-") and second != first
    (tmp_path / "new.py").write_text("y = 1\n")  # a file not added yet counts too
    third = tag()
    assert third not in (first, second)
    (tmp_path / "new.py").write_text("y = 2\n")
    assert tag() != third
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "two")
    assert tag() == git(tmp_path, "rev-parse", "--short=12", "HEAD") != clean


def test_checksums_use_shasum_where_sha256sum_is_missing(tmp_path):
    """macOS 13 and older have shasum only: a PATH of this machine's tools without sha256sum."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(d).iterdir() if Path(d).is_dir() else ():
            if tool.name != "sha256sum" and not (bindir / tool.name).exists():
                (bindir / tool.name).symlink_to(tool)
    (bindir / "shasum").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "shasum").chmod(0o755)
    env = {**os.environ, "PATH": str(bindir), "MAKEFLAGS": ""}
    out = subprocess.run(["make", "--no-print-directory", "-n", "tools", "BIN=/nonexistent-bin"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.count("| shasum -a 256 -c -") == 3 and "sha256sum -c" not in out


def test_podman_runs_kinds_node_in_podman():
    """CONTAINER_ENGINE=podman: kind gets KIND_EXPERIMENTAL_PROVIDER=podman, images go in as archives."""
    probe = "KIND=sh -c 'echo provider=$$KIND_EXPERIMENTAL_PROVIDER' kind"
    for engine, provider in (("podman", "provider=podman"), ("docker", "provider=")):
        out = subprocess.run(["make", "-s", "kind-down", f"CONTAINER_ENGINE={engine}", probe], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert out.strip() == provider, out
    out = make_dry_run("kind-up", CONTAINER_ENGINE="podman", **fresh())
    assert re.search(r"podman build +-f services/Dockerfile", out) and "--provenance" not in out


def test_tools_are_fetched_only_when_missing(tmp_path):
    for name in ("kind", "kubectl", "helm"):
        version = versions()[f"{name.upper()}_VERSION"]
        (tmp_path / f".{name}-{version}").touch()
    assert "curl" not in make_dry_run("tools", BIN=str(tmp_path))
    assert make_dry_run("tools", **fresh()).count("curl -fsSLo") == 3


FAKE_KUBECTL = """#!/bin/sh
# A kubectl that logs its calls; with a ScaledObject (HAS_SO=1) the Deployment reaches $TARGET replicas
# on the Nth look (READY_AFTER), as KEDA applies a pause on its next poll.
echo "$*" >>"$LOG"
case "$*" in
  *"get scaledobject/"*) [ "${HAS_SO:-1}" = 1 ] ;;
  *"-o jsonpath"*)
    n=$(grep -c jsonpath "$LOG")
    if [ "$n" -ge "${READY_AFTER:-3}" ]; then echo "$TARGET/$TARGET/$TARGET"; else echo "2/2/2"; fi ;;
  *) echo "ok" ;;
esac
"""


def run_scale(tmp_path, replicas: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    log = tmp_path / "calls"
    log.write_text("")
    variables = {"KUBECTL": str(kubectl), "LOG": str(log), "TARGET": replicas, "REPLICAS": replicas,
                 "NAMESPACE": "taskqueue", "WORKER": "taskqueue-worker", **env}  # fmt: skip
    proc = subprocess.run(["sh", str(ROOT / "k8s" / "scale.sh")], env={**os.environ, **variables},
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    return proc, log.read_text().splitlines()


def test_scale_pauses_keda_and_returns_once_the_workers_are_ready(tmp_path):
    out = make_dry_run("scale", REPLICAS="3")
    assert "REPLICAS=3 sh k8s/scale.sh" in out and "--context kind-taskqueue" in out
    proc, calls = run_scale(tmp_path, "3", READY_AFTER="3")
    assert proc.returncode == 0, proc.stderr
    assert (
        "-n taskqueue annotate scaledobject/taskqueue-worker --overwrite autoscaling.keda.sh/paused-replicas=3" in calls
    )
    assert sum("jsonpath" in c for c in calls) == 3  # waited for KEDA to apply it, no longer
    assert "KEDA paused" in proc.stdout and "make autoscale" in proc.stdout
    # Without a ScaledObject (autoscaling off): the Deployment itself.
    proc, calls = run_scale(tmp_path, "0", HAS_SO="0", READY_AFTER="1")
    assert proc.returncode == 0 and "-n taskqueue scale deployment/taskqueue-worker --replicas=0" in calls
    # Never ready: a bounded wait, then an error that says what is there.
    proc, _ = run_scale(tmp_path, "4", READY_AFTER="99", SCALE_TIMEOUT="4")
    assert proc.returncode == 1 and "2 of 2 pods ready" in proc.stderr
    for bad in ("", "three", "-1"):
        proc, calls = run_scale(tmp_path, bad)
        assert proc.returncode == 2 and "usage: make scale REPLICAS=n" in proc.stderr and calls == []
    assert "autoscaling.keda.sh/paused-replicas-" in make_dry_run("autoscale")


def test_other_targets_and_help():
    assert "delete cluster --name taskqueue" in make_dry_run("kind-down")
    assert "k8s/port-forward.sh" in make_dry_run("port-forward")
    load = make_dry_run("load", LOAD_JOBS="50")
    assert "LOAD_JOBS=50" in load and "k8s/load.sh" in load
    help_text = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    help_text = re.sub(r"\x1b\[[0-9;]*m", "", help_text)
    targets = ("tools", "images", "doctor", "kind-up", "kind-load", "kind-down", "port-forward", "scale", "autoscale")
    for target in (*targets, "load"):
        assert re.search(rf"^\s*{target}\s+\S", help_text, re.M), target
    for script in ("port-forward.sh", "load.sh", "scale.sh", "image-tag.sh", "doctor.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "k8s" / script)], check=True)
        assert os.access(ROOT / "k8s" / script, os.X_OK)


FAKE_PORT_FORWARD = """#!/usr/bin/env python3
# kubectl port-forward service/NAME LOCAL:REMOTE, faked: listens on LOCAL until killed. The first forward
# of $EXIT_ONCE exits after a second, as a real one does when its pod is replaced.
import os, socket, sys, time
port = int(next(a for a in sys.argv if ":" in a).split(":")[0])
service = next(a for a in sys.argv if a.startswith("service/"))
with open(os.environ["LOG"], "a") as log:
    log.write(service + "\\n")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
print(f"Forwarding from 127.0.0.1:{port}", flush=True)
marker = os.environ["LOG"] + ".exited"
if service.endswith(os.environ.get("EXIT_ONCE", "-")) and not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(1)
    sys.exit(1)
time.sleep(600)
"""


def test_port_forward_skips_a_taken_port_restarts_a_forward_that_exits_and_stops_on_ctrl_c(tmp_path):
    """bash 3.2's way (no wait -n): one port taken is reported and the others forwarded; a forward whose pod
    went away is started again; SIGINT (Ctrl-C) stops every forward."""
    import signal
    import socket

    from tests.support import free_port, wait_for

    def take_ctrl_c() -> None:
        """SIGINT as a terminal's shell leaves it: a test run started in the background (nohup cmd &) inherits it
        ignored, and bash cannot trap a signal ignored when it starts."""
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_PORT_FORWARD)
    kubectl.chmod(0o755)
    log = tmp_path / "calls"
    api, prometheus, grafana = free_port(), free_port(), free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", api))
    taken.listen()
    env = {**os.environ, "KUBECTL": str(kubectl), "LOG": str(log), "EXIT_ONCE": "grafana", "API_PORT": str(api),
           "PROMETHEUS_PORT": str(prometheus), "GRAFANA_PORT": str(grafana)}  # fmt: skip
    proc = subprocess.Popen(["bash", str(ROOT / "k8s" / "port-forward.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=take_ctrl_c)  # fmt: skip
    try:

        def listening(port: int) -> bool:
            with socket.socket() as c:
                return c.connect_ex(("127.0.0.1", port)) == 0

        wait_for(lambda: listening(prometheus) and listening(grafana), timeout=15, what="both forwards")
        # The Grafana forward exits once; the script starts it again.
        wait_for(lambda: log.read_text().count("kube-prometheus-stack-grafana") == 2, timeout=15, what="a restart")
        wait_for(lambda: listening(grafana), timeout=15, what="Grafana forwarded again")
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=15)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        taken.close()
    assert proc.returncode == 130, out
    assert f"api: port {api} is taken by another program; not forwarded" in out
    assert f"make port-forward API_PORT={api + 10000 if api < 55000 else api - 10000}" in out
    assert f"Prometheus  http://localhost:{prometheus}" in out and f"Grafana     http://localhost:{grafana}" in out
    assert "grafana: the port-forward exited" in out and "starting it again" in out
    assert "service/taskqueue-generator" not in log.read_text()
    wait_for(lambda: not listening(prometheus) and not listening(grafana), timeout=5, what="the forwards stopped")


def test_kind_config():
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in cfg["nodes"]].count("control-plane") == 1
    # kindnet (the default CNI) enforces NetworkPolicies; another CNI must be chosen on purpose.
    assert not cfg.get("networking", {}).get("disableDefaultCNI")


def test_kind_up_with_a_tasks_package_builds_loads_and_installs_its_images():
    """TASKS_PACKAGE: examples/Dockerfile on each of our images, those two loaded, the chart pointed at them."""
    out = make_dry_run("kind-up", TASKS_PACKAGE="examples/csv_summary", **fresh())
    lines = out.replace("\\\n", " ").splitlines()
    builds = [line for line in lines if "-f examples/Dockerfile" in line]
    tag = image_tag()
    assert builds == [
        f"docker build --provenance=false -f examples/Dockerfile --build-arg BASE_IMAGE=taskqueue-{c}:{tag} "
        f"-t csv-summary-{c}:{tag} examples/csv_summary"
        for c in ("generator", "worker")
    ]
    load = next(line for line in lines if "kind load docker-image" in line)
    assert f"for image in csv-summary-generator:{tag} csv-summary-worker:{tag};" in load
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
        command = (  # kubectl of ./bin, on PATH as the banner says, its context kind's
            f"kubectl -n {namespace} get secret "
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
