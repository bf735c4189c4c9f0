"""An emulator of the cluster's scaling loop for the worker Deployment: a test tool, not product code.

It reads what a cluster would: the rendered ScaledObject (min/max, trigger target and activation,
pollingInterval, cooldownPeriod, fallback, HPA behavior) and the rendered worker Deployment
(terminationGracePeriodSeconds, the container's environment with the ConfigMap and Secret
resolved). It reads the real metric, from the real exporter's ``/scale`` over HTTP (the trigger's
in-cluster URL rewritten to loopback), or the Redis list for the ``redis-list`` trigger. It runs
KEDA's loop and the HPA's (``tests/autoscale/hpa.py``) on their own periods, and plays the
ReplicaSet and the kubelet: one real ``taskqueue-worker`` process per replica with the pod's
environment; a pod that dies is replaced; scale-down picks victims at random (busy ones included),
sends SIGTERM, and SIGKILLs the process tree once the grace period is over.

Every ``sample_every`` seconds it records (t, queued, in-flight, desired, replicas, terminating).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import requests

from tests.autoscale.hpa import (
    DEFAULT_SYNC_PERIOD,
    HPA,
    KEDA_DEFAULT_COOLDOWN,
    KEDA_DEFAULT_POLLING_INTERVAL,
    Behavior,
    Keda,
)
from tests.chart.rendering import find, one, pod_spec, resolve_env
from tests.support import BIN, free_port, kill_tree


@dataclass(frozen=True)
class ScalingSpec:
    """What the emulator takes from the rendered chart."""

    deployment: str
    min_replicas: int
    max_replicas: int
    polling_interval: int
    cooldown: int
    trigger: str  # "metrics-api" | "redis"
    target: float
    activation: float
    scale_url: str  # metrics-api: the in-cluster URL; redis: the list name
    value_location: str
    fallback_threshold: int | None
    fallback_replicas: int
    behavior: Behavior
    grace_period: int
    env: dict[str, str]

    @classmethod
    def from_objects(cls, objs: list[dict[str, Any]]) -> ScalingSpec:
        so = one(objs, "ScaledObject")
        spec = so["spec"]
        deployment = find(objs, "Deployment", spec["scaleTargetRef"]["name"], so["metadata"]["namespace"])
        assert deployment is not None, "the ScaledObject's target Deployment is not rendered"
        pod = pod_spec(deployment)
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        if trigger["type"] == "metrics-api":
            target, activation = float(meta["targetValue"]), float(meta.get("activationTargetValue", 0))
            where, location = meta["url"], meta["valueLocation"]
        elif trigger["type"] == "redis":
            target, activation = float(meta.get("listLength", 5)), float(meta.get("activationListLength", 0))
            where, location = meta["listName"], ""
        else:
            raise ValueError(f"the emulator does not model the {trigger['type']} trigger")
        fallback = spec.get("fallback")
        behavior = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        return cls(
            deployment=deployment["metadata"]["name"],
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            polling_interval=int(spec.get("pollingInterval", KEDA_DEFAULT_POLLING_INTERVAL)),
            cooldown=int(spec.get("cooldownPeriod", KEDA_DEFAULT_COOLDOWN)),
            trigger=trigger["type"],
            target=target,
            activation=activation,
            scale_url=where,
            value_location=location,
            fallback_threshold=int(fallback["failureThreshold"]) if fallback else None,
            fallback_replicas=int(fallback["replicas"]) if fallback else 0,
            behavior=Behavior.from_spec(behavior),
            grace_period=int(pod.get("terminationGracePeriodSeconds", 30)),
            env=resolve_env(deployment, pod["containers"][0], objs),
        )


@dataclass
class Pod:
    name: str
    proc: subprocess.Popen
    log_path: Path
    metrics_port: int
    created: float
    terminating_since: float | None = None
    killed: bool = False


@dataclass(frozen=True)
class Sample:
    t: float
    queued: int
    in_flight: int
    desired: int
    replicas: int
    terminating: int


@dataclass
class Emulator:
    """KEDA + HPA + ReplicaSet + kubelet for one worker Deployment, on loopback."""

    spec: ScalingSpec
    redis_url: str
    redis_password: str
    exporter_base: str  # http://127.0.0.1:<port> of the real exporter
    log_dir: Path
    hpa_sync_period: float = DEFAULT_SYNC_PERIOD
    sample_every: float = 0.5
    seed: int = 0
    tick: float = 0.1

    def __post_init__(self):
        s = self.spec
        # KEDA creates the HPA with minReplicas max(minReplicaCount, 1): 0 <-> 1 is KEDA's own step.
        self.hpa = HPA(max(s.min_replicas, 1), s.max_replicas, s.target, s.behavior)
        self.keda = Keda(s.min_replicas, s.activation, s.cooldown, s.fallback_threshold, s.fallback_replicas)
        self.rng = random.Random(self.seed)
        self.desired = s.min_replicas  # the Deployment's spec.replicas, as installed
        self.pods: list[Pod] = []
        self.timeline: list[Sample] = []
        self.events: list[tuple[float, str, str]] = []
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serial = 0
        self.t0 = time.monotonic()
        self.session = requests.Session()
        self._redis = None

    # -- the metric --------------------------------------------------------------------------------

    @property
    def metric_url(self) -> str:
        """The trigger's in-cluster URL with the host rewritten to the loopback exporter."""
        u, base = urlparse(self.spec.scale_url), urlparse(self.exporter_base)
        return urlunparse((base.scheme, base.netloc, u.path, u.params, u.query, ""))

    def scale_doc(self) -> dict[str, int] | None:
        try:
            r = self.session.get(self.metric_url, timeout=2)
            return r.json() if r.status_code == 200 else None
        except requests.RequestException:
            return None

    def read_metric(self) -> float | None:
        """The trigger's value now, as KEDA's scaler reads it (None: the read failed)."""
        if self.spec.trigger == "redis":
            try:
                return float(self.redis().llen(self.spec.scale_url))
            except Exception:
                return None
        doc = self.scale_doc()
        return None if doc is None else float(doc[self.spec.value_location])

    def redis(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, password=self.redis_password, socket_timeout=2)
        return self._redis

    # -- pods --------------------------------------------------------------------------------------

    def pod_env(self, name: str, metrics_port: int) -> dict[str, str]:
        """The container's rendered environment, with Redis and the metrics port moved to loopback."""
        env = dict(self.spec.env)
        cluster_url = urlparse(env["TASKQUEUE_REDIS_URL"])
        local = urlparse(self.redis_url)
        env["TASKQUEUE_REDIS_URL"] = urlunparse((local.scheme, local.netloc, cluster_url.path, "", "", ""))
        env["TASKQUEUE_REDIS_PASSWORD"] = self.redis_password
        # This Redis has only its default user (tests/test_redis_acl.py runs the chart's Redis with its users).
        env.pop("TASKQUEUE_REDIS_USERNAME", None)
        env.pop("TASKQUEUE_REDIS_CA_CERT", None)
        env["TASKQUEUE_METRICS_HOST"] = "127.0.0.1"
        env["TASKQUEUE_METRICS_PORT"] = str(metrics_port)
        env["TASKQUEUE_WORKER_NAME"] = name  # the pod's host name
        env["TASKQUEUE_LOG_JOB_LINES"] = "true"  # the tests count each job's start and OK lines
        return env

    def _start_pod(self, now: float) -> None:
        self._serial += 1
        name = f"{self.spec.deployment}-{self._serial:03d}"
        port = free_port()
        log_path = self.log_dir / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TASKQUEUE_", "PROMETHEUS_MULTIPROC"))}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "taskqueue-worker")], env={**base, **self.pod_env(name, port)},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.pods.append(Pod(name, proc, log_path, port, now))
        self.event(now, "pod", f"{name} started")

    def _terminate(self, pod: Pod, now: float) -> None:
        pod.terminating_since = now
        with contextlib.suppress(ProcessLookupError):
            pod.proc.send_signal(signal.SIGTERM)
        self.event(now, "pod", f"{pod.name} SIGTERM")

    def kill(self, pod: Pod, now: float | None = None, why: str = "SIGKILL") -> None:
        """SIGKILL a pod's whole process tree at once (as the kernel kills a container)."""
        now = self.now() if now is None else now
        kill_tree(pod.proc.pid)
        pod.killed = True
        self.event(now, "pod", f"{pod.name} {why}")

    def running(self) -> list[Pod]:
        return [p for p in self.pods if p.terminating_since is None]

    def terminating(self) -> list[Pod]:
        return [p for p in self.pods if p.terminating_since is not None]

    def _reconcile(self, now: float) -> None:
        """ReplicaSet + kubelet: reap exited processes, enforce grace periods, match the replica count."""
        for pod in list(self.pods):
            if pod.proc.poll() is not None:
                pod.proc.wait()
                self.pods.remove(pod)
                if pod.terminating_since is None:
                    self.event(now, "pod", f"{pod.name} died (exit {pod.proc.returncode}); replacing it")
                continue
            if pod.terminating_since is not None and now - pod.terminating_since >= self.spec.grace_period:
                self.kill(pod, now, "SIGKILL after the grace period")
        running = self.running()
        if len(running) < self.desired:
            for _ in range(self.desired - len(running)):
                self._start_pod(now)
        elif len(running) > self.desired:
            for pod in self.rng.sample(running, len(running) - self.desired):
                self._terminate(pod, now)

    # -- the loop ----------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, t: float, who: str, what: str) -> None:
        self.events.append((round(t, 2), who, what))

    def _set(self, now: float, who: str, replicas: int) -> None:
        if replicas != self.desired:
            self.event(now, who, f"replicas {self.desired} -> {replicas}")
            self.desired = replicas

    def _sample(self, now: float) -> None:
        # The observer reads the exporter's /scale whatever the trigger: queued and in-flight jobs.
        try:
            doc = self.session.get(self.exporter_base + "/scale", timeout=2).json()
            queued, started = int(doc["queued"]), int(doc["started"])
        except (requests.RequestException, ValueError, KeyError):
            queued = started = -1
        self.timeline.append(
            Sample(round(now, 2), queued, started, self.desired, len(self.running()), len(self.terminating()))
        )

    def step(self, now: float, state: dict[str, float]) -> None:
        with self.lock:
            if now >= state["poll"]:
                state["poll"] += self.spec.polling_interval
                self._set(now, "keda", self.keda.poll(now, self.desired, self.read_metric()))
            if now >= state["sync"]:
                state["sync"] += self.hpa_sync_period
                value = self.keda.metric_for_hpa(self.read_metric(), self.spec.target)
                self._set(now, "hpa", self.hpa.sync(now, self.desired, value))
            self._reconcile(now)
            if now >= state["sample"]:
                state["sample"] += self.sample_every
                self._sample(now)

    def run(self) -> None:
        # The first KEDA poll and HPA sync come right away; each then keeps its own period.
        state = {"poll": 0.0, "sync": 0.0, "sample": 0.0}
        while not self._stop.is_set():
            self.step(self.now(), state)
            self._stop.wait(self.tick)

    def start(self) -> Emulator:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self.run, name="scaling-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the loop, then every pod: SIGTERM, SIGKILL after ``timeout`` (or the grace period)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for pod in self.pods:
            with contextlib.suppress(ProcessLookupError):
                pod.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + min(timeout, self.spec.grace_period)
        for pod in self.pods:
            try:
                pod.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree(pod.proc.pid)
                pod.proc.wait()
        self.pods.clear()
        self.session.close()

    # -- what the tests read -----------------------------------------------------------------------

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{self.spec.deployment}-*.log"))
        )

    def first_time(self, predicate, after: float = 0.0) -> float | None:
        """The first sample time >= ``after`` whose sample satisfies ``predicate``."""
        return next((s.t for s in list(self.timeline) if s.t >= after and predicate(s)), None)


@dataclass
class Chaos:
    """SIGKILLs pods at random, preferring busy ones (a job in flight is lost with the process)."""

    emulator: Emulator
    every: float = 1.0
    max_kills: int = 6
    kills: list[tuple[float, str, bool]] = field(default_factory=list)

    def busy_pods(self) -> set[str]:
        from rq import Worker

        r = self.emulator.redis()
        busy = set()
        for w in Worker.all(connection=r):
            if w.get_current_job_id():
                busy.add(w.name.split(".")[0])
        return busy

    def kill_one(self) -> bool:
        em = self.emulator
        with em.lock:
            pods = [p for p in em.pods if not p.killed and p.proc.poll() is None]
            if not pods:
                return False
            busy = self.busy_pods()
            candidates = [p for p in pods if p.name in busy] or pods
            pod = em.rng.choice(candidates)
            em.kill(pod, why="SIGKILL (chaos)")
            self.kills.append((em.now(), pod.name, pod.name in busy))
            return True
