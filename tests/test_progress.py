"""Progress (taskqueue.tasks.progress): reported by a running task, shown by /status and `taskqueue wait`.

Real redis-server, generator (gunicorn) and worker processes; the throttle against a real Redis with a worker
in this process (tests/progress_tasks.py).
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import threading

import pytest
import requests

from taskqueue.tasks import progress, report
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
    task = catalogue["progress.loop"]
    sha = hashlib.sha1(report.SAVE_META.encode()).hexdigest()
    commands: list[str] = []

    def watch() -> None:  # Redis's MONITOR: every command the server runs, as it runs it
        with redis_client.monitor() as monitor:
            ready.set()
            for seen in monitor.listen():
                if seen["command"] == "ECHO progress-test-done":
                    return
                commands.append(seen["command"])

    ready = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(5)
    job_id = svc.enqueue(JobRequest(task, task.arguments({"calls": 100_000})))[0].id
    wait_for(lambda: svc.fetch(job_id).get_status() == "finished", timeout=20, what="the loop job finished")
    redis_client.echo("progress-test-done")
    watcher.join(10)
    writes = sum(1 for c in commands if c.startswith("EVALSHA " + sha))  # redis-py runs a Script by its SHA
    finished = svc.fetch(job_id)
    doc = svc.describe(finished)
    assert doc["progress"]["current"] == 99_999 and doc["progress"]["total"] == 100_000, doc
    assert doc["progress"]["message"] == "looping"
    # At most one write each INTERVAL the loop runs, by the process's writer (none if the job ends first: the last
    # value then goes with the job's end, in its finish with fast paths on, or in a write of its own).
    seconds = finished.return_value()["seconds"]
    bound = 2 + math.ceil(seconds / report.INTERVAL)
    assert 0 <= writes <= bound, f"{writes} writes in {seconds:.2f} s of 100,000 calls"


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

    job = service.fetch(service.enqueue(JobRequest(service.catalogue["noop"], []))[0].id)
    report._write(job, report._document(1, 4, "a quarter"))
    assert service.describe(service.fetch(job.id))["progress"]["current"] == 1
    redis_client.delete(job.key)
    report._write(job, report._document(2, 4, "half"))
    assert not redis_client.exists(job.key)


def test_a_job_never_writes_the_progress_another_job_kept(service, redis_client):
    """Values kept between writes belong to their job: a job run outside a worker (``job.perform()``) leaves them
    unwritten, and the next job in that thread neither writes them nor has them written into it."""
    from taskqueue.api.jobs import JobRequest

    first, second = (service.fetch(service.enqueue(JobRequest(service.catalogue["noop"], []))[0].id) for _ in "ab")
    report.begin(first)
    progress(1, 4, "written")
    progress(2, 4, "kept")  # within INTERVAL of the write: kept for the next write or the job's end
    report.begin(second)  # the next job in this thread, with no flush of the first in between
    report.flush(second)

    def message(job) -> str | None:
        doc = service.describe(service.fetch(job.id))["progress"]
        return None if doc is None else doc["message"]

    # The process's writer sends what a running job reported within INTERVAL; the kept value never goes out.
    wait_for(lambda: message(first) == "written", timeout=2 * report.INTERVAL + 1, what="the first write")
    assert message(second) is None
    report.begin(first)
    progress(1, 4, "again")
    progress(3, 4, "kept")
    report.flush(second)  # a flush for another job writes nothing of this one's
    wait_for(lambda: message(first) == "again", timeout=2 * report.INTERVAL + 1, what="the second write")
    assert message(first) == "again" and message(second) is None


def test_a_jobs_last_value_is_written_at_its_end_and_never_overwritten_by_a_batch(service, redis_client):
    """A value queued for the process's writer and not sent yet when the job ends is written by the end's
    flush, at once; the writer's batch then holds nothing older of that job."""
    from taskqueue.api.jobs import JobRequest

    job = service.fetch(service.enqueue(JobRequest(service.catalogue["noop"], []))[0].id)
    report.begin(job)
    progress(1, 2, "queued for the writer")
    report.flush(job)  # the job ends before the writer's next batch
    assert service.describe(service.fetch(job.id))["progress"]["message"] == "queued for the writer"
    report.begin(job)
    progress(1, 2, "first")
    progress(2, 2, "last")  # kept: within INTERVAL of the first
    report.flush(job)
    assert service.describe(service.fetch(job.id))["progress"]["message"] == "last"
    assert job.key not in report._WRITER._pending  # no batch to come holds an older value of it
