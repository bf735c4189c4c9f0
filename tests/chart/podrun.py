"""Run the chart's rendered pod specs with podman, as the kubelet would, but on this machine.

For one container of a rendered Deployment/StatefulSet: the image, ``command`` + ``args`` (the
image's entrypoint replaced, as Kubernetes does), the environment with envFrom/ConfigMap/Secret
references resolved, the securityContext (user, group, fsGroup, read-only root, dropped
capabilities, no privilege escalation), and the volumes (emptyDir and PVCs as tmpfs, ConfigMaps and
Secrets as read-only files). Networking is the host's: Service names the chart uses resolve to
127.0.0.1 (``--add-host``). The chart's own startup/readiness probes decide when a container is up.

Images come from the container storage of tests/images (TQ_IMAGES_STORE, vfs), where
tests/images/build.sh builds them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.chart.rendering import find, pod_spec, resolve_env

STORE = Path(os.environ.get("TQ_IMAGES_STORE", "/var/tmp/taskqueue-images"))
IMAGE_PREFIX = os.environ.get("TQ_IMAGE_PREFIX", "localhost/taskqueue")
# The tag tests/images/build.sh gives (the package version); empty: the chart image's tag (appVersion).
IMAGE_TAG = os.environ.get("TQ_IMAGE_TAG", "")


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [
        "podman",
        "--root", str(STORE / "root"), "--runroot", str(STORE / "run"), "--storage-driver", "vfs",
        "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}: {proc.stderr.strip()[-2000:]}")
    return proc


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def local_image(chart_image: str) -> str:
    """The locally built image for a chart image: taskqueue-generator:0.1.0 -> localhost/taskqueue-generator:0.1.0."""
    name, tag = chart_image.rsplit(":", 1)
    repo = name.rsplit("/", 1)[-1]  # taskqueue-generator
    return f"{IMAGE_PREFIX}-{repo.removeprefix('taskqueue-')}:{IMAGE_TAG or tag}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PodRunner:
    """Starts rendered containers with podman; ``stop_all`` removes them."""

    def __init__(self, objs: list[dict[str, Any]], workdir: Path, hosts: dict[str, str], name_prefix: str):
        self.objs = objs
        self.workdir = workdir
        self.hosts = hosts
        self.prefix = name_prefix
        self.started: list[str] = []

    def _files(self, kind: str, name: str, namespace: str, items, target: Path) -> None:
        obj = find(self.objs, kind, name, namespace)
        assert obj is not None, f"{kind} {name} missing"
        data = obj.get("data") or {}
        keys = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        target.mkdir(parents=True, exist_ok=True)
        for key, path in keys:
            raw = data[key]
            content = base64.b64decode(raw) if kind == "Secret" else raw.encode()
            (target / path).write_bytes(content)
            (target / path).chmod(0o644)
        target.chmod(0o755)

    def podman_args(self, workload: dict[str, Any], image: str, container: str | None = None) -> tuple[str, list[str]]:
        """The `podman run` arguments for one container of the workload's first pod (``container``: its name;
        default: the first container). Each container of a pod runs as a container of its own, with the pod's volumes
        mounted as that container mounts them (an emptyDir is not shared between them)."""
        spec = pod_spec(workload)
        container = self.container(workload, container)
        ns = workload["metadata"]["namespace"]
        name = f"{self.prefix}-{workload['metadata']['name']}"
        if container is not spec["containers"][0]:
            name = f"{name}-{container['name']}"
        psc, sc = spec.get("securityContext") or {}, container.get("securityContext") or {}
        args = ["run", "--detach", "--pull", "never", "--name", name, "--network", "host"]
        # The limits this machine allows (podman's defaults ask for more; see tests/images/build.sh).
        args += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
        for host, ip in self.hosts.items():
            args += ["--add-host", f"{host}:{ip}"]
        user = sc.get("runAsUser", psc.get("runAsUser"))
        group = sc.get("runAsGroup", psc.get("runAsGroup"))
        if user is not None:
            args += ["--user", f"{user}:{group}" if group is not None else str(user)]
        if psc.get("fsGroup") is not None:
            args += ["--group-add", str(psc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
            args.append("--read-only-tmpfs=false")
        for cap in (sc.get("capabilities") or {}).get("drop") or []:
            args += ["--cap-drop", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        env = resolve_env(workload, container, self.objs)
        env_file = self.workdir / f"{name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        args += ["--env-file", str(env_file)]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates") or []}
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"]
            vol = volumes.get(mount["name"])
            if vol is None:
                assert mount["name"] in claims, f"{name}: no volume {mount['name']}"
                args += ["--tmpfs", f"{path}:rw,mode=1777"]  # the PVC, as tmpfs
            elif "emptyDir" in vol:
                args += ["--tmpfs", f"{path}:rw,mode=1777"]
            elif "configMap" in vol or "secret" in vol:
                kind, ref = ("ConfigMap", vol["configMap"]) if "configMap" in vol else ("Secret", vol["secret"])
                src = self.workdir / name / mount["name"]
                self._files(kind, ref.get("name") or ref.get("secretName"), ns, ref.get("items"), src)
                args += ["--volume", f"{src}:{path}:ro"]
            else:
                raise AssertionError(f"{name}: volume type of {vol} not supported by the runner")
        command = container.get("command") or []
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(image)
        args += container.get("args") or []
        return name, args

    @staticmethod
    def container(workload: dict[str, Any], name: str | None) -> dict[str, Any]:
        containers = pod_spec(workload)["containers"]
        return next(c for c in containers if c["name"] == name) if name else containers[0]

    def start(self, workload: dict[str, Any], image: str, container: str | None = None) -> str:
        name, args = self.podman_args(workload, image, container)
        podman("rm", "--force", name, check=False)
        podman(*args)
        self.started.append(name)
        return name

    def logs(self, name: str) -> str:
        proc = podman("logs", "--tail", "40", name, check=False)
        return proc.stdout + proc.stderr

    def probe(self, name: str, container: dict[str, Any], probe: dict[str, Any]) -> bool:
        """Run one of the chart's probes against the container, as the kubelet would."""
        timeout = probe.get("timeoutSeconds", 1)

        def port_number(port):
            for p in container.get("ports") or []:
                if port in (p.get("name"), p["containerPort"]):
                    return p["containerPort"]
            raise AssertionError(f"probe port {port} not a container port")

        try:
            if "httpGet" in probe:
                url = f"http://127.0.0.1:{port_number(probe['httpGet']['port'])}{probe['httpGet'].get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe:
                with socket.create_connection(("127.0.0.1", port_number(probe["tcpSocket"]["port"])), timeout):
                    return True
            if "exec" in probe:
                proc = podman("exec", name, *probe["exec"]["command"], check=False, timeout=timeout + 10)
                return proc.returncode == 0
        except OSError:
            return False
        raise AssertionError(f"unknown probe {probe}")

    def wait_ready(
        self, name: str, workload: dict[str, Any], timeout: float = 60, container: str | None = None
    ) -> None:
        """The startup probe, then the readiness probe, each until it passes (of ``container``, default the first)."""
        container = self.container(workload, container)
        deadline = time.monotonic() + timeout
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            while not self.probe(name, container, probe):
                state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
                if state not in ("running", "created", "configured"):
                    raise AssertionError(f"{name} exited ({state}):\n{self.logs(name)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name}: {kind} did not pass in {timeout:.0f} s:\n{self.logs(name)}")
                time.sleep(0.5)

    def stop_all(self) -> None:
        for name in reversed(self.started):
            podman("stop", "--time", "15", name, check=False, timeout=60)
            podman("rm", "--force", name, check=False)
        self.started.clear()
