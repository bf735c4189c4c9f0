"""Progress (taskqueue.tasks.progress): reported by a running task, shown by /status and `taskqueue wait`.

Real redis-server, generator (gunicorn) and worker processes; the throttle against a real Redis with a worker
in this process (tests/progress_tasks.py).
"""

from __future__ import annotations

import math
import subprocess

import pytest
import requests

from taskqueue.tasks import progress
from tests.support import BIN, ROOT, wait_for


def test_a_start_job_shows_its_progress_moving_and_wait_draws_it(processes, app_env):
    """The seed's /start job (the built-in sleep) reports each second: /status shows the count moving while it
    runs, and the total once finished; `taskqueue wait` draws a bar that ends at 100 %."""
    generator, _worker = processes.generator(), processes.worker()
    job_id = requests.get(generator.base + "/start", params={"delay": 3}, timeout=5).json()["jobId"]
    seen: list[dict] = []

    def record() -> bool:
        doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
        if doc["status"] == "started" and doc["progress"] is not None:
            seen.append(doc["progress"])
        return doc["status"] == "finished"

    wait_for(record, timeout=20, interval=0.1, what="the job finished")
    counts = sorted({p["current"] for p in seen})
    assert len(counts) >= 2 and set(counts) <= {0, 1, 2, 3}, seen
    assert all(p["total"] == 3 and p["message"] == "sleeping" for p in seen if p["current"] < 3)
    done = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
    assert done["progress"]["current"] == 3 and done["progress"]["message"] == "done"
    assert done["progress"]["updatedAt"].endswith("Z")

    second = requests.get(generator.base + "/start", params={"delay": 2}, timeout=5).json()["jobId"]
    cli = subprocess.run(
        [str(BIN / "taskqueue"), "--url", generator.base, "wait", second, "--timeout", "30"],
        capture_output=True, text=True, timeout=40,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "] 100% done" in cli.stderr.splitlines()[-1], cli.stderr
    assert any("%" in line and "sleeping" in line for line in cli.stderr.splitlines()), cli.stderr


def test_a_tight_loop_of_progress_calls_writes_a_few_times_and_its_last_value(processes, app_env, cfg, redis_client):
    """100,000 calls in one job (tests/progress_tasks.py, in a worker process): a few writes to Redis, not one a
    call, and the last value reported is the one /status shows once the job has ended."""
    from taskqueue.api.jobs import JobRequest, JobService
    from taskqueue.store.connection import connect
    from taskqueue.tasks import load

    catalogue = load(["tests.progress_tasks"], entry_points=False)
    svc = JobService(cfg, connect(cfg), catalogue)
    processes.worker(env={**app_env, "TASKQUEUE_TASK_MODULES": "tests.progress_tasks", "PYTHONPATH": str(ROOT)})
    redis_client.config_resetstat()
    task = catalogue["progress.loop"]
    job_id = svc.enqueue(JobRequest(task, task.arguments({"calls": 100_000})))[0].id
    wait_for(lambda: svc.fetch(job_id).get_status() == "finished", timeout=20, what="the loop job finished")
    writes = redis_client.info("commandstats").get("cmdstat_hset", {}).get("calls", 0)
    doc = svc.describe(svc.fetch(job_id))
    assert doc["progress"]["current"] == 99_999 and doc["progress"]["total"] == 100_000, doc
    assert doc["progress"]["message"] == "looping"
    # The job's start and finish, the worker's state and beats, and the progress: its first write and its last.
    assert writes <= 12, f"{writes} HSETs for one job of 100,000 progress calls"


def test_progress_outside_a_job_does_nothing_and_bad_values_are_refused():
    progress(1, 2, "not in a job")  # no job: nothing to write, no error
    with pytest.raises(TypeError):
        progress(True, 2)  # a bool is not a count
    with pytest.raises(TypeError):
        progress(1, math.nan)
    with pytest.raises(TypeError):
        progress(1, 2, message=3)  # type: ignore[arg-type]


def test_progress_is_written_into_an_existing_job_only(service, redis_client):
    """A write lands in the job's meta while the job exists, and does not bring a deleted job's hash back as a
    stub (RQ's Job.save_meta would: HSET makes the key)."""
    from taskqueue.api.jobs import JobRequest
    from taskqueue.tasks import report

    job = service.fetch(service.enqueue(JobRequest(service.catalogue["noop"], []))[0].id)
    report._write(job, report._document(1, 4, "a quarter"))
    assert service.describe(service.fetch(job.id))["progress"]["current"] == 1
    redis_client.delete(job.key)
    report._write(job, report._document(2, 4, "half"))
    assert not redis_client.exists(job.key)
