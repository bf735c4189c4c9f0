"""The chart's sentinel mode as its pods run it: the rendered start.sh (``redis`` and ``sentinel``) with the rendered
redis.conf, users.acl and each container's env, three Redis and three Sentinels, on 127.0.0.1 with ports of their
own (only the hosts and ports differ from the pods': ANNOUNCE_HOST, the ports, SENTINELS, FIRST_PRIMARY, BIND).

A first start makes the first pod the primary and the others its replicas; a primary lost is replaced by a replica;
the lost pod's Redis started again asks the Sentinels and comes back as a replica of the new primary. The ACL users
replica and sentinel do all of it (ACL LOG stays empty). tests/test_failover.py runs the apps through a failover.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from taskqueue import local
from tests.chart.rendering import CASES, by_kind, objects, one
from tests.support import free_port, wait_for

CASE = CASES["redis-sentinel"]


class Pod:
    """One Redis pod: its redis and sentinel containers as processes, its volumes as folders."""

    def __init__(self, root: Path, index: int, files: dict[str, str], env: dict[str, dict[str, str]]):
        self.index, self.root = index, root
        self.port, self.sentinel_port = free_port(), free_port()
        self.files, self.env = files, env
        self.procs: dict[str, subprocess.Popen] = {}
        for d in ("run", "data", "sentinel"):
            (root / d).mkdir(parents=True, exist_ok=True)

    def start(self, container: str, conf: Path, auth: Path, sentinels: str, first_primary: str) -> None:
        server = local.find_redis_server()
        env = {
            **self.env[container],
            "PATH": f"{Path(server).parent}:{os.environ['PATH']}",
            "REDIS_CONF_DIR": str(conf),
            "REDIS_AUTH_DIR": str(auth),
            "REDIS_RUN_DIR": str(self.root / "run"),
            "REDIS_DATA_DIR": str(self.root / "data"),
            "SENTINEL_DIR": str(self.root / "sentinel"),
            "ANNOUNCE_HOST": "127.0.0.1",
            "REDIS_PORT": str(self.port),
            "SENTINEL_PORT": str(self.sentinel_port),
            "SENTINELS": sentinels,
            "FIRST_PRIMARY": first_primary,
            "BIND": "127.0.0.1",
        }
        with open(self.root / f"{container}.log", "ab") as out:
            self.procs[container] = subprocess.Popen(
                ["sh", str(conf / "start.sh"), container], env=env, stdout=out, stderr=out
            )

    def log(self, container: str) -> str:
        return (self.root / f"{container}.log").read_text(errors="replace")

    def kill(self, container: str) -> None:
        proc = self.procs.pop(container)
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture
def pods(tmp_path):
    objs = objects(CASE)
    config = one(objs, "ConfigMap", component="redis")["data"]
    secret = by_kind(objs, "Secret")
    secret = next(s for s in secret if s["metadata"]["name"].endswith("-redis"))
    sts = next(s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"].endswith("-redis"))
    env = {
        c["name"]: {e["name"]: e["value"] for e in c["env"] if "value" in e}
        for c in sts["spec"]["template"]["spec"]["containers"]
    }
    conf, auth = tmp_path / "conf", tmp_path / "auth"
    conf.mkdir()
    auth.mkdir()
    for name in ("redis.conf", "users.acl", "start.sh"):
        (conf / name).write_text(config[name])
    (conf / "redis.conf").write_text(config["redis.conf"] + "acllog-max-len 1000\n")
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for key, value in passwords.items():
        (auth / key).write_text(value)  # as kubelet writes a Secret's key
    made = [Pod(tmp_path / f"pod{i}", i, config, env) for i in range(3)]
    sentinels = " ".join(f"127.0.0.1:{p.sentinel_port}" for p in made)
    first = f"127.0.0.1:{made[0].port}"

    def start(pod: Pod, container: str) -> None:
        pod.start(container, conf, auth, sentinels, first)

    yield made, start, passwords, env
    for pod in made:
        for proc in pod.procs.values():
            proc.kill()
            proc.wait()


def admin(pod: Pod, passwords: dict[str, str]) -> redis.Redis:
    return redis.Redis(port=pod.port, username="admin", password=passwords["admin-password"], socket_timeout=2)


def sentinel(pod: Pod, passwords: dict[str, str]) -> redis.Redis:
    return redis.Redis(port=pod.sentinel_port, password=passwords["sentinel-requirepass"], socket_timeout=2)


def named_primary(pods: list[Pod], passwords: dict[str, str], master: str, live: list[Pod]) -> int | None:
    """The port every live Sentinel names as the primary's, if they agree."""
    ports = set()
    for pod in live:
        answer = sentinel(pod, passwords).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
        if not answer:
            return None
        ports.add(int(answer[1]))
    return ports.pop() if len(ports) == 1 else None


def test_the_pods_start_as_a_primary_and_replicas_fail_over_and_the_lost_one_rejoins(pods):
    made, start, passwords, env = pods
    master = env["sentinel"]["MASTER_NAME"]
    for pod in made:  # in order, as the StatefulSet starts them (OrderedReady)
        start(pod, "redis")
        wait_for(lambda p=pod: admin(p, passwords).ping(), timeout=15, what=f"redis of pod {pod.index}")
        start(pod, "sentinel")
        wait_for(lambda p=pod: sentinel(p, passwords).ping(), timeout=15, what=f"sentinel of pod {pod.index}")
    assert "starts as primary" in made[0].log("redis")
    assert all(f"replica of 127.0.0.1:{made[0].port}" in p.log("redis") for p in made[1:])

    def settled(primary: Pod) -> bool:
        if named_primary(made, passwords, master, made) != primary.port:
            return False
        for pod in made:
            state = sentinel(pod, passwords).sentinel_master(master)
            if state["num-slaves"] != 2 or state["num-other-sentinels"] != 2:
                return False
        info = admin(primary, passwords).info("replication")
        online = [info.get(f"slave{i}", {}).get("state") == "online" for i in range(2)]
        return info["role"] == "master" and info["connected_slaves"] == 2 and all(online)

    wait_for(lambda: settled(made[0]), timeout=30, interval=0.1, what="one primary, two replicas, three sentinels")
    admin(made[0], passwords).set("rq:marker", "before the failover")

    made[0].kill("redis")  # the primary's Redis lost; its Sentinel stays
    down_after = int(env["sentinel"]["DOWN_AFTER_MS"]) / 1000
    live_ports = {p.port for p in made[1:]}
    heir_port = wait_for(
        lambda: (n := named_primary(made, passwords, master, made)) in live_ports and n,
        timeout=down_after + 20,
        interval=0.1,
        what="a replica promoted",
    )
    heir = next(p for p in made if p.port == heir_port)
    assert admin(heir, passwords).get("rq:marker") == b"before the failover"

    start(made[0], "redis")  # its start script asks the Sentinels: a replica of the new primary
    wait_for(lambda: settled(heir), timeout=30, interval=0.1, what="the lost pod back as a replica")
    assert f"replica of 127.0.0.1:{heir.port}" in made[0].log("redis")
    wait_for(lambda: admin(made[0], passwords).info("replication")["master_link_status"] == "up", what="its link up")
    assert admin(made[0], passwords).get("rq:marker") == b"before the failover"
    for pod in made:  # the users replica and sentinel had every command they sent
        assert admin(pod, passwords).acl_log() == [], pod.index
