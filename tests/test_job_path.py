"""The in-process worker's lean job path (taskqueue.job_path): RQ's records, in fewer round trips.

Real redis-server, real RQ 3.0 objects read the records back; workers run in this process (their
signal-based timeouts need the main thread) or through ``taskqueue-worker``.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time

import pytest
import redis
from redis.connection import AbstractConnection
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.suspension import resume, suspend

from taskqueue.api.jobs import SERIALIZER, JobRequest, JobService
from taskqueue.fastpath import job_path, redis_pipeline
from taskqueue.fastpath.job_path import LeanJob, LeanResult
from taskqueue.store.connection import connect
from taskqueue.store.outcomes import BoundedResultJob
from taskqueue.tasks import load, noop
from taskqueue.worker.classes import ForkingWorker, InProcessWorker, LeanInProcessWorker
from tests.support import WorkerProc, wait_for

TASKS = load()  # the built-in tasks
NOOP = JobRequest(TASKS["noop"], [])


def enqueue_job(service: JobService, req: JobRequest) -> Job:
    """Enqueue through the generator's path and read the job back as RQ sees it."""
    return service.fetch(service.enqueue(req)[0].id)


def sleep(seconds: int) -> JobRequest:
    return JobRequest(TASKS["sleep"], TASKS["sleep"].arguments({"seconds": seconds}))


