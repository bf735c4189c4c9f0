"""Hostile input and exhaustion (issue 20): dead workers listed, a small listen backlog, delay above timeout."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests
from rq import Queue, Worker

from tests.support import Exporter, Generator, Service, WorkerProc, kill_tree, running, wait_for, wait_status

TTL, CLEANUP = 6, 2
# Short heartbeats so a test sees them expire; the exporter (not a worker) cleans the registries.
FAST_BEATS = {
    "TASKQUEUE_HEARTBEAT_TTL": str(TTL),
    "TASKQUEUE_CLEANUP_INTERVAL": str(CLEANUP),
    "TASKQUEUE_WORKER_MAINTENANCE": "false",
}
SLACK = 2.0
WORKER_CLASSES = ["simple", "fork"]


def exported_workers(exporter: Exporter) -> float:
    """The exporter's ``taskqueue_workers{queue="default"}`` at a scrape."""
    text = requests.get(f"http://127.0.0.1:{exporter.metrics_port}/metrics", timeout=2).text
    found = re.search(r'^taskqueue_workers\{queue="default"\} (\S+)$', text, re.MULTILINE)
    assert found, "no taskqueue_workers series"
    return float(found.group(1))


def listed(redis_client) -> tuple[int, set[str]]:
    """What ``rq info`` shows: RQ's worker count of the queue and the names of its live workers."""
    queue = Queue("default", connection=redis_client)
    return Worker.count(queue=queue), {w.name for w in Worker.all(queue=queue)}


def name_of(redis_client, w: WorkerProc) -> str:
    """The RQ worker name of a one-process ``taskqueue-worker``."""
    workers = Worker.all(queue=Queue("default", connection=redis_client))
    return next(x.name for x in workers if x.pid == w.proc.pid)


@contextmanager
def exporter_and_worker(
    app_env, redis_client, tmp_path, worker_class: str
) -> Iterator[tuple[dict, list[str], Exporter, WorkerProc]]:
    """The exporter and a registered worker on short heartbeats; the env and args for more workers, then the two."""
    env = {**app_env, **FAST_BEATS}
    args = ["--worker-class", worker_class]
    exporter = Exporter(env, tmp_path).start()
    worker = WorkerProc(env, tmp_path, args).start()
    with running(exporter, worker):
        wait_for(lambda: listed(redis_client)[0] == 1, what="the first worker registered")
        yield env, args, exporter, worker


def holds(check: Callable[[], object], seconds: float, interval: float = 0.25, what: str = "condition") -> int:
    """Assert ``check()`` is truthy at every poll for ``seconds``; returns the number of polls."""
    deadline, polls = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        assert check(), f"{what} stopped holding after {polls} polls"
        polls += 1
        time.sleep(interval)
    return polls


# -- 1. a SIGKILLed worker leaves the worker list within the heartbeat bound --------------------------


