"""``python -m bench.metrics_inprocess``: CPU a ``/start`` request with metrics on vs off, in one process.

The generator app is built twice (``TASKQUEUE_METRICS_ENABLED`` true and false) with the
multiprocess (mmap) metric storage gunicorn uses, and driven by Flask's test client against a real
Redis in interleaved rounds; the median of the paired per-round differences is the metrics' cost a
request, free of gunicorn's and wrk's scheduling noise (the test client's own cost is in both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bench.common import Opts, write_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_inprocess", description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--requests", type=int, default=1000, help="requests a round and variant")
    args = p.parse_args(argv)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tq-bench-metrics-")  # before the import
    from bench import procs
    from taskqueue import config as config_module
    from taskqueue.app import create_app

    with procs.redis_server() as redis:
        client = redis.client()
        base = {**redis.env(), "TASKQUEUE_MAX_BACKLOG": "0"}
        apps = {
            flag: create_app(config_module.load(environ={**base, "TASKQUEUE_METRICS_ENABLED": flag})).test_client()
            for flag in ("true", "false")
        }
        cpu: dict[str, list[float]] = {flag: [] for flag in apps}
        for i in range(args.rounds):
            for flag in ("true", "false") if i % 2 == 0 else ("false", "true"):  # order alternates
                app = apps[flag]
                client.flushall()
                t0 = time.process_time()
                for _ in range(args.requests):
                    if app.get("/start?delay=1").status_code != 200:
                        raise RuntimeError("/start failed")
                cpu[flag].append((time.process_time() - t0) / args.requests * 1e6)
    on, off = statistics.median(cpu["true"]), statistics.median(cpu["false"])
    diff = statistics.median(a - b for a, b in zip(cpu["true"], cpu["false"], strict=True))
    print(f"CPU a request: metrics on {on:.0f} µs, off {off:.0f} µs (medians of {args.rounds} rounds)")
    print(f"paired difference: {diff:.1f} µs a request = {diff / off:.1%} of a request")
    doc = {"on_us": on, "off_us": off, "paired_diff_us": diff, "rounds": cpu}
    write_result("metrics_inprocess", Opts(repeats=args.rounds), doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
