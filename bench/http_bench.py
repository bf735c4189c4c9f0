"""Benchmarks 1 and 2: ``/start`` under wrk (ours vs the seed app) and batch enqueue over HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

from rq import Queue
from rq.serializers import JSONSerializer

from bench import procs
from bench.common import SEED, Opts, cpu_seconds, print_ratios, print_rows, ratio, summary, write_result, wrk
from taskqueue.tasks import noop
from tests.support import descendants

# Our generator's variants: (label, env, gunicorn worker processes). The first is the shipped default.
OURS_DEFAULT = ("ours: gunicorn 2 procs gevent (default)", {}, 2)
OURS_EXTRA = [
    ("ours: gunicorn 2 procs x 4 threads", {"TASKQUEUE_WEB_WORKER_CLASS": "gthread"}, 2),
    ("ours: gunicorn 2 procs sync", {"TASKQUEUE_WEB_WORKER_CLASS": "sync"}, 2),
]


def _wrk_runs(
    targets: dict[str, str], opts: Opts, flush, path: str = "/start", pids: dict[str, list[int]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Interleave the targets' runs (A B A B ...) so drift hits them alike; warm each up first.

    With ``pids`` (a target's server processes), each run also records their CPU µs per request.
    """
    warm = Opts(duration=1, threads=opts.threads, connections=opts.connections)
    for url in targets.values():
        wrk(url + path, warm)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    for _ in range(opts.repeats):
        for label, url in targets.items():
            flush()
            before = sum(cpu_seconds(p) for p in pids[label]) if pids else 0.0
            r = wrk(url + path, opts)
            if pids:
                r["cpu_us_per_request"] = (sum(cpu_seconds(p) for p in pids[label]) - before) / r["requests"] * 1e6
            runs[label].append(r)
    return runs


def _rows(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], list]:
    doc: dict[str, Any] = {}
    rows = []
    for label, rs in runs.items():
        doc[label] = {m: summary(r[m] for r in rs) for m in ("rps", "ok_rps", "p50_ms", "p99_ms", "max_ms")}
        doc[label]["errors"] = sum(r["errors"] + r["non2xx"] for r in rs)
        for m in ("rps", "p50_ms", "p99_ms"):
            rows.append((label, m, doc[label][m]))
    return doc, rows


def _load_result(opts: Opts, runs: dict[str, list[dict[str, Any]]], extra: list[str]) -> dict[str, Any]:
    """One load's figures, ratios and goals (5x the seed, p99 ≤ 10 ms, rounds within 20 % of each other)."""
    doc, rows = _rows(runs)
    seed, ours = doc[SEED], doc[OURS_DEFAULT[0]]
    ratios = {"ours/seed rps": ratio(ours["rps"], seed["rps"])}
    for label in extra:
        ratios[f"{label}/seed rps"] = ratio(doc[label]["rps"], seed["rps"])
    spread = ours["rps"]["max"] / ours["rps"]["min"] - 1
    load = f"wrk -t{opts.threads} -c{opts.connections} -d{opts.duration:g}s"
    print_rows(f"/start: {load}", rows)
    print_ratios({**ratios, "ours: fastest/slowest round - 1": spread})
    goals = {
        "rps ratio >= 5": ratios["ours/seed rps"] >= 5,
        "p99 <= 10 ms": ours["p99_ms"]["median"] <= 10,
        "round spread <= 20%": spread <= 0.2,
    }
    return {"load": load, "connections": opts.connections, "variants": doc, "ratios": ratios, "spread": spread,
            "goals": goals}  # fmt: skip


