"""What ``taskqueue.tasks.progress`` costs a task: a loop of 1,000,000 calls in a job against the same loop
without them, run by one worker process, paired (the two jobs alternate in one queue); target ≤ 5 µs a call."""

from __future__ import annotations

from typing import Any

from rq.job import Job

from bench import procs
from bench.common import ROOT, Opts, fast_paths_env, print_ratios, print_rows, summary, write_result
from taskqueue import config as config_module
from taskqueue.api.jobs import SERIALIZER, JobRequest, JobService
from taskqueue.store.connection import connect
from taskqueue.tasks import load

TASKS_ENV = {"TASKQUEUE_TASK_MODULES": "tests.progress_tasks", "PYTHONPATH": str(ROOT)}


def progress(opts: Opts) -> dict[str, Any]:
    calls = opts.n(1_000_000, 100_000)
    rounds = 3 if opts.quick else 7
    catalogue = load(["tests.progress_tasks"], entry_points=False)
    task = catalogue["progress.loop"]
    with procs.redis_server() as redis:
        cfg = config_module.load(environ={**redis.env(), **fast_paths_env()})
        svc = JobService(cfg, connect(cfg), catalogue)
        ids = {report: [] for report in (True, False)}
        for _ in range(rounds):
            for report in (True, False):
                req = JobRequest(task, task.arguments({"calls": calls, "report": report}))
                ids[report].append(svc.enqueue(req)[0].id)
        proc = procs.our_worker(redis, "simple", {"TASKQUEUE_LOG_LEVEL": "WARNING", **fast_paths_env(), **TASKS_ENV})
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"worker exited {proc.returncode}")
        client = redis.client()
        seconds = {
            report: [Job.fetch(i, connection=client, serializer=SERIALIZER).return_value()["seconds"] for i in job_ids]
            for report, job_ids in ids.items()
        }
    per_call = [(w - wo) / calls * 1e6 for w, wo in zip(seconds[True], seconds[False], strict=True)]
    stats = {
        "loop with progress(), µs a turn": summary(s / calls * 1e6 for s in seconds[True]),
        "loop without, µs a turn": summary(s / calls * 1e6 for s in seconds[False]),
        "progress() µs a call (paired difference)": summary(per_call),
    }
    print_rows(f"progress(): {calls:,} calls in one job, {rounds} pairs", [(k, "us", s) for k, s in stats.items()])
    cost = stats["progress() µs a call (paired difference)"]["median"]
    print_ratios({"µs a call": cost})
    out = {"calls": calls, "rounds": rounds, "stats": stats, "goals": {"<= 5 µs a call": cost <= 5}}
    write_result("progress", opts, out)
    return out
