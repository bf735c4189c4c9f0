"""Least-privilege Redis users: the chart's Redis, started by the chart's own start script with its rendered
redis.conf and users.acl and the users' passwords as the Secret's files, on 127.0.0.1; every component does its
work logged in as its own user, and each user is refused what it may not do.

Local mode writes the same ACL file (``test_local_mode_writes_the_acl_file_the_chart_writes``), so this is its
Redis too. ``ACL LOG`` records every command Redis refused: after the work, it must be empty.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from taskqueue import local
from tests.chart.rendering import CASES, objects, one
from tests.support import ADMIN, free_port, kill_tree, wait_for, wait_status
from tests.test_webhooks import SECRET, Receiver

APPS = ("generator", "worker", "exporter")
# Short heartbeat and passes, so the exporter's repair of a dead worker's job fits a test.
WORK_ENV = {
    "TASKQUEUE_RETRIES": "1",
    "TASKQUEUE_RETRY_INTERVALS": "1",
    "TASKQUEUE_MAINTENANCE_INTERVAL": "1",
    "TASKQUEUE_HEARTBEAT_TTL": "4",
    "TASKQUEUE_CLEANUP_INTERVAL": "1",
    "TASKQUEUE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "TASKQUEUE_WEBHOOK_SECRET": SECRET,
    "TASKQUEUE_WEBHOOK_BACKOFF": "0.2",
}


class ChartRedis:
    """What the chart's Redis pod runs: ``sh start.sh`` with the rendered ConfigMap's files as /etc/redis, the
    users' passwords as the Secret's files (/etc/redis-auth) and a run folder (/run/redis); its redis.conf only
    moved to a free loopback port and a temporary data folder, and ``ACL LOG`` made long enough for a test."""

    def __init__(self, root: Path):
        config = one(objects(CASES["defaults"]), "ConfigMap", component="redis")["data"]
        self.rules = config["users.acl"]
        self.users = [name for name, _ in local.acl_users(self.rules) if name != "default"]
        self.passwords = {user: secrets.token_urlsafe(18) for user in self.users}
        self.port = free_port()
        self.conf, self.auth, self.run, data = (root / d for d in ("conf", "auth", "run", "data"))
        for d in (self.conf, self.auth, self.run, data):
            d.mkdir()
        conf = (
            config["redis.conf"]
            .replace("bind 0.0.0.0 -::*", "bind 127.0.0.1")
            .replace("port 6379", f"port {self.port}")
            .replace("dir /data", f"dir {data}")
            .replace("aclfile /run/redis/users.acl", f"aclfile {self.run / 'users.acl'}")
        )
        assert str(self.port) in conf and str(self.run) in conf, "the rendered redis.conf changed: update this test"
        (self.conf / "redis.conf").write_text(conf + "acllog-max-len 1000\n")
        (self.conf / "users.acl").write_text(self.rules)
        (self.conf / "start.sh").write_text(config["start.sh"])
        for user, password in self.passwords.items():
            (self.auth / f"{user}-password").write_text(password)  # as kubelet writes a Secret's key: no newline
        self.proc: subprocess.Popen | None = None

    def start(self) -> ChartRedis:
        server = local.find_redis_server()
        env = {
            "PATH": f"{Path(server).parent}:{os.environ['PATH']}",
            "REDIS_CONF_DIR": str(self.conf),
            "REDIS_AUTH_DIR": str(self.auth),
            "REDIS_RUN_DIR": str(self.run),
        }
        log = self.run.parent / "redis.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["sh", str(self.conf / "start.sh")], env=env, stdout=out, stderr=out)

        def up() -> bool:
            assert self.proc.poll() is None, f"Redis exited: {log.read_text()[-1000:]}"
            return bool(self.client("admin").ping())

        wait_for(up, what="the chart's Redis")
        return self

    def client(self, user: str | None, password: str | None = None) -> redis.Redis:
        password = self.passwords.get(user or "", "") if password is None else password
        return redis.Redis(port=self.port, username=user, password=password or None, socket_timeout=5)

    def env(self, user: str) -> dict[str, str]:
        """A component's settings: its user and password, as the chart's Deployments set them."""
        switch = {k: v for k, v in os.environ.items() if k == "TASKQUEUE_FAST_PATHS"}
        return {
            "TASKQUEUE_REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
            "TASKQUEUE_REDIS_USERNAME": user,
            "TASKQUEUE_REDIS_PASSWORD": self.passwords[user],
            **WORK_ENV,
            **switch,
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def chart_redis(tmp_path_factory) -> Iterator[ChartRedis]:
    server = ChartRedis(tmp_path_factory.mktemp("chart-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def admin(chart_redis) -> Iterator[redis.Redis]:
    """The admin user's client, on an empty Redis with an empty ACL LOG."""
    client = chart_redis.client("admin")
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


