"""End to end on the kind cluster of `make kind-up`: each step of the README's "On Kubernetes (kind)" section,
in the order a user takes them.

    make kind-up && make test-kind        # make test-kind: .venv/bin/python -m pytest -m kind tests/kind -v

1. `make port-forward`, started by the test on free ports (API_PORT, PROMETHEUS_PORT, GRAFANA_PORT: a forward of
   your own on 8000/9090/3000 is left alone) and stopped with SIGTERM at the end: its three lines, each forward
   answering, and nothing left listening once it is stopped.
2. `curl /start?delay=1`, then `/status/<jobId>` until the job is finished.
3. Prometheus through the forward: the chart's ServiceMonitor targets up, then the README's
   `sum(taskqueue_jobs_enqueued_total)` and `sum(taskqueue_jobs_completed_total)` (and the succeeded outcome's)
   rise by at least the jobs the step enqueued, within a few scrape intervals.
4. Grafana through the forward (admin and the dev-only password of k8s/kube-prometheus-stack-values.yaml): each
   dashboard of helm/taskqueue/files/dashboards/ found by its title (/api/search), its panels' queries those of
   the file (/api/dashboards/uid/<uid>), and Grafana's Prometheus data source answering a taskqueue query.
5. `make scale REPLICAS=<minimum + 1>`: KEDA paused and the workers held there for 30 s (two HPA syncs, which
   would undo a plain `kubectl scale`); `make autoscale`: no pause annotation, KEDA's HPA back with the
   ScaledObject's bounds, and the HPA takes the workers back to the minimum.
6. A burst of /start?delay=30 jobs, (minimum + 2) replicas' worth of job slots (worker.processes x worker.jobSlots
   a replica, the ScaledObject's target): KEDA raises the workers above the minimum, the added workers run jobs
   (more run at once than the minimum's slots), every job finishes. The times are in the "kind e2e" summary.

Skipped, with the reason, only when no cluster answers: no ./bin/kubectl, no kubectl context kind-$KIND_CLUSTER,
or its API server does not answer. Anything else missing is a failure. KIND_CLUSTER, NAMESPACE and RELEASE name
the cluster and the release as for make; KIND_E2E_JOB_SECONDS (30) is the burst's job length. A failing step
says which step failed and shows kubectl's view of it (describe, logs, events). About 5 minutes.

The test without the kind mark runs in `make test`, without a cluster: the names and make command lines used
here are those of k8s/kind.mk and the chart.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / "bin" / "kubectl"  # kind.mk's: every make target calls ./bin/kubectl --context kind-<cluster>
DASHBOARDS = sorted((ROOT / "helm" / "taskqueue" / "files" / "dashboards").glob("*.json"))
PAUSED = "autoscaling.keda.sh/paused-replicas"  # k8s/scale.sh's pause; `make autoscale` removes it
HPA_SYNC = 15  # s: kube-controller-manager's HPA sync period (kind keeps the default)
JOB_SECONDS = int(os.environ.get("KIND_E2E_JOB_SECONDS") or 30)
# What the README, `make kind-up` and `make port-forward` tell a user to query.
ENQUEUED = "sum(taskqueue_jobs_enqueued_total)"
COMPLETED = "sum(taskqueue_jobs_completed_total)"
SUCCEEDED = 'sum(taskqueue_jobs_completed_total{outcome="succeeded"})'
FORWARDS = {"API": "API_PORT", "Prometheus": "PROMETHEUS_PORT", "Grafana": "GRAFANA_PORT"}  # port-forward.sh


# -- names, as k8s/kind.mk makes them ----------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    cluster: str = "taskqueue"
    namespace: str = "taskqueue"
    release: str = "taskqueue"

    @classmethod
    def from_env(cls) -> Names:
        """The make variables of the same names (kind.mk's defaults when unset or empty)."""
        env = os.environ
        return cls(env.get("KIND_CLUSTER") or "taskqueue", env.get("NAMESPACE") or "taskqueue",
                   env.get("RELEASE") or "taskqueue")  # fmt: skip

    @property
    def context(self) -> str:
        return f"kind-{self.cluster}"

    @property
    def fullname(self) -> str:
        """kind.mk's FULLNAME, the chart's fullname: the release if it has "taskqueue", else <release>-taskqueue."""
        return self.release if "taskqueue" in self.release else f"{self.release}-taskqueue"

    @property
    def generator(self) -> str:
        return f"{self.fullname}-generator"

    @property
    def worker(self) -> str:
        return f"{self.fullname}-worker"

    @property
    def exporter(self) -> str:
        return f"{self.fullname}-exporter"

    def pods(self, component: str) -> str:
        """The label selector of a component's pods (the chart's componentSelectorLabels)."""
        return (
            f"app.kubernetes.io/name=taskqueue,app.kubernetes.io/instance={self.release},"
            f"app.kubernetes.io/component={component}"
        )

    def make_vars(self) -> list[str]:
        return [f"KIND_CLUSTER={self.cluster}", f"NAMESPACE={self.namespace}", f"RELEASE={self.release}"]


N = Names.from_env()


def make_command(names: Names, target: str, *variables: str) -> list[str]:
    """`make <target>` from the repository's root, on the cluster and release of ``names``."""
    return ["make", "--no-print-directory", target, *names.make_vars(), *variables]


def make_env() -> dict[str, str]:
    """This environment without the flags of a `make test-kind` around the test (its jobserver, -n, -k...)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def make(target: str, *variables: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(make_command(N, target, *variables), cwd=ROOT, env=make_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


# -- kubectl ----------------------------------------------------------------------------------------


def kubectl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """./bin/kubectl on the kind cluster's context, as every make target calls it."""
    return subprocess.run([str(KUBECTL), "--context", N.context, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def kget(name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """One object (kind/name) as JSON, or None when there is none."""
    proc = kubectl("-n", namespace or N.namespace, "get", name, "-o", "json")
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(f"kubectl get {name}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def condition(obj: dict[str, Any] | None, kind: str) -> str | None:
    """The status ("True", "False", "Unknown") of an object's condition, None when it has none of that type."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status")
    return None


def worker_counts() -> tuple[int, int, int]:
    """The worker Deployment's replicas: wanted (spec), pods, ready."""
    d = kget(f"deployment/{N.worker}")
    assert d is not None, f"no deployment/{N.worker}"
    status = d.get("status") or {}
    return int(d["spec"].get("replicas") or 0), int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0)


@dataclass(frozen=True)
class Autoscaling:
    """The worker ScaledObject as installed (the chart's autoscaling.* and worker.processes x jobSlots)."""

    min: int
    max: int
    polling: int
    cooldown: int
    scale_down_window: int
    per_replica: int  # the trigger's target: work remaining per replica (job slots of one replica)

    @property
    def hpa_min(self) -> int:
        return max(self.min, 1)  # KEDA's HPA: minReplicas is at least 1 (KEDA itself scales 1 <-> 0)

    @property
    def settle(self) -> int:
        """Seconds within which idle workers are back at the minimum: the HPA's scale-down window, KEDA's
        cooldown when the minimum is 0, a poll, two HPA syncs and a margin."""
        return self.scale_down_window + (self.cooldown if self.min == 0 else 0) + self.polling + 2 * HPA_SYNC + 60


def autoscaling() -> Autoscaling:
    so = kget(f"scaledobject/{N.worker}")
    assert so is not None, f"no scaledobject/{N.worker}: the chart was installed with autoscaling.enabled=false"
    spec = so["spec"]
    trigger = spec["triggers"][0]
    meta = trigger.get("metadata") or {}
    per = meta.get("targetValue") if trigger["type"] == "metrics-api" else meta.get("listLength", "5")
    behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {}
    return Autoscaling(  # KEDA's and the HPA's defaults where the chart sets nothing
        min=int(spec.get("minReplicaCount", 0)),
        max=int(spec.get("maxReplicaCount", 100)),
        polling=int(spec.get("pollingInterval", 30)),
        cooldown=int(spec.get("cooldownPeriod", 300)),
        scale_down_window=int((behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds", 300)),
        per_replica=max(1, math.ceil(float(per))),
    )


# -- diagnosis: what a failing step shows ---------------------------------------------------------------


def diagnose(*commands: tuple[str, ...]) -> str:
    out = []
    for args in commands:
        try:
            proc = kubectl(*args, timeout=30)
            lines = (proc.stdout + proc.stderr).rstrip().splitlines()
        except subprocess.TimeoutExpired:
            lines = ["(kubectl timed out)"]
        if len(lines) > 60:
            lines = ["...", *lines[-60:]]
        out.append(f"$ kubectl --context {N.context} {' '.join(args)}\n" + "\n".join(lines))
    return "\n\n".join(out)


def api_diagnosis() -> tuple[tuple[str, ...], ...]:
    ns = N.namespace
    return (
        ("-n", ns, "get", "deployment,statefulset,pods,services", "-o", "wide"),
        ("-n", ns, "describe", f"deployment/{N.generator}"),
        ("-n", ns, "logs", "-l", N.pods("generator"), "--tail=20", "--prefix"),
        ("-n", ns, "logs", "-l", N.pods("worker"), "--tail=20", "--prefix"),
        ("-n", ns, "get", "events", "--sort-by=.lastTimestamp"),
    )


def worker_diagnosis() -> tuple[tuple[str, ...], ...]:
    ns = N.namespace
    return (
        ("-n", ns, "get", "scaledobject,hpa,deployment,pods", "-o", "wide"),
        ("-n", ns, "describe", f"scaledobject/{N.worker}"),
        ("-n", ns, "describe", f"hpa/{N.worker}"),
        ("-n", ns, "describe", f"deployment/{N.worker}"),
        ("-n", ns, "logs", f"deployment/{N.exporter}", "--tail=20"),
        ("-n", ns, "logs", "-l", N.pods("worker"), "--tail=10", "--prefix"),
        ("-n", "keda", "logs", "-l", "app.kubernetes.io/name=keda-operator", "--tail=30"),
        ("-n", ns, "get", "events", "--sort-by=.lastTimestamp"),
    )


def monitoring_diagnosis() -> tuple[tuple[str, ...], ...]:
    return (
        ("-n", N.namespace, "get", "servicemonitor,prometheusrule,configmap,services", "-l",
         f"app.kubernetes.io/instance={N.release}", "-o", "wide"),
        ("-n", "monitoring", "get", "pods,services", "-o", "wide"),
        ("-n", "monitoring", "logs", "deployment/kube-prometheus-stack-grafana", "-c", "grafana-sc-dashboard",
         "--tail=30"),
        ("-n", "monitoring", "logs", "prometheus-kube-prometheus-stack-prometheus-0", "-c", "prometheus",
         "--tail=20"),
    )  # fmt: skip


@contextmanager
def step(name: str, *diagnosis: tuple[str, ...], forward: Forward | None = None) -> Iterator[None]:
    """A used-by step: a failure in it names the step and shows ``diagnosis`` (kubectl commands)."""
    try:
        yield
    except Exception as exc:
        shown = diagnose(*diagnosis)
        if forward is not None:
            shown += f"\n\n--- make port-forward's output ---\n{forward.log()}"
        raise AssertionError(f"used-by step {name!r} failed: {exc}\n\n--- diagnosis ---\n{shown}") from exc


# -- bounded waits ----------------------------------------------------------------------------------


class Seen:
    """A check's falsy answer that says what it saw: a timed-out wait shows the last one."""

    def __init__(self, what: object):
        self.what = what

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return str(self.what)


class Broken(AssertionError):
    """Raised by a check when waiting longer cannot help (a job failed, a login was refused)."""


def wait_for(check: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    """Poll ``check`` until it answers something truthy, and return that; fail after ``timeout`` s with the
    last answer (or exception: a refused connection or a kubectl hiccup counts as "not yet")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = check()
        except Broken:
            raise
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(min(interval, left))


def hold(check: Callable[[], Any], seconds: float, interval: float, what: str) -> int:
    """``check`` stays truthy for ``seconds`` (sampled every ``interval``); returns the number of samples."""
    started = time.monotonic()
    samples = 0
    while True:
        seen = check()
        samples += 1
        if not seen:
            raise AssertionError(f"{what}: no longer so after {time.monotonic() - started:.0f} s: {seen!r}")
        if time.monotonic() - started >= seconds:
            return samples
        time.sleep(interval)


# -- the cluster --------------------------------------------------------------------------------------


def cluster_unavailable() -> str | None:
    """Why no cluster answers (the only reasons to skip), or None."""
    if not os.access(KUBECTL, os.X_OK):
        return "no ./bin/kubectl: `make kind-up` fetches it and makes the cluster (needs Docker or podman)"
    contexts = subprocess.run([str(KUBECTL), "config", "get-contexts", "-o", "name"], capture_output=True,
                              text=True, timeout=30, check=False).stdout.split()  # fmt: skip
    if N.context not in contexts:
        return (
            f"no kubectl context {N.context}: no kind cluster {N.cluster!r} (make kind-up; KIND_CLUSTER names another)"
        )
    try:
        proc = kubectl("get", "--raw", "/readyz", "--request-timeout=10s", timeout=30)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        error = proc.stderr.strip()[:300] if proc is not None else "timed out"
        return (
            f"the kind cluster {N.cluster!r} does not answer ({error}); is its node container running? "
            f"(docker start {N.cluster}-control-plane)"
        )
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    # It answers: from here on, what `make kind-up` installs must be there (a failure, not a skip).
    wanted = [
        (N.namespace, f"deployment/{N.generator}"),
        (N.namespace, f"deployment/{N.worker}"),
        (N.namespace, f"deployment/{N.exporter}"),
        (N.namespace, f"scaledobject/{N.worker}"),
        ("keda", "deployment/keda-operator"),
        ("monitoring", "service/kube-prometheus-stack-prometheus"),
        ("monitoring", "service/kube-prometheus-stack-grafana"),
    ]
    missing = []
    for namespace, name in wanted:
        try:
            if kget(name, namespace) is None:
                missing.append(f"{namespace}/{name}")
        except AssertionError as exc:  # e.g. no such resource type: KEDA's CRDs are not installed
            missing.append(f"{namespace}/{name} ({exc})")
    assert not missing, (
        f"the cluster {N.context} answers, but lacks what `make kind-up` installs: {', '.join(missing)} "
        f"(run make kind-up; RELEASE={N.release}, NAMESPACE={N.namespace})"
    )


# -- make port-forward ------------------------------------------------------------------------------


@dataclass
class Forward:
    """The URLs `make port-forward` printed, and its output so far."""

    api: str
    prometheus: str
    grafana: str
    lines: list[str]
    proc: subprocess.Popen[str] | None = None

    def log(self) -> str:
        return "\n".join(self.lines[-40:]) or "(nothing)"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now (the OS's picks)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def answers(url: str, **kwargs: Any) -> bool:
    return requests.get(url, timeout=10, **kwargs).status_code == 200


def grafana_login() -> tuple[str, str]:
    """Grafana's admin login, from the values `make kind-up` installs kube-prometheus-stack with."""
    values = yaml.safe_load((ROOT / "k8s" / "kube-prometheus-stack-values.yaml").read_text())["grafana"]
    return values["adminUser"], values["adminPassword"]


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group (make, bash, the kubectl forwards), SIGKILL after 15 s."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def forward(cluster) -> Iterator[Forward]:
    """`make port-forward` on free ports for the module's steps; stopped with SIGTERM at the end."""
    ports = dict(zip(FORWARDS.values(), free_ports(3), strict=True))
    cmd = make_command(N, "port-forward", *(f"{k}={v}" for k, v in ports.items()))
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=make_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        shown = " ".join(f"{k}={v}" for k, v in ports.items())
        with step(f"make port-forward {shown}", *api_diagnosis(), *monitoring_diagnosis(),
                  forward=Forward("", "", "", lines)):  # fmt: skip
            wait_for(lambda: proc.poll() is not None or any("Ctrl-C stops the forwards" in x for x in lines),
                     90, 0.2, "make port-forward to print its forwards")  # fmt: skip
            assert proc.poll() is None, f"make port-forward exited with status {proc.returncode}"
            refused = [x for x in lines if "is taken" in x or "did not listen" in x]
            assert not refused, f"a forward did not start: {refused}"
            urls = {}
            for label, variable in FORWARDS.items():
                printed = [m for x in lines if (m := re.match(rf"{label}\s+(http://localhost:(\d+))\s", x))]
                assert printed, f"no {label} line in make port-forward's output"
                assert int(printed[-1].group(2)) == ports[variable], f"{label} is not on {variable}={ports[variable]}"
                urls[label] = printed[-1].group(1)
            fwd = Forward(urls["API"], urls["Prometheus"], urls["Grafana"], lines, proc)
            wait_for(lambda: answers(f"{fwd.api}/healthz"), 30, 0.5, f"the API at {fwd.api}/healthz")
            wait_for(lambda: answers(f"{fwd.prometheus}/-/ready"), 30, 0.5, f"Prometheus at {fwd.prometheus}/-/ready")
            wait_for(lambda: answers(f"{fwd.grafana}/api/health"), 30, 0.5, f"Grafana at {fwd.grafana}/api/health")
        yield fwd
    finally:
        stop_group(proc)
        reader.join(timeout=5)
    # Stopped: nothing of it is left listening (bash's trap stops the kubectl forwards it started).
    with step("make port-forward stops on SIGTERM", forward=Forward("", "", "", lines)):
        wait_for(lambda: not any(listening(p) for p in ports.values()) or Seen([p for p in ports.values()
                 if listening(p)]), 10, 0.5, "the forwarded ports to close")  # fmt: skip


# -- the API and Prometheus ---------------------------------------------------------------------------


def start_job(api: str, delay: int) -> str:
    """GET /start?delay=...: the new job's id."""
    r = requests.get(f"{api}/start", params={"delay": delay}, timeout=15)
    assert r.status_code == 200, f"GET /start?delay={delay}: HTTP {r.status_code} {r.text[:300]}"
    doc = r.json()
    assert doc["statusUrl"].endswith(f"/status/{doc['jobId']}"), doc
    return doc["jobId"]


def job_status(api: str, job_id: str) -> dict[str, Any]:
    r = requests.get(f"{api}/status/{job_id}", timeout=15)
    assert r.status_code == 200, f"GET /status/{job_id}: HTTP {r.status_code} {r.text[:300]}"
    return r.json()


def wait_finished(api: str, ids: list[str], timeout: float, poll: Callable[[], object] | None = None) -> dict:
    """Poll /status/<id> of every job until all are finished; a job that failed ends the wait at once. ``poll``
    runs at each round (the burst follows the worker count with it). Returns the status documents."""
    docs: dict[str, dict[str, Any]] = {}
    pending = list(ids)

    def check() -> object:
        states: Counter[str] = Counter()
        for job_id in list(pending):
            doc = job_status(api, job_id)
            if doc["status"] == "finished":
                docs[job_id] = doc
                pending.remove(job_id)
            elif doc["status"] in ("failed", "stopped", "canceled"):
                raise Broken(f"job {job_id} ended {doc['status']}: {doc.get('error')}")
            else:
                states[doc["status"]] += 1
        if poll is not None:
            poll()
        return True if not pending else Seen(f"{len(docs)} finished, not yet: {dict(states)}")

    wait_for(check, timeout, 2, f"{len(ids)} job(s) to finish")
    return docs


def listed(api: str, state: str) -> int:
    """How many jobs are in ``state`` (GET /list?state=...'s total)."""
    r = requests.get(f"{api}/list", params={"state": state, "limit": 1}, timeout=15)
    assert r.status_code == 200, f"GET /list?state={state}: HTTP {r.status_code} {r.text[:300]}"
    return int(r.json()["total"])


def at_rest(api: str, a: Autoscaling) -> object:
    """No work (none queued or running) and the workers at the minimum, none on its way out."""
    wanted, pods, ready = worker_counts()
    queued, running = listed(api, "queued"), listed(api, "started")
    if wanted == pods == a.min and queued == running == 0:
        return True
    return Seen(f"workers: {wanted} wanted, {pods} pods, {ready} ready (minimum {a.min}); "
                f"jobs: {queued} queued, {running} running")  # fmt: skip


def prom(base: str, query: str) -> float | None:
    """An instant query's single value (a scalar or a one-series vector), None when it has no series."""
    r = requests.get(f"{base}/api/v1/query", params={"query": query}, timeout=15)
    assert r.status_code == 200, f"{query}: HTTP {r.status_code} {r.text[:300]}"
    data = r.json()["data"]
    if data["resultType"] == "scalar":
        return float(data["result"][1])
    return float(data["result"][0]["value"][1]) if data["result"] else None


def scrape_interval() -> int:
    """The chart's ServiceMonitor's scrape interval in seconds (30 when it names none)."""
    sm = kget(f"servicemonitor/{N.fullname}")
    assert sm is not None, f"no servicemonitor/{N.fullname} (monitoring.serviceMonitor.enabled=false?)"
    interval = (sm["spec"]["endpoints"][0].get("interval") or "30s").strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", interval))
    return max(1, math.ceil(seconds))


def targets_up(base: str) -> object:
    """The ServiceMonitor's targets: at least one per Service (generator, worker, exporter), every one up."""
    r = requests.get(f"{base}/api/v1/targets", params={"state": "active"}, timeout=15)
    assert r.status_code == 200, r.text[:300]
    pool = f"serviceMonitor/{N.namespace}/{N.fullname}/"
    ours = [t for t in r.json()["data"]["activeTargets"] if t.get("scrapePool", "").startswith(pool)]
    services = {t["labels"].get("service") for t in ours}
    down = [f"{t['labels'].get('pod')}: {t['health']} {t.get('lastError', '')}" for t in ours if t["health"] != "up"]
    wanted = {N.generator, N.worker, N.exporter}
    if wanted <= services and not down:
        return True
    return Seen(f"scrape pool {pool}: services {sorted(s for s in services if s)}, wanted {sorted(wanted)}; "
                f"not up: {down}")  # fmt: skip


# -- the steps, in the order a user takes them ----------------------------------------------------------


@pytest.mark.kind
def test_make_port_forward_forwards_the_api_prometheus_and_grafana(forward: Forward, kind_report) -> None:
    # The fixture started it, read its three lines and reached each forward; it keeps running.
    with step("make port-forward keeps running", forward=forward):
        assert forward.proc is not None and forward.proc.poll() is None, "make port-forward exited"
        assert answers(f"{forward.api}/list"), f"GET {forward.api}/list"
    kind_report(f"make port-forward: API {forward.api}, Prometheus {forward.prometheus}, Grafana {forward.grafana}")


@pytest.mark.kind
def test_curl_start_then_status_until_finished(forward: Forward, kind_report) -> None:
    started = time.monotonic()
    with step("curl /start, then /status/<jobId> until finished", *api_diagnosis(), forward=forward):
        job_id = start_job(forward.api, delay=1)
        doc = wait_finished(forward.api, [job_id], timeout=120)[job_id]
        assert "after 1 seconds" in str(doc["result"]), doc
    kind_report(f"curl /start -> finished: {time.monotonic() - started:.1f} s")


@pytest.mark.kind
def test_prometheus_counts_the_jobs(forward: Forward, kind_report) -> None:
    jobs = 5
    with step(f"Prometheus: {ENQUEUED} and {COMPLETED}", *monitoring_diagnosis(), forward=forward):
        interval = scrape_interval()
        bound = 3 * interval + 30
        # The chart's ServiceMonitor: Prometheus scrapes the generator, worker and exporter Services.
        wait_for(lambda: targets_up(forward.prometheus), bound, 2, "the chart's scrape targets to be up")
        # A baseline that counts everything before now: wait for a scrape of every series after now.
        now = prom(forward.prometheus, "time()")
        for metric in ("taskqueue_jobs_enqueued_total", "taskqueue_jobs_completed_total"):
            newest = f'min(timestamp({metric}{{namespace="{N.namespace}"}}))'
            wait_for(lambda q=newest: ((v := prom(forward.prometheus, q)) or 0) > now or Seen(v), bound, 2,
                     f"a scrape of {metric} after the step began")  # fmt: skip
        queries = (ENQUEUED, COMPLETED, SUCCEEDED)
        before = {q: prom(forward.prometheus, q) or 0.0 for q in queries}
        ids = [start_job(forward.api, delay=1) for _ in range(jobs)]
        wait_finished(forward.api, ids, timeout=120)

        def risen() -> object:
            current = {q: prom(forward.prometheus, q) or 0.0 for q in queries}
            if all(current[q] - before[q] >= jobs for q in queries):
                return current
            return Seen({q: f"{before[q]:g} -> {current[q]:g}" for q in queries})

        after = wait_for(risen, bound, 3, f"each counter to rise by at least {jobs} (scrape interval {interval} s)")
    kind_report(
        f"Prometheus: {jobs} jobs; " + ", ".join(f"{q} {before[q]:g} -> {after[q]:g}" for q in (ENQUEUED, COMPLETED))
    )


def panel_queries(dashboard: dict[str, Any]) -> set[str]:
    """Every panel's PromQL (rows' nested panels included)."""
    found: set[str] = set()

    def walk(panels: list[dict[str, Any]] | None) -> None:
        for panel in panels or []:
            found.update(t["expr"] for t in panel.get("targets") or [] if t.get("expr"))
            walk(panel.get("panels"))

    walk(dashboard.get("panels"))
    return found


@pytest.mark.kind
def test_grafana_shows_the_charts_dashboard(forward: Forward, kind_report) -> None:
    login = grafana_login()
    grafana = forward.grafana
    with step("Grafana: the dashboard, found through Grafana's API", *monitoring_diagnosis(), forward=forward):
        assert DASHBOARDS, "no helm/taskqueue/files/dashboards/*.json"
        for path in DASHBOARDS:
            wanted = json.loads(path.read_text())
            title = wanted["title"]

            def found(title: str = title) -> object:
                r = requests.get(f"{grafana}/api/search", params={"query": title, "type": "dash-db"}, auth=login,
                                 timeout=15)  # fmt: skip
                if r.status_code in (401, 403):
                    raise Broken(f"Grafana refused {login[0]} / the password of k8s/kube-prometheus-stack-values.yaml: "
                                 f"HTTP {r.status_code} {r.text[:200]}")  # fmt: skip
                assert r.status_code == 200, f"/api/search: HTTP {r.status_code} {r.text[:300]}"
                hits = [h for h in r.json() if h.get("title") == title]
                return hits[0] if hits else Seen(f"search {title!r}: {[h.get('title') for h in r.json()]}")

            # The sidecar loads the chart's ConfigMap (label grafana_dashboard=1) within its own poll.
            hit = wait_for(found, 120, 3, f"Grafana to list the dashboard {title!r} of {path.name}")
            r = requests.get(f"{grafana}/api/dashboards/uid/{hit['uid']}", auth=login, timeout=15)
            assert r.status_code == 200, f"/api/dashboards/uid/{hit['uid']}: HTTP {r.status_code} {r.text[:300]}"
            served = panel_queries(r.json()["dashboard"])
            assert any("taskqueue_" in q for q in served), f"{title!r}: no panel queries a taskqueue_ metric: {served}"
            assert served == panel_queries(wanted), (
                f"{title!r} in Grafana is not {path.name}: missing {panel_queries(wanted) - served}, "
                f"extra {served - panel_queries(wanted)}"
            )
        # The dashboard's data source (its $datasource variable: Prometheus) answers a taskqueue query.
        r = requests.get(f"{grafana}/api/datasources", auth=login, timeout=15)
        assert r.status_code == 200, f"/api/datasources: HTTP {r.status_code} {r.text[:300]}"
        sources = sorted((d for d in r.json() if d.get("type") == "prometheus"), key=lambda d: not d.get("isDefault"))
        assert sources, f"Grafana has no Prometheus data source: {r.json()}"
        body = {
            "queries": [{"refId": "A", "datasource": {"type": "prometheus", "uid": sources[0]["uid"]},
                         "expr": ENQUEUED, "instant": True, "range": False}],
            "from": "now-5m",
            "to": "now",
        }  # fmt: skip
        r = requests.post(f"{grafana}/api/ds/query", json=body, auth=login, timeout=30)
        assert r.status_code == 200, f"/api/ds/query {ENQUEUED}: HTTP {r.status_code} {r.text[:500]}"
        result = r.json()["results"]["A"]
        values = [v for frame in result.get("frames") or [] for col in frame["data"]["values"] for v in col]
        assert values and not result.get("error"), f"Grafana's {sources[0]['name']} answered {ENQUEUED} with {result}"
    kind_report(
        f"Grafana: {', '.join(repr(json.loads(p.read_text())['title']) for p in DASHBOARDS)} found via /api/search"
    )


@pytest.mark.kind
def test_make_scale_pins_the_workers_and_make_autoscale_hands_them_back(forward: Forward, kind_report) -> None:
    a = autoscaling()
    n = a.min + 1
    assert n <= a.max, f"maxReplicaCount {a.max}: no room above the minimum {a.min} to pin the workers at"
    paused = False
    try:
        with step(f"make scale REPLICAS={n}", *worker_diagnosis(), forward=forward):
            # From rest (no work, workers at the minimum), so that the HPA would undo any other count.
            wait_for(lambda: at_rest(forward.api, a), a.settle, 3, "the workers at rest at the minimum")
            started = time.monotonic()
            paused = True
            proc = make("scale", f"REPLICAS={n}", timeout=300)
            assert proc.returncode == 0, (
                f"make scale REPLICAS={n}: status {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
            took = time.monotonic() - started
            so = kget(f"scaledobject/{N.worker}")
            assert ((so or {}).get("metadata", {}).get("annotations") or {}).get(PAUSED) == str(n), so
            wait_for(lambda: condition(kget(f"scaledobject/{N.worker}"), "Paused") == "True", 60, 2,
                     "KEDA to report the ScaledObject paused")  # fmt: skip

            def pinned() -> object:
                counts = worker_counts()
                return True if counts[0] == counts[2] == n else Seen(f"(wanted, pods, ready) = {counts}")

            # Two HPA syncs: without the pause, the HPA would take the idle workers back to the minimum.
            samples = hold(pinned, 2 * HPA_SYNC, 2, f"the workers pinned at {n} while KEDA is paused")
        with step("make autoscale", *worker_diagnosis(), forward=forward):
            handed_back = time.monotonic()
            proc = make("autoscale", timeout=120)
            assert proc.returncode == 0, f"make autoscale: status {proc.returncode}\n{proc.stdout}{proc.stderr}"
            so = kget(f"scaledobject/{N.worker}")
            annotations = (so or {}).get("metadata", {}).get("annotations") or {}
            assert PAUSED not in annotations and "autoscaling.keda.sh/paused" not in annotations, annotations
            paused = False

            def hpa_back() -> object:
                so = kget(f"scaledobject/{N.worker}")
                hpa = kget(f"hpa/{N.worker}")
                if hpa is None:
                    return Seen(
                        f"no hpa/{N.worker} yet (KEDA deletes it while paused); Paused={condition(so, 'Paused')}"
                    )
                spec = hpa["spec"]
                owners = {(o.get("kind"), o.get("name")) for o in hpa["metadata"].get("ownerReferences") or []}
                ok = (
                    condition(so, "Paused") != "True"
                    and ("ScaledObject", N.worker) in owners
                    and spec["scaleTargetRef"]["name"] == N.worker
                    and (spec.get("minReplicas", 1), spec["maxReplicas"]) == (a.hpa_min, a.max)
                )
                return True if ok else Seen(f"Paused={condition(so, 'Paused')}, owners {owners}, min/max "
                                            f"{spec.get('minReplicas')}/{spec['maxReplicas']}")  # fmt: skip

            wait_for(hpa_back, 90, 2, f"KEDA's hpa/{N.worker} back with min {a.hpa_min} and max {a.max}")
            wait_for(lambda: (c := worker_counts())[0] == a.min or Seen(c), a.settle, 3,
                     f"the HPA to take the idle workers from {n} back to the minimum {a.min}")  # fmt: skip
    finally:
        if paused:  # leave the cluster autoscaling, whatever failed
            make("autoscale", timeout=120)
    kind_report(
        f"make scale REPLICAS={n}: {took:.0f} s to {n} ready, held {2 * HPA_SYNC} s ({samples} samples); "
        f"make autoscale: back to {a.min} after {time.monotonic() - handed_back:.0f} s"
    )


def most_at_once(docs: dict[str, dict[str, Any]]) -> int:
    """The most jobs that ran at the same time (their startedAt..endedAt)."""
    events = []
    for doc in docs.values():
        events.append((datetime.fromisoformat(doc["startedAt"]), 1))
        events.append((datetime.fromisoformat(doc["endedAt"]), -1))
    running = peak = 0
    for _, change in sorted(events):  # at the same instant an end (-1) sorts before a start
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.kind
def test_a_burst_makes_keda_add_workers(forward: Forward, kind_report) -> None:
    a = autoscaling()
    replicas = min(a.min + 2, a.max)
    assert replicas > a.min, f"maxReplicaCount {a.max}: KEDA cannot add workers above the minimum {a.min}"
    jobs = a.per_replica * replicas  # the work remaining KEDA divides by per_replica: `replicas` replicas
    with step(f"a burst of {jobs} x /start?delay={JOB_SECONDS}: KEDA adds workers", *worker_diagnosis(),
              forward=forward):  # fmt: skip
        so = kget(f"scaledobject/{N.worker}")
        assert PAUSED not in ((so or {}).get("metadata", {}).get("annotations") or {}), "KEDA is paused: make autoscale"
        wait_for(lambda: at_rest(forward.api, a), a.settle, 3, "the workers at rest at the minimum")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=10) as pool:  # as `make load`: 10 at once
            ids = list(pool.map(lambda _: start_job(forward.api, JOB_SECONDS), range(jobs)))
        enqueued = time.monotonic() - started
        peak = {"wanted": a.min, "ready": a.min}

        def follow() -> tuple[int, int, int]:
            counts = worker_counts()
            peak["wanted"], peak["ready"] = max(peak["wanted"], counts[0]), max(peak["ready"], counts[2])
            return counts

        def above_minimum(which: int) -> object:  # which: 0 wanted, 2 ready
            counts = follow()
            return True if counts[which] > a.min else Seen(f"(wanted, pods, ready) = {counts}")

        # KEDA's metrics-api trigger reads the work remaining from the exporter; the HPA acts on its next sync.
        wait_for(lambda: above_minimum(0), 2 * HPA_SYNC + a.polling + 90, 2,
                 f"KEDA to raise the workers above {a.min} ({jobs} jobs, {a.per_replica} slots a replica)")  # fmt: skip
        raised = time.monotonic() - started
        wait_for(lambda: above_minimum(2), 180, 2, "an added worker to be ready")
        ready = time.monotonic() - started
        slots = a.per_replica * a.hpa_min  # what the minimum's workers run at once
        docs = wait_finished(forward.api, ids, timeout=JOB_SECONDS * math.ceil(jobs / slots) + 240, poll=follow)
        finished = time.monotonic() - started
        at_once = most_at_once(docs)
        assert at_once > slots, (
            f"at most {at_once} jobs ran at once: no more than the minimum's {slots} job slots, so the added "
            f"workers ran none (ready {ready:.0f} s after the burst began)"
        )
    kind_report(
        f"burst: {jobs} jobs of {JOB_SECONDS} s (min {a.min}, max {a.max} replicas, {a.per_replica} job slots a "
        f"replica), enqueued in {enqueued:.1f} s; workers above {a.min} after {raised:.0f} s, an added one ready "
        f"after {ready:.0f} s; peak {peak['wanted']} wanted / {peak['ready']} ready, {at_once} jobs at once; "
        f"all finished after {finished:.0f} s"
    )


# -- without a cluster: this test's names and make command lines are kind.mk's and the chart's ---------


def dry_run(cmd: list[str]) -> str:
    """`make -n` of a command line: what make would run, continuation lines joined, spaces squeezed."""
    proc = subprocess.run([cmd[0], "-n", *cmd[1:]], cwd=ROOT, env=make_env(), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return re.sub(r"[ \t]+", " ", proc.stdout.replace("\\\n", " "))


@pytest.mark.parametrize("release", ["taskqueue", "demo", "my-taskqueue-dev"])
def test_the_names_and_make_commands_are_kind_mks_and_the_charts(release: str) -> None:
    from tests.chart.rendering import render_values

    names = Names(cluster="e2e", namespace="jobs", release=release)
    ports = {"API_PORT": "18000", "PROMETHEUS_PORT": "19090", "GRAFANA_PORT": "13000"}
    out = dry_run(make_command(names, "port-forward", *(f"{k}={v}" for k, v in ports.items())))
    assert f'KUBECTL="{KUBECTL} --context kind-e2e" NAMESPACE=jobs GENERATOR={names.generator} ' in out, out
    assert all(f"{k}={v} " in out for k, v in ports.items()) and "bash k8s/port-forward.sh" in out, out
    out = dry_run(make_command(names, "scale", "REPLICAS=2"))
    assert (
        f'KUBECTL="{KUBECTL} --context kind-e2e" NAMESPACE=jobs WORKER={names.worker} REPLICAS=2 sh k8s/scale.sh' in out
    )
    out = dry_run(make_command(names, "autoscale"))
    assert f"{KUBECTL} --context kind-e2e -n jobs annotate scaledobject/{names.worker} {PAUSED}-" in out, out

    # The objects the steps read are the chart's, under these names and labels.
    objs = render_values(None, release, "jobs")

    def one(kind: str, name: str) -> dict[str, Any]:
        (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
        return obj

    for component in ("generator", "worker", "exporter"):
        deployment = one("Deployment", f"{names.fullname}-{component}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert dict(x.split("=") for x in names.pods(component).split(",")).items() <= labels.items(), labels
    so = one("ScaledObject", names.worker)
    assert so["spec"]["scaleTargetRef"]["name"] == names.worker
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] == names.worker  # the hpa/ read
    assert so["spec"]["triggers"][0]["type"] == "metrics-api" and so["spec"]["triggers"][0]["metadata"]["targetValue"]
    assert 8000 in [p["port"] for p in one("Service", names.generator)["spec"]["ports"]]  # port-forward.sh's 8000
    assert one("ServiceMonitor", names.fullname)["spec"]["endpoints"][0]["interval"]
    (dashboards,) = [
        o for o in objs if o["kind"] == "ConfigMap" and (o["metadata"].get("labels") or {}).get("grafana_dashboard")
    ]
    assert sorted(dashboards["data"]) == [p.name for p in DASHBOARDS]


def test_what_the_steps_query_is_what_a_user_is_told() -> None:
    """The PromQL and the Grafana login the steps use are those `make port-forward` prints and the README shows;
    the dashboards have the titles the Grafana step searches for."""
    script = (ROOT / "k8s" / "port-forward.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    for query in (ENQUEUED, COMPLETED):
        assert query in script, query
    assert COMPLETED in readme
    user, password = grafana_login()
    assert f"{user} / {password}" in script
    metrics = (ROOT / "docs" / "metrics.md").read_text()
    assert "`taskqueue_jobs_enqueued_total`" in metrics and "`taskqueue_jobs_completed_total`" in metrics
    assert "`succeeded`" in metrics
    titles = [json.loads(p.read_text())["title"] for p in DASHBOARDS]
    assert titles and all(titles) and len(set(titles)) == len(titles), titles
    for label in FORWARDS:  # the lines the port-forward fixture reads
        assert re.search(rf'echo "{label}\s+http://localhost:\$port\s', script), label
