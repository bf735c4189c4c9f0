"""The chart's sentinel mode as its pods run it: the rendered start.sh (``redis`` and ``sentinel``) with the rendered
redis.conf, users.acl and each container's env, three Redis and three Sentinels, on 127.0.0.1 with ports of their
own (only the hosts and ports differ from the pods': ANNOUNCE_HOST, the ports, SENTINELS, FIRST_PRIMARY, BIND).

A first start makes the first pod the primary and the others its replicas, in sync; a pod lost (its Redis and its
Sentinel SIGKILLed, as when its node goes) is replaced by a replica within down-after-milliseconds and a few
seconds; the lost pod started again asks the Sentinels and comes back as a replica of the new primary, its Sentinel
taking its old place (not counted twice: a Sentinel that counts a dead peer needs more votes to lead a failover);
and the three fail over once more. The ACL users replica and sentinel do all of it (ACL LOG stays empty).
tests/test_failover.py runs the apps through a failover.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from taskqueue import local
from tests.chart.rendering import CASES, by_kind, objects, one
from tests.support import free_port, kill_tree, wait_for

CASE = CASES["redis-sentinel"]
# Measured here: 6.1-6.4 s from the SIGKILL to the Sentinels naming a new primary with down-after-milliseconds 5000
# (the rest: the Sentinels agreeing it is down, electing a leader, the replica's promotion seen by INFO, ~1 s each).
FAILOVER_MARGIN = 5.0


class Pod:
    """One Redis pod: its redis and sentinel containers as processes, its volumes as folders."""

    def __init__(self, root: Path, index: int, env: dict[str, dict[str, str]]):
        self.index, self.root, self.env = index, root, env
        self.port, self.sentinel_port = free_port(), free_port()
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
            # In the foreground: start.sh execs redis-server, so this process is the container's.
            self.procs[container] = subprocess.Popen(
                ["sh", str(conf / "start.sh"), container], env=env, stdout=out, stderr=out
            )

    def log(self, container: str) -> str:
        return (self.root / f"{container}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL both containers (and any child of Redis's), as when the pod's node is lost."""
        for proc in self.procs.values():
            kill_tree(proc.pid)
            proc.wait()
        self.procs.clear()


