"""Scheduled jobs: ``runAt`` / ``delaySeconds`` on POST /jobs, run by RQ's scheduler in the exporter.

Real redis-server, generator (gunicorn), worker and exporter processes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests

from tests.support import ADMIN, wait_status


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.behaviour  # run again with the fast paths off (make test)
def test_a_scheduled_job_waits_unseen_by_the_scaler_and_starts_within_a_second_of_its_time(processes):
    """Two jobs, one by delaySeconds and one by runAt in another zone: `scheduled` (with runAt) until then, 0 work
    remaining for the autoscaler meanwhile, started no earlier than runAt and within 2 s (goal) after it. A third,
    for the same time as the second, is deleted: it stays canceled past its time and never runs."""
    generator, _worker, exporter = processes.generator(), processes.worker(), processes.exporter()
    scale = f"http://127.0.0.1:{exporter.metrics_port}/scale"
    asked = datetime.now(UTC)
    later = requests.post(generator.base + "/jobs", json={"task": "noop", "delaySeconds": 3}, timeout=5)
    zone = timezone(timedelta(hours=2))
    run_at = (asked + timedelta(seconds=3.5)).astimezone(zone).isoformat()
    timed = requests.post(generator.base + "/jobs", json={"task": "noop", "runAt": run_at}, timeout=5)
    assert later.status_code == timed.status_code == 202, (later.text, timed.text)
    jobs = {later.json()["jobId"]: later.json(), timed.json()["jobId"]: timed.json()}
    assert at(later.json()["runAt"]) >= asked + timedelta(seconds=3)
    assert at(timed.json()["runAt"]) >= at(run_at) and at(timed.json()["runAt"]).microsecond == 0
    assert "scheduled at" in later.json()["message"]
    canceled = requests.post(
        generator.base + "/jobs", json={"task": "noop", "runAt": timed.json()["runAt"]}, timeout=5
    ).json()["jobId"]
    deleted = requests.delete(f"{generator.base}/jobs/{canceled}", headers=ADMIN, timeout=5)
    assert deleted.status_code == 200 and deleted.json()["status"] == "canceled", deleted.text

    for job_id, accepted in jobs.items():
        doc = requests.get(f"{generator.base}/status/{job_id}", timeout=5).json()
        assert doc["status"] == "scheduled" and doc["runAt"] == accepted["runAt"], doc
        assert doc["startedAt"] is None
    listed = requests.get(generator.base + "/list", params={"state": "scheduled"}, timeout=5).json()
    assert set(listed["jobs"]) == set(jobs)
    # Until the first is due, the autoscaling signal sees no work (read right up to it).
    first_due = min(at(a["runAt"]) for a in jobs.values())
    while datetime.now(UTC) < first_due - timedelta(seconds=0.3):
        assert requests.get(scale, timeout=5).json()["workRemaining"] == 0
        time.sleep(0.2)  # a poll's pace: the loop ends at first_due

    for job_id, accepted in jobs.items():
        doc = wait_status(generator.base, job_id, {"finished", "failed"}, timeout=15)
        assert doc["status"] == "finished", doc
        late = (at(doc["startedAt"]) - at(accepted["runAt"])).total_seconds()
        assert 0 <= late <= 2.0, f"{job_id} started {late:.3f} s after its runAt"
        assert doc["runAt"] == accepted["runAt"]
    # The scheduler's pass that queued the second job was the canceled one's time too.
    doc = requests.get(f"{generator.base}/status/{canceled}", timeout=5).json()
    assert doc["status"] == "canceled" and doc["startedAt"] is None, doc
    assert requests.delete(f"{generator.base}/jobs/{canceled}", headers=ADMIN, timeout=5).status_code == 409


BAD_SCHEDULES = [
    ({"delaySeconds": 5, "runAt": "2030-01-01T00:00:00Z"}, "delaySeconds"),  # one of them, not both
    ({"runAt": "2030-01-01T00:00:00"}, "runAt"),  # no zone
    ({"runAt": "next tuesday"}, "runAt"),
    ({"runAt": 1893456000}, "runAt"),  # a number is not a time
    ({"runAt": "2999-01-01T00:00:00Z"}, "runAt"),  # past TASKQUEUE_MAX_SCHEDULE_DELAY
    ({"delaySeconds": -1}, "delaySeconds"),
    ({"delaySeconds": True}, "delaySeconds"),
    ({"delaySeconds": "60"}, "delaySeconds"),
    ({"delaySeconds": 30 * 86400 + 1}, "delaySeconds"),
]


def test_a_bad_schedule_is_a_400_a_time_past_runs_now_and_a_batch_schedules_each_item(generator, worker):
    for body, field in BAD_SCHEDULES:
        r = requests.post(generator.base + "/jobs", json={"task": "noop", **body}, timeout=5)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_schedule" and error["field"] == field, (body, error)
    past = requests.post(
        generator.base + "/jobs", json={"task": "noop", "runAt": "2020-01-01T00:00:00+01:00"}, timeout=5
    ).json()
    assert "runAt" not in past
    assert wait_status(generator.base, past["jobId"], {"finished"}, timeout=15)["runAt"] is None
    batch = requests.post(
        generator.base + "/jobs/batch",
        json={"jobs": [{"task": "noop", "delaySeconds": 600}, {"task": "noop"}]},
        timeout=5,
    )
    assert batch.status_code == 202, batch.text
    first, second = batch.json()["jobs"]
    assert "runAt" in first and "runAt" not in second
    doc = requests.get(f"{generator.base}/status/{first['jobId']}", timeout=5).json()
    assert doc["status"] == "scheduled" and doc["runAt"] == first["runAt"]
    assert wait_status(generator.base, second["jobId"], {"finished"}, timeout=15)["status"] == "finished"