@pytest.mark.parametrize("victim_busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_killed_worker_leaves_the_worker_list_within_the_heartbeat_bound(
    generator, app_env, redis_client, tmp_path, worker_class, victim_busy
):
    with exporter_and_worker(app_env, redis_client, tmp_path, worker_class) as (env, args, exporter, victim):
        victim_name = name_of(redis_client, victim)
        if victim_busy:
            job_id = requests.get(generator.base + "/start?delay=60", timeout=2).json()["jobId"]
            assert wait_status(generator.base, job_id, {"started"}, timeout=10)["status"] == "started"
        # It may take up the victim's job once that is retried: it hands it back when stopped.
        survivor = WorkerProc(env, tmp_path, [*args, "--shutdown-mode", "requeue"]).start()
        with running(survivor):
            wait_for(lambda: listed(redis_client)[0] == 2 and exported_workers(exporter) == 2, what="two workers")
            survivor_name = name_of(redis_client, survivor)
            kill_tree(victim.proc.pid)  # the worker (and its work-horse): an OOM kill of the pod
            victim.proc.wait(timeout=5)
            t0 = time.monotonic()
            wait_for(lambda: exported_workers(exporter) == 1, timeout=TTL + SLACK + 5, what="exported count 1")
            exported_after = time.monotonic() - t0
            wait_for(lambda: listed(redis_client) == (1, {survivor_name}), timeout=TTL + CLEANUP + SLACK + 5,
                     what="rq's worker list without the dead worker")  # fmt: skip
            listed_after = time.monotonic() - t0
            # The exporter counts live worker keys: the dead one's expires within the TTL.
            assert exported_after <= TTL + SLACK, exported_after
            # RQ's set (rq info, Worker.count) is cleaned by the exporter's next pass.
            assert listed_after <= TTL + CLEANUP + SLACK, listed_after
            assert victim_name not in listed(redis_client)[1]
            # The live one stays listed for longer than a TTL (it keeps beating while idle). The survivor is the
            # same idle worker whether the victim was busy or not: checked once, with the idle victim.
            if not victim_busy:
                holds(lambda: listed(redis_client) == (1, {survivor_name}) and exported_workers(exporter) == 1,
                      TTL + SLACK, what="the survivor listed")  # fmt: skip


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_worker_busy_longer_than_the_ttl_stays_listed(generator, app_env, redis_client, tmp_path, worker_class):
    """A job of 1.5 TTLs: the busy worker (and an idle one) stay listed past the first TTL, their keys on the short
    TTL (renewed by beats while the job runs)."""
    with exporter_and_worker(app_env, redis_client, tmp_path, worker_class) as (env, args, exporter, _busy):
        seconds = int(TTL * 1.5)
        job_id = requests.get(f"{generator.base}/start?delay={seconds}", timeout=2).json()["jobId"]
        wait_status(generator.base, job_id, {"started"}, timeout=10)
        idle = WorkerProc(env, tmp_path, args).start()
        with running(idle):
            wait_for(lambda: listed(redis_client)[0] == 2, what="the idle worker registered")
            names = listed(redis_client)[1]
            keys = [f"rq:worker:{n}" for n in names]

            def still_listed() -> bool:
                ttls = [redis_client.ttl(k) for k in keys]
                assert all(0 < t <= TTL for t in ttls), f"worker key TTLs {ttls}, expected within (0, {TTL}]"
                return listed(redis_client) == (2, names) and exported_workers(exporter) == 2

            def finished() -> bool:
                assert still_listed(), "a live worker left the worker list"
                return requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()["status"] == "finished"

            wait_for(finished, timeout=seconds + 15, interval=0.25, what="the long job to finish")
        doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
        assert doc["retriesLeft"] == 2, "the job was taken for abandoned while its worker was alive"
        assert doc["result"] == f"Processed message generating task with delay: {seconds} after {seconds} seconds"


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_live_worker_whose_registration_was_lost_lists_itself_again(app_env, redis_client, tmp_path, worker_class):
    """Its key expired while Redis was away (or Redis came back without it): the next beat re-registers it."""
    env = {**app_env, **FAST_BEATS}
    w = WorkerProc(env, tmp_path, ["--worker-class", worker_class]).start()
    with running(w):
        wait_for(lambda: listed(redis_client)[0] == 1, what="the worker registered")
        name = name_of(redis_client, w)
        key = f"rq:worker:{name}"
        for lost in range(2):  # twice: it is not a one-off
            with redis_client.pipeline() as pipe:
                pipe.delete(key)
                pipe.srem("rq:workers", key)
                for queue in ("high", "default", "low"):  # the default TASKQUEUE_QUEUES
                    pipe.srem(f"rq:workers:{queue}", key)
                pipe.execute()
            assert listed(redis_client) == (0, set()), lost
            t0 = time.monotonic()
            wait_for(lambda: listed(redis_client) == (1, {name}), timeout=TTL + SLACK, what="the worker listed again")
            assert time.monotonic() - t0 <= TTL, "not re-registered within the heartbeat TTL"
            doc = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
            assert doc["queues"] == "high,default,low" and doc["pid"] == str(w.proc.pid) and "birth" in doc, doc
            assert 0 < redis_client.ttl(key) <= TTL


# -- 2. the metrics port (the liveness probe's) answers past many idle connections ---------------------


