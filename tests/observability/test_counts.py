"""The numbers in Prometheus are the truth: N jobs enqueued, N ended, by outcome, through a real Prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support import wait_for

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)


def test_enqueued_sum_equals_jobs_submitted(stack, workload):
    """Two gunicorn processes count into the multiprocess dir; the master serves the sum."""
    prom = stack["prometheus"]
    assert prom.value("sum(taskqueue_jobs_enqueued_total)") == workload.n
    by_task = {
        r["metric"]["task"]: float(r["value"][1]) for r in prom.query("sum by (task) (taskqueue_jobs_enqueued_total)")
    }
    assert {t: v for t, v in by_task.items() if v} == workload.submitted
    catalogue = requests.get(stack["generator"].base + "/tasks", timeout=5).json()["tasks"]
    assert set(by_task) == {t["name"] for t in catalogue}  # created at 0 for every task of the catalogue
    # Both web processes served requests (else the sum would prove nothing about aggregation).
    gen_dir = Path(stack["generator"].env["PROMETHEUS_MULTIPROC_DIR"])
    counter_pids = {p.stem.rsplit("_", 1)[1] for p in gen_dir.glob("counter_*.db")}
    assert len(counter_pids) >= 2, counter_pids
    posts = 'sum(taskqueue_http_requests_total{route="/jobs",method="POST",status="202"})'
    assert prom.value(posts) == workload.single_posts
    batch = 'sum(taskqueue_http_requests_total{route="/jobs/batch",method="POST",status="202"})'
    assert prom.value(batch) == 1
    assert prom.value('sum(taskqueue_http_request_duration_seconds_count{route="/jobs",method="POST"})') == (
        workload.single_posts
    )


def test_completed_counters_add_up_by_outcome(stack, workload):
    prom = stack["prometheus"]
    got = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in prom.query("sum by (outcome) (taskqueue_jobs_completed_total)")
    }
    assert got == {k: float(v) for k, v in workload.expected.items()}
    assert got["succeeded"] + got["failed"] + got["stopped"] == workload.n
    assert got["retried"] == got["failed"] * workload.retries
    # Both worker classes ran jobs, each counted in its long-lived process.
    per_job = 'sum by (job) (taskqueue_jobs_completed_total{outcome=~"succeeded|failed|stopped"})'
    per_worker = {r["metric"]["job"]: float(r["value"][1]) for r in prom.query(per_job)}
    assert set(per_worker) == {"taskqueue-worker-fork", "taskqueue-worker-simple"}
    assert all(v > 0 for v in per_worker.values()), per_worker
    # Every attempt was timed: run and wait histograms count attempts = ended jobs + retries.
    # The timings are batched (flushed every 0.5 s), so the last ones may reach a later scrape.
    attempts = workload.n + workload.expected["retried"]
    for histogram in ("taskqueue_job_run_seconds_count", "taskqueue_job_wait_seconds_count"):
        wait_for(lambda h=histogram: prom.value(f"sum({h})") == attempts, timeout=10, what=f"{histogram} = {attempts}")
    assert prom.value("sum(taskqueue_job_run_seconds_count)") == attempts


def test_queue_state_from_the_exporter(stack, workload):
    prom = stack["prometheus"]
    state = {
        r["metric"]["state"]: float(r["value"][1])
        for r in prom.query('max by (state) (taskqueue_queue_jobs{queue="default"})')
    }
    assert state["queued"] == state["started"] == state["scheduled"] == state["deferred"] == 0
    assert state["finished"] == workload.expected["succeeded"]
    assert state["failed"] + state["canceled"] == workload.failing + workload.stopped
    assert prom.value('max(taskqueue_workers{queue="default"})') == 2
    assert prom.value("max(taskqueue_redis_up)") == 1
    assert prom.value("sum(taskqueue_worker_processes)") == 2
    assert prom.value("sum(taskqueue_worker_busy)") == 0


def test_alert_rules_loaded_and_only_the_failure_ratio_alert_is_pending(stack, workload):
    """The chart's rules evaluate cleanly in Prometheus; the workload's failure ratio trips exactly one alert."""
    prom = stack["prometheus"]
    ratio = workload.failing / (workload.n - workload.stopped)
    assert ratio > 0.1  # the workload is built to cross TaskqueueFailureRatioHigh's threshold

    def alerts():
        active = prom.api("alerts")["data"]["alerts"]
        return active if any(a["labels"]["alertname"] == "TaskqueueFailureRatioHigh" for a in active) else None

    active = wait_for(alerts, timeout=15, interval=0.1, what="TaskqueueFailureRatioHigh to be pending")
    assert [(a["labels"]["alertname"], a["labels"].get("queue"), a["state"]) for a in active] == [
        ("TaskqueueFailureRatioHigh", "default", "pending")
    ]
    # rate() extrapolates each series over its own samples, so the value is near the ratio, not equal.
    assert float(active[0]["value"]) > 0.1
    rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
    assert len(rules) >= 7
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_prometheus_scraped_every_target_throughout_the_workload(stack, workload):
    """Prometheus's own record: no scrape failed or timed out (1 s) while the jobs ran.

    The < 50 ms bound is asserted on idle endpoints in test_process_model; here the numbers under
    load (every process of the stack busy on 2 cores) are printed for the record.
    """
    prom = stack["prometheus"]
    window = f"[{int(workload.seconds) + 10}s]"
    assert {r["metric"]["job"]: float(r["value"][1]) for r in prom.query(f"min_over_time(up{window})")} == {
        "taskqueue-generator": 1.0,
        "taskqueue-worker-fork": 1.0,
        "taskqueue-worker-simple": 1.0,
        "taskqueue-exporter": 1.0,
    }
    medians = {
        r["metric"]["job"]: round(float(r["value"][1]) * 1000, 1)
        for r in prom.query(f'quantile_over_time(0.5, scrape_duration_seconds{{job=~"taskqueue-.*"}}{window})')
    }
    worst = {
        r["metric"]["job"]: round(float(r["value"][1]) * 1000, 1)
        for r in prom.query(f'max_over_time(scrape_duration_seconds{{job=~"taskqueue-.*"}}{window})')
    }
    print(f"\nworkload: {workload.n} jobs in {workload.seconds:.1f}s; scrape ms, median {medians} max {worst}")
    assert len(worst) == 4 and all(v < 1000 for v in worst.values()), worst
