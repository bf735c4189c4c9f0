"""End to end on a kind cluster made by `make kind-up` (skipped when there is none: CI has no Docker).

A burst of /start jobs through the generator Service; KEDA raises the worker replicas; every job
finishes; Prometheus (kube-prometheus-stack, scraping the chart's ServiceMonitor) answers the
enqueue and completion queries; after the cooldown the workers fall back to the minimum.

    make kind-up && .venv/bin/pytest -m kind tests/kind -v
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("KIND_CLUSTER", "taskqueue")
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = os.environ.get("NAMESPACE", "taskqueue")
RELEASE = os.environ.get("RELEASE", "taskqueue")
FULLNAME = RELEASE if "taskqueue" in RELEASE else f"{RELEASE}-taskqueue"
WORKER = f"{FULLNAME}-worker"
GENERATOR = f"{FULLNAME}-generator"
BURST = int(os.environ.get("KIND_E2E_JOBS", "60"))
JOB_SECONDS = 5

pytestmark = pytest.mark.kind


def kubectl_binary() -> str | None:
    local = ROOT / "bin" / "kubectl"
    return str(local) if local.exists() else shutil.which("kubectl")


def kubectl(*args: str, check: bool = True, timeout: int = 30) -> str:
    cmd = [kubectl_binary() or "kubectl", "--context", CONTEXT, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {proc.stderr}")
    return proc.stdout


def cluster_reason() -> str | None:
    """Why the test cannot run here, or None when the cluster of `make kind-up` answers."""
    if kubectl_binary() is None:
        return "no kubectl (run `make kind-up`, which needs Docker)"
    try:
        proc = subprocess.run(
            [kubectl_binary(), "--context", CONTEXT, "-n", NAMESPACE, "get", "deployment", WORKER, "-o", "name"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the kind cluster {CLUSTER} does not answer"
    if proc.returncode != 0:
        return f"no kind cluster {CLUSTER} with the taskqueue release (make kind-up): {proc.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module", autouse=True)
def needs_cluster():
    reason = cluster_reason()
    if reason:
        pytest.skip(reason)


@contextmanager
def port_forward(namespace: str, target: str, remote_port: int):
    """`kubectl port-forward` on a free local port; yields http://127.0.0.1:<port>."""
    proc = subprocess.Popen(
        [kubectl_binary(), "--context", CONTEXT, "-n", namespace, "port-forward", target, f":{remote_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, f"port-forward {target}: {line} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_until(predicate, timeout: float, what: str, interval: float = 3.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def worker_replicas() -> int:
    status = json.loads(kubectl("-n", NAMESPACE, "get", "deployment", WORKER, "-o", "json"))
    return int(status["spec"].get("replicas") or 0)


def prom_value(base: str, query: str) -> float | None:
    r = requests.get(f"{base}/api/v1/query", params={"query": query}, timeout=10)
    r.raise_for_status()
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_burst_scales_workers_up_completes_and_scales_back_down():
    scaled = json.loads(kubectl("-n", NAMESPACE, "get", "scaledobject", WORKER, "-o", "json"))
    annotations = scaled["metadata"].get("annotations") or {}
    assert "autoscaling.keda.sh/paused-replicas" not in annotations, "KEDA is paused: run `make autoscale` first"
    min_replicas = int(scaled["spec"].get("minReplicaCount", 0))
    cooldown = int(scaled["spec"].get("cooldownPeriod", 300))
    behavior = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    stabilization = int(behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 300))
    wait_until(lambda: worker_replicas() == min_replicas, cooldown + stabilization + 120, "workers at the minimum")
    before = worker_replicas()

    with (
        port_forward(NAMESPACE, f"service/{GENERATOR}", 8000) as api,
        port_forward("monitoring", "service/kube-prometheus-stack-prometheus", 9090) as prom,
    ):
        enqueued_before = prom_value(prom, "sum(taskqueue_jobs_enqueued_total)") or 0.0

        def start(_):
            r = requests.get(f"{api}/start", params={"delay": JOB_SECONDS}, timeout=10)
            r.raise_for_status()
            return r.json()["jobId"]

        with ThreadPoolExecutor(max_workers=10) as pool:
            job_ids = list(pool.map(start, range(BURST)))
        assert len(set(job_ids)) == BURST

        # KEDA reads the work remaining from the exporter; the HPA scales up (HPA sync + pod start).
        peak = wait_until(lambda: (n := worker_replicas()) > before and n, 180, "worker replicas to rise")

        def unfinished():
            states = {}
            for job_id in job_ids:
                doc = requests.get(f"{api}/status/{job_id}", timeout=10).json()
                states[doc["status"]] = states.get(doc["status"], 0) + 1
            return None if set(states) == {"finished"} else states

        deadline = time.monotonic() + BURST * JOB_SECONDS + 300
        while (states := unfinished()) is not None:
            assert "failed" not in states, states
            assert time.monotonic() < deadline, f"jobs not finished: {states}"
            time.sleep(5)

        # Prometheus scraped the generators' enqueue counters and the exporter's queue state.
        wait_until(
            lambda: (
                (v := prom_value(prom, "sum(taskqueue_jobs_enqueued_total)")) is not None
                and v - enqueued_before >= BURST
            ),
            90,
            "the enqueue counter in Prometheus",
        )
        wait_until(
            lambda: (v := prom_value(prom, 'max(taskqueue_queue_jobs{state="finished"})')) is not None and v >= BURST,
            90,
            "the finished jobs in Prometheus",
        )
        wait_until(
            lambda: (prom_value(prom, 'sum(taskqueue_jobs_completed_total{outcome="succeeded"})') or 0) > 0,
            90,
            "the workers' completion counter in Prometheus",
        )
        assert prom_value(prom, 'max(taskqueue_queue_jobs{state="queued"})') == 0

    print(f"workers: {before} -> {peak} replicas for {BURST} jobs")
    # Queue empty: after the cooldown and the HPA's scale-down stabilization, back to the minimum.
    wait_until(lambda: worker_replicas() == min_replicas, cooldown + stabilization + 180, "workers back at the minimum")
