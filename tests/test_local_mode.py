"""`make run`'s local mode as a new user meets it: one command starts everything; Ctrl-C stops it all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import redis
import requests

from tests.support import ROOT, free_port, wait_for, wait_status


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
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(base + "/readyz", timeout=1).ok, timeout=30, what="local generator ready")
        job_id = requests.get(base + "/start?delay=1", timeout=2).json()["jobId"]
        doc = wait_status(base, job_id, {"finished"}, timeout=20)
        assert doc["result"] == "Processed message generating task with delay: 1 after 1 seconds"
        # Redis is password-protected and writes an append-only file.
        anon = redis.Redis(port=redis_port, socket_timeout=2)
        try:
            anon.ping()
            raise AssertionError("local Redis answered without a password")
        except redis.AuthenticationError:
            pass
        assert (state / "redis.password").stat().st_mode & 0o077 == 0
        wait_for(lambda: any((state / "redis").rglob("*.aof")), timeout=5, what="AOF file")
        # Every metrics endpoint answers.
        for p in (metrics_base, metrics_base + 100, metrics_base + 200):
            assert requests.get(f"http://127.0.0.1:{p}/metrics", timeout=2).ok
        if shutil.which("prometheus"):  # CI installs it; then local mode must start and configure it
            prom = f"http://127.0.0.1:{prom_port}"
            wait_for(lambda: requests.get(prom + "/-/ready", timeout=1).ok, timeout=20, what="local Prometheus")
            targets = requests.get(prom + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
            assert {t["labels"]["job"] for t in targets} >= {"generator", "worker", "exporter"}
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
