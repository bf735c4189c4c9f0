"""`make run`'s local mode as a new user meets it: one command starts everything; Ctrl-C stops it all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from taskqueue.local import find_redis_server
from tests.support import ROOT, descendants, free_port, kill_tree, wait_for, wait_status


@pytest.mark.behaviour
def test_local_mode_runs_the_seed_flow_and_stops_on_ctrl_c(tmp_path):
    port, redis_port, metrics_base, prom_port = free_port(), free_port(), free_port(), free_port()
    # metrics ports are base, base+100, base+200: pick a base whose neighbours are free too
    while any(_busy(metrics_base + d) for d in (0, 100, 200)):
        metrics_base = free_port()
    state = tmp_path / "run"
    cmd = [sys.executable, "-m", "taskqueue.local", "--state", str(state), "--port", str(port),
           "--redis-port", str(redis_port), "--metrics-port-base", str(metrics_base),
           "--prometheus-port", str(prom_port)]  # fmt: skip
    log = open(tmp_path / "local.log", "wb")  # noqa: SIM115
    # A team's task module, named as a user would name theirs: local mode passes TASKQUEUE_* on to every process.
    env = {**os.environ, "TASKQUEUE_TASK_MODULES": "tests.team_tasks", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(base + "/readyz", timeout=1).ok, timeout=30, what="local generator ready")
        job_id = requests.get(base + "/start?delay=1", timeout=2).json()["jobId"]
        doc = wait_status(base, job_id, {"finished"}, timeout=20)
        assert doc["result"] == "Processed message generating task with delay: 1 after 1 seconds"
        team = requests.post(base + "/jobs", json={"task": "team.summarize", "args": {"values": [2, 4]}}, timeout=2)
        assert wait_status(base, team.json()["jobId"], {"finished"}, timeout=20)["result"]["mean"] == 3.0
        # Redis has the chart's users (tests/test_redis_acl.py): nobody gets in without one, each process
        # logs in as its own, nothing was refused; and it writes an append-only file.
        anon = redis.Redis(port=redis_port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anon.ping()
        assert (state / "redis-passwords").stat().st_mode & 0o077 == 0
        passwords = dict(line.split() for line in (state / "redis-passwords").read_text().splitlines())
        admin = redis.Redis(port=redis_port, username="admin", password=passwords["admin"], socket_timeout=2)
        users = ("generator", "worker", "exporter")
        wait_for(lambda: {c["user"] for c in admin.client_list()} >= set(users), timeout=10, what="every user")
        assert {c["user"] for c in admin.client_list()} <= {*users, "admin"}
        assert admin.acl_log() == []
        wait_for(lambda: any((state / "redis").rglob("*.aof")), timeout=5, what="AOF file")
        # Every metrics endpoint answers.
        for p in (metrics_base, metrics_base + 100, metrics_base + 200):
            assert requests.get(f"http://127.0.0.1:{p}/metrics", timeout=2).ok
        if shutil.which("prometheus"):  # CI installs it; then local mode must start and configure it
            prom = f"http://127.0.0.1:{prom_port}"
            wait_for(lambda: requests.get(prom + "/-/ready", timeout=1).ok, timeout=20, what="local Prometheus")

            def jobs() -> set[str]:  # ready comes before the first round of target discovery
                targets = requests.get(prom + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
                return {t["labels"]["job"] for t in targets}

            wait_for(lambda: jobs() >= {"generator", "worker", "exporter"}, timeout=15, what="Prometheus targets")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        rc = proc.wait(timeout=30)
        log.close()
    out = (tmp_path / "local.log").read_text(errors="replace")
    assert rc in (0, 130), out[-2000:]
    # Nothing is left listening.
    for p in (port, redis_port, metrics_base, metrics_base + 100, metrics_base + 200):
        assert not _busy(p), f"port {p} still open after Ctrl-C"


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("worker_class", "shutdown_mode"), [("simple", "finish"), ("fork", "requeue")])
def test_ctrl_c_stops_the_workers_before_redis(tmp_path, worker_class, shutdown_mode):
    """A job running at Ctrl-C finishes (or, in requeue mode, goes back on its queue) with Redis still up;
    Redis stops last, after every other process, and everything exits within a bound."""
    port, redis_port = free_port(), free_port()
    metrics_base = free_port()
    while any(_busy(metrics_base + d) for d in (0, 100, 200)):
        metrics_base = free_port()
    state = tmp_path / "run"
    cmd = [sys.executable, "-m", "taskqueue.local", "--state", str(state), "--port", str(port),
           "--redis-port", str(redis_port), "--metrics-port-base", str(metrics_base), "--no-prometheus"]  # fmt: skip
    env = {**os.environ, "TASKQUEUE_WORKER_CLASS": worker_class, "TASKQUEUE_SHUTDOWN_MODE": shutdown_mode}
    log = open(tmp_path / "local.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(base + "/readyz", timeout=1).ok, timeout=30, what="local generator ready")
        wait_for(lambda: requests.get(f"http://127.0.0.1:{metrics_base + 100}/metrics", timeout=1).ok,
                 timeout=15, what="local workers up")  # fmt: skip
        job_id = requests.get(base + "/start?delay=2", timeout=2).json()["jobId"]
        wait_status(base, job_id, {"started"}, timeout=10)
        processes = [proc.pid, *descendants(proc.pid)]
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
        log.close()
    out = (tmp_path / "local.log").read_text(errors="replace")
    assert rc == 130, out[-3000:]
    assert took < 15, took  # a 2 s job, then Redis's exit
    # Every process it started has exited, and nothing is left listening.
    wait_for(lambda: not any(_alive(p) for p in processes), timeout=5, what="every local process exited")
    for p in (port, redis_port, metrics_base, metrics_base + 100, metrics_base + 200):
        assert not _busy(p), f"port {p} still open after Ctrl-C"
    # Redis was stopped last: after the workers (and everything else) had exited.
    lines = out.splitlines()
    redis_stop = next(i for i, line in enumerate(lines) if "sending SIGTERM to redis.1" in line)
    for name in ("generator.1", "worker.1", "exporter.1"):
        stopped = next(i for i, line in enumerate(lines) if f"{name} stopped" in line)
        assert stopped < redis_stop, f"{name} stopped after Redis was told to"
    worker_lines = "\n".join(line for line in lines if " worker.1 " in line).lower()
    for error in ("redis unavailable", "could not connect", "connection refused", "connectionerror", "error 111"):
        assert error not in worker_lines, f"worker log has {error!r}:\n{worker_lines[-2000:]}"
    # The job's outcome, read from Redis's append-only file with the local Redis started again.
    again = subprocess.Popen([find_redis_server(), str(state / "redis.conf")], stdout=subprocess.DEVNULL)
    try:
        passwords = dict(line.split() for line in (state / "redis-passwords").read_text().splitlines())
        client = redis.Redis(port=redis_port, username="admin", password=passwords["admin"], socket_timeout=2)
        wait_for(client.ping, timeout=10, what="local Redis again")
        status = client.hget(f"rq:job:{job_id}", "status").decode()
        queued = [i.decode() for i in client.lrange("rq:queue:default", 0, -1)]
        if shutdown_mode == "finish":
            assert status == "finished" and job_id not in queued
        else:  # requeued at once, at the front, no retry spent
            assert status == "queued" and queued[:1] == [job_id]
        client.close()
    finally:
        again.terminate()
        again.wait(timeout=15)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"
