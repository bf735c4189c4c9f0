"""``python -m bench [--quick] [NAME ...]``: run the benchmarks (all by default), results in bench/results/."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, Opts, print_ratios, print_rows, ratio, results_dir, write_result


def _paired_inprocess(opts: Opts, worker: bool) -> dict[str, Any]:
    """``bench.metrics_inprocess`` in a fresh process (it picks prometheus-client's storage at import)."""
    args = ["--rounds", "6" if opts.quick else "40", "--requests", "200" if opts.quick else "500"]
    if worker:
        args = ["--worker", "--rounds", "4" if opts.quick else "20", "--requests", "200" if opts.quick else "400"]
    subprocess.run([sys.executable, "-m", "bench.metrics_inprocess", *args], check=True, cwd=ROOT)
    name = "metrics_worker" if worker else "metrics_inprocess"
    return json.loads((results_dir() / f"{name}.json").read_text())


def metrics(opts: Opts) -> dict[str, Any]:
    """Metrics overhead: worker no-op jobs and /start requests with TASKQUEUE_METRICS_ENABLED true vs
    false, as throughput and as the serving processes' CPU per job / request; then the goal's figure,
    the paired in-process CPU difference (``bench.metrics_inprocess``: metrics switched per request
    or job in one process; process CPU over wrk runs swings more than the 3 % being judged)."""
    from bench import http_bench, worker_bench

    w = worker_bench.worker_metrics(opts)
    s = http_bench.start_metrics(opts)
    rows = [(f"worker {k}", m, v[m]) for k, v in w.items() for m in ("jobs_per_s", "cpu_us_per_job")]
    rows += [(f"/start {k}", m, v[m]) for k, v in s.items() for m in ("rps", "p99_ms", "cpu_us_per_request")]
    print_rows("metrics overhead", rows)
    ratios = {
        "worker on/off": ratio(w["metrics on"]["jobs_per_s"], w["metrics off"]["jobs_per_s"]),
        "/start on/off": ratio(s["metrics on"]["rps"], s["metrics off"]["rps"]),
        "worker CPU a job on/off": ratio(w["metrics on"]["cpu_us_per_job"], w["metrics off"]["cpu_us_per_job"]),
        "/start CPU a request on/off": ratio(
            s["metrics on"]["cpu_us_per_request"], s["metrics off"]["cpu_us_per_request"]
        ),
    }
    print_ratios(ratios)
    paired = {"/start": _paired_inprocess(opts, worker=False), "worker": _paired_inprocess(opts, worker=True)}
    overhead = {k: v["overhead"] for k, v in paired.items()}
    out = {
        "worker": w,
        "start": s,
        "ratios": ratios,
        "paired": {k: {m: v[m] for m in ("on_us", "off_us", "paired_diff_us", "overhead")} for k, v in paired.items()},
        "overhead": overhead,
        "goals": {f"{k} overhead <= 3%": v <= 0.03 for k, v in overhead.items()},
    }
    write_result("metrics", opts, out)
    return out


def benchmarks():
    from bench import failover, fastpaths, http_bench, memory, progress_bench, slots_bench, worker_bench

    return {
        "start": http_bench.start,
        "batch": http_bench.batch,
        "worker": worker_bench.worker,
        "redis_cost": worker_bench.redis_cost,
        "latency": worker_bench.latency,
        "metrics": metrics,
        "memory": memory.memory,
        "fastpaths": fastpaths.fastpaths,
        "slots": slots_bench.slots,
        "progress": progress_bench.progress,
        "failover": failover.failover,
    }


def main(argv: list[str] | None = None) -> int:
    names = list(benchmarks())
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {', '.join(names)}")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, short durations, small N")
    p.add_argument("--repeats", type=int, help="repeats (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds of wrk load per run (default 5, quick 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections for /start (default 16)")
    p.add_argument("--sweep", default="4,6,8",
                   help="/start's lighter loads in wrk connections, seed and ours (default 4,6,8)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="wrk threads for /start (default 1)")
    p.add_argument("--fast-paths", choices=("on", "off"), default="on",
                   help="TASKQUEUE_FAST_PATHS of every process (off: into bench/results-fast-paths-off)")  # fmt: skip
    a = p.parse_args(argv)
    os.environ["TASKQUEUE_FAST_PATHS"] = a.fast_paths
    unknown = sorted(set(a.names) - set(names))
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    opts = Opts.make(
        a.quick,
        a.repeats,
        a.duration,
        threads=a.threads,
        connections=a.connections,
        sweep=tuple(int(n) for n in a.sweep.split(",") if n.strip()),
    )
    table = benchmarks()
    for name in a.names or names:
        t0 = time.monotonic()
        table[name](opts)
        print(f"  ({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
