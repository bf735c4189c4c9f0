"""The container images, built and run the way CI and the chart run them (``pytest -m images``).

Builds the local base, both images and a test-only Redis image with podman (the scripts beside this
file), then runs Redis, the generator, a worker and the exporter as containers: host network with
every port bound to 127.0.0.1 (never a bridge network), read-only root filesystem, user 10001,
only /tmp writable (a tmpfs, as the chart's emptyDir), all capabilities dropped. The seed's curl
flow goes through them. Containers, images and the storage are removed at the end.

Env: TQ_IMAGES_SKIP_BUILD=1 uses images already built by build-base.sh and build.sh (tests/images/ci.sh
does that); TQ_IMAGES_KEEP=1 keeps images and storage for a rerun; the rest as in lib.sh.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support import free_port

HERE = Path(__file__).resolve().parent
APP_USER = "10001:10001"
SEED_RESULT = "Processed message generating task with delay: 1 after 1 seconds"
TEST_LABEL = "taskqueue-image-test"
REDIS_IMAGE = "localhost/taskqueue-test-redis:ci"

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not installed (apt-get install podman buildah runc debootstrap); CI installs it",
    ),
]


def podman(*args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None):
    """podman on the tests' own storage (tests/images/podman.sh)."""
    return subprocess.run(
        [str(HERE / "podman.sh"), *args],
        capture_output=True, text=True, check=check, timeout=timeout, env=env,
    )  # fmt: skip


def lib_setting(name: str) -> str:
    """A setting as lib.sh computes it (defaults plus the environment), so scripts and test agree."""
    out = subprocess.run(
        ["bash", "-c", f'source "{HERE}/lib.sh" && printf %s "${name}"'],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def run_script(name: str, timeout: float) -> None:
    started = time.monotonic()
    proc = subprocess.run(["bash", str(HERE / name)], capture_output=True, text=True, timeout=timeout)
    print(f"{name}: {time.monotonic() - started:.0f} s\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}{proc.stderr}"


@dataclass
class Images:
    generator: str
    worker: str
    base: str
    redis: str = REDIS_IMAGE


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    prefix, tag = lib_setting("TQ_IMAGE_PREFIX"), lib_setting("TQ_IMAGE_TAG")
    imgs = Images(generator=f"{prefix}-generator:{tag}", worker=f"{prefix}-worker:{tag}",
                  base=lib_setting("TQ_BASE_IMAGE"))  # fmt: skip
    try:
        if os.environ.get("TQ_IMAGES_SKIP_BUILD") != "1":
            run_script("build-base.sh", timeout=420)
            run_script("build.sh", timeout=420)
        build_test_redis(imgs.base)
        yield imgs
    finally:
        podman("rm", "--force", "--time", "0", "--filter", f"label={TEST_LABEL}", check=False)
        if os.environ.get("TQ_IMAGES_KEEP") != "1":
            run_script("cleanup.sh", timeout=300)


def build_test_redis(base: str) -> None:
    """Debian's redis-server on the same base (no registry, so no official redis image, in CI)."""
    if podman("image", "exists", REDIS_IMAGE, check=False).returncode == 0:
        return
    proc = podman(
        "build", "--file", str(HERE / "redis.Containerfile"), "--build-arg", f"BASE_IMAGE={base}",
        "--isolation", "chroot", "--network", "host", "--ulimit", "nofile=1024:1024",
        "--ulimit", "nproc=4096:4096", "--layers=false", "--pull-never", "--tag", REDIS_IMAGE, str(HERE),
        check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"building the test Redis image failed:\n{proc.stdout}{proc.stderr}"


@dataclass
class Container:
    """One detached container, run with the restrictions the chart applies."""

    name: str
    image: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = None
    mounts: list[str] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=lambda: ["/tmp"])
    url: str = ""  # where its HTTP port answers, if it has one

    def start(self) -> Container:
        opts = [
            "--detach", "--name", self.name, "--label", TEST_LABEL,
            # Host network, and every service binds 127.0.0.1 (set in its env below).
            "--network", "host",
            # Read-only root; podman would add tmpfs on /run, /var/tmp too unless told not to.
            "--read-only", "--read-only-tmpfs=false",
            "--user", APP_USER, "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            "--pull", "never",
        ]  # fmt: skip
        for path in self.tmpfs:
            opts += ["--tmpfs", f"{path}:rw,nosuid,nodev,size=64m,mode=1777"]
        for mount in self.mounts:
            opts += ["--volume", mount]
        # Values stay off podman's command line: `--env NAME` copies NAME from podman's environment.
        for key in self.env:
            opts += ["--env", key]
        if self.entrypoint:
            opts += ["--entrypoint", self.entrypoint]
        podman("run", *opts, self.image, *self.args, env={**os.environ, **self.env})
        return self

    def inspect(self, fmt: str) -> str:
        return podman("inspect", "--format", fmt, self.name).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Status}}") == "running"

    def logs(self) -> str:
        proc = podman("logs", "--tail", "80", self.name, check=False)
        return proc.stdout + proc.stderr

    def describe(self) -> str:
        state = self.inspect("{{.State.Status}} exit={{.State.ExitCode}} restarts={{.RestartCount}}")
        return f"--- {self.name} ({self.image}): {state}\n{self.logs()}"