class Cluster:
    """The three pods, their files as the ConfigMap and the Secret give them, and clients to each."""

    def __init__(self, root: Path):
        objs = objects(CASE)
        config = one(objs, "ConfigMap", component="redis")["data"]
        secret = next(s for s in by_kind(objs, "Secret") if s["metadata"]["name"].endswith("-redis"))
        sts = next(s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"].endswith("-redis"))
        containers = sts["spec"]["template"]["spec"]["containers"]
        env = {c["name"]: {e["name"]: e["value"] for e in c["env"] if "value" in e} for c in containers}
        self.master = env["sentinel"]["MASTER_NAME"]
        self.down_after = int(env["sentinel"]["DOWN_AFTER_MS"]) / 1000
        self.conf, self.auth = root / "conf", root / "auth"
        self.conf.mkdir()
        self.auth.mkdir()
        for name in ("users.acl", "start.sh"):
            (self.conf / name).write_text(config[name])
        (self.conf / "redis.conf").write_text(config["redis.conf"] + "acllog-max-len 1000\n")
        self.passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        for key, value in self.passwords.items():
            (self.auth / key).write_text(value)  # as kubelet writes a Secret's key
        self.pods = [Pod(root / f"pod{i}", i, env) for i in range(3)]
        self.sentinels = " ".join(f"127.0.0.1:{p.sentinel_port}" for p in self.pods)

    def start(self, pod: Pod, container: str) -> None:
        pod.start(container, self.conf, self.auth, self.sentinels, f"127.0.0.1:{self.pods[0].port}")

    def admin(self, pod: Pod) -> redis.Redis:
        return redis.Redis(port=pod.port, username="admin", password=self.passwords["admin-password"], socket_timeout=2)

    def sentinel(self, pod: Pod) -> redis.Redis:
        return redis.Redis(port=pod.sentinel_port, password=self.passwords["sentinel-requirepass"], socket_timeout=2)

    def named_primary(self, live: list[Pod]) -> Pod | None:
        """The pod every live Sentinel names as the primary, if they agree."""
        ports = set()
        for pod in live:
            answer = self.sentinel(pod).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
            if not answer:
                return None
            ports.add(int(answer[1]))
        return next((p for p in self.pods if {p.port} == ports), None)

    def settled(self, primary: Pod) -> bool:
        """Every Sentinel names ``primary`` and knows two replicas and two other Sentinels (no dead one counted);
        the primary has two replicas online, and each replica's ROLE is connected to it."""
        if self.named_primary(self.pods) is not primary:
            return False
        for pod in self.pods:
            state = self.sentinel(pod).sentinel_master(self.master)
            if (state["num-slaves"], state["num-other-sentinels"]) != (2, 2):
                return False
        info = self.admin(primary).info("replication")
        online = [info.get(f"slave{i}", {}).get("state") == "online" for i in range(2)]
        if (info["role"], info["connected_slaves"]) != ("master", 2) or not all(online):
            return False
        for pod in self.pods:
            if pod is not primary:
                role = self.admin(pod).execute_command("ROLE")
                if [role[0], int(role[2]), role[3]] != [b"slave", primary.port, b"connected"]:
                    return False
        return True

    def replicas_in_sync(self, primary: Pod) -> bool:
        """WAIT: both replicas acknowledged every write so far, at the primary's offset."""
        if self.admin(primary).execute_command("WAIT", 2, 2000) != 2:
            return False
        offset = self.admin(primary).info("replication")["master_repl_offset"]
        return all(self.admin(p).info("replication")["slave_repl_offset"] == offset
                   for p in self.pods if p is not primary)  # fmt: skip

    def fail_over(self, lost: Pod) -> tuple[Pod, float]:
        """SIGKILL the pod ``lost`` (the primary's): the Sentinels left name another pod; how long it took."""
        lost.kill()
        started = time.monotonic()
        live = [p for p in self.pods if p is not lost]
        heir = wait_for(
            lambda: (p := self.named_primary(live)) in live and p,
            timeout=self.down_after + FAILOVER_MARGIN,
            interval=0.05,
            what=f"a replica promoted within down-after-milliseconds + {FAILOVER_MARGIN:.0f} s",
        )
        return heir, time.monotonic() - started

    def kill_all(self) -> None:
        for pod in self.pods:
            pod.kill()


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.kill_all()


def wait(check: Callable[[], object], what: str, timeout: float = 30) -> object:
    return wait_for(check, timeout=timeout, interval=0.05, what=what)


def test_the_pods_start_as_a_primary_and_replicas_fail_over_and_the_lost_one_rejoins(cluster):
    c = cluster
    for pod in c.pods:  # in order, as the StatefulSet starts them (OrderedReady)
        c.start(pod, "redis")
        wait(lambda p=pod: c.admin(p).ping(), f"redis of pod {pod.index}", timeout=15)
        c.start(pod, "sentinel")
        wait(lambda p=pod: c.sentinel(p).ping(), f"sentinel of pod {pod.index}", timeout=15)
    first = c.pods[0]
    assert "starts as primary" in first.log("redis")
    assert all(f"replica of 127.0.0.1:{first.port}" in p.log("redis") for p in c.pods[1:])
    wait(lambda: c.settled(first), "one primary, two replicas, three sentinels agreeing")
    c.admin(first).set("rq:marker", "before the failover")
    assert c.replicas_in_sync(first)

    heir, took = c.fail_over(first)  # the primary's pod lost: its Redis and its Sentinel
    print(f"first failover: a new primary named {took:.2f} s after the kill")
    assert c.admin(heir).get("rq:marker") == b"before the failover"
    assert c.admin(heir).execute_command("ROLE")[0] == b"master"

    # The lost pod back: its start script asks the Sentinels, so its Redis replicates the new primary, and its
    # Sentinel watches that one and takes its own place among the others.
    c.start(first, "sentinel")
    c.start(first, "redis")
    wait(lambda: c.settled(heir), "the lost pod back as a replica, three sentinels")
    assert f"replica of 127.0.0.1:{heir.port}" in first.log("redis")
    assert f"sentinel watching 127.0.0.1:{heir.port}" in first.log("sentinel")
    c.admin(heir).set("rq:marker", "after the failover")
    assert c.replicas_in_sync(heir)
    assert c.admin(first).get("rq:marker") == b"after the failover"

    # And once more: the restarted pod is a full member (a replica to promote, a Sentinel to vote).
    second, took = c.fail_over(heir)
    print(f"second failover: a new primary named {took:.2f} s after the kill")
    assert c.admin(second).get("rq:marker") == b"after the failover"
    c.start(heir, "sentinel")
    c.start(heir, "redis")
    wait(lambda: c.settled(second), "the second lost pod back as a replica")
    for pod in c.pods:  # the users replica and sentinel had every command they sent
        assert c.admin(pod).acl_log() == [], pod.index