@pytest.fixture(autouse=True)
def drop_lean_job_queues():
    """LeanJob keeps a Queue (and so a client) per connection: not across tests, whose clients differ."""
    yield
    job_path._ORIGIN_QUEUES.clear()


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """RQ's work() installs SIGINT/SIGTERM handlers in this process: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def make_worker(cfg, queues=None, **kwargs) -> LeanInProcessWorker:
    """The worker ``taskqueue-worker`` builds, in this process."""
    return LeanInProcessWorker(
        list(queues or cfg.queues),
        name=f"test-{time.monotonic_ns()}",
        connection=connect(cfg, retries=0),
        serializer=SERIALIZER,
        default_result_ttl=cfg.result_ttl,
        heartbeat_ttl=cfg.heartbeat_ttl,
        **kwargs,
    )


def commands(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def test_short_jobs_go_in_takes_of_up_to_32_and_leave_rqs_records(cfg, service, redis_client):
    """N no-op jobs: RQ's finished records for each, nothing left running or taken. The first is claimed
    as it starts (it came while the worker was idle); each later take of jobs that all ended within
    CLAIM_AFTER is twice the last (1, 2, 4 ... 32) and is written in one transaction with the ends of the
    last: about N / 32 + 6 round trips for all, and under 11 commands a job, where claiming each job
    costs 2 round trips and 26 commands (the first job's path, and a long job's: see test_job_takes.py)."""
    n = 200

    def burst() -> tuple[int, int, LeanInProcessWorker]:
        w = make_worker(cfg)
        redis_client.config_resetstat()
        sent = []
        real_send = AbstractConnection.send_packed_command

        def counting_send(conn, *args, **kwargs):  # a wrapper that counts round trips, not a mock
            sent.append(1)
            return real_send(conn, *args, **kwargs)

        real_pipeline_send = redis_pipeline.send

        def counting_pipeline_send(pipe, *args, **kwargs):  # both pipelines a job go through send
            kinds.append("finish" if any(c[0][0] == "XADD" for c in pipe.command_stack) else "other")
            return real_pipeline_send(pipe, *args, **kwargs)

        real_beat = LeanInProcessWorker._write_with_counters

        def counting_beat(worker, *args, **kwargs):  # counts the worker key's beats, runs the real one
            beats.append(1)
            return real_beat(worker, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(AbstractConnection, "send_packed_command", counting_send)
            mp.setattr(redis_pipeline, "send", counting_pipeline_send)
            mp.setattr(LeanInProcessWorker, "_write_with_counters", counting_beat)
            w.work(burst=True)
        calls = commands(redis_client)
        return sum(calls.values()) - calls.get("config|resetstat", 0) - calls.get("info", 0), len(sent), w

    kinds: list[str] = []
    beats: list[int] = []
    idle_cmds, idle_trips, _ = burst()
    idle_beats = len(beats)
    ids = [j.id for j in service.enqueue_batch([NOOP] * n)]
    kinds.clear()
    beats.clear()
    cmds, trips, w = burst()
    # The worker key's beats (every heartbeat_ttl / 3: more of them when this host runs slowly).
    extra_beats = max(0, len(beats) - idle_beats)
    takes = kinds.count("finish")  # each writes ends (XADD) and takes the next jobs
    assert 1 + 5 + n // job_path.TAKE_MAX <= takes <= 1 + 5 + n // job_path.TAKE_MAX + 2, kinds
    # Beyond the ends' and takes' commands: the first job's claim, state writes, a beat's 12 in 2 round trips.
    assert cmds - idle_cmds <= 11 * n + 40 + 12 * extra_beats
    assert trips - idle_trips <= takes + 5 + 2 * extra_beats

    queue = Queue("default", connection=redis_client, serializer=SERIALIZER)
    finished = set(FinishedJobRegistry(queue=queue).get_job_ids())
    assert finished == set(ids)
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []
    assert redis_client.llen(queue.intermediate_queue_key) == 0 and redis_client.llen(queue.key) == 0
    assert redis_client.keys("rq:execution:*") == [] and redis_client.keys("rq:executions:*") == []
    for job in Job.fetch_many(ids[:20], connection=redis_client, serializer=SERIALIZER):
        assert job.get_status() == "finished" and job.worker_name == w.name
        assert job.started_at <= job.ended_at
        assert 0 < redis_client.ttl(job.key) <= cfg.result_ttl
        (result,) = job.results()
        assert result.type == result.Type.SUCCESSFUL and result.return_value == noop()
    assert w.executions == {}  # none left behind by the jobs that ended unclaimed (nor busy)
    # The job counters went out at teardown; RQ keeps a dead worker's key for 60 s.
    assert int(redis_client.hget(w.key, "successful_job_count")) == n
    assert float(redis_client.hget(w.key, "total_working_time")) > 0


def test_job_hash_and_result_match_stock_rq(cfg, service, redis_client):
    """The same job run by stock RQ's SimpleWorker and by ours: the same fields in the job and result, for
    a job claimed as it starts (the first) and for jobs of takes, which end unclaimed (the others)."""
    stock_job = enqueue_job(service, NOOP)
    SimpleWorker(["default"], connection=redis_client, serializer=SERIALIZER).work(burst=True)
    ours_jobs = [enqueue_job(service, NOOP) for _ in range(4)]
    make_worker(cfg).work(burst=True)
    stock = redis_client.hgetall(Job.key_for(stock_job.id))
    (stock_result,) = redis_client.xrange(f"rq:results:{stock_job.id}")
    for ours_job in ours_jobs:
        ours = redis_client.hgetall(Job.key_for(ours_job.id))
        assert stock[b"status"] == ours[b"status"] == b"finished"
        assert set(stock) == set(ours)
        (ours_result,) = redis_client.xrange(f"rq:results:{ours_job.id}")
        assert set(stock_result[1]) == set(ours_result[1])
        assert 0 < redis_client.ttl(Job.key_for(ours_job.id)) <= cfg.result_ttl


REGISTRIES = {
    "started_job_registry": StartedJobRegistry,
    "finished_job_registry": FinishedJobRegistry,
    "failed_job_registry": FailedJobRegistry,
}


@pytest.mark.parametrize("prop", sorted(REGISTRIES))
def test_lean_jobs_registries_are_the_ones_rq_builds(prop, service, redis_client):
    """``LeanJob``'s registry properties (from a kept Queue) give what RQ's own give a Job."""
    job = LeanJob.fetch(service.enqueue(NOOP)[0].id, connection=redis_client, serializer=SERIALIZER)
    ours, rqs = getattr(job, prop), getattr(Job, prop).fget(job)
    assert type(ours) is type(rqs) is REGISTRIES[prop]
    assert (ours.name, ours.key, ours.serializer, ours.job_class) == (rqs.name, rqs.key, rqs.serializer, LeanJob)
    assert ours.connection is rqs.connection is redis_client
    kept = job._origin_queue()
    assert kept is job._origin_queue() and getattr(job, prop).connection is kept.connection  # reused, not rebuilt


def test_lean_job_keeps_a_bounded_number_of_queues(redis_client):
    jobs = [LeanJob(connection=redis_client, serializer=SERIALIZER) for _ in range(job_path.ORIGIN_QUEUES_MAX + 5)]
    for i, job in enumerate(jobs):
        job.origin = f"q{i}"
        assert job.started_job_registry.name == f"q{i}"
    assert 0 < len(job_path._ORIGIN_QUEUES) <= job_path.ORIGIN_QUEUES_MAX
    other = redis.Redis(connection_pool=redis_client.connection_pool)
    job = LeanJob(connection=other, serializer=SERIALIZER)
    job.origin = "q0"
    assert job.finished_job_registry.connection is other  # another connection: its own Queue


class UnhashableJSON:
    """A serializer object that cannot be a dict key (it defines __eq__ without __hash__)."""

    dumps = staticmethod(SERIALIZER.dumps)
    loads = staticmethod(SERIALIZER.loads)

    def __eq__(self, other):
        return isinstance(other, UnhashableJSON)


@pytest.mark.parametrize(
    "serializer",
    [SERIALIZER, "json", "rq.serializers.JSONSerializer", UnhashableJSON(), None],
    ids=["class", "alias", "dotted-path", "unhashable-object", "none"],
)
def test_lean_job_and_result_take_the_serializer_rq_gives_them(serializer, redis_client, monkeypatch):
    """RQ's serializer resolution (aliases, dotted paths, pickle when none is given), RQ's check run
    once per serializer: counted through wrappers of RQ's own function, where its classes call it."""
    import rq.job
    import rq.results

    job_path._CHECKED.clear()
    checks: list[object] = []
    real = rq.serializers.resolve_serializer

    def counted(s=None):
        if s is not None:  # RQ's no-serializer shortcut (pickle) costs nothing
            checks.append(s)
        return real(s)

    for module in (rq.job, rq.results, job_path):
        monkeypatch.setattr(module, "resolve_serializer", counted)
    for _ in range(3):
        job = LeanJob(connection=redis_client, serializer=serializer)
        assert job.serializer is real(serializer)
        ours = LeanResult("j", Result.Type.SUCCESSFUL, redis_client, serializer=serializer, return_value=[1])
        rqs = Result("j", Result.Type.SUCCESSFUL, redis_client, serializer=serializer, return_value=[1])
        assert ours.serializer is rqs.serializer and ours.serialize() == rqs.serialize()
    stock = 3 if serializer is not None else 0  # the three plain Results above
    assert len(checks) == stock + (1 if serializer is not None else 0)


