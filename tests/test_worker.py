"""The worker entry point: warm and cold shutdown, several processes, both worker classes, stop a job."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from tests.support import ADMIN, wait_for, wait_status

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)

SEED_RESULT_2 = "Processed message generating task with delay: 2 after 2 seconds"


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_warm_shutdown_finishes_running_job(generator, processes, worker_class):
    w = processes.worker(["--worker-class", worker_class])
    job_id = requests.get(generator.base + "/start?delay=2", timeout=2).json()["jobId"]
    wait_status(generator.base, job_id, {"started"}, timeout=10)
    w.signal(signal.SIGTERM)
    assert w.proc.wait(timeout=15) == 0
    doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
    assert doc["status"] == "finished"
    assert doc["result"] == SEED_RESULT_2


def test_second_signal_is_cold_shutdown(generator, processes):
    w = processes.worker(["--worker-class", "fork"])
    job_id = requests.get(generator.base + "/start?delay=30", timeout=2).json()["jobId"]
    wait_status(generator.base, job_id, {"started"}, timeout=10)
    w.signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a repeat within 1 s (duplicate signals from a pool)
    w.signal(signal.SIGTERM)
    t0 = time.monotonic()
    w.proc.wait(timeout=10)
    assert time.monotonic() - t0 < 10
    doc = requests.get(f"{generator.base}/status/{job_id}", timeout=2).json()
    assert doc["status"] != "finished"


def test_several_worker_processes_run_jobs_in_parallel(generator, processes):
    w = processes.worker(["--worker-processes", "3"])
    ids = [requests.get(generator.base + "/start?delay=2", timeout=2).json()["jobId"] for _ in range(3)]
    wait_for(lambda: len(requests.get(generator.base + "/list", timeout=2).json()["jobs"]) == 3,
             timeout=10, what="3 jobs running at once")  # fmt: skip
    for job_id in ids:
        assert wait_status(generator.base, job_id, {"finished"}, timeout=15)["result"] == SEED_RESULT_2
    metrics = requests.get(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=2).text
    assert "taskqueue_worker_processes 3.0" in metrics
    assert 'taskqueue_jobs_completed_total{outcome="succeeded",queue="default",task="sleep"} 3.0' in metrics
    assert w.stop() == 0


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_delete_stops_a_running_job(generator, processes, worker_class):
    processes.worker(["--worker-class", worker_class], stop_timeout=5)
    job_id = requests.get(generator.base + "/start?delay=60", timeout=2).json()["jobId"]
    wait_status(generator.base, job_id, {"started"}, timeout=10)
    r = requests.delete(f"{generator.base}/jobs/{job_id}", headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    doc = wait_status(generator.base, job_id, {"stopped"}, timeout=10)
    assert doc["retriesLeft"] == 2  # a stop is not a failure: no retry is spent
    assert doc["error"] == "JobStopped: stopped on request"  # not a timeout it never had
    # The worker is still alive and takes the next job.
    nxt = requests.get(generator.base + "/start?delay=0", timeout=2).json()["jobId"]
    assert wait_status(generator.base, nxt, {"finished"}, timeout=10)["result"].startswith("Processed message")
    # A stopped job can be requeued.
    r = requests.post(f"{generator.base}/jobs/{job_id}/requeue", headers=ADMIN, timeout=5)
    # The answer is the job's state after the requeue: an idle worker may have started it already.
    assert r.status_code == 200 and r.json()["status"] in ("queued", "started")
    wait_status(generator.base, job_id, {"started"}, timeout=10)
    # Running again, it is listed as running only, not also as failed (where the stop had put it).
    failed = requests.get(generator.base + "/list?state=failed", timeout=2).json()
    assert job_id not in failed["jobs"] and failed["total"] == 0
    # Stop it again, so no 60 s work-horse outlives the test (a horse is in its own process group).
    assert requests.delete(f"{generator.base}/jobs/{job_id}", headers=ADMIN, timeout=5).status_code == 200
    wait_status(generator.base, job_id, {"stopped"}, timeout=10)


def test_bad_config_exits_with_a_clear_message(app_env, processes):
    w = processes.worker(wait=False, env={**app_env, "TASKQUEUE_WORKER_CLASS": "threads"})
    assert w.proc.wait(timeout=10) == 2
    assert "configuration error" in w.log() and "worker_class" in w.log()
    assert "Traceback" not in w.log()
