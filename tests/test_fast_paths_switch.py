"""TASKQUEUE_FAST_PATHS chooses the path in each of the three places that choose one, in real processes:
off, no code of ``taskqueue/fastpath/`` runs (the behaviour tests then run in this mode: make test-stock)."""

from __future__ import annotations

import pytest
import requests

from taskqueue import config as config_module
from taskqueue.api.jobs import JobService
from taskqueue.fastpath.enqueue_path import Enqueuer
from taskqueue.server.generator import web_worker_class
from taskqueue.store.connection import connect
from taskqueue.store.enqueue import StockEnqueuer
from taskqueue.worker.classes import ForkingWorker, InProcessWorker, LeanInProcessWorker, worker_class
from taskqueue.worker.slots import LeanSlotWorker, SlotWorker, slot_class
from tests.support import wait_for, wait_status

CHOICES = {
    "on": (Enqueuer, LeanInProcessWorker, "taskqueue.server.workers.FairGeventWorker", LeanSlotWorker),
    "off": (StockEnqueuer, InProcessWorker, "taskqueue.server.workers.BoundedGeventWorker", SlotWorker),
}


@pytest.mark.parametrize("switch", ["on", "off"])
def test_each_place_chooses_its_path_from_the_switch(switch, app_env):
    cfg = config_module.load(environ={**app_env, "TASKQUEUE_FAST_PATHS": switch})
    enqueuer, simple, gevent, slot = CHOICES[switch]
    service = JobService(cfg, connect(cfg))
    assert {type(e) for e in service.enqueuers.values()} == {enqueuer}
    assert worker_class("simple", cfg.fast_paths) is simple and worker_class("fork", cfg.fast_paths) is ForkingWorker
    assert slot_class(cfg.fast_paths) is slot
    assert web_worker_class(cfg) == gevent


def test_the_switch_is_on_unless_set_off():
    assert config_module.load({}).fast_paths is True
    assert config_module.load({"TASKQUEUE_FAST_PATHS": "off"}).fast_paths is False


@pytest.mark.parametrize("switch", ["on", "off"])
def test_the_processes_run_the_chosen_path(switch, app_env, redis_client, processes):
    """The generator and the worker name their classes; the enqueue script runs only with fast paths on."""
    env = {**app_env, "TASKQUEUE_FAST_PATHS": switch}
    _, simple, gevent, _ = CHOICES[switch]
    gen, worker = processes.generator(env=env), processes.worker(env=env)
    # The enqueue script as the generator's fast path makes it (RQ's scheduler runs scripts of its own).
    on = config_module.load(environ={**app_env, "TASKQUEUE_FAST_PATHS": "on"})
    enqueue_sha = JobService(on, connect(on)).enqueuers[on.queue]._script.script.sha
    redis_client.script_flush()
    job_id = requests.get(gen.base + "/start", params={"delay": 0}, timeout=5).json()["jobId"]
    assert wait_status(gen.base, job_id, {"finished"}, timeout=15)["result"].startswith("Processed message")
    assert redis_client.script_exists(enqueue_sha) == [switch == "on"]
    wait_for(lambda: f"{simple.__module__}.{simple.__qualname__}" in worker.log(), timeout=5, what="class line")
    gen.stop()
    assert f"Using worker: {gevent}" in gen.log()