def test_lean_job_and_result_refuse_what_rq_refuses(redis_client):
    with pytest.raises(NotImplementedError):
        LeanJob(connection=redis_client, serializer=object())
    with pytest.raises(NotImplementedError):
        LeanResult("j", Result.Type.SUCCESSFUL, redis_client, serializer=object())
    with pytest.raises(TypeError):  # the serializer in its place by position would be lost: refused instead
        LeanResult("j", Result.Type.SUCCESSFUL, redis_client, None, None, None, None, "", SERIALIZER)


def test_a_result_is_written_with_the_jobs_serializer(cfg, service, redis_client):
    """The finished job's return value goes to Redis as JSON (no pickle across the Redis boundary)."""
    job = enqueue_job(service, sleep(1))
    make_worker(cfg).work(burst=True)
    ((_, fields),) = redis_client.xrange(f"rq:results:{job.id}")
    assert (
        json.loads(base64.b64decode(fields[b"return_value"]))
        == "Processed message generating task with delay: 1 after 1 seconds"
    )
    assert job.latest_result().return_value == "Processed message generating task with delay: 1 after 1 seconds"


@pytest.mark.parametrize(
    ("worker_class", "job_class"),
    [(LeanInProcessWorker, LeanJob), (InProcessWorker, BoundedResultJob), (ForkingWorker, BoundedResultJob)],
)
def test_every_worker_class_runs_its_job_class(worker_class, job_class, cfg, service, redis_client):
    """The fast path's worker runs lean jobs; the stock ones (fast paths off, and fork) RQ's, bounded."""
    job_id = service.enqueue(NOOP)[0].id
    w = worker_class(["default"], connection=connect(cfg, retries=0), serializer=SERIALIZER)
    assert w.job_class is job_class
    w.work(burst=True)
    assert Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER).get_status() == "finished"
    assert job_id in FinishedJobRegistry("default", connection=redis_client).get_job_ids()


