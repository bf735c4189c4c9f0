"""Three redis-servers and three Sentinels on 127.0.0.1, as the chart's sentinel mode runs them (quorum 2, AOF
on each, the chart's ACL users: replicas copy as ``replica``, Sentinel watches as ``sentinel``): for the
failover test (tests/test_failover.py) and bench (bench/failover.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from taskqueue.local import REDIS_USERS, acl_file, acl_users, find_redis_server
from tests.support import REDIS_MEMORY_SHAPE, ROOT, RedisServer, free_port, wait_for

MASTER_NAME = "taskqueue"
# The chart's Sentinel timings (values.yaml, redis.sentinel), which docs/reliability.md measures.
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 60000


class SentinelServer(RedisServer):
    """One Sentinel with a password, watching one Redis (quorum 1); speaking only TLS when given ``certs`` (then
    its own connections to Redis are TLS too)."""

    def __init__(self, primary_port: int, primary_password: str, certs: dict[str, Path] | None = None):
        super().__init__()
        self.primary_port, self.primary_password, self.certs = primary_port, primary_password, certs

    def start(self) -> SentinelServer:
        conf = ["bind 127.0.0.1", f"dir {self.dir}", f"requirepass {self.password}"]
        if not self.certs:
            conf.append(f"port {self.port}")
        else:
            conf += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.certs['cert']}",
                f"tls-key-file {self.certs['key']}",
                f"tls-ca-cert-file {self.certs['ca']}",
                "tls-auth-clients no",
                "tls-replication yes",
            ]
        conf += [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} 1",
            f"sentinel auth-pass {MASTER_NAME} {self.primary_password}",
        ]
        path = self.dir / "sentinel.conf"  # Sentinel rewrites it: its own file
        path.write_text("\n".join(conf) + "\n")
        self.proc = subprocess.Popen(
            [find_redis_server(), str(path), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: self.client().ping(), what=f"sentinel on port {self.port}")
        return self

    def client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.certs["ca"])} if self.certs else {}
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5, **tls)

    def app_env(self, redis_env: dict[str, str]) -> dict[str, str]:
        """``redis_env`` (a RedisServer's), the processes then finding Redis through this Sentinel: the URL keeps
        its scheme, database and credentials, its address (port 1, where nothing listens) is not used."""
        scheme = redis_env["TASKQUEUE_REDIS_URL"].split("://", 1)[0]
        return {
            **redis_env,
            "TASKQUEUE_REDIS_URL": f"{scheme}://127.0.0.1:1/0",
            "TASKQUEUE_REDIS_SENTINELS": f"127.0.0.1:{self.port}",
            "TASKQUEUE_REDIS_SENTINEL_PASSWORD": self.password,
        }


@dataclass
class Node:
    """One redis-server and the Sentinel beside it (as one pod of the chart's StatefulSet)."""

    index: int
    dir: Path
    port: int = field(default_factory=free_port)
    sentinel_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    sentinel: subprocess.Popen | None = None


class SentinelCluster:
    """Node 0 starts as the primary. Replica priorities 10, 50, 100: Sentinel promotes node 1 when node 0 dies,
    and node 0 again (restarted as a replica) when node 1 dies, so two kills fail over and back."""

    PRIORITIES = (10, 50, 100)

    def __init__(
        self, min_replicas_to_write: int = 1, min_replicas_max_lag: int = 10, down_after_ms: int = DOWN_AFTER_MS
    ):
        self.dir = Path(tempfile.mkdtemp(prefix="tq-sentinel-"))
        self.min_replicas_to_write = min_replicas_to_write
        self.min_replicas_max_lag = min_replicas_max_lag
        self.down_after_ms = down_after_ms
        rules = REDIS_USERS.read_text()
        self.passwords = {name: secrets.token_hex(12) for name, _ in acl_users(rules) if name != "default"}
        self.sentinel_password = secrets.token_hex(12)
        (self.dir / "users.acl").write_text(acl_file(rules, self.passwords))
        self.nodes = [Node(i, self.dir / f"node{i}") for i in range(3)]
        for node in self.nodes:
            node.dir.mkdir()

    # -- what the apps get ----------------------------------------------------------------------------

    def env(self, user: str) -> dict[str, str]:
        """A component's settings: the sentinels, the primary's name, its own Redis user."""
        return {
            "TASKQUEUE_REDIS_URL": "redis://ignored-with-sentinels:6379/0",
            "TASKQUEUE_REDIS_SENTINELS": ",".join(f"127.0.0.1:{n.sentinel_port}" for n in self.nodes),
            "TASKQUEUE_REDIS_MASTER_NAME": MASTER_NAME,
            "TASKQUEUE_REDIS_SENTINEL_PASSWORD": self.sentinel_password,
            "TASKQUEUE_REDIS_USERNAME": user,
            "TASKQUEUE_REDIS_PASSWORD": self.passwords[user],
        }

    def app_env(self, user: str, marks: Path) -> dict[str, str]:
        """A process's settings for the failover runs: :meth:`env`, the ``mark`` task, the chart's split of the
        maintenance (the exporter's alone), repairs within seconds."""
        return {
            **self.env(user),
            "PYTHONPATH": str(ROOT),
            "TASKQUEUE_TASK_MODULES": "tests.failover_tasks",
            "TASKQUEUE_TEST_MARKS": str(marks),
            "TASKQUEUE_WORKER_MAINTENANCE": "false",  # as the chart and local mode
            "TASKQUEUE_CLEANUP_INTERVAL": "5",  # the exporter's repairs; the chart's: 15 s
        }

    def admin(self, node: Node) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=node.port, username="admin", password=self.passwords["admin"], socket_timeout=2
        )

    def sentinel_client(self, node: Node) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.sentinel_port, password=self.sentinel_password, socket_timeout=2)

    # -- processes ------------------------------------------------------------------------------------

    def start(self) -> SentinelCluster:
        first = self.nodes[0]
        for node in self.nodes:
            self.start_redis(node, None if node is first else first)
        for node in self.nodes:
            self.start_sentinel(node, first)
        self.wait_settled(first)
        return self

    def start_redis(self, node: Node, primary: Node | None) -> None:
        """Start (or restart, on its AOF) ``node``'s Redis: a replica of ``primary``, or a primary."""
        conf = [
            f"port {node.port}",
            "bind 127.0.0.1",
            f"dir {node.dir}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"aclfile {self.dir / 'users.acl'}",
            "masteruser replica",
            f"masterauth {self.passwords['replica']}",
            f"replica-priority {self.PRIORITIES[node.index]}",
            f"min-replicas-to-write {self.min_replicas_to_write}",
            f"min-replicas-max-lag {self.min_replicas_max_lag}",
            *(f"{REDIS_MEMORY_SHAPE[i][2:]} {REDIS_MEMORY_SHAPE[i + 1]}" for i in range(0, len(REDIS_MEMORY_SHAPE), 2)),
        ]
        if primary is not None:
            conf.append(f"replicaof 127.0.0.1 {primary.port}")
        path = node.dir / "redis.conf"
        path.write_text("\n".join(conf) + "\n")
        log = open(node.dir / "redis.log", "ab")  # noqa: SIM115 (the process holds it)
        node.proc = subprocess.Popen([find_redis_server(), str(path)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.admin(node).ping(), what=f"redis node {node.index}")

    def start_sentinel(self, node: Node, primary: Node) -> None:
        conf = [
            f"port {node.sentinel_port}",
            "bind 127.0.0.1",
            f"dir {node.dir}",
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary.port} 2",
            f"sentinel auth-user {MASTER_NAME} sentinel",
            f"sentinel auth-pass {MASTER_NAME} {self.passwords['sentinel']}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        path = node.dir / "sentinel.conf"  # Sentinel rewrites it: its own file
        path.write_text("\n".join(conf) + "\n")
        log = open(node.dir / "sentinel.log", "ab")  # noqa: SIM115 (the process holds it)
        node.sentinel = subprocess.Popen(
            [find_redis_server(), str(path), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(lambda: self.sentinel_client(node).ping(), what=f"sentinel {node.index}")

    def kill_redis(self, node: Node) -> None:
        """SIGKILL ``node``'s Redis: no goodbye, no AOF flush (its Sentinel lives on: a Redis container lost)."""
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            for proc in (node.sentinel, node.proc):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if not os.environ.get("TQ_KEEP_SENTINEL_CLUSTER"):  # kept for a look at the AOFs, logs and configs
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- state ----------------------------------------------------------------------------------------

    def primary_by_sentinels(self) -> Node | None:
        """The node that every live Sentinel names as the primary, if they agree."""
        ports = set()
        for node in self.nodes:
            if node.sentinel is None:
                continue
            try:
                _, port = self.sentinel_client(node).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except (redis.RedisError, TypeError, ValueError):
                return None
            ports.add(int(port))
        if len(ports) != 1:
            return None
        return next((n for n in self.nodes if n.port in ports), None)

    def in_sync(self, primary: Node, replicas: int) -> bool:
        """``primary`` is a primary with ``replicas`` replicas online, each acknowledging within the last second."""
        info = self.admin(primary).info("replication")
        if info.get("role") != "master" or info.get("connected_slaves") != replicas:
            return False
        return all(info[f"slave{i}"]["state"] == "online" and info[f"slave{i}"]["lag"] <= 1 for i in range(replicas))

    def wait_settled(self, primary: Node, timeout: float = 30) -> None:
        """Every Sentinel names ``primary``, knows its two replicas and the two other Sentinels; replicas in sync."""

        def settled() -> bool:
            if self.primary_by_sentinels() is not primary:
                return False
            for node in self.nodes:
                state = self.sentinel_client(node).sentinel_master(MASTER_NAME)
                if state["num-slaves"] != 2 or state["num-other-sentinels"] != 2:
                    return False
            return self.in_sync(primary, 2)

        wait_for(settled, timeout=timeout, interval=0.1, what=f"sentinels settled on node {primary.index}")

    def wait_promoted(self, node: Node, timeout: float = 30) -> float:
        """Wait until the Sentinels name ``node`` and it is a primary; the monotonic time it was seen."""

        def promoted() -> bool:
            return self.primary_by_sentinels() is node and self.admin(node).info("replication")["role"] == "master"

        wait_for(promoted, timeout=timeout, interval=0.05, what=f"node {node.index} promoted")
        return time.monotonic()

    def where(self, job_id: str, queue: str = "default") -> dict:
        """Where the primary has a job: its hash's state fields, and the queue's lists and registries holding it."""
        primary = self.primary_by_sentinels()
        if primary is None:
            return {"primary": None}
        r = self.admin(primary)
        fields = ("status", "enqueued_at", "started_at", "ended_at", "retries_left", "taskqueue_returns")
        found = dict(zip(fields, r.hmget(f"rq:job:{job_id}", fields), strict=True))
        from rq import Queue
        from rq.registry import (
            CanceledJobRegistry,
            DeferredJobRegistry,
            FailedJobRegistry,
            FinishedJobRegistry,
            ScheduledJobRegistry,
            StartedJobRegistry,
        )

        q = Queue(queue, connection=r)
        found.update({"queue": r.lpos(q.key, job_id) is not None})
        found.update({"intermediate": r.lpos(q.intermediate_queue_key, job_id) is not None})
        for registry in (StartedJobRegistry, ScheduledJobRegistry, FailedJobRegistry, FinishedJobRegistry,
                         DeferredJobRegistry, CanceledJobRegistry):  # fmt: skip
            found[registry.__name__] = r.zscore(registry(queue=q).key, job_id) is not None
        return found

    def acl_log(self, node: Node) -> list[dict]:
        return self.admin(node).acl_log()


# -- the failover scenario: load over HTTP, two kills, then every accepted job accounted for ----------


@dataclass
class Answer:
    at: float  # monotonic time the request was sent
    status: int  # HTTP status; 0: no answer (connection refused, timeout)
    token: str


@dataclass
class FailoverReport:
    """What one run of :func:`run_failover` saw."""

    kills: list[float] = field(default_factory=list)  # monotonic times of the kills
    to_first_2xx: list[float] = field(default_factory=list)  # per kill: seconds from the kill to a 2xx enqueue
    to_promotion: list[float] = field(default_factory=list)  # per kill: seconds until the Sentinels named the new one
    answers: list[Answer] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # tokens of 2xx enqueues
    job_ids: dict[str, str] = field(default_factory=dict)  # token -> the job id its 2xx named
    ended: dict[str, str] = field(default_factory=dict)  # token -> the job's last status (/status)
    never_finished: list[str] = field(default_factory=list)
    finished_twice: dict[str, int] = field(default_factory=dict)  # token -> times run to its end (> 1)
    records_lost: list[str] = field(default_factory=list)  # accepted jobs /status does not know (404)
    given_up: list[str] = field(default_factory=list)  # tokens the client stopped retrying (its deadline)
    restarted: list[str] = field(default_factory=list)  # processes that exited during the run
    acl_refusals: list[dict] = field(default_factory=list)
    traces: dict[str, dict] = field(default_factory=dict)  # a few unfinished jobs: where the primary has them

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in self.answers:
            counts[a.status] = counts.get(a.status, 0) + 1
        return dict(sorted(counts.items()))

    def server_errors_but_503(self) -> list[Answer]:
        return [a for a in self.answers if a.status >= 500 and a.status != 503]

    def summary(self) -> str:
        return "; ".join(
            [
                f"kill -> first 2xx enqueue: {', '.join(f'{s:.1f} s' for s in self.to_first_2xx)}",
                f"kill -> new primary named: {', '.join(f'{s:.1f} s' for s in self.to_promotion)}",
                f"answers {self.statuses()}",
                f"accepted {len(self.accepted)}, never finished {len(self.never_finished)}"
                f" (records lost {len(self.records_lost)}), finished twice {len(self.finished_twice)},"
                f" given up {len(self.given_up)}",
                f"last statuses of those {self.unfinished_statuses()}",
                f"processes restarted {len(self.restarted)}; ACL refusals {len(self.acl_refusals)}",
                f"other answers (status@seconds after the last kill): {self.others()}",
                *([f"unfinished jobs on the primary: {self.traces}"] if self.traces else []),
            ]
        )

    def unfinished_statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for token in self.never_finished:
            status = self.ended.get(token, "unread")
            counts[status] = counts.get(status, 0) + 1
        return counts

    def others(self) -> str:
        def since(t: float) -> str:
            before = [k for k in self.kills if k <= t]
            return f"{t - before[-1]:+.1f}" if before else "before"

        return ", ".join(f"{a.status}@{since(a.at)}" for a in self.answers if not 200 <= a.status < 300)


class EnqueueClient:
    """A client enqueueing ``mark`` jobs over HTTP, one Idempotency-Key a job: it retries a 503 and a 409
    ``idempotency_conflict`` after the answer's Retry-After, and a request that got no answer at once, with the
    same key (as ``Client.enqueue(retry_for=)``)."""

    def __init__(self, base: str, report: FailoverReport, pace: float = 0.02, job_seconds: float = 0.05):
        import threading

        self.base, self.report, self.pace, self.job_seconds = base, report, pace, job_seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="enqueue-client", daemon=True)
        self.deadline = 0.0  # stop retrying a token after this (monotonic); set by stop()

    def start(self) -> EnqueueClient:
        self.thread.start()
        return self

    def stop(self, retry_for: float = 30) -> None:
        """No new tokens; the one in flight retried for up to ``retry_for`` s more."""
        self.deadline = time.monotonic() + retry_for
        self.stopping.set()
        self.thread.join(retry_for + 10)

    def first_2xx_after(self, t: float) -> float | None:
        return next((a.at for a in self.report.answers if a.at >= t and 200 <= a.status < 300), None)

    def _run(self) -> None:
        import uuid

        with requests.Session() as http:
            while not self.stopping.is_set():
                token = uuid.uuid4().hex
                self._enqueue(http, token)
                time.sleep(self.pace)

    def _enqueue(self, http, token: str) -> None:
        body = {"task": "mark", "args": {"token": token, "seconds": self.job_seconds}}
        while True:
            sent = time.monotonic()
            try:
                r = http.post(self.base + "/jobs", json=body, headers={"Idempotency-Key": token}, timeout=5)
                status, pause = r.status_code, float(r.headers.get("Retry-After", 1))
                retry = status == 503 or (status == 409 and r.json()["error"]["code"] == "idempotency_conflict")
            except requests.RequestException:
                status, pause, retry = 0, 0.2, True
            self.report.answers.append(Answer(sent, status, token))
            if 200 <= status < 300:
                self.report.accepted.append(token)
                self.report.job_ids[token] = r.json()["jobId"]
                return
            if not retry:
                return  # counted among the answers
            if self.stopping.is_set() and time.monotonic() + pause > self.deadline:
                self.report.given_up.append(token)
                return
            time.sleep(pause)


def run_failover(cluster: SentinelCluster, generator, workers: list, exporter, marks: Path) -> FailoverReport:
    """Load, SIGKILL the primary (node 0), bring it back as a replica, SIGKILL the new primary (node 1) so node 0
    leads again, bring node 1 back; then wait for every accepted job's line in ``marks``."""
    report = FailoverReport()
    client = EnqueueClient(generator.base, report).start()
    n0, n1, _ = cluster.nodes
    try:
        wait_for(lambda: len(report.accepted) >= 20, timeout=30, what="jobs accepted before the first kill")
        for dead, heir in ((n0, n1), (n1, n0)):
            killed = time.monotonic()
            report.kills.append(killed)
            cluster.kill_redis(dead)
            report.to_promotion.append(cluster.wait_promoted(heir, timeout=40) - killed)
            first = wait_for(lambda k=killed: client.first_2xx_after(k), timeout=30, what="a 2xx after the kill")
            report.to_first_2xx.append(first - killed)
            cluster.start_redis(dead, heir)  # as the chart's start script does: a replica of whom the Sentinels name
            cluster.wait_settled(heir)
            accepted = len(report.accepted)
            wait_for(lambda a=accepted: len(report.accepted) >= a + 20, timeout=30, what="jobs accepted after it")
    finally:
        client.stop()
    account(report, cluster, generator, workers, exporter, marks)
    return report


def run_partition(
    cluster: SentinelCluster, generator, workers: list, exporter, marks: Path, cut_for: float = 10
) -> FailoverReport:
    """The loss asynchronous replication allows: the primary cut off from its replicas (their replication user
    disabled and their links dropped, so they cannot come back) while it takes enqueues for ``cut_for`` s, then
    the primary lost (SIGKILL): Sentinel promotes a replica that never saw those writes. With
    ``min-replicas-to-write`` the primary refuses them (NOREPLICAS, a 503) from the moment no replica is linked.
    (Freezing the replicas with SIGSTOP is no cut: the kernel keeps taking the replication stream for them.)"""
    report = FailoverReport()
    client = EnqueueClient(generator.base, report).start()
    n0, n1, _ = cluster.nodes
    try:
        wait_for(lambda: len(report.accepted) >= 20, timeout=30, what="jobs accepted before the cut")
        primary = cluster.admin(n0)
        primary.execute_command("ACL", "SETUSER", "replica", "off")
        primary.client_kill_filter(_type="replica")
        time.sleep(cut_for)  # the scenario: a cut this long
        killed = time.monotonic()
        report.kills.append(killed)
        cluster.kill_redis(n0)
        report.to_promotion.append(cluster.wait_promoted(n1, timeout=60) - killed)
        first = wait_for(lambda: client.first_2xx_after(killed), timeout=30, what="a 2xx after the kill")
        report.to_first_2xx.append(first - killed)
        cluster.start_redis(n0, n1)  # its ACL file on disk: the replication user enabled again
        cluster.wait_settled(n1)
        accepted = len(report.accepted)
        wait_for(lambda: len(report.accepted) >= accepted + 20, timeout=30, what="jobs accepted after it")
    finally:
        client.stop()
    account(report, cluster, generator, workers, exporter, marks)
    return report


def account(report: FailoverReport, cluster: SentinelCluster, generator, workers: list, exporter, marks: Path) -> None:
    """Wait (bounded) for every accepted job to end, then count what never finished and what ran twice."""

    def lines() -> dict[str, int]:
        counts: dict[str, int] = {}
        for token in marks.read_text().split() if marks.exists() else []:
            counts[token] = counts.get(token, 0) + 1
        return counts

    def all_ended(stop_at_first: bool = True) -> bool:
        """Every accepted job finished or failed for good (no retry pending), or is gone, as /status says."""
        ended = True
        for token in report.accepted:
            if report.ended.get(token) not in ("finished", "failed", "http 404"):
                r = requests.get(f"{generator.base}/status/{report.job_ids[token]}", timeout=5)
                report.ended[token] = r.json().get("status", f"http {r.status_code}")
                if report.ended[token] not in ("finished", "failed", "http 404"):
                    ended = False
                    if stop_at_first:
                        return False
        return ended

    # Every accepted job ends, the repaired ones included (the exporter's maintenance, each maintenance_interval;
    # retries after their interval); one that does not is counted below.
    try:
        wait_for(all_ended, timeout=90, interval=0.2, what="every accepted job ended")
    except TimeoutError:
        all_ended(stop_at_first=False)  # each one's last status, for the report
    ran = lines()
    report.never_finished = [t for t in report.accepted if t not in ran or report.ended.get(t) != "finished"]
    report.records_lost = [t for t in report.accepted if report.ended.get(t) == "http 404"]
    report.finished_twice = {t: n for t, n in ran.items() if n > 1}
    report.traces = {t: cluster.where(report.job_ids[t]) for t in report.never_finished[:5]}
    report.restarted = [p.name for p in (generator, *workers, exporter) if p.proc.poll() is not None]
    report.acl_refusals = [entry for node in cluster.nodes for entry in cluster.acl_log(node)]
