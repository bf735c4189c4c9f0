"""Autoscaling on work remaining, end to end on loopback: the rendered chart's ScaledObject and worker
Deployment drive the emulator (KEDA + HPA + ReplicaSet + kubelet), which reads the real exporter's
/scale and runs real worker processes; the jobs go through the real generator.

Time is compressed by rendering the chart with FAST_VALUES (2 s polling, 3 s HPA sync, 10 s
windows, 6 s heartbeats); the emulator's code is the same for the chart's defaults (demo.py).
"""

from __future__ import annotations

import collections
import json
import re

import pytest
from rq.job import Job

from taskqueue.store.records import SERIALIZER
from tests.autoscale.emulator import Chaos
from tests.autoscale.stack import FAST_HPA_SYNC, FAST_VALUES, stack, wait_for

BURST = [{"task": "sleep", "args": {"seconds": 1}}] * 200
START_RE = re.compile(r"^Worker \S+: [\w-]+: taskqueue\.tasks\.[\w.]+\(.*\) \(([\w-]+)\)$")
OK_RE = re.compile(r"^Worker \S+: [\w-]+: Job OK \(([\w-]+)\)$")
SLACK = 1.0  # the emulator's 0.1 s tick, HTTP round trips and process scheduling on 2 busy cores


def log_counts(text: str) -> tuple[collections.Counter, collections.Counter]:
    """Per job id: how many times a worker started it, and how many times it finished OK."""
    starts, oks = collections.Counter(), collections.Counter()
    for line in text.splitlines():
        try:
            msg = json.loads(line)["msg"]
        except (ValueError, KeyError):
            continue
        if m := START_RE.match(msg):
            starts[m.group(1)] += 1
        elif m := OK_RE.match(msg):
            oks[m.group(1)] += 1
    return starts, oks


def event_time(em, who: str, text: str, after: float = 0.0) -> float | None:
    return next((t for t, w, what in list(em.events) if w == who and what.endswith(text) and t >= after), None)


def assert_nothing_left(st, ids):
    """No job stays queued, started or scheduled: every one reached a final state."""
    r = st.redis.client()
    assert r.llen("rq:queue:default") == 0
    assert st.work() == {"workRemaining": 0, "queued": 0, "started": 0}
    for key in r.scan_iter("rq:*:default"):
        kind = key.decode().split(":")[1]
        if kind in ("wip", "scheduled", "deferred"):
            assert r.zcard(key) == 0, f"{key.decode()} still holds {r.zrange(key, 0, -1)}"
    jobs = Job.fetch_many(ids, connection=r, serializer=SERIALIZER)
    assert all(j is not None for j in jobs), "a job hash disappeared"
    return jobs