def test_worker_state_and_counters_while_it_runs(cfg, service, redis_client):
    """Worker.all() lists the worker; busy during a job, idle after, with its job counts written."""
    w = make_worker(cfg)
    seen = {}

    def watch():  # work() must run in the main thread (signal-based timeouts): watch from here
        service.enqueue(sleep(1))
        wait_for(lambda: redis_client.hget(w.key, "state") == b"busy", timeout=10, what="busy")
        seen["ttl"] = redis_client.ttl(w.key)
        seen["names"] = [x.name for x in Worker.all(connection=redis_client)]
        wait_for(lambda: redis_client.hget(w.key, "state") == b"idle", timeout=10, what="idle")
        for _ in range(3):
            service.enqueue(NOOP)
        wait_for(lambda: redis_client.hget(w.key, "successful_job_count") == b"4", timeout=10, what="4 counted")
        seen["state"] = redis_client.hget(w.key, "state")

    watcher = threading.Thread(target=watch)
    watcher.start()
    w.work(burst=False, max_idle_time=4)
    watcher.join(timeout=20)
    assert seen["ttl"] > 0 and w.name in seen["names"] and seen["state"] == b"idle"


def test_a_job_popped_ahead_goes_back_when_the_worker_stops(cfg, service, redis_client):
    """max_jobs=1 with jobs waiting: the finish popped the next one; teardown puts it back in front."""
    ids = [j.id for j in service.enqueue_batch([NOOP] * 3)]
    w = make_worker(cfg)
    w.work(burst=False, max_jobs=1)
    assert redis_client.llen("rq:queue:default:intermediate") == 0
    assert [i.decode() for i in redis_client.lrange("rq:queue:default", 0, -1)] == ids[1:]
    assert Job.fetch(ids[1], connection=redis_client, serializer=SERIALIZER).get_status() == "queued"
    make_worker(cfg).work(burst=True)
    assert all(j.get_status() == "finished" for j in Job.fetch_many(ids, redis_client, serializer=SERIALIZER))


def test_rq_suspend_gives_back_the_popped_job(cfg, service, redis_client):
    """`rq suspend` while a job runs: the next job, popped by the finish, is back in the queue within ~1 s."""
    first = enqueue_job(service, sleep(1))
    second = enqueue_job(service, NOOP)
    w = make_worker(cfg)
    state = {}

    def control():
        wait_for(lambda: redis_client.hget(Job.key_for(first.id), "status") == b"started", timeout=10,
                 what="the first job running")  # fmt: skip
        suspend(redis_client)
        wait_for(lambda: redis_client.hget(Job.key_for(first.id), "status") == b"finished", timeout=10,
                 what="the first job done")  # fmt: skip
        wait_for(lambda: redis_client.lrange("rq:queue:default", 0, -1) == [second.id.encode()], timeout=3,
                 what="the popped job back in the queue")  # fmt: skip
        state["intermediate"] = redis_client.llen("rq:queue:default:intermediate")
        state["status"] = redis_client.hget(Job.key_for(second.id), "status")
        resume(redis_client)

    t = threading.Thread(target=control)
    t.start()
    w.work(burst=False, max_idle_time=3)
    t.join(timeout=20)
    assert state == {"intermediate": 0, "status": b"queued"}
    assert Job.fetch(second.id, connection=redis_client, serializer=SERIALIZER).get_status() == "finished"


def test_dependents_are_enqueued_when_the_parent_finishes(cfg, redis_client):
    q = Queue("default", connection=redis_client, serializer=SERIALIZER)
    parent = q.enqueue(noop)
    child = q.enqueue(noop, depends_on=parent)
    assert child.get_status() == "deferred"
    make_worker(cfg).work(burst=True)
    assert parent.get_status() == "finished" and child.get_status() == "finished"


