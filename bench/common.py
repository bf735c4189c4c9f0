"""Shared helpers: options, statistics, result files, process CPU, Redis stats, wrk."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.support starts redis-server, the generator and workers for us
    sys.path.insert(0, str(ROOT))

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
# ``python -m bench --fast-paths off``: the same benchmarks with TASKQUEUE_FAST_PATHS=off, results apart.
RESULTS_STOCK = BENCH / "results-fast-paths-off"


def fast_paths_env() -> dict[str, str]:
    """TASKQUEUE_FAST_PATHS as this run has it, for the configs the benchmarks build in-process."""
    return {k: v for k, v in os.environ.items() if k == "TASKQUEUE_FAST_PATHS"}


def results_dir() -> Path:
    return RESULTS_STOCK if fast_paths_env().get("TASKQUEUE_FAST_PATHS") == "off" else RESULTS


BIN = Path(sys.executable).parent
WRK_REPORT = BENCH / "wrk_report.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SEED = "seed: Flask dev server"  # the baseline of the /start benchmark


@dataclass
class Opts:
    """How hard to run: ``quick`` is a smoke run (1 repeat, short durations, small N)."""

    quick: bool = False
    repeats: int = 3
    duration: float = 5.0  # seconds of wrk load per run
    threads: int = 1  # wrk threads
    connections: int = 16  # wrk connections
    sweep: tuple[int, ...] = (4, 6, 8)  # wrk connections of /start's lighter loads, seed and ours
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None, duration: float | None = None, **kw) -> Opts:
        o = cls(quick=quick, repeats=1 if quick else 3, duration=2.0 if quick else 5.0, **kw)
        if repeats:
            o.repeats = repeats
        if duration:
            o.duration = duration
        return o

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def summary(values: Iterable[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "min": min(vals),
        "median": statistics.median(vals),
        "max": max(vals),
        "runs": vals,
    }


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Median of ``a`` over median of ``b``."""
    return a["median"] / b["median"] if b["median"] else None


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_rows(title: str, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """rows: (variant, metric, summary)."""
    print(f"\n== {title}")
    print(f"  {'variant':56} {'metric':22} {'min':>10} {'median':>10} {'max':>10}")
    for variant, metric, s in rows:
        print(f"  {variant:56} {metric:22} {fmt(s['min']):>10} {fmt(s['median']):>10} {fmt(s['max']):>10}")


def print_ratios(ratios: dict[str, float | None]) -> None:
    for name, r in ratios.items():
        print(f"  ratio {name}: {fmt(r)}")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
    }


def write_result(name: str, opts: Opts, doc: dict[str, Any]) -> Path:
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    full = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": opts.quick,
        "repeats": opts.repeats,
        "machine": machine(),
        **doc,
    }
    path.write_text(json.dumps(full, indent=2) + "\n")
    print(f"  -> {path.relative_to(ROOT)}")
    return path


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def commandstats(client) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def command_usec(client) -> int:
    """Microseconds Redis spent executing commands since the last CONFIG RESETSTAT (excludes I/O)."""
    return sum(int(v["usec"]) for v in client.info("commandstats").values())


def wrk(url: str, opts: Opts, script: Path = WRK_REPORT, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run wrk against a loopback URL for opts.duration; return requests/s and latency percentiles (ms)."""
    assert url.startswith("http://127.0.0.1:"), url
    cmd = [
        "wrk", f"-t{opts.threads}", f"-c{opts.connections}", f"-d{opts.duration:g}s", "--timeout", "5s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=opts.duration + 60, env={**os.environ, **(env or {})}
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no report: {out.stdout}\n{out.stderr}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    secs = r["duration_us"] / 1e6
    return {
        "rps": r["requests"] / secs,
        "ok_rps": (r["requests"] - r["non2xx"] - r["errors"]) / secs,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "errors": r["errors"],
        "non2xx": r["non2xx"],
        "requests": r["requests"],
    }