def listen_backlog(port: int) -> int | None:
    """The listen backlog of a loopback TCP port as ``ss`` reports it (Send-Q of a LISTEN socket)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


@contextmanager
def idle_connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections to ``port`` that send nothing (a slow client, a port scan, a stuck probe)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def probe(url: str, bound: float) -> float:
    """GET ``url`` as a liveness probe does; it must answer 200 within ``bound`` s. Returns the time taken."""
    t0 = time.monotonic()
    r = requests.get(url, timeout=bound)
    took = time.monotonic() - t0
    assert r.status_code == 200, r.status_code
    assert took < bound, took
    return took


# The chart's liveness probe timeout; and the first SYN retransmission (a connection dropped because
# the listen queue was full is retried after 1 s): a probe answered sooner was never dropped.
PROBE_TIMEOUT, SYN_RETRY = 5.0, 1.0


@pytest.mark.parametrize(
    ("target", "idle", "bound"),
    [
        ("worker", 300, SYN_RETRY),
        ("exporter", 300, SYN_RETRY),
        ("generator", 300, SYN_RETRY),
        # A CPU-bound job holds the GIL the accepting thread needs: connections are accepted ~5-10 ms
        # apart, and the probe waits its turn in the queue (a backlog of 5 would drop it instead).
        ("busy-worker", 200, PROBE_TIMEOUT),
    ],
)
def test_the_metrics_port_answers_the_probe_past_many_idle_connections(generator, processes, target, idle, bound):
    if target in ("worker", "busy-worker"):
        port, path = processes.worker().metrics_port, "/metrics"
        if target == "busy-worker":
            body = {"task": "hash", "args": {"rounds": 15_000_000}}  # ~6 s, the probes take ~3
            r = requests.post(generator.base + "/jobs", json=body, timeout=2)
            wait_status(generator.base, r.json()["jobId"], {"started"}, timeout=10)
    elif target == "exporter":
        port, path = processes.exporter().metrics_port, "/healthz"
    else:
        port, path = generator.metrics_port, "/metrics"
    backlog = listen_backlog(port)
    assert backlog is None or backlog >= 128, f"listen backlog {backlog} (socketserver's default is 5)"
    url = f"http://127.0.0.1:{port}{path}"
    for burst in range(2):
        with idle_connections(port, idle):
            took = probe(url, bound)
        assert took < bound, (burst, took)
    probe(url, SYN_RETRY)  # the idle connections left no lasting harm


# -- 4. the delay limit is below the job timeout ------------------------------------------------------


def test_the_default_delay_limit_is_below_the_job_timeout():
    from taskqueue import config as config_module

    cfg = config_module.load(environ={})
    assert cfg.delay_max <= cfg.delay_limit < cfg.job_timeout
    ok = config_module.load(environ={"TASKQUEUE_JOB_TIMEOUT": "30", "TASKQUEUE_DELAY_LIMIT": "25",
                                     "TASKQUEUE_DELAY_MAX": "25"})  # fmt: skip
    assert (ok.delay_limit, ok.job_timeout) == (25, 30)


@pytest.mark.parametrize(
    ("env", "limit", "timeout"),
    [
        ({"TASKQUEUE_DELAY_LIMIT": "600"}, 600, 180),  # the old default
        ({"TASKQUEUE_DELAY_LIMIT": "180"}, 180, 180),  # equal: a sleep of the limit times out
        ({"TASKQUEUE_JOB_TIMEOUT": "60"}, 120, 60),  # a shorter timeout needs a shorter limit
    ],
)
def test_a_delay_limit_not_below_the_job_timeout_is_refused(env, limit, timeout):
    from taskqueue import config as config_module

    with pytest.raises(config_module.ConfigError) as err:
        config_module.load(environ=env)
    message = str(err.value)
    assert f"delay_limit ({limit}) must be below job_timeout ({timeout})" in message
    assert "\n" not in message


@pytest.mark.parametrize("command", ["taskqueue-generator", "taskqueue-worker", "taskqueue-exporter"])
def test_processes_refuse_to_start_with_a_delay_limit_above_the_job_timeout(app_env, tmp_path, processes, command):
    env = {**app_env, "TASKQUEUE_DELAY_LIMIT": "600", "TASKQUEUE_JOB_TIMEOUT": "180"}
    s = processes.add(Service(command, [], env, tmp_path)).start()
    assert s.proc.wait(timeout=15) == 2
    lines = [line for line in s.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "configuration error" in lines[0] and "delay_limit (600) must be below job_timeout (180)" in lines[0]


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ({}, False),
        ({"config": {"job_timeout": 600}}, False),
        ({"config": {"job_timeout": 30, "delay_max": 20, "delay_limit": 25}}, False),
        ({"config": {"delay_limit": 600}}, True),
        ({"config": {"delay_limit": 180}}, True),
        ({"config": {"job_timeout": 100}}, True),  # the default limit, 120, is not below it
    ],
)
def test_the_chart_passes_a_delay_limit_below_the_job_timeout(values, refused):
    helm = pytest.importorskip("helm_python")
    from taskqueue import config as config_module
    from tests.chart.rendering import render_values

    if refused:
        with pytest.raises(helm.HelmError, match=r"config.delay_limit \(\d+\) must be below config.job_timeout"):
            render_values(values)
        return
    objs = render_values(values)
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and "TASKQUEUE_JOB_TIMEOUT" in o.get("data", {}))
    data = cm["data"]
    assert int(data["TASKQUEUE_DELAY_LIMIT"]) < int(data["TASKQUEUE_JOB_TIMEOUT"])
    cfg = config_module.load(environ={k: v for k, v in data.items() if k.startswith("TASKQUEUE_")})
    assert cfg.delay_limit < cfg.job_timeout


def test_the_processes_leave_no_metrics_folder_behind(app_env, tmp_path):
    """A supervised worker's and the generator's own multiprocess folders go when they stop (the one the
    environment names is the environment's), so `make test` leaves no taskqueue-*metrics-* in the temp dir."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**app_env, "TMPDIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": ""}
    gen = Generator(env, tmp_path)
    worker = WorkerProc(env, tmp_path, ["--worker-processes", "2"])
    with running(gen.start(), worker.start()):
        job_id = requests.get(gen.base + "/start?delay=0", timeout=2).json()["jobId"]
        wait_status(gen.base, job_id, {"finished"}, timeout=10)  # both wrote metrics
        assert sorted(p.name.split("-")[1] for p in tmp.glob("taskqueue-*metrics-*")) == ["metrics", "worker"]
        gen.stop()
        assert worker.stop() == 0
    assert list(tmp.glob("taskqueue-*metrics-*")) == []
