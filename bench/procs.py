"""Processes the benchmarks start: Redis, the seed app, our generator and workers, stock RQ, Celery, Dramatiq."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import requests

from bench.common import BENCH, BIN, ROOT
from tests.support import Generator, RedisServer, free_port, wait_for

CELERY_VENV = BENCH / ".venv-celery"
CELERY_PIN = "celery[redis]==5.5.3"
DRAMATIQ_VENV = BENCH / ".venv-dramatiq"
DRAMATIQ_PIN = "dramatiq[redis]==2.2.1"
LOG_DIR = Path(tempfile.mkdtemp(prefix="tq-bench-"))


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """The same redis-server setup as the tests: password, AOF everysec, loopback."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def seed_app(redis: RedisServer) -> Iterator[str]:
    """The seed's Flask app on its dev server; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "SEED_REDIS_HOST": "127.0.0.1",
        "SEED_REDIS_PORT": str(redis.port),
        "SEED_REDIS_PASSWORD": redis.password,
        "SEED_PORT": str(port),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }
    with open(LOG_DIR / f"seed-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "seed_app.py"], cwd=BENCH / "baseline", env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: requests.get(base + "/list", timeout=1).ok, what="seed app")
            yield base
        finally:
            stop(proc)


@contextlib.contextmanager
def generator(redis: RedisServer, env: dict[str, str] | None = None, web_workers: int = 2) -> Iterator[Generator]:
    gen = Generator({**redis.env(), **(env or {})}, LOG_DIR, web_workers=web_workers).start()
    try:
        yield gen
    finally:
        gen.stop()


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(cmd: list[str], env: dict[str, str], name: str, cwd: Path = ROOT) -> subprocess.Popen:
    log = open(LOG_DIR / f"{name}-{os.getpid()}-{free_port()}.log", "wb")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def our_worker(redis: RedisServer, worker_class: str, env: dict[str, str] | None = None, burst: bool = True):
    """``taskqueue-worker`` (metrics on a free loopback port)."""
    args = [str(BIN / "taskqueue-worker"), "--worker-class", worker_class, "--metrics-host", "127.0.0.1"]
    args += ["--metrics-port", str(free_port())]
    if burst:
        args.append("--burst")
    return spawn(args, {**redis.env(), "TASKQUEUE_LOG_FORMAT": "json", **(env or {})}, f"worker-{worker_class}")


def stock_worker(redis: RedisServer, burst: bool = True) -> subprocess.Popen:
    """Stock ``rq.SimpleWorker`` with the JSON serializer (bench/stock_rq.py)."""
    args = [sys.executable, "-m", "bench.stock_rq", "--port", str(redis.port), "--password", redis.password]
    if burst:
        args.append("--burst")
    return spawn(args, {}, "stock-rq")


def celery_python() -> Path:
    """The Celery venv's python, made on demand with the pinned Celery (benchmark only)."""
    py = CELERY_VENV / "bin" / "python"
    marker = CELERY_VENV / ".installed"
    if not marker.exists() or marker.read_text() != CELERY_PIN:
        subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", CELERY_PIN], check=True)
        marker.write_text(CELERY_PIN)
    return py


def celery_env(redis: RedisServer) -> dict[str, str]:
    return {
        "CELERY_BROKER": f"redis://:{redis.password}@127.0.0.1:{redis.port}/0",
        "PYTHONPATH": str(BENCH),
    }


def celery_fill(redis: RedisServer, n: int, wait: float | None = None) -> None:
    """N no-op tasks, or (``wait``) N tasks that sleep ``wait`` seconds."""
    extra = ["wait", str(wait)] if wait is not None else []
    subprocess.run(
        [str(celery_python()), "-m", "celery_noop", "fill", str(n), *extra],
        cwd=BENCH, env={**os.environ, **celery_env(redis)}, check=True, timeout=300,
    )  # fmt: skip


def celery_worker(redis: RedisServer, pool: str = "solo", concurrency: int = 1) -> subprocess.Popen:
    """``celery worker --pool solo`` (or another pool), default log level, no result backend."""
    cmd = [
        str(CELERY_VENV / "bin" / "celery"), "-A", "celery_noop", "worker", "--pool", pool,
        "--concurrency", str(concurrency),
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING",
    ]  # fmt: skip
    return spawn(cmd, celery_env(redis), "celery", cwd=BENCH)


def dramatiq_python() -> Path:
    """The Dramatiq venv's python, made on demand with the pinned Dramatiq (benchmark only)."""
    py = DRAMATIQ_VENV / "bin" / "python"
    marker = DRAMATIQ_VENV / ".installed"
    if not marker.exists() or marker.read_text().strip() != DRAMATIQ_PIN:
        subprocess.run([sys.executable, "-m", "venv", str(DRAMATIQ_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", DRAMATIQ_PIN], check=True)
        marker.write_text(DRAMATIQ_PIN)
    return py


def dramatiq_env(redis: RedisServer) -> dict[str, str]:
    return {"DRAMATIQ_BROKER": f"redis://:{redis.password}@127.0.0.1:{redis.port}/0", "PYTHONPATH": str(BENCH)}


def dramatiq_fill(redis: RedisServer, n: int, wait: float | None = None) -> None:
    """N no-op messages, or (``wait``) N that sleep ``wait`` seconds."""
    extra = ["wait", str(wait)] if wait is not None else []
    subprocess.run(
        [str(dramatiq_python()), "-m", "dramatiq_tasks", "fill", str(n), *extra],
        cwd=BENCH, env={**os.environ, **dramatiq_env(redis)}, check=True, timeout=300,
    )  # fmt: skip


def dramatiq_worker(redis: RedisServer, processes: int | None = None, threads: int | None = None):
    """``dramatiq dramatiq_tasks`` at its defaults (a process a CPU, 8 threads each) or with -p/-t."""
    cmd = [str(DRAMATIQ_VENV / "bin" / "dramatiq"), "dramatiq_tasks"]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return spawn(cmd, dramatiq_env(redis), "dramatiq", cwd=BENCH)
