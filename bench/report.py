"""``python -m bench.report``: the results table (markdown) from bench/results/*.json, for docs/performance.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS, SEED, fmt

RESULTS_DIR = [RESULTS]


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR[0] / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _s(d: dict[str, Any]) -> str:
    return f"{fmt(d['median'])} ({fmt(d['min'])}-{fmt(d['max'])})"


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def rows() -> list[tuple[str, str, str, str]]:
    """(measure, baseline, ours, goal) rows."""
    out: list[tuple[str, str, str, str]] = []
    if d := _load("start"):
        for load in (d, *d.get("sweep", [])):
            v = load["variants"]
            seed, ours = v[SEED], next(x for k, x in v.items() if "(default)" in k)
            r = load["ratios"]["ours/seed rps"]
            spread = load.get("spread", ours["rps"]["max"] / ours["rps"]["min"] - 1)
            out.append((f"/start rps, {load['load']}", f"seed {_s(seed['rps'])}",
                        f"{_s(ours['rps'])} = {fmt(r)}x seed; rounds {spread:.0%} apart",
                        f"≥ 5x - {_goal(r >= 5)}; ≤ 20 % apart - {_goal(spread <= 0.2)}"))  # fmt: skip
            out.append((f"/start p50 / p99 ms, {load['load']}", f"seed {_s(seed['p50_ms'])} / {_s(seed['p99_ms'])}",
                        f"{_s(ours['p50_ms'])} / {_s(ours['p99_ms'])}",
                        f"p99 ≤ 10 ms - {_goal(ours['p99_ms']['median'] <= 10)}"))  # fmt: skip
        for k, x in d["variants"].items():
            if k.startswith("ours") and "(default)" not in k:
                out.append(
                    (f"/start rps, {k.removeprefix('ours: ')}", "", f"{_s(x['rps'])}, p99 {_s(x['p99_ms'])}", "")
                )
    if d := _load("batch"):
        v = d["variants"]
        ours = next(x for k, x in v.items() if k.startswith("ours"))
        base = next(x for k, x in v.items() if k.startswith("stock"))
        ok = ours["jobs_per_s"]["median"] >= 10000
        out.append(("batch enqueue jobs/s (POST /jobs/batch x1000, wrk -c4)",
                    f"stock RQ enqueue_many in-process {_s(base['jobs_per_s'])}", _s(ours["jobs_per_s"]),
                    f"≥ 10,000 - {_goal(ok)}"))  # fmt: skip
    if d := _load("worker"):
        v = d["variants"]
        cel = v["celery --pool solo"]["jobs_per_s"]
        for k, x in v.items():
            if k.startswith("celery"):
                continue
            r = d["ratios"][f"{k} / celery solo"]
            goal = f"≥ 1.0x - {_goal(r >= 1)}" if k == "ours --worker-class simple" else ""
            out.append((f"worker no-op jobs/s: {k}", f"celery solo {_s(cel)}", f"{_s(x['jobs_per_s'])} = {fmt(r)}x",
                        goal))  # fmt: skip
            if "cpu_us_per_job" in x and k == "ours --worker-class simple":
                rc = d["ratios"][f"{k} / celery solo, per CPU-second"]
                out.append((f"worker CPU µs/job (its own process): {k}",
                            f"celery solo {_s(v['celery --pool solo']['cpu_us_per_job'])}",
                            f"{_s(x['cpu_us_per_job'])} = {fmt(rc)}x Celery's jobs per CPU-second", ""))  # fmt: skip
    if d := _load("redis_cost"):
        v = d["variants"]
        stock = next(x for k, x in v.items() if k.startswith("stock"))
        for k, x in v.items():
            if k.startswith("stock"):
                continue
            main = "/start path" in k
            out.append((f"Redis commands/job, {k}", f"stock RQ {_s(stock['cmds_per_job'])}", _s(x["cmds_per_job"]),
                        # to 0.1: the backlog check's LLEN every 100 ms adds ~0.01 a job at the bench's rate
                        f"≤ 30 - {_goal(round(x['cmds_per_job']['median'], 1) <= 30)}" if main else ""))  # fmt: skip
            r = x["cpu_us_per_job"]["median"] / stock["cpu_us_per_job"]["median"]
            out.append((f"Redis CPU µs/job, {k}", f"stock RQ {_s(stock['cpu_us_per_job'])}",
                        f"{_s(x['cpu_us_per_job'])} = {fmt(r)}x",
                        f"≤ 0.5x - {_goal(r <= 0.5)}" if main else ""))  # fmt: skip
    if d := _load("latency"):
        v = d["variants"]
        stock, ours = v["stock rq SimpleWorker"], v["ours worker simple"]
        out.append(("enqueue→start p50 ms, idle worker", f"stock RQ {_s(stock['p50_ms'])}", _s(ours["p50_ms"]),
                    f"≤ 2 - {_goal(ours['p50_ms']['median'] <= 2)}"))  # fmt: skip
        out.append(("enqueue→start p99 ms, idle worker", f"stock RQ {_s(stock['p99_ms'])}", _s(ours["p99_ms"]),
                    f"≤ 20 - {_goal(ours['p99_ms']['median'] <= 20)}"))  # fmt: skip
    if d := _load("metrics"):
        w, s, r, o = d["worker"], d["start"], d["ratios"], d["overhead"]
        for what, unit in (("/start", "request"), ("worker", "job")):
            p = d["paired"][what]
            out.append((f"metrics overhead, {what} CPU µs a {unit}, paired in one process (on vs off)",
                        f"off {fmt(p['off_us'])}", f"on {fmt(p['on_us'])}: +{fmt(p['paired_diff_us'])} µs = "
                        f"{100 * p['overhead']:.1f} %", f"≤ 3% - {_goal(o[what] <= 0.03)}"))  # fmt: skip
        for what, side, m, key in (("worker", w, "cpu_us_per_job", "worker CPU a job on/off"),
                                   ("/start", s, "cpu_us_per_request", "/start CPU a request on/off")):  # fmt: skip
            out.append((f"metrics on/off, {what} process CPU µs per {'job' if what == 'worker' else 'request'}",
                        f"off {_s(side['metrics off'][m])}", f"on {_s(side['metrics on'][m])} = {fmt(r[key])}x",
                        ""))  # fmt: skip
        off = f"off {_s(w['metrics off']['jobs_per_s'])} / {_s(s['metrics off']['rps'])}"
        on = f"on {_s(w['metrics on']['jobs_per_s'])} / {_s(s['metrics on']['rps'])}"
        out.append(("metrics on/off, worker jobs/s and /start rps", off,
                    f"{on} = {fmt(r['worker on/off'])}x / {fmt(r['/start on/off'])}x", ""))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    p.add_argument("--dir", type=Path, default=RESULTS, help="folder of the result files (default bench/results)")
    RESULTS_DIR[0] = p.parse_args(argv).dir
    print("| measure | baseline, median (min-max) | ours, median (min-max) | goal |")
    print("| --- | --- | --- | --- |")
    for r in rows():
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
