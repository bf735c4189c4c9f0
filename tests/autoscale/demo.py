"""``make demo-autoscale``: a load profile through the real generator while the emulator scales the workers.

Renders the chart (its defaults, or KEDA's with ``--values keda-defaults``), starts Redis, the
generator, the exporter and the emulator on loopback, sends the profile below, and writes a PNG of
backlog, in-flight jobs and replicas over time, plus the timings (burst -> target replicas, last job
-> min replicas) as JSON.

``--speed k`` compresses time by k: every period of the rendered values (pollingInterval,
cooldownPeriod, stabilization windows, policy periods, heartbeat, cleanup), the HPA sync period and
the jobs' lengths are divided by k; the timeline and timings are reported in cluster seconds (x k).

Load profile (cluster seconds): a burst of 200 seed-like jobs (20-30 s each) at t=10 (with the chart's 50
job slots a pod: 4 pods); 10 jobs every 3 s from t=120 to t=180; a burst of 100 at t=240; then nothing
until the workers are back at min.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.autoscale.hpa import DEFAULT_SYNC_PERIOD
from tests.autoscale.stack import stack
from tests.chart.rendering import CHART_DIR, ROOT

VALUE_SETS: dict[str, dict[str, Any]] = {
    # The chart as shipped.
    "ours": {},
    # The chart with minReplicaCount 0 (scale to zero: KEDA's activation and cooldown in play).
    "ours-min0": {"autoscaling": {"minReplicaCount": 0}},
    # KEDA's and the HPA's defaults: 30 s polling, 300 s cooldown, no behavior (300 s scale-down
    # window, +100 % or +4 pods per 15 s up), min 0 and the plain list trigger's habit of min 0.
    "keda-defaults": {
        "autoscaling": {"minReplicaCount": 0, "pollingInterval": 30, "cooldownPeriod": 300, "behavior": {}}
    },
}


BURSTS = (200, 100)  # seed jobs at t=10 and t=240
TRICKLE = 10  # seed jobs every 3 s from t=120 to t=180


def chart_defaults() -> dict[str, Any]:
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        return chart.merge_values(None)


def compressed(values: dict[str, Any], speed: float) -> dict[str, Any]:
    """The full values with every time period divided by ``speed`` (at least 1 s)."""
    v = copy.deepcopy(values)

    def shrink(x: float) -> int:
        return max(1, round(x / speed))

    a, c = v["autoscaling"], v["config"]
    for key in ("pollingInterval", "cooldownPeriod"):
        a[key] = shrink(a[key])
    for direction in (a.get("behavior") or {}).values():
        if "stabilizationWindowSeconds" in direction:
            direction["stabilizationWindowSeconds"] = round(direction["stabilizationWindowSeconds"] / speed)
        for p in direction.get("policies") or []:
            p["periodSeconds"] = shrink(p["periodSeconds"])
    if not a.get("behavior"):
        # The HPA's default behaviour, compressed the same way.
        a["behavior"] = {
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": shrink(15)},
                {"type": "Pods", "value": 4, "periodSeconds": shrink(15)}]},
            "scaleDown": {"stabilizationWindowSeconds": round(300 / speed), "selectPolicy": "Max",
                          "policies": [{"type": "Percent", "value": 100, "periodSeconds": shrink(15)}]},
        }  # fmt: skip
    c["heartbeat_ttl"] = max(3, shrink(c["heartbeat_ttl"]))
    c["cleanup_interval"] = shrink(c["cleanup_interval"])
    c["retry_intervals"] = ",".join(str(shrink(int(x))) for x in str(c["retry_intervals"]).split(","))
    v["worker"]["shutdownGraceSeconds"] = shrink(v["worker"]["shutdownGraceSeconds"])
    return v


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, val in over.items():
        if isinstance(val, dict) and val and isinstance(out.get(k), dict):
            out[k] = merged(out[k], val)
        else:
            out[k] = copy.deepcopy(val)
    return out


def seed_jobs(n: int, speed: float, rng: random.Random) -> list[dict[str, Any]]:
    """The seed's /start job: sleep 20-30 s (divided by the speed)."""
    return [{"task": "sleep", "args": {"seconds": max(1, round(rng.randint(20, 30) / speed))}} for _ in range(n)]