def test_burst_scales_to_the_formula_and_back_with_every_job_run_exactly_once(tmp_path):
    with stack(FAST_VALUES, tmp_path) as st:
        em, spec = st.emulator, st.spec
        assert spec.trigger == "metrics-api" and spec.target == 2 and spec.min_replicas == 0
        wait_for(lambda: em.desired == spec.min_replicas and em.timeline[-1].queued == 0, what="idle at min")
        t_burst = em.now()
        ids = st.burst(BURST)
        expected = st.predicted_peak(len(ids))
        assert expected == min(spec.max_replicas, -(-200 // 2)) == 4
        # The scale-up policy allows the jump from KEDA's 1 replica in one sync (else it takes more).
        assert max(p.value for p in spec.behavior.up.policies if p.type == "Pods") + 1 >= expected

        bound_up = spec.polling_interval + FAST_HPA_SYNC
        wait_for(lambda: em.desired == expected, timeout=bound_up + 5, what=f"{expected} replicas")
        t_target = event_time(em, "hpa", f"-> {expected}", t_burst)
        assert t_target is not None, em.events
        assert t_target - t_burst <= bound_up + SLACK, em.events

        wait_for(lambda: st.work()["workRemaining"] == 0, timeout=120, interval=0.2, what="the burst to be done")
        t_idle = em.now()
        assert max(s.desired for s in em.timeline) == expected  # never beyond what the formula says
        wait_for(lambda: em.desired == spec.min_replicas and not em.pods, timeout=40, what="back to min")
        t_min = event_time(em, "keda", f"-> {spec.min_replicas}", t_burst)
        assert t_min is not None, em.events
        # min 0: KEDA removes the last replicas once cooldownPeriod has passed since the last active
        # poll, which came at most one polling interval before the work ran out.
        assert (
            spec.cooldown - spec.polling_interval - SLACK
            <= t_min - t_idle
            <= spec.cooldown + spec.polling_interval + SLACK
        )
        assert not [e for e in em.events if "SIGKILL" in e[2]], "a pod outlived its grace period"

        jobs = assert_nothing_left(st, ids)
        # Exactly once: one result per job (RQ keeps one per execution), one start and one OK in the logs.
        assert all(j.get_status() == "finished" for j in jobs)
        results = {j.id: j.results() for j in jobs}
        assert all(len(r) == 1 and r[0].type.name == "SUCCESSFUL" for r in results.values())
        seed_result = "Processed message generating task with delay: 1 after 1 seconds"
        assert {r[0].return_value for r in results.values()} == {seed_result}
        starts, oks = log_counts(em.logs())
        assert set(starts) == set(oks) == set(ids)
        assert set(starts.values()) == set(oks.values()) == {1}


def test_burst_with_workers_sigkilled_during_scale_down_loses_no_job(tmp_path):
    with stack(FAST_VALUES, tmp_path, seed=7) as st:
        em, spec = st.emulator, st.spec
        chaos = Chaos(em, max_kills=6)
        wait_for(lambda: em.timeline[-1].queued == 0, what="the exporter")
        t_burst = em.now()
        ids = st.burst(BURST)
        wait_for(lambda: em.desired == st.predicted_peak(len(ids)), timeout=15, what="the peak")
        # Scale-down starts when the backlog is gone: from then on, SIGKILL a busy pod every second
        # (an OOM kill, a node lost), while the HPA and KEDA shrink the Deployment.
        wait_for(lambda: st.work()["queued"] == 0, timeout=120, interval=0.2, what="the backlog taken")
        deadline = em.now() + 60
        while len(chaos.kills) < chaos.max_kills and em.desired > spec.min_replicas and em.now() < deadline:
            chaos.kill_one()
            em._stop.wait(1.0)
        assert any(busy for _, _, busy in chaos.kills), f"no kill hit a busy worker: {chaos.kills}"

        # Abandoned jobs are found (heartbeat + cleanup interval), retried, and run by the pods the
        # ReplicaSet brings back (KEDA wakes the Deployment again if it had reached zero).
        wait_for(lambda: st.work()["workRemaining"] == 0 and not st.redis.client().zcard("rq:scheduled:default"),
                 timeout=90, interval=0.5, what="every job done")  # fmt: skip
        wait_for(lambda: em.desired == spec.min_replicas and not em.pods, timeout=40, what="back to min")

        jobs = assert_nothing_left(st, ids)
        statuses = collections.Counter(j.get_status() for j in jobs)
        assert set(statuses) <= {"finished", "failed"}, statuses
        for j in jobs:
            if j.get_status() == "failed":
                assert j.latest_result() is not None and j.latest_result().exc_string, f"{j.id} failed without an error"
        starts, _oks = log_counts(em.logs())
        rerun = [i for i in ids if starts[i] > 1]
        assert rerun, "no job was run again after its worker was killed"
        assert t_burst < em.now()
        print(f"\nkills: {chaos.kills}\nstatuses: {dict(statuses)}, jobs run more than once: {len(rerun)}")


@pytest.mark.parametrize("trigger", ["redis-list"])
def test_emulator_reads_the_redis_list_trigger_too(tmp_path, trigger):
    """The emulator models the plain list trigger as well (its target is listLength, its metric LLEN)."""
    values = {**FAST_VALUES, "autoscaling": {**FAST_VALUES["autoscaling"], "trigger": trigger, "listLength": 5}}
    from tests.autoscale.emulator import ScalingSpec
    from tests.chart.rendering import render_values

    spec = ScalingSpec.from_objects(render_values(values))
    assert (spec.trigger, spec.scale_url, spec.target) == ("redis", "rq:queue:default", 5.0)  # the default queue