@dataclass
class Stack:
    redis: Container
    generator: Container
    worker: Container
    exporter: Container
    worker_metrics: str
    exporter_metrics: str

    @property
    def containers(self) -> list[Container]:
        return [self.redis, self.generator, self.worker, self.exporter]

    def diagnostics(self) -> str:
        return "\n".join(c.describe() for c in self.containers)

    def exited(self) -> list[str]:
        """Names of this stack's containers that are not running (one podman call)."""
        names = [c.name for c in self.containers]
        out = podman("container", "inspect", "--format", "{{.Name}} {{.State.Status}}", *names, check=False).stdout
        states = dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())
        return [c.name for c in self.containers if states.get(c.name) != "running"]

    def wait(self, check, what: str, timeout: float = 30):
        """Poll ``check`` until it returns something truthy; fail at once if a container has exited."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = check()  # first, so a short-lived state is not missed while podman answers
                if value:
                    return value
            except (requests.RequestException, ValueError, KeyError) as exc:  # not up yet
                last_exc = exc
            if gone := self.exited():
                raise AssertionError(f"{', '.join(gone)} exited while waiting for {what}\n{self.diagnostics()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last_exc!r})\n{self.diagnostics()}")


def http_ok(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


@pytest.fixture(scope="module")
def stack(images: Images, tmp_path_factory) -> Iterator[Stack]:
    run_id = secrets.token_hex(3)
    password = secrets.token_hex(16)
    redis_port, http_port = free_port(), free_port()
    gen_metrics, worker_metrics, exporter_metrics = free_port(), free_port(), free_port()

    # Redis reads its password from a file, not from its command line (visible in ps).
    conf_dir = tmp_path_factory.mktemp("redis-conf")
    conf = conf_dir / "redis.conf"
    conf.write_text(
        f"port {redis_port}\nbind 127.0.0.1\nrequirepass {password}\ndir /data\n"
        'appendonly yes\nappendfsync everysec\nsave ""\n'
    )
    conf.chmod(0o644)  # read by uid 10001 in the container

    app_env = {
        "TASKQUEUE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TASKQUEUE_REDIS_PASSWORD": password,
        "TASKQUEUE_METRICS_HOST": "127.0.0.1",
        "TASKQUEUE_LOG_FORMAT": "json",
    }
    s = Stack(
        redis=Container(f"tq-it-redis-{run_id}", images.redis, args=["/etc/taskqueue-test/redis.conf"],
                        mounts=[f"{conf}:/etc/taskqueue-test/redis.conf:ro"], tmpfs=["/data"]),
        generator=Container(f"tq-it-generator-{run_id}", images.generator, url=f"http://127.0.0.1:{http_port}",
                            env={**app_env, "TASKQUEUE_HTTP_HOST": "127.0.0.1", "TASKQUEUE_HTTP_PORT": str(http_port),
                                 "TASKQUEUE_METRICS_PORT": str(gen_metrics), "TASKQUEUE_WEB_WORKERS": "2"}),
        worker=Container(f"tq-it-worker-{run_id}", images.worker,
                         env={**app_env, "TASKQUEUE_METRICS_PORT": str(worker_metrics)}),
        # The exporter has no image of its own: the generator image with another command, as in the chart.
        exporter=Container(f"tq-it-exporter-{run_id}", images.generator, entrypoint="taskqueue-exporter",
                           env={**app_env, "TASKQUEUE_METRICS_PORT": str(exporter_metrics)}),
        worker_metrics=f"http://127.0.0.1:{worker_metrics}",
        exporter_metrics=f"http://127.0.0.1:{exporter_metrics}",
    )  # fmt: skip
    try:
        for c in s.containers:
            c.start()
        s.wait(lambda: http_ok(s.generator.url + "/healthz"), "generator /healthz")
        s.wait(lambda: http_ok(s.generator.url + "/readyz"), "generator /readyz (Redis reachable)")
        s.wait(lambda: http_ok(s.worker_metrics + "/metrics"), "worker metrics")
        s.wait(lambda: http_ok(s.exporter_metrics + "/metrics"), "exporter metrics")
        yield s
    finally:
        print(s.diagnostics())
        podman("rm", "--force", "--time", "0", *(c.name for c in s.containers), check=False)


def test_images_declare_non_root_user_and_entry_points(images: Images):
    for image, entrypoint, ports in (
        (images.generator, "/opt/taskqueue/bin/taskqueue-generator", {"8000/tcp", "9100/tcp", "9300/tcp"}),
        (images.worker, "/opt/taskqueue/bin/taskqueue-worker", {"9200/tcp"}),
    ):
        fmt = "{{.Config.User}}|{{json .Config.Entrypoint}}|{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}"
        out = podman("image", "inspect", "--format", fmt, image).stdout.strip()
        user, ep, exposed = out.split("|")
        # The image itself is non-root (numeric, so Kubernetes' runAsNonRoot can check it).
        assert user == APP_USER, f"{image} runs as {user!r}"
        assert ep == f'["{entrypoint}"]'
        assert set(exposed.split()) == ports


def test_runtime_images_hold_no_compiler_and_no_pip(images: Images):
    for image in (images.generator, images.worker):
        proc = podman("run", "--rm", "--network", "none", "--read-only", "--user", APP_USER, "--pull", "never",
                      "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--entrypoint", "sh", image,
                      "-c", "for t in gcc cc c++ make pip pip3; do command -v $t; done; "
                            "python3 -c 'import importlib.util as u; print(u.find_spec(\"pip\"))'")  # fmt: skip
        assert proc.stdout.split() == ["None"], f"{image} holds build tools: {proc.stdout}"


def test_seed_flow_through_the_containers(stack: Stack):
    base = stack.generator.url
    r = requests.get(base + "/start", params={"delay": 1}, timeout=5)
    assert r.status_code == 200, r.text
    job_id = r.json()["jobId"]
    # /list shows the running jobs (the seed's "running job ids"): the 1-second job appears there.
    stack.wait(lambda: job_id in requests.get(base + "/list", timeout=5).json()["jobs"], f"job {job_id} in /list")

    def finished():
        doc = requests.get(f"{base}/status/{job_id}", timeout=5).json()
        return doc if doc.get("status") == "finished" else None

    doc = stack.wait(finished, f"job {job_id} to finish", timeout=30)
    assert doc["result"] == SEED_RESULT
    assert requests.get(base + "/list", timeout=5).json()["jobs"] == []


def test_exporter_runs_from_the_generator_image(stack: Stack):
    text = stack.wait(lambda: requests.get(stack.exporter_metrics + "/metrics", timeout=2).text, "exporter metrics")
    assert "taskqueue_" in text


def test_every_process_is_non_root(stack: Stack):
    for c in stack.containers:
        assert c.inspect("{{.Config.User}}") == APP_USER
        # Host view of every process in the container: uid 10001, no user namespace remapping hides root.
        rows = podman("top", c.name, "hpid", "huser", "user").stdout.strip().splitlines()[1:]
        assert rows, f"no processes in {c.name}"
        for row in rows:
            hpid, huser, user = row.split()
            assert huser == "10001" and user != "root", f"{c.name}: {row}"
            status = Path(f"/proc/{hpid}/status").read_text()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
            assert set(uids) == {"10001"}, f"{c.name} pid {hpid} uids {uids}"


def test_root_filesystem_is_read_only_and_only_tmp_is_writable(stack: Stack):
    for c in stack.containers:
        assert c.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
        writable = c.tmpfs[0]
        probe = (
            "for d in / /opt/taskqueue /etc /run /var/tmp /home; do "
            '(: > "$d/.tq-probe") 2>/dev/null && echo "writable $d"; done; '
            f'(: > "{writable}/.tq-probe") && echo "ok {writable}"'
        )
        out = podman("exec", c.name, "sh", "-c", probe).stdout.split("\n")
        assert [line for line in out if line] == [f"ok {writable}"], f"{c.name}: {out}"


def test_containers_stayed_up_and_stop_cleanly(stack: Stack):
    for c in stack.containers:
        assert c.running(), c.describe()
        assert c.inspect("{{.RestartCount}}") == "0", c.describe()
    # SIGTERM: gunicorn stops gracefully, the worker does a warm shutdown; both exit 0 within the grace.
    for c in (stack.generator, stack.worker, stack.exporter):
        podman("stop", "--time", "25", c.name, timeout=60)
        assert c.inspect("{{.State.ExitCode}}") == "0", c.describe()
