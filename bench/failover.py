"""Redis HA: what a lost primary costs, with and without ``min-replicas-to-write`` (docs/reliability.md).

Each run starts three redis-servers and three Sentinels (tests/sentinel_cluster.py, the chart's sentinel mode),
the generator, two workers and the exporter, and a client enqueueing over HTTP with an Idempotency-Key a job
(retrying 503 after Retry-After). Two scenarios, each with ``min-replicas-to-write`` 1 (the chart's default,
``min-replicas-max-lag`` 10) and 0 (off), in the same run:

- ``kill``: the primary SIGKILLed, brought back as a replica, then the new primary SIGKILLed (the test's run,
  tests/test_failover.py);
- ``partition``: the primary cut off from both replicas (their replication user disabled, their links dropped)
  for 10 s while it takes enqueues, then SIGKILLed: the loss asynchronous replication allows, and what the
  setting prevents.

Figures: seconds from the kill to the first 2xx enqueue and to the Sentinels naming the new primary, answers by
status, accepted jobs that never finished (their records lost with the old primary: 404), jobs run twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import Opts, write_result
from tests.sentinel_cluster import SentinelCluster, run_failover, run_partition
from tests.support import Processes

SCENARIOS = {"kill": run_failover, "partition": run_partition}


def one_run(scenario: str, min_replicas_to_write: int) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="tq-bench-failover-"))
    cluster = SentinelCluster(min_replicas_to_write=min_replicas_to_write).start()
    marks = log_dir / "marks"
    procs = Processes(lambda: {}, log_dir)
    try:
        generator = procs.generator(env=cluster.app_env("generator", marks))
        workers = [procs.worker(env=cluster.app_env("worker", marks)) for _ in range(2)]
        exporter = procs.exporter(env=cluster.app_env("exporter", marks))
        report = SCENARIOS[scenario](cluster, generator, workers, exporter, marks)
    finally:
        procs.kill_all()
        cluster.stop()
    print(f"  {scenario}, min-replicas-to-write {min_replicas_to_write}: {report.summary()}", flush=True)
    return {
        "kill_to_first_2xx_s": [round(s, 2) for s in report.to_first_2xx],
        "kill_to_new_primary_s": [round(s, 2) for s in report.to_promotion],
        "answers": {str(k): v for k, v in report.statuses().items()},
        "server_errors_but_503": len(report.server_errors_but_503()),
        "accepted": len(report.accepted),
        "never_finished": len(report.never_finished),
        "records_lost": len(report.records_lost),
        "finished_twice": len(report.finished_twice),
        "given_up": len(report.given_up),
        "processes_restarted": len(report.restarted),
    }


def failover(opts: Opts) -> dict[str, Any]:
    print("\n== failover: min-replicas-to-write 1 (the chart's) against 0, same scenarios", flush=True)
    out = {f"{scenario}, min-replicas-to-write {n}": one_run(scenario, n) for scenario in SCENARIOS for n in (1, 0)}
    write_result("failover", opts, {"runs": out})
    return out