def refused(admin: redis.Redis) -> list[str]:
    """What Redis refused since the test began: "user: reason object" from ACL LOG."""
    return [f"{e['username']}: {e['reason']} {e['object']}" for e in admin.acl_log(count=1000)]


def test_local_mode_writes_the_acl_file_the_chart_writes(chart_redis, tmp_path):
    """The chart's start script and local mode make one file from the same rules and passwords."""
    assert (chart_redis.run / "users.acl").read_text() == local.acl_file(chart_redis.rules, chart_redis.passwords)
    # ...from the one rules file: the chart's ConfigMap carries files/redis-users.acl as it is.
    assert chart_redis.rules.strip() == (Path(local.ROOT) / "helm/taskqueue/files/redis-users.acl").read_text().strip()
    assert (chart_redis.run / "users.acl").stat().st_mode & 0o077 == 0
    # Passwords only as SHA-256 digests.
    assert not any(p in (chart_redis.run / "users.acl").read_text() for p in chart_redis.passwords.values())
    # Local mode keeps its passwords, one a user, owner-only, and writes the file with them.
    made = local.passwords(tmp_path, chart_redis.users)
    assert local.passwords(tmp_path, chart_redis.users) == made and set(made) == set(chart_redis.users)
    assert (tmp_path / "redis-passwords").stat().st_mode & 0o077 == 0


def test_what_the_users_wrote_in_transactions_and_scripts_survives_a_restart(chart_redis, admin):
    """Redis replays the append-only file's MULTI/EXEC (a Lua script's writes are one too) as the default user:
    with its permissions taken away, a restart would drop them without a word (redis/redis#14541)."""
    with chart_redis.client("generator").pipeline(transaction=True) as pipe:
        pipe.hset("rq:job:in-a-transaction", "status", "queued").rpush("rq:queue:default", "in-a-transaction")
        pipe.execute()
    chart_redis.client("worker").eval("redis.call('HSET', KEYS[1], 'status', 'finished')", 1, "rq:job:by-a-script")
    chart_redis.client("exporter").set("taskqueue:plain", "1")
    chart_redis.stop()  # SIGTERM: Redis fsyncs its append-only file and exits
    chart_redis.start()
    assert admin.hget("rq:job:in-a-transaction", "status") == b"queued"
    assert admin.lrange("rq:queue:default", 0, -1) == [b"in-a-transaction"]
    assert admin.hget("rq:job:by-a-script", "status") == b"finished"
    assert admin.get("taskqueue:plain") == b"1"


def test_the_default_user_cannot_log_in(chart_redis, admin):
    with pytest.raises(redis.AuthenticationError):  # NOAUTH: nobody is logged in without a password
        chart_redis.client(None).ping()
    for password in ("", "nopass", chart_redis.passwords["admin"]):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=chart_redis.port, username="default", password=password or "x", socket_timeout=5).ping()
    # Nor a user with another user's password.
    with pytest.raises(redis.AuthenticationError):
        chart_redis.client("worker", chart_redis.passwords["generator"]).ping()


# What no component may do: FLUSHALL/FLUSHDB/CONFIG/SHUTDOWN/DEBUG/KEYS as the issue names them, and the rest of
# what would let a stolen password wipe, stop, reconfigure or read all of Redis.
FORBIDDEN = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("SHUTDOWN", "NOSAVE"),
    ("DEBUG", "SLEEP", "0"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("MONITOR",),
    ("ACL", "SETUSER", "default", "on", "nopass"),
    ("ACL", "LIST"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "ID", "1"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "FLUSH"),
    ("SWAPDB", "0", "1"),
    ("BGREWRITEAOF",),
    ("SAVE",),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("MODULE", "LIST"),
    ("MIGRATE", "127.0.0.1", "1", "rq:job:x", "0", "1"),
    ("RESTORE", "rq:job:restored", "0", "x"),
    ("SORT", "rq:queue:default"),
]
# Keys and channels outside the queue's namespace (rq:*, taskqueue:*; rq:pubsub:* channels).
OUTSIDE = [
    ("GET", "session:42"),
    ("SET", "session:42", "x"),
    ("DEL", "session:42"),
    ("EVAL", "return redis.call('GET', KEYS[1])", "1", "session:42"),
    ("PUBLISH", "other-channel", "x"),
]