def start(opts: Opts) -> dict[str, Any]:
    """``/start`` throughput and latency: our generator vs the seed app, same Redis, same wrk load.

    First ``opts.connections`` (16: both gunicorn processes saturated; the gunicorn variants too), then
    each load of ``opts.sweep`` (4, 6, 8: seed and ours only), each with its ratio, p99 and round spread.
    """
    variants = [OURS_DEFAULT] + ([] if opts.quick else OURS_EXTRA)
    extra = [label for label, _env, _w in variants[1:]]
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(procs.redis_server())
        client = redis.client()
        targets = {SEED: stack.enter_context(procs.seed_app(redis))}
        for label, env, web_workers in variants:
            targets[label] = stack.enter_context(procs.generator(redis, env, web_workers)).base
        out = _load_result(opts, _wrk_runs(targets, opts, client.flushall), extra)
        pair = {k: targets[k] for k in (SEED, OURS_DEFAULT[0])}
        out["sweep"] = []
        for n in opts.sweep:
            light = dataclasses.replace(opts, connections=n)
            out["sweep"].append(_load_result(light, _wrk_runs(pair, light, client.flushall), []))
    if out["sweep"]:
        out["goals"]["5x, p99 <= 10 ms, spread <= 20% at every lighter load"] = all(
            all(x["goals"].values()) for x in out["sweep"]
        )
    write_result("start", opts, out)
    return out


def _rq_enqueue_many_rate(redis, seconds: float, batch: int = 1000) -> float:
    """Stock RQ: ``Queue.enqueue_many`` of ``batch`` no-op jobs in one pipeline, in a loop, one process."""
    conn = redis.client()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and done < 2_000_000:
        with conn.pipeline() as pipe:
            q.enqueue_many([Queue.prepare_data(noop) for _ in range(batch)], pipeline=pipe)
            pipe.execute()
        done += batch
    return done / (time.perf_counter() - t0)


def batch(opts: Opts, size: int = 1000) -> dict[str, Any]:
    """POST /jobs/batch (``size`` no-op jobs a request) in jobs/s, vs stock RQ enqueue_many in-process."""
    load = Opts(quick=opts.quick, repeats=opts.repeats, duration=opts.duration, threads=1, connections=4)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(procs.redis_server())
        client = redis.client()
        gen = stack.enter_context(procs.generator(redis, {"TASKQUEUE_MAX_BACKLOG": "0"}))
        env = {"BATCH_SIZE": str(size)}
        wrk(gen.base, Opts(duration=1, threads=1, connections=4), env=env)
        http_runs, rq_runs = [], []
        for _ in range(opts.repeats):
            client.flushall()
            http_runs.append(wrk(gen.base, load, env=env))
            client.flushall()
            rq_runs.append(_rq_enqueue_many_rate(redis, opts.duration))
    ours = {
        "jobs_per_s": summary(r["ok_rps"] * size for r in http_runs),
        "p50_ms": summary(r["p50_ms"] for r in http_runs),
        "p99_ms": summary(r["p99_ms"] for r in http_runs),
        "errors": sum(r["errors"] + r["non2xx"] for r in http_runs),
    }
    base = {"jobs_per_s": summary(rq_runs)}
    label_ours = f"ours: POST /jobs/batch x{size}, wrk -c4"
    label_rq = f"stock RQ enqueue_many x{size} in-process"
    print_rows("batch enqueue", [(label_ours, "jobs/s", ours["jobs_per_s"]), (label_ours, "request p99 ms",
                                 ours["p99_ms"]), (label_rq, "jobs/s", base["jobs_per_s"])])  # fmt: skip
    ratios = {"ours HTTP / stock in-process": ratio(ours["jobs_per_s"], base["jobs_per_s"])}
    print_ratios(ratios)
    out = {
        "variants": {label_ours: ours, label_rq: base},
        "ratios": ratios,
        "goals": {"jobs/s >= 10000": ours["jobs_per_s"]["median"] >= 10000},
    }
    write_result("batch", opts, out)
    return out


def start_metrics(opts: Opts) -> dict[str, dict[str, Any]]:
    """``/start`` rps of our default generator with metrics on and off (for the metrics benchmark)."""
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(procs.redis_server())
        client = redis.client()
        gens = {
            label: stack.enter_context(procs.generator(redis, {"TASKQUEUE_METRICS_ENABLED": flag}))
            for label, flag in (("metrics on", "true"), ("metrics off", "false"))
        }
        targets = {label: g.base for label, g in gens.items()}
        pids = {label: [g.proc.pid, *descendants(g.proc.pid)] for label, g in gens.items()}
        runs = _wrk_runs(targets, opts, client.flushall, pids=pids)
    return {k: {m: summary(r[m] for r in v) for m in ("rps", "p99_ms", "cpu_us_per_request")} for k, v in runs.items()}