def test_a_job_deleted_while_queued_is_skipped_without_leftovers(cfg, service, redis_client):
    gone, kept = enqueue_job(service, NOOP), enqueue_job(service, NOOP)
    redis_client.delete(Job.key_for(gone.id))
    make_worker(cfg).work(burst=True)
    assert not redis_client.exists(Job.key_for(gone.id))
    assert redis_client.keys("rq:execution:*") == []
    assert StartedJobRegistry("default", connection=redis_client).get_job_ids(cleanup=False) == []
    assert Job.fetch(kept.id, connection=redis_client, serializer=SERIALIZER).get_status() == "finished"


def test_result_ttl_zero_takes_rqs_path_and_deletes_the_job(cfg, redis_client):
    q = Queue("default", connection=redis_client, serializer=SERIALIZER)
    job = q.enqueue(noop, result_ttl=0)
    make_worker(cfg).work(burst=True)
    assert not redis_client.exists(job.key)


def test_a_job_with_a_ttl_does_not_expire_while_running(cfg, redis_client):
    q = Queue("default", connection=redis_client, serializer=SERIALIZER)
    job = q.enqueue(TASKS["sleep"].func, 2, ttl=1)
    seen = {}

    def watch():
        wait_for(lambda: redis_client.hget(job.key, "status") == b"started", timeout=10, what="started")
        time.sleep(1.2)
        seen["ttl"] = redis_client.ttl(job.key)

    t = threading.Thread(target=watch)
    t.start()
    make_worker(cfg).work(burst=True)
    t.join(timeout=10)
    assert seen["ttl"] == -1  # persisted: no expiry while it runs
    assert job.get_status() == "finished"


def test_a_worker_on_two_queues_takes_jobs_from_both(cfg, redis_client):
    a = Queue("a", connection=redis_client, serializer=SERIALIZER)
    b = Queue("b", connection=redis_client, serializer=SERIALIZER)
    jobs = [a.enqueue(noop), b.enqueue(noop), a.enqueue(noop)]
    make_worker(cfg, queues=["a", "b"]).work(burst=True)
    assert [j.get_status() for j in jobs] == ["finished"] * 3
    assert redis_client.keys("rq:execution:*") == []


def test_a_worker_with_quiet_job_lines_starts_rq_scheduler_from_its_logger_level(cfg, redis_client):
    """RQ's ``work(with_scheduler=True)`` without a logging level reads ``worker.log.level``."""
    job = Queue(connection=redis_client, serializer=SERIALIZER).enqueue(noop)
    worker = make_worker(cfg)
    assert not worker.log_job_lines  # the logger is the per-job-line-dropping adapter
    worker.work(burst=True, with_scheduler=True)
    assert job.get_status() == "finished"


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_per_job_log_lines_are_off_by_default_and_on_when_asked(worker_class, app_env, tmp_path, service):
    """Off in the forking worker's work horse too (RQ gives the horse its own logger)."""
    for on in (False, True):
        env = {**app_env, "TASKQUEUE_LOG_JOB_LINES": str(on).lower()}
        job = enqueue_job(service, NOOP)
        (tmp_path / str(on)).mkdir()
        w = WorkerProc(env, tmp_path / str(on), ["--burst", "--worker-class", worker_class]).start(wait=False)
        assert w.proc.wait(timeout=30) == 0
        log = w.log()
        assert ("Job OK" in log) is on and (job.id in log) is on
        assert "started with PID" in log  # the worker's other INFO lines stay


def test_metrics_off_counts_nothing_and_runs_jobs(cfg, service, redis_client):
    """TASKQUEUE_METRICS_ENABLED=false: no observation per job (the metrics benchmark's "off")."""
    from taskqueue.observability import metrics

    def completed() -> float:
        return sum(s.value for m in metrics.JOBS_COMPLETED.collect() for s in m.samples if s.name.endswith("_total"))

    job = enqueue_job(service, NOOP)
    before = completed()
    make_worker(cfg, metrics_enabled=False).work(burst=True)
    assert job.get_status() == "finished" and completed() == before
    job = enqueue_job(service, NOOP)
    make_worker(cfg).work(burst=True)
    assert job.get_status() == "finished" and completed() == before + 1


