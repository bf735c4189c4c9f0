"""Profile the worker's per-job path and the ``/start`` path with py-spy; print the top entries.

``python -m bench.profile [--quick]``: py-spy (installed on demand into bench/.venv-prof, pinned)
samples a ``taskqueue-worker --burst`` draining N no-op jobs, and the gunicorn workers of the
generator under wrk load on ``/start``. Idle samples (waiting on a socket) are included, so the
shares are of wall time: a worker doing round trips to Redis shows them as ``recv``/``readline``.
Collapsed stacks go to bench/results/profile-*.txt, the summary to bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import procs
from bench.common import BENCH, BIN, RESULTS, Opts, wrk
from bench.worker_bench import fill_ours

PY_SPY_PIN = "py-spy==0.4.3"
PROF_DIR = BENCH / ".venv-prof"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> Path:
    exe = PROF_DIR / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PROF_DIR)], check=True)
        subprocess.run([str(PROF_DIR / "bin" / "pip"), "install", "-q", PY_SPY_PIN], check=True)
    return exe


def _short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "services/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarize(raw: Path, focus: str, top: int = 25) -> dict:
    """Self and inclusive shares per function of the stacks that pass through ``focus`` (py-spy raw)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if "(" in f]
        if not any(f.startswith(focus) for f in frames):
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return {
        "focus": focus,
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 2)],
    }


def print_summary(title: str, s: dict) -> None:
    print(f"\n== {title} ({s['samples']} samples through {s['focus']})\n  self %:")
    for f, p in s["self"]:
        print(f"    {p:5.1f}  {f}")
    print("  inclusive %:")
    for f, p in s["inclusive"]:
        print(f"    {p:5.1f}  {f}")


def profile_worker(exe: Path, n: int, rate: int) -> dict:
    out = RESULTS / "profile-worker.txt"
    with procs.redis_server() as redis:
        fill_ours(redis, n)
        cmd = [str(exe), "record", "--idle", "-r", str(rate), "-f", "raw", "-o", str(out), "--",
               str(BIN / "taskqueue-worker"), "--burst", "--worker-class", "simple", "--metrics-host", "127.0.0.1",
               "--metrics-port", "0"]  # fmt: skip
        subprocess.run(cmd, env={**os.environ, **redis.env()}, capture_output=True, timeout=600, check=True)
    return summarize(out, "BaseWorker.work ")


def profile_start(exe: Path, seconds: float, rate: int) -> dict:
    out = RESULTS / "profile-start.txt"
    with procs.redis_server() as redis, procs.generator(redis) as gen:
        wrk(gen.base + "/start", Opts(duration=1))
        spy = subprocess.Popen(
            [str(exe), "record", "--idle", "--subprocesses", "-r", str(rate), "-f", "raw", "-o", str(out),
             "-d", str(int(seconds)), "-p", str(gen.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        wrk(gen.base + "/start", Opts(duration=seconds - 1))
        spy.wait(timeout=seconds + 60)
    return summarize(out, "AsyncWorker.handle ")  # gunicorn's gevent worker (the default) serving a connection


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    exe = py_spy()
    w = profile_worker(exe, 300 if a.quick else 3000, 200)
    print_summary("worker per-job path: taskqueue-worker --burst --worker-class simple, no-op jobs", w)
    s = profile_start(exe, 3 if a.quick else 8, 200)
    print_summary("/start under wrk -t1 -c16 (gunicorn master + 2 workers)", s)
    (RESULTS / "profile.json").write_text(json.dumps({"worker": w, "start": s}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