# Outside commands a user lacks altogether (refused as commands before their keys or channels are looked at).
NOT_ITS_COMMAND = {("keda", "GET"), ("keda", "SET"), ("keda", "DEL"), ("keda", "PUBLISH"), ("worker", "PUBLISH"),
                   ("exporter", "PUBLISH"), ("generator", "EVAL")}  # fmt: skip


@pytest.mark.parametrize("user", [*APPS, "keda"])
@pytest.mark.parametrize("command", FORBIDDEN + OUTSIDE, ids=lambda c: " ".join(c[:2]))
def test_each_user_is_refused_what_it_may_not_do(chart_redis, admin, user, command):
    admin.set("session:42", "a key of another application")
    # The ACL's answer (Redis 7's ACL DRYRUN), and what the user gets when it tries.
    verdict = admin.execute_command("ACL", "DRYRUN", user, *command).decode()
    assert verdict != "OK" and "no permissions" in verdict, verdict
    if command in OUTSIDE and (user, command[0]) not in NOT_ITS_COMMAND:
        assert ("channel" if command[0] == "PUBLISH" else "key") in verdict, verdict  # the key rule refused it
    client = chart_redis.client(user)
    # DEBUG is refused before the ACL is asked (enable-debug-command is off by default): by both, then.
    refusal = redis.exceptions.ResponseError if command[0] == "DEBUG" else redis.exceptions.NoPermissionError
    with pytest.raises(refusal):
        client.execute_command(*command)
    assert admin.get("session:42") == b"a key of another application"
    assert admin.ping()