@pytest.mark.parametrize("landed", [True, False], ids=["reply-lost", "not-sent"])
def test_a_start_interrupted_by_redis_is_sorted_out_and_the_job_runs_once(cfg, service, redis_client, landed):
    """Redis drops the connection during the start's pipeline: the worker finds out whether the start
    landed (the LREM is its last command) and runs the job once, leaving no stray Execution.

    A real Redis cannot drop one chosen reply on demand, so the failure is injected by wrapping the
    worker's pipeline send once (the pipeline itself runs against the real server, or not at all)."""
    job = enqueue_job(service, NOOP)
    real_send = redis_pipeline.send
    failed = []

    def flaky_send(pipe, *args, **kwargs):
        if not failed and any(c[0][0] == "LREM" for c in pipe.command_stack):
            failed.append(1)
            if landed:
                real_send(pipe, *args, **kwargs)
            pipe.reset()
            raise redis.exceptions.ConnectionError("injected: connection lost")
        return real_send(pipe, *args, **kwargs)

    w = make_worker(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(redis_pipeline, "send", flaky_send)
        w.work(burst=True)
    assert failed
    assert job.get_status() == "finished" and len(job.results()) == 1
    assert redis_client.keys("rq:execution:*") == [] and w.executions == {}
    assert StartedJobRegistry("default", connection=redis_client).get_job_ids(cleanup=False) == []
    assert redis_client.llen("rq:queue:default:intermediate") == 0


def test_a_job_taken_back_from_the_intermediate_list_is_not_started(cfg, service, redis_client):
    """Maintenance requeued the job between the pop and the start: the start is undone, the job
    stays queued, and it runs once from the queue."""
    job = enqueue_job(service, NOOP)
    queue = Queue("default", connection=redis_client, serializer=SERIALIZER)
    w = make_worker(cfg)
    redis_client.lmove(queue.key, queue.intermediate_queue_key)
    redis_client.lrem(queue.intermediate_queue_key, 1, job.id)  # what a requeue does, then:
    redis_client.rpush(queue.key, job.id)
    assert w._take(w.queues[0], job.id) is None
    assert job.get_status() == "queued" and redis_client.keys("rq:execution:*") == []
    make_worker(cfg).work(burst=True)
    assert job.get_status() == "finished" and len(job.results()) == 1


def test_a_requeue_stop_between_take_and_run_hands_the_job_back_unrun(cfg, service, redis_client):
    """SIGTERM in requeue mode after the take wrote "started" but before the job runs (the worker
    has no execution to interrupt yet): the job goes back to the front, no retry spent, at once."""
    job = enqueue_job(service, sleep(15))
    w = make_worker(cfg, shutdown_mode="requeue")
    prepare = w.prepare_execution

    def stop_first(taken):
        assert redis_client.hget(taken.key, "status") == b"started"
        w.request_stop(signal.SIGTERM, None)  # what the signal handler runs, here in the main thread
        return prepare(taken)

    w.prepare_execution = stop_first
    t0 = time.monotonic()
    w.work(burst=True)
    assert time.monotonic() - t0 < 10, "the 15 s job ran"
    job.refresh()
    assert job.get_status() == "queued" and job.retries_left == cfg.retries
    assert redis_client.lrange("rq:queue:default", 0, -1) == [job.id.encode()]
    assert StartedJobRegistry("default", connection=redis_client).get_job_ids(cleanup=False) == []


def test_a_job_that_came_back_from_a_dead_workers_take_is_claimed_before_it_runs(cfg, service, redis_client):
    """A job the exporter put back (its hash counts the returns) is claimed as it starts even inside a take, so a
    job that kills its worker spends its own retries; the take's other jobs still run unclaimed."""
    from taskqueue.store.records import RETURNS_FIELD

    ids = [j.id for j in service.enqueue_batch([NOOP] * 12)]
    returned = ids[8]  # well inside the takes that follow the first job
    redis_client.hset(Job.key_for(returned), RETURNS_FIELD, 1)
    claimed: list[str] = []
    real_claim = LeanInProcessWorker._claim

    def counting_claim(worker, run, give_back):  # a wrapper that notes the claim, runs the real one
        claimed.append(run.job.id)
        return real_claim(worker, run, give_back)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LeanInProcessWorker, "_claim", counting_claim)
        make_worker(cfg).work(burst=True)
    assert claimed == [returned]
    queue = Queue("default", connection=redis_client, serializer=SERIALIZER)
    assert set(FinishedJobRegistry(queue=queue).get_job_ids()) == set(ids)
