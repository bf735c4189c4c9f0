"""Job slots (worker/slots.py): one worker process runs many jobs at once, one thread a slot, and keeps every
promise per job: its own timeout, stop on DELETE, warm and requeue shutdown, recovery after SIGKILL, metrics.

Real redis-server, generator (gunicorn), worker and exporter processes; the tasks are tests/slot_tasks.py.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from datetime import datetime

import pytest
import requests
from rq import Worker
from rq.timeouts import JobTimeoutException

from tests.support import ADMIN, ROOT, kill_tree, wait_for, wait_status


@pytest.fixture
def slot_env(app_env):
    return {**app_env, "PYTHONPATH": str(ROOT), "TASKQUEUE_TASK_MODULES": "tests.slot_tasks"}


def batch(base: str, jobs: list[dict]) -> list[str]:
    r = requests.post(base + "/jobs/batch", json={"jobs": jobs}, timeout=10)
    assert r.status_code == 202, r.text
    return [j["jobId"] for j in r.json()["jobs"]]


def statuses(base: str, ids: list[str]) -> list[dict]:
    return [requests.get(f"{base}/status/{i}", timeout=5).json() for i in ids]


def gauge(metrics_text: str, name: str) -> float | None:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def seconds(doc: dict) -> float:
    return (datetime.fromisoformat(doc["endedAt"]) - datetime.fromisoformat(doc["startedAt"])).total_seconds()


@pytest.mark.behaviour
def test_fifty_jobs_run_at_once_in_one_process_each_with_its_own_timeout_and_stop(slot_env, processes, redis_client):
    gen = processes.generator(env=slot_env)
    worker = processes.worker(["--job-slots", "50"], env=slot_env)
    # Every slot is an RQ worker of its own (`rq info` lists them).
    wait_for(lambda: len(Worker.all(connection=redis_client)) == 50, what="50 slots registered")
    waits = [{"task": "slots.wait", "args": {"seconds": 4}} for _ in range(48)]
    ids = batch(
        gen.base,
        [*waits, {"task": "slots.overrun", "args": {"seconds": 10}}, {"task": "sleep", "args": {"seconds": 4}}],
    )
    started = time.monotonic()
    metrics_url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    text = wait_for(
        lambda: (t := requests.get(metrics_url, timeout=2).text) and gauge(t, "taskqueue_worker_busy") == 50 and t,
        timeout=4, interval=0.1, what="50 busy slots",
    )  # fmt: skip
    assert gauge(text, "taskqueue_worker_slots") == 50
    # DELETE stops one running job; the others go on.
    stopped = ids[0]
    assert requests.delete(f"{gen.base}/jobs/{stopped}", headers=ADMIN, timeout=5).status_code == 200
    doc = wait_status(gen.base, stopped, {"stopped", "failed", "finished"}, timeout=3)
    assert doc["status"] == "stopped" and seconds(doc) < 3.5, doc
    docs = [wait_status(gen.base, i, {"finished", "failed", "stopped"}, timeout=15) for i in ids]
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"50 jobs of 4 s took {elapsed:.1f} s: not run at once"
    ran = docs[1:48]
    assert {d["status"] for d in ran} == {"finished"}, [d for d in ran if d["status"] != "finished"][:2]
    assert {d["result"]["pid"] for d in ran} == {worker.proc.pid}  # one process
    assert len({d["result"]["thread"] for d in ran}) == 47  # a thread each
    overrun, seed = docs[48], docs[49]
    assert overrun["status"] == "failed" and "timeout" in overrun["error"].lower(), overrun
    assert seconds(overrun) < 2.5, overrun  # its own 1 s timeout, not the others' and not its 10 s
    assert seed["result"] == "Processed message generating task with delay: 4 after 4 seconds"
    # Each slot's log lines carry its own job's id: the timeout's lines name the job that timed out.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    timed_out = [x for x in lines if "Task exceeded maximum timeout value" in x.get("msg", "")]
    assert timed_out and {x.get("job_id") for x in timed_out} == {ids[48]}, timed_out[:3]


def test_warm_shutdown_finishes_every_running_job(slot_env, processes):
    gen = processes.generator(env=slot_env)
    worker = processes.worker(["--job-slots", "10"], env=slot_env)
    ids = batch(gen.base, [{"task": "slots.wait", "args": {"seconds": 3}} for _ in range(10)])
    wait_for(lambda: {d["status"] for d in statuses(gen.base, ids)} == {"started"}, timeout=5, what="10 running")
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=15) == 0
    assert {d["status"] for d in statuses(gen.base, ids)} == {"finished"}


@pytest.mark.behaviour
def test_requeue_shutdown_puts_every_running_job_back_at_once(slot_env, processes):
    gen = processes.generator(env=slot_env)
    worker = processes.worker(["--job-slots", "10", "--shutdown-mode", "requeue"], env=slot_env)
    ids = batch(gen.base, [{"task": "sleep", "args": {"seconds": 30}} for _ in range(10)])
    wait_for(lambda: {d["status"] for d in statuses(gen.base, ids)} == {"started"}, timeout=5, what="10 running")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5, "requeue mode must not wait for the 30 s jobs"
    docs = statuses(gen.base, ids)
    assert {(d["status"], d["retriesLeft"]) for d in docs} == {("queued", 2)}, docs  # no retry spent
    assert sorted(requests.get(gen.base + "/list?state=queued", timeout=5).json()["jobs"]) == sorted(ids)


def test_a_sigkilled_process_loses_none_of_its_running_jobs(slot_env, processes):
    """All ten jobs of the killed process are retried within the heartbeat bound, by the exporter."""
    env = {**slot_env, "TASKQUEUE_HEARTBEAT_TTL": "6", "TASKQUEUE_CLEANUP_INTERVAL": "2",
           "TASKQUEUE_WORKER_MAINTENANCE": "false"}  # fmt: skip
    gen = processes.generator(env=env)
    processes.exporter(env=env)
    worker = processes.worker(["--job-slots", "10"], env=env)
    ids = batch(gen.base, [{"task": "sleep", "args": {"seconds": 4}} for _ in range(10)])
    wait_for(lambda: {d["status"] for d in statuses(gen.base, ids)} == {"started"}, timeout=5, what="10 running")
    kill_tree(worker.proc.pid)
    worker.proc.wait()
    t0 = time.monotonic()

    def all_retried() -> bool:
        return all(d["status"] in {"queued", "scheduled"} and d["retriesLeft"] == 1 for d in statuses(gen.base, ids))

    wait_for(all_retried, timeout=30, interval=0.2, what="the ten jobs retried, one retry spent each")
    assert time.monotonic() - t0 <= 6 + 2 + 2
    processes.worker(["--job-slots", "10"], env=env)
    docs = [wait_status(gen.base, i, {"finished"}, timeout=30) for i in ids]
    assert {d["status"] for d in docs} == {"finished"}


def test_deadlines_raise_into_the_job_thread_at_its_timeout_and_never_after_cancel():
    """The one timeout thread of a process (worker/slots.py Deadlines), on its own: no worker needed."""
    from taskqueue.tasks import wait
    from taskqueue.worker.slots import Deadlines, timeout_exception

    deadlines = Deadlines()
    outcome: dict[str, object] = {}

    def job(seconds: float, timeout: float, cancel_after: float | None) -> None:
        started = time.monotonic()  # before the deadline is set: the time to it is at least `timeout`
        entry = deadlines.add(timeout, threading.get_ident(), timeout_exception(timeout))
        try:
            wait(seconds if cancel_after is None else cancel_after)
            deadlines.cancel(entry)
            wait(0.0 if cancel_after is None else seconds - cancel_after)
            outcome[threading.current_thread().name] = ("ran", time.monotonic() - started)
        except JobTimeoutException as exc:
            outcome[threading.current_thread().name] = (str(exc), time.monotonic() - started)

    threads = [
        threading.Thread(target=job, args=(2.0, 0.3, None), name="times out"),
        threading.Thread(target=job, args=(0.8, 0.5, 0.2), name="cancelled in time"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    message, took = outcome["times out"]
    assert message == "Task exceeded maximum timeout value (0.3 seconds)" and 0.3 <= took < 0.6, outcome
    assert outcome["cancelled in time"][0] == "ran", outcome
    # Cancelled entries do not pile up in the heap.
    for _ in range(1000):
        deadlines.cancel(deadlines.add(60, threading.get_ident(), timeout_exception(60)))
    assert len(deadlines._heap) <= 64 + 2


def test_jobs_longer_than_the_heartbeat_bound_keep_their_claim(slot_env, processes):
    """Each slot's heartbeats keep its long job claimed: the exporter's cleanup, every second against a 3 s
    heartbeat bound, retries none of four 8 s jobs running side by side."""
    env = {**slot_env, "TASKQUEUE_HEARTBEAT_TTL": "3", "TASKQUEUE_CLEANUP_INTERVAL": "1",
           "TASKQUEUE_WORKER_MAINTENANCE": "false"}  # fmt: skip
    gen = processes.generator(env=env)
    processes.exporter(env=env)
    processes.worker(["--job-slots", "4"], env=env)
    ids = batch(gen.base, [{"task": "sleep", "args": {"seconds": 8}} for _ in range(4)])
    docs = [wait_status(gen.base, i, {"finished", "failed"}, timeout=20) for i in ids]
    assert {(d["status"], d["retriesLeft"]) for d in docs} == {("finished", 2)}, docs
    assert max(seconds(d) for d in docs) < 9.5, docs  # each ran once, from its start


def test_busy_slots_pop_their_next_job_with_each_finish_and_run_maintenance(cfg, service, redis_client, monkeypatch):
    """Two slots of one process on 300 no-op jobs (in this process, burst): every job finishes once; each slot's
    write of its ended jobs takes its next ones in the same round trip (takes of up to 32, so a few dozen writes
    in all), as a worker alone's does; the maintenance slot runs RQ's
    maintenance while busy, as RQ's loop does (a worker pops no job ahead while maintenance is due, so a slot
    loop without this step never did)."""
    from rq.registry import FinishedJobRegistry

    from taskqueue.api.jobs import SERIALIZER, JobRequest
    from taskqueue.fastpath import redis_pipeline
    from taskqueue.store.connection import connect
    from taskqueue.tasks import load
    from taskqueue.worker.slots import LeanSlotWorker, SlotPool

    n = 300
    ids = [j.id for j in service.enqueue_batch([JobRequest(load()["noop"], [])] * n)]
    finishes: list[bool] = []
    real_send = redis_pipeline.send

    def counting_send(pipe, *args, **kwargs):  # notes whether each write of ends takes more, runs the real send
        names = {c[0][0] for c in pipe.command_stack}
        if "XADD" in names:
            finishes.append("EVAL" in names)
        return real_send(pipe, *args, **kwargs)

    monkeypatch.setattr(redis_pipeline, "send", counting_send)
    shared = connect(cfg, retries=0, max_connections=16)
    workers = [
        LeanSlotWorker(["default"], name=f"slots.{i}", connection=shared, serializer=SERIALIZER, maintenance=i == 0)
        for i in range(2)
    ]
    SlotPool(workers, burst=True, logging_level="WARNING").run()
    finished = FinishedJobRegistry("default", connection=redis_client, serializer=SERIALIZER).get_job_ids()
    assert sorted(finished) == sorted(ids)
    assert all(redis_client.xlen(f"rq:results:{i}") == 1 for i in ids)
    assert len(finishes) <= n // 4, f"{len(finishes)} writes of ends for {n} jobs"
    assert finishes.count(True) >= len(finishes) - 6, f"{finishes.count(True)} of {len(finishes)} writes took more"
    assert workers[0].last_cleaned_at is not None and workers[1].last_cleaned_at is not None


@pytest.mark.behaviour
def test_a_process_runs_one_job_of_a_cpu_bound_task_at_a_time_and_others_beside_it(slot_env, processes):
    """Five slots, four jobs of a ``cpu_bound`` task, then a waiting job: the computing jobs' runs never overlap
    (threads holding the GIL only take turns), and the waiting job starts while they wait their turn."""
    gen = processes.generator(env=slot_env)
    processes.worker(["--job-slots", "5"], env=slot_env)
    ids = batch(gen.base, [{"task": "slots.compute", "args": {"rounds": 1_500_000}} for _ in range(4)])
    waiting = batch(gen.base, [{"task": "slots.wait", "args": {"seconds": 0.5}}])
    docs = [wait_status(gen.base, i, {"finished", "failed"}, timeout=30) for i in ids]
    assert {d["status"] for d in docs} == {"finished"}, docs
    runs = sorted((d["result"]["began"], d["result"]["ended"]) for d in docs)
    assert all(ended <= began for (_, ended), (began, _) in itertools.pairwise(runs)), runs
    waited = wait_status(gen.base, waiting[0], {"finished"}, timeout=10)
    assert datetime.fromisoformat(waited["startedAt"]).timestamp() < runs[-1][0], (waited, runs)
