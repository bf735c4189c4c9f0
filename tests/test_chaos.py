"""The chaos run at CI size: nothing accepted is lost while workers die and Redis restarts."""

from __future__ import annotations

import pytest

from tests.chaos import MIX_FAIL_EVERY, run

pytestmark = pytest.mark.behaviour  # run again with the fast paths off (make test)


def test_chaos_loses_nothing(tmp_path):
    jobs = 600
    report = run(jobs, workers=4, kill_every=1.5, time_limit=240, log_dir=tmp_path)
    print(report.summary())
    assert not report.timed_out, report.statuses
    assert report.accepted == jobs  # clients retried through the Redis restart; keys made it exactly-once
    assert report.lost == 0 and report.left_started == 0
    assert report.finished + report.failed == report.accepted
    assert report.worker_kills >= 3 and report.redis_restarts == 1
    # Failures are the jobs that fail on purpose, plus any killed more often than it had retries.
    assert report.failed >= jobs // MIX_FAIL_EVERY
    assert report.failed - jobs // MIX_FAIL_EVERY <= report.worker_kills
    # Counters agree with Redis: every accepted job was counted once at enqueue, except those whose
    # enqueue committed as Redis shut down (each such request saw a 503 - up to one per client
    # thread in flight - and its retry replayed the job, which is not counted again); each success
    # was counted by the process that ran it (one SIGKILL can land between the job's end and its count).
    assert report.accepted - report.http_503 <= report.enqueued_counter <= report.accepted
    assert 0 <= report.finished - report.succeeded_counter <= report.worker_kills
