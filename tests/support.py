"""Starting real processes for tests and benchmarks: redis-server, the generator, workers, the exporter."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self, TypeVar

import requests

from taskqueue.local import find_redis_server

ROOT = Path(__file__).resolve().parents[1]
# How the chart, compose and local mode configure Redis's encodings (docs/reliability.md, "Memory budget").
REDIS_MEMORY_SHAPE = ("--stream-node-max-bytes", "512", "--hash-max-ziplist-value", "256")  # 6.2 and 7+ name
BIN = Path(sys.executable).parent


# Every generator the tests start reads this tokens file (TASKQUEUE_API_TOKENS_FILE), unless its env names
# another: an admin token (send ADMIN's headers for DELETE and requeue), anonymous requests submit as default.
ADMIN_TOKEN = secrets.token_urlsafe(24)
TOKENS_FILE = Path(tempfile.mkdtemp(prefix="tq-tokens-")) / "api-tokens"
TOKENS_FILE.write_text(f"# the test suite's tokens\nadmin {ADMIN_TOKEN}\n")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
atexit.register(shutil.rmtree, TOKENS_FILE.parent, True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the thing is not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


class RedisServer:
    """A real redis-server on a free loopback port, with a password and AOF, in a temporary folder."""

    def __init__(self, port: int | None = None, password: str | None = None, extra: list[str] | None = None):
        self.port = free_port() if port is None else port
        self.password = password or secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="tq-redis-"))
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def env(self) -> dict[str, str]:
        return {"TASKQUEUE_REDIS_URL": self.url, "TASKQUEUE_REDIS_PASSWORD": self.password}

    def start(self) -> RedisServer:
        cmd = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password,
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            *REDIS_MEMORY_SHAPE,
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), what=f"redis on port {self.port}")
        return self

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Service:
    """One of our console scripts as a child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.args = args
        self.env = {**os.environ, "TASKQUEUE_LOG_FORMAT": "json", **env}
        self.log_path = log_dir / f"{name}-{secrets.token_hex(3)}.log"
        self.proc: subprocess.Popen | None = None
        self._terminated = False  # SIGTERM sent by terminate(): stop() only waits (a second one is a cold stop)

    def start(self) -> Service:
        self._terminated = False
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [str(BIN / self.name), *self.args], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting; :meth:`stop` then waits for it."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the process and every process below it, and wait: the quick end of a process once a test's
        checks are done (a test that checks a stop calls :meth:`stop`). The files a clean exit removes go too."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            kill_all_below(self.proc.pid)
        self.proc.wait()
        self._log.close()
        for leftover in self.leftovers():
            shutil.rmtree(leftover, ignore_errors=True)
        return self.proc.returncode

    def leftovers(self) -> list[str]:
        """What the process removes itself when it stops cleanly: gone after :meth:`kill` too."""
        return []

    def _tmp(self, name: str) -> str:
        """``name`` in the process's temporary folder (multiproc.tmp_path in it)."""
        return os.path.join(self.env.get("TMPDIR", "/tmp"), name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Generator(Service):
    def __init__(self, env: dict[str, str], log_dir: Path, web_workers: int = 2):
        self.port = free_port()
        self.metrics_port = free_port()
        super().__init__(
            "taskqueue-generator",
            ["--http-host", "127.0.0.1", "--http-port", str(self.port), "--metrics-host", "127.0.0.1",
             "--metrics-port", str(self.metrics_port), "--web-workers", str(web_workers)],
            {"PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"metrics-{self.port}"),
             "TASKQUEUE_API_TOKENS_FILE": str(TOKENS_FILE), **env},
            log_dir,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"

    def terminate(self) -> None:
        """First collect the test's HTTP responses left in reference cycles: each holds its keep-alive connection
        open, and gunicorn's graceful stop waits for an open connection (up to 5 s a process)."""
        gc.collect()
        super().terminate()

    def start(self) -> Generator:
        super().start()
        wait_for(lambda: requests.get(self.base + "/healthz", timeout=1).ok, what="generator /healthz")
        return self

    def leftovers(self) -> list[str]:
        """The master's own metrics folder, when the environment names none (generator.main)."""
        return [] if self.env.get("PROMETHEUS_MULTIPROC_DIR") else [self._tmp(f"taskqueue-metrics-{self.port}")]


class MetricsService(Service):
    """A worker or the exporter: its ``/metrics`` on a port of its own, up once started."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, args: list[str] | None = None):
        self.metrics_port = free_port()
        metrics_args = ["--metrics-host", "127.0.0.1", "--metrics-port", str(self.metrics_port)]
        super().__init__(name, [*metrics_args, *(args or [])], env, log_dir)

    def start(self, wait: bool = True) -> Self:
        super().start()
        if wait:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            wait_for(lambda: requests.get(url, timeout=1).ok, what=f"{self.name} metrics endpoint")
        return self


class WorkerProc(MetricsService):
    def __init__(self, env: dict[str, str], log_dir: Path, args: list[str] | None = None):
        super().__init__("taskqueue-worker", env, log_dir, args)

    def leftovers(self) -> list[str]:
        """A supervisor's metrics folder (worker/cli.py), named after its pid."""
        return [self._tmp(f"taskqueue-worker-metrics-{self.proc.pid}")] if self.proc is not None else []


class Exporter(MetricsService):
    def __init__(self, env: dict[str, str], log_dir: Path, args: list[str] | None = None):
        super().__init__("taskqueue-exporter", env, log_dir, args)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (RQ's work-horses leave the process group, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_all_below(pid: int) -> None:
    """SIGKILL a process and all its descendants, stopped (SIGSTOP) first until none is left to fork another:
    a work horse forked as its worker dies is not left running a job against the next test's Redis."""
    frozen: set[int] = set()
    todo = {pid}
    while todo:
        for p in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        frozen |= todo
        todo = set(descendants(pid)) - frozen
    for p in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as the kernel does to a container."""
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def wait_status(base: str, job_id: str, statuses: set[str], timeout: float = 30) -> dict:
    """Poll ``/status/<id>`` until the job is in one of ``statuses``."""

    def check():
        doc = requests.get(f"{base}/status/{job_id}", timeout=2).json()
        return doc if doc.get("status") in statuses else None

    return wait_for(check, timeout=timeout, interval=0.1, what=f"job {job_id} to be {statuses}")


S = TypeVar("S", bound="Service | RedisServer")


class Processes:
    """The processes a test starts, each stopped at its end (a Redis cleaned up), the last started first."""

    def __init__(self, default_env: Callable[[], dict[str, str]], log_dir: Path):
        self._default_env, self.log_dir = default_env, log_dir
        self._stops = contextlib.ExitStack()
        self._services: list[Service] = []

    def add(self, proc: S, stop_timeout: float = 30) -> S:
        """Stop ``proc`` at the end; add it before its start(), so that a start that fails is stopped too."""
        if isinstance(proc, RedisServer):
            self._stops.callback(proc.cleanup)
        else:
            self._services.append(proc)
            self._stops.callback(proc.stop, timeout=stop_timeout)
        return proc

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        return self._default_env() if env is None else env

    def generator(self, web_workers: int = 2, env: dict[str, str] | None = None) -> Generator:
        return self.add(Generator(self._env(env), self.log_dir, web_workers)).start()

    def worker(
        self,
        args: list[str] | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        stop_timeout: float = 30,
    ) -> WorkerProc:
        return self.add(WorkerProc(self._env(env), self.log_dir, args), stop_timeout).start(wait=wait)

    def exporter(self, args: list[str] | None = None, env: dict[str, str] | None = None) -> Exporter:
        return self.add(Exporter(self._env(env), self.log_dir, args)).start()

    def stop_all(self) -> None:
        """SIGTERM to every process at once, then wait for each (the last started first): their shutdowns overlap."""
        for service in self._services:
            service.terminate()
        self._stops.close()

    def kill_all(self) -> None:
        """The end of the test's processes once its checks are done: each killed (:meth:`Service.kill`), with no
        wait for a graceful stop nobody checks, then the Redis servers stopped. A test that checks a stop calls
        :meth:`stop_all` (or a process's ``stop``) itself."""
        for service in reversed(self._services):
            service.kill()
        self._stops.close()


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    """Kill the services when the block ends (the checks in it are done): a test that checks a stop calls
    ``stop()`` itself, in the block."""
    try:
        yield
    finally:
        for s in reversed(services):
            s.kill()


# -- Prometheus (observability tests) ----------------------------------------------------------------
# Added for tests/observability: a real Prometheus server scraping the processes above.


class PrometheusServer:
    """A real ``prometheus`` on a free loopback port, tmp storage, scraping ``targets`` every second.

    ``targets`` maps a scrape job name to ``host:port``; ``rule_files`` are loaded and evaluated
    every second too.
    """

    def __init__(self, targets: dict[str, str], log_dir: Path, rule_files: list[Path] | None = None):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tq-prometheus-"))
        self.targets = targets
        self.rule_files = rule_files or []
        self.log_path = log_dir / f"prometheus-{self.port}.log"
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "  evaluation_interval: 1s"]
        if self.rule_files:
            lines += ["rule_files:", *(f"  - {p}" for p in self.rule_files)]
        lines += ["scrape_configs:"]
        for job, target in self.targets.items():
            lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
        return "\n".join(lines) + "\n"

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        config = self.dir / "prometheus.yml"
        config.write_text(self.config())
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: requests.get(self.base + "/-/ready", timeout=1).ok, timeout=30, what="prometheus ready")
        return self

    def api(self, path: str, **params) -> dict:
        """GET ``/api/v1/<path>``; returns the JSON body (``status`` is "success" or "error")."""
        return requests.get(f"{self.base}/api/v1/{path}", params=params, timeout=10).json()

    def query(self, expr: str) -> list[dict]:
        """Instant query; raises on a PromQL error, returns the result vector."""
        doc = self.api("query", query=expr)
        if doc.get("status") != "success":
            raise ValueError(f"query failed: {expr!r}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (None when it returns no series)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr!r} returned {len(result)} series"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._log.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
