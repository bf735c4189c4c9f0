"""The chart's sentinel-mode Redis pod runs as rendered: its ``redis`` and ``sentinel`` containers start with podman
from one Redis image, with exactly the rendered command, env (Secret, fieldRef and $(POD_NAME) resolved),
securityContext (uid 10001, read-only root, no capabilities) and volumes; the chart's probes pass; the first pod of
a fresh install is the primary, and its Sentinel watches it by the pod's DNS name, logged in as the ACL user
sentinel, and asks clients for its own password.

The image: TQ_REDIS_IMAGE, else the chart's (redis.image) when it is in the local store, else the test Redis image of
tests/images (Debian's redis-server on the local base: no registry, so no docker.io image, can be reached in CI),
built here when the base is there. Host network: the pod's DNS name -> 127.0.0.1 (``--add-host``); the other two
pods' names resolve to nothing, as before the StatefulSet makes them.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest
import redis

from tests.chart import podrun
from tests.chart.rendering import Case, by_kind, objects, pod_name, pod_spec, resolve_env

pytestmark = pytest.mark.images


def redis_image(chart_image: str) -> str:
    if os.environ.get("TQ_REDIS_IMAGE"):
        return os.environ["TQ_REDIS_IMAGE"]
    if podrun.image_exists(chart_image):
        return chart_image
    from tests.images import test_images

    if not podrun.image_exists(test_images.REDIS_IMAGE):
        base = test_images.lib_setting("TQ_BASE_IMAGE")
        if not podrun.image_exists(base):
            pytest.skip(f"no {chart_image} nor {base} in the local store (bash tests/images/build-base.sh)")
        test_images.build_test_redis(base)
    return test_images.REDIS_IMAGE


@pytest.fixture
def case():
    """Sentinel mode on free loopback ports (several test runs may share this machine)."""
    values = {"redis": {"mode": "sentinel", "port": podrun.free_port(), "sentinel": {"port": podrun.free_port()}}}
    c = Case(f"podman-sentinel-{values['redis']['port']}", values)
    from tests.chart import rendering

    rendering.CASES[c.name] = c
    yield c
    rendering.CASES.pop(c.name, None)


def test_the_sentinel_mode_redis_pod_runs_its_two_containers_as_rendered(case, tmp_path):
    if shutil.which("podman") is None:
        pytest.fail("podman is needed (apt-get install podman)")
    objs = objects(case)
    sts = next(s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"].endswith("-redis"))
    spec = pod_spec(sts)
    containers = {c["name"]: c for c in spec["containers"]}
    assert list(containers) == ["redis", "sentinel"]
    assert containers["redis"]["image"] == containers["sentinel"]["image"]
    image = redis_image(containers["redis"]["image"])
    env = {name: resolve_env(sts, c, objs) for name, c in containers.items()}
    host = env["sentinel"]["ANNOUNCE_HOST"]
    assert host.startswith(f"{pod_name(sts)}.") and host == env["redis"]["ANNOUNCE_HOST"]
    assert env["sentinel"]["FIRST_PRIMARY"] == f"{host}:{case.values['redis']['port']}"
    secret = next(s for s in by_kind(objs, "Secret") if s["metadata"]["name"] == sts["metadata"]["name"])
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert env["redis"]["REDISCLI_AUTH"] == passwords["admin-password"]
    runner = podrun.PodRunner(objs, tmp_path, {host: "127.0.0.1"}, name_prefix=f"tq-chart-{os.getpid()}")
    try:
        started = {}
        for name in ("redis", "sentinel"):  # kubelet starts a pod's containers in order
            started[name] = runner.start(sts, image, container=name)
        for name in ("redis", "sentinel"):
            runner.wait_ready(started[name], sts, container=name)
        admin = redis.Redis(port=case.values["redis"]["port"], username="admin", password=passwords["admin-password"],
                            socket_timeout=5)  # fmt: skip
        sentinel_port = case.values["redis"]["sentinel"]["port"]
        sentinel = redis.Redis(port=sentinel_port, password=passwords["sentinel-requirepass"], socket_timeout=5)

        # A fresh install: no Sentinel answered, so the first pod is the primary, and its Sentinel watches it.
        assert "starts as primary" in runner.logs(started["redis"]), runner.logs(started["redis"])
        assert admin.execute_command("ROLE")[0] == b"master"
        master = env["sentinel"]["MASTER_NAME"]
        assert sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master) == [
            host.encode(),
            str(case.values["redis"]["port"]).encode(),
        ]
        with pytest.raises(redis.AuthenticationError):  # the Sentinel asks for its password
            redis.Redis(port=sentinel_port, socket_timeout=5).execute_command("SENTINEL", "MASTERS")
        # The rendered redis.conf is Redis's: a primary without a replica refuses writes (min-replicas-to-write 1).
        with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
            admin.set("rq:probe", "1")
        # Sentinel logged in as its own ACL user, and had every command it sent.
        users = {f.split("=", 1)[1] for line in admin.execute_command("CLIENT", "LIST").decode().splitlines()
                 for f in line.split() if f.startswith("user=")}  # fmt: skip
        assert "sentinel" in users, users
        assert admin.acl_log() == []
        # Sentinel rewrote its config (myid, what it learned) on its emptyDir: the root filesystem is read-only.
        sentinel_conf = podrun.podman("exec", started["sentinel"], "cat", "/run/sentinel/sentinel.conf").stdout
        assert "sentinel myid " in sentinel_conf
        for name in started.values():
            assert podrun.podman("exec", name, "id", "-u").stdout.strip() == "10001"
            denied = podrun.podman("exec", name, "sh", "-c", "echo x > /etc/redis-written", check=False)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
    finally:
        runner.stop_all()