def run(value_set: str, speed: float, out_dir: Path, seed: int = 1) -> dict[str, Any]:
    values = compressed(merged(chart_defaults(), VALUE_SETS[value_set]), speed)
    rng = random.Random(seed)
    sync = DEFAULT_SYNC_PERIOD / speed
    with tempfile.TemporaryDirectory(prefix="tq-autoscale-demo-") as tmp, stack(values, Path(tmp), sync, seed) as st:
        em, spec = st.emulator, st.spec

        def at(cluster_t: float) -> None:
            while em.now() * speed < cluster_t:
                time.sleep(0.05)

        marks: dict[str, float] = {}
        at(10)
        marks["burst1"] = em.now()
        st.burst(seed_jobs(BURSTS[0], speed, rng))
        marks["peak1"] = st.predicted_peak(BURSTS[0])
        at(120)
        while em.now() * speed < 180:
            st.burst(seed_jobs(TRICKLE, speed, rng))
            time.sleep(3 / speed)
        at(240)
        marks["burst2"] = em.now()
        st.burst(seed_jobs(BURSTS[1], speed, rng))
        # Back at min after the last job, plus a little to show it stays there.
        deadline = em.now() + 900 / speed
        while em.now() < deadline:
            s = em.timeline[-1]
            if (
                em.now() > marks["burst2"] + 5
                and s.queued == 0
                and s.in_flight == 0
                and em.desired == spec.min_replicas
            ):
                break
            time.sleep(0.2)
        marks["end"] = em.now()
        time.sleep(20 / speed)
        timeline = list(em.timeline)
        events = list(em.events)

    def first(pred, after):
        return next((s.t for s in timeline if s.t >= after and pred(s)), None)

    t_target = first(lambda s: s.desired >= marks["peak1"], marks["burst1"])
    t_pods = first(lambda s: s.replicas >= marks["peak1"], marks["burst1"])
    t_idle = first(lambda s: s.queued == 0 and s.in_flight == 0, marks["burst2"] + 1)
    t_min = first(lambda s: s.desired == spec.min_replicas, t_idle or marks["end"])
    result = {
        "values": value_set,
        "speed": speed,
        "minReplicaCount": spec.min_replicas,
        "maxReplicaCount": spec.max_replicas,
        "target_replicas_first_burst": marks["peak1"],
        "burst_to_target_replicas_s": round((t_target - marks["burst1"]) * speed, 1) if t_target else None,
        "burst_to_target_pods_running_s": round((t_pods - marks["burst1"]) * speed, 1) if t_pods else None,
        "last_job_to_min_replicas_s": round((t_min - t_idle) * speed, 1) if t_min and t_idle else None,
        "peak_desired": max(s.desired for s in timeline),
        "sigkills": sum("SIGKILL" in e[2] for e in events),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"autoscale-{value_set}.json").write_text(
        json.dumps({"result": result, "timeline": [s.__dict__ for s in timeline], "events": events}, indent=1)
    )
    return {"result": result, "timeline": timeline, "speed": speed, "spec": spec}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], runs, strict=True):
        k, tl, res = r["speed"], r["timeline"], r["result"]
        t = [s.t * k for s in tl]
        ok = [s.queued >= 0 for s in tl]
        ax.fill_between(t, [s.queued if o else math.nan for s, o in zip(tl, ok, strict=True)],
                        step="post", alpha=0.25, color="tab:orange", label="backlog (queued jobs)")  # fmt: skip
        ax.plot(t, [s.in_flight if o else math.nan for s, o in zip(tl, ok, strict=True)],
                drawstyle="steps-post", color="tab:orange", lw=1.2, label="in flight")  # fmt: skip
        ax.set_ylabel("jobs")
        ax2 = ax.twinx()
        ax2.plot(t, [s.desired for s in tl], drawstyle="steps-post", color="tab:blue", lw=2, label="desired replicas")
        ax2.plot(t, [s.replicas for s in tl], drawstyle="steps-post", color="tab:green", lw=1.2, ls="--",
                 label="running pods")  # fmt: skip
        ax2.set_ylabel("replicas")
        ax2.set_ylim(0, r["spec"].max_replicas + 1)
        title = (
            f"{res['values']}: burst -> {res['target_replicas_first_burst']} replicas in "
            f"{res['burst_to_target_replicas_s']} s, last job -> min ({res['minReplicaCount']}) in "
            f"{res['last_job_to_min_replicas_s']} s"
        )
        ax.set_title(title, fontsize=10)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    speed = runs[0]["speed"]
    axes[-1, 0].set_xlabel("cluster seconds" + (f" (run {speed:g}x faster)" if speed != 1 else ""))
    fig.suptitle("Workers autoscaled on work remaining (KEDA metrics-api on the exporter's /scale)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", nargs="+", default=["ours"], choices=sorted(VALUE_SETS))
    parser.add_argument("--speed", type=float, default=1.0, help="time compression factor (1: real time)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "images" / "autoscale.png")
    parser.add_argument("--json-dir", type=Path, default=ROOT / ".run" / "autoscale")
    args = parser.parse_args(argv)
    runs = []
    for name in args.values:
        print(f"==> {name} (speed {args.speed:g}x)", flush=True)
        r = run(name, args.speed, args.json_dir)
        print(json.dumps(r["result"]), flush=True)
        runs.append(r)
    plot(runs, args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda a: print(a, file=sys.stderr)
    sys.exit(main())