def test_keda_may_read_the_queue_length_and_nothing_else(chart_redis, admin):
    """KEDA's redis-list trigger: PING at connect, then its script of TYPE and LLEN on the queue's list."""
    admin.rpush("rq:queue:default", "a", "b")
    admin.hset("rq:job:a", "data", "x")
    keda = chart_redis.client("keda")
    assert keda.ping()
    script = (
        "local t = redis.call('type', KEYS[1]).ok "
        "if t == 'list' or t == 'none' then return redis.call('llen', KEYS[1]) end"
    )
    assert keda.eval(script, 1, "rq:queue:default") == 2
    for command in (("LPOP", "rq:queue:default"), ("HGETALL", "rq:job:a"), ("LRANGE", "rq:queue:default", "0", "-1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.execute_command(*command)
    assert admin.llen("rq:queue:default") == 2


def test_the_exporter_cannot_take_jobs_or_command_a_worker(chart_redis, admin):
    """The exporter reads, and repairs jobs in place (putting a dead worker's job back on its queue): it
    never pops a job nor publishes worker commands."""
    exporter = chart_redis.client("exporter")
    with pytest.raises(redis.exceptions.NoPermissionError):
        exporter.publish("rq:pubsub:some-worker", '{"command": "shutdown"}')
    for command in (("LPOP", "rq:queue:default"), ("BLMOVE", "rq:queue:default", "rq:x", "LEFT", "RIGHT", "0.1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.execute_command(*command)


@pytest.mark.behaviour
@pytest.mark.parametrize("worker_args", [["--job-slots", "4"], ["--worker-class", "fork"]], ids=["slots", "fork"])
def test_each_component_does_its_work_as_its_own_user(chart_redis, admin, processes, worker_args):
    """Enqueue (every way), work, retries, scheduled jobs, cancel and requeue, a running job stopped, a dead
    worker's job repaired by the exporter's maintenance, a webhook, the exporter's scrape: nothing refused."""
    receiver = Receiver()
    try:
        gen = processes.generator(env=chart_redis.env("generator"))
        exporter = processes.exporter(env=chart_redis.env("exporter"))
        worker = processes.worker(worker_args, env=chart_redis.env("worker"))
        base = gen.base

        def post(body: dict, **headers: str) -> str:
            r = requests.post(base + "/jobs", json=body, headers=headers, timeout=5)
            assert r.status_code in (200, 202), r.text
            return r.json()["jobId"]

        seed = requests.get(base + "/start?delay=1", timeout=5).json()["jobId"]
        hooked = post({"task": "sleep", "args": {"seconds": 1}, "callbackUrl": receiver.url})
        failing = post({"task": "fail"})
        cpu = post({"task": "hash", "args": {"rounds": 1000}, "queue": "high"})
        later = post({"task": "noop", "delaySeconds": 1})
        once = post({"task": "noop"}, **{"Idempotency-Key": "acl-test"})
        assert post({"task": "noop"}, **{"Idempotency-Key": "acl-test"}) == once
        batch = requests.post(base + "/jobs/batch", json={"jobs": [{"task": "noop"}, {"task": "noop", "queue": "low"}]},
                              timeout=5)  # fmt: skip
        assert batch.status_code == 202, batch.text
        far = post({"task": "noop", "delaySeconds": 3600})
        assert requests.delete(f"{base}/jobs/{far}", headers=ADMIN, timeout=5).status_code == 200
        running = post({"task": "sleep", "args": {"seconds": 30}})
        wait_status(base, running, {"started"}, timeout=20)
        assert requests.delete(f"{base}/jobs/{running}", headers=ADMIN, timeout=5).status_code == 200
        for job_id in (seed, hooked, cpu, later, once, *(j["jobId"] for j in batch.json()["jobs"])):
            wait_status(base, job_id, {"finished"}, timeout=30)
        assert wait_status(base, failing, {"failed"}, timeout=30)["retriesLeft"] == 0  # retried once, then failed
        assert requests.post(f"{base}/jobs/{failing}/requeue", headers=ADMIN, timeout=5).status_code == 200
        wait_status(base, failing, {"failed"}, timeout=30)
        wait_status(base, running, {"stopped", "canceled"}, timeout=20)
        for path in ("/list", f"/status/{seed}", "/tasks", "/readyz"):
            assert requests.get(base + path, timeout=5).status_code == 200, path
        for path in ("/metrics", "/scale"):
            assert requests.get(f"http://127.0.0.1:{exporter.metrics_port}{path}", timeout=5).status_code == 200
        wait_for(lambda: receiver.requests, timeout=20, what="the webhook")

        # A worker SIGKILLed mid-job: the exporter's maintenance finds the job and retries it. (Without RQ's
        # scheduler in it: a killed worker's scheduler lock would hold up the retry until the lock expires.)
        worker.stop()
        plain = {**chart_redis.env("worker"), "TASKQUEUE_WORKER_MAINTENANCE": "false"}
        doomed = processes.worker(worker_args, env=plain)
        stranded = requests.get(base + "/start?delay=3", timeout=5).json()["jobId"]
        wait_status(base, stranded, {"started"}, timeout=20)
        kill_tree(doomed.proc.pid)
        doomed.proc.wait()
        wait_status(base, stranded, {"queued", "scheduled"}, timeout=30)
        # Its replacement requeues its running job when stopped (TASKQUEUE_SHUTDOWN_MODE=requeue).
        requeuing = processes.worker(worker_args, env={**plain, "TASKQUEUE_SHUTDOWN_MODE": "requeue"})
        wait_status(base, stranded, {"finished"}, timeout=30)
        interrupted = post({"task": "sleep", "args": {"seconds": 30}})
        wait_status(base, interrupted, {"started"}, timeout=20)
        users = {c["user"] for c in admin.client_list()}
        requeuing.stop()
        assert wait_status(base, interrupted, {"queued"}, timeout=20)["retriesLeft"] == 1  # no retry spent

        # Every connection was one of the components' users (and the test's admin); after every process has
        # stopped, nothing was refused to any of them.
        assert set(APPS) <= users <= {*APPS, "admin"}, users
        processes.stop_all()
        assert refused(admin) == []
        for service in (gen, exporter, worker, requeuing):
            assert "NOPERM" not in service.log() and "no permissions" not in service.log()
    finally:
        receiver.close()


def load_as(chart_redis: ChartRedis, user: str, **env: str):
    from taskqueue import config

    return config.load(environ={**chart_redis.env(user), **env})


def test_the_generator_lists_every_state_and_requeues_a_job_with_a_webhook(chart_redis, admin):
    """Paths the work test does not take: /list of each state, and the requeue that re-arms a job's webhook."""
    import time

    from taskqueue.api.jobs import JobService
    from taskqueue.store.connection import connect
    from taskqueue.store.enqueue import JobRequest
    from taskqueue.tasks import load

    cfg = load_as(chart_redis, "generator")
    service = JobService(cfg, connect(cfg))
    hooked, _ = service.enqueue(JobRequest(load()["noop"], [], callback_url="http://127.0.0.1:9/hook"))
    for state in ("queued", "started", "finished", "failed", "scheduled", "deferred", "canceled"):
        service.list_ids(state, 0, 10)
    # The job failed, as a worker records it; the generator requeues it, and its webhook is owed again.
    admin.lrem("rq:queue:default", 0, hooked.id)
    admin.hset(f"rq:job:{hooked.id}", "status", "failed")
    admin.zadd("rq:failed:default", {hooked.id: time.time() + 3600})
    service.requeue(hooked.id)
    assert admin.lrange("rq:queue:default", 0, -1) == [hooked.id.encode()]
    assert refused(admin) == []


def test_the_exporter_repairs_what_dead_workers_leave_behind(chart_redis, admin):
    """The exporter's maintenance as its own user: a job marked queued or scheduled but in no list (a worker
    died between two writes), a job taken off its queue but never started, and an abandoned job with no retry
    left. Each is repaired, and Redis refused nothing."""
    import time

    from taskqueue.api.jobs import JobService
    from taskqueue.exporter.collector import STRANDED_RETURNS_MAX, QueueState
    from taskqueue.store.connection import connect
    from taskqueue.store.enqueue import JobRequest
    from taskqueue.store.records import RETURNS_FIELD
    from taskqueue.tasks import load

    gen = load_as(chart_redis, "generator")
    service = JobService(gen, connect(gen))
    noop = load()["noop"]
    limbo = []
    for status in ("queued", "scheduled"):  # still claimed by its dead worker's expired execution
        job, _ = service.enqueue(JobRequest(noop, []))
        admin.lrem("rq:queue:default", 0, job.id)
        admin.hset(f"rq:job:{job.id}", "status", status)
        admin.zadd("rq:wip:default", {f"{job.id}:dead-execution": time.time() - 100})
        limbo.append(job.id)
    stranded, _ = service.enqueue(JobRequest(noop, []))
    admin.lrem("rq:queue:default", 0, stranded.id)
    admin.rpush("rq:queue:default:intermediate", stranded.id)
    given_up, _ = service.enqueue(JobRequest(noop, []))
    admin.lrem("rq:queue:default", 0, given_up.id)
    admin.rpush("rq:queue:default:intermediate", given_up.id)
    admin.hset(f"rq:job:{given_up.id}", RETURNS_FIELD, STRANDED_RETURNS_MAX)
    abandoned, _ = service.enqueue(JobRequest(noop, []))
    admin.lrem("rq:queue:default", 0, abandoned.id)
    admin.hset(f"rq:job:{abandoned.id}", mapping={"status": "started", "retries_left": 0})
    admin.zadd("rq:wip:default", {f"{abandoned.id}:dead-execution": time.time() - 100})

    exp = load_as(chart_redis, "exporter", TASKQUEUE_CLEANUP_INTERVAL="1")
    state = QueueState(exp, connect(exp))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state.cleanup()
        queued = {j.decode() for j in admin.lrange("rq:queue:default", 0, -1)}
        if {*limbo, stranded.id} <= queued and admin.hget(f"rq:job:{abandoned.id}", "status") == b"failed":
            break
        time.sleep(0.2)
    queued = {j.decode() for j in admin.lrange("rq:queue:default", 0, -1)}
    assert {*limbo, stranded.id} <= queued, queued
    assert admin.hget(f"rq:job:{abandoned.id}", "status") == b"failed"
    assert admin.lrange("rq:queue:default:intermediate", 0, -1) == []
    assert refused(admin) == []


def run_start_script(chart_redis: ChartRedis, tmp_path: Path, rules: str, passwords: dict[str, str]):
    conf, auth, run = (tmp_path / d for d in ("conf", "auth", "run"))
    for d in (conf, auth, run):
        d.mkdir()
    (conf / "users.acl").write_text(rules)
    (conf / "redis.conf").write_text("port 0\n")
    for user, password in passwords.items():
        (auth / f"{user}-password").write_text(password)
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_CONF_DIR": str(conf),
        "REDIS_AUTH_DIR": str(auth),
        "REDIS_RUN_DIR": str(run),
    }
    return subprocess.run(["sh", str(chart_redis.conf / "start.sh")], env=env, capture_output=True, text=True,
                          timeout=15, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("no rules", "no ACL rules"),
        ("an empty password", "the password of user worker is empty"),
        ("no default user line", "no 'user default off' line"),
    ],
)
def test_the_start_script_refuses_to_start_redis_open(chart_redis, tmp_path, case, said):
    """An empty ACL file would leave Redis's default user open to everyone: the script stops instead."""
    rules, passwords = chart_redis.rules, dict(chart_redis.passwords)
    if case == "no rules":
        rules = ""
    elif case == "an empty password":
        passwords["worker"] = ""
    else:
        rules = "\n".join(line for line in rules.splitlines() if not line.startswith("user default"))
    proc = run_start_script(chart_redis, tmp_path, rules, passwords)
    assert proc.returncode == 1 and said in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "users.acl").exists()
    if case == "an empty password":
        with pytest.raises(ValueError, match="empty"):
            local.acl_file(rules, passwords)
