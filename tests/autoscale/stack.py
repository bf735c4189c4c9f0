"""The chart's pods on loopback around the emulator: Redis, the generator, the exporter, scaled workers.

The generator and exporter get the environment the rendered chart gives their containers (ConfigMap
and Secret resolved), with Redis moved to a local redis-server; the workers are the emulator's.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import requests

from tests.autoscale.emulator import Emulator, ScalingSpec
from tests.chart.rendering import pod_spec, render_values, resolve_env, workloads
from tests.support import Exporter, Generator, RedisServer, wait_for

# The chart's defaults compressed in time for tests: 2 s polling, 10 s cooldown and scale-down
# window, 6 s heartbeats, with 2 job slots per pod (2 processes of one slot) and at most 4 pods (2 cores).
FAST_VALUES: dict[str, Any] = {
    "worker": {"processes": 2, "jobSlots": 1, "shutdownGraceSeconds": 5},
    "config": {
        "job_timeout": 30,
        "delay_max": 25,
        "delay_limit": 25,  # the sleep within the job timeout
        "heartbeat_ttl": 6,
        "cleanup_interval": 2,
        "retry_intervals": "1",
    },
    "autoscaling": {
        "minReplicaCount": 0,
        "maxReplicaCount": 4,
        "pollingInterval": 2,
        "cooldownPeriod": 10,
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 3},
                    {"type": "Pods", "value": 4, "periodSeconds": 3},
                ],
                "selectPolicy": "Max",
            },
            "scaleDown": {
                "stabilizationWindowSeconds": 10,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 3}],
                "selectPolicy": "Max",
            },
        },
    },
}
FAST_HPA_SYNC = 3.0


def component_env(objs: list[dict[str, Any]], component: str, redis: RedisServer) -> dict[str, str]:
    """A rendered app container's environment with Redis moved to the local server."""
    w = next(o for o in workloads(objs) if o["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    env = resolve_env(w, pod_spec(w)["containers"][0], objs)
    path = urlparse(env["TASKQUEUE_REDIS_URL"]).path
    env["TASKQUEUE_REDIS_URL"] = urlunparse(urlparse(redis.url)._replace(path=path))
    env["TASKQUEUE_REDIS_PASSWORD"] = redis.password
    # This Redis has only its default user (tests/test_redis_acl.py runs the chart's Redis with its users).
    env.pop("TASKQUEUE_REDIS_USERNAME", None)
    env.pop("TASKQUEUE_REDIS_CA_CERT", None)
    return env


@dataclass
class Stack:
    objs: list[dict[str, Any]]
    spec: ScalingSpec
    redis: RedisServer
    generator: Generator
    exporter: Exporter
    emulator: Emulator

    def burst(self, jobs: list[dict[str, Any]]) -> list[str]:
        """POST /jobs/batch through the real generator (in batches of at most 1000)."""
        ids: list[str] = []
        for i in range(0, len(jobs), 1000):
            r = requests.post(self.generator.base + "/jobs/batch", json={"jobs": jobs[i : i + 1000]}, timeout=30)
            r.raise_for_status()
            ids += [j["jobId"] for j in r.json()["jobs"]]
        return ids

    def work(self) -> dict[str, int]:
        return requests.get(f"http://127.0.0.1:{self.exporter.metrics_port}/scale", timeout=2).json()

    def predicted_peak(self, work_remaining: int) -> int:
        """What the HPA formula asks for ``work_remaining`` jobs: ceil(work / slots), within max."""
        return min(self.spec.max_replicas, math.ceil(work_remaining / self.spec.target))


@contextlib.contextmanager
def stack(
    values: dict[str, Any], log_dir: Path, hpa_sync_period: float = FAST_HPA_SYNC, seed: int = 0
) -> Iterator[Stack]:
    objs = render_values(values)
    spec = ScalingSpec.from_objects(objs)
    log_dir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer().start()
    services: list[Any] = []
    emulator = None
    try:
        gen = Generator(component_env(objs, "generator", redis), log_dir)
        services.append(gen.start())
        exp = Exporter(component_env(objs, "exporter", redis), log_dir)
        services.append(exp.start())
        emulator = Emulator(
            spec, redis.url, redis.password, f"http://127.0.0.1:{exp.metrics_port}", log_dir,
            hpa_sync_period=hpa_sync_period, seed=seed,
        ).start()  # fmt: skip
        wait_for(lambda: emulator.timeline, what="the emulator's first sample")
        yield Stack(objs, spec, redis, gen, exp, emulator)
    finally:
        if emulator is not None:
            emulator.stop()
        for s in reversed(services):
            s.kill()  # the checks are done
        redis.cleanup()


def wait_until(check, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``check`` until truthy; return the monotonic time it first was."""
    wait_for(check, timeout=timeout, interval=interval, what=what)
    return time.monotonic()
