"""Job slots: one worker process running up to N jobs at once, each in a thread of its own.

Each slot is a whole RQ worker of :mod:`taskqueue.worker.classes` (its own name, registration, heartbeats,
started-job entry and stop channel), so everything RQ and taskqueue promise a job holds per slot, and
``rq info`` lists each slot. What a slot does differently from a worker alone in its process:

- its loop is :meth:`SlotPool._run_slot`, made of RQ's public worker methods; signals are the process's
  and reach the main thread only: SIGTERM or SIGINT once stops every slot (``finish`` or ``requeue``, as
  the worker's shutdown mode says), twice exits at once;
- a job's timeout is a timer that raises into the slot's thread (:class:`ThreadDeathPenalty`), not SIGALRM;
- a stop (``DELETE /jobs/<id>``) and a ``requeue`` shutdown raise into the slot's thread the same way.

An exception raised into a thread lands between two bytecodes: Python code stops at once, but a call
blocked in C (``time.sleep``, a socket read) returns first. ``taskqueue.tasks.wait`` (the built-in sleep's)
is woken as the exception is raised, so it ends at once; a task of yours that blocks for long in another
call is stopped when that call returns (give your I/O timeouts).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from rq import worker_registration
from rq.exceptions import StopRequested
from rq.job import Job
from rq.logutils import setup_loghandlers
from rq.queue import Queue
from rq.timeouts import BaseDeathPenalty, JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from taskqueue.store.connection import UNAVAILABLE_ERRORS
from taskqueue.tasks import waiting
from taskqueue.timers import Timers
from taskqueue.worker.classes import InProcessWorker, LeanInProcessWorker, ShutdownRequeue

log = logging.getLogger("taskqueue.worker")

# Seconds an idle slot waits on the queues at a time: how soon an idle slot sees a stop.
IDLE_POLL = 2
# Held by the slot running a job of a ``cpu_bound`` task: a process runs one at a time (SlotMixin). The owner
# is set under the condition's lock, so a stop raised into a waiting slot never leaves the gate held.
CPU_GATE = threading.Condition()
_gate: dict[str, object] = {"owner": None}
GATE_POLL = 0.5  # seconds a slot waits on the gate at a time (a release wakes it at once): a stop lands between


class JobStopRequested(Exception):
    """Raised into a slot's running job by ``DELETE /jobs/<id>``; RQ stores the job as stopped."""


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in the thread ``thread_id`` at its next bytecode (CPython's PyThreadState_SetAsyncExc)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if done > 1:  # more than one thread state: undo, as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
    return done == 1


@functools.cache
def timeout_exception(seconds: float) -> type[JobTimeoutException]:
    """A JobTimeoutException class whose message names ``seconds`` (an exception raised into a thread is a
    class, made without arguments)."""

    def init(self: JobTimeoutException, *args: object) -> None:
        JobTimeoutException.__init__(self, f"Task exceeded maximum timeout value ({seconds:g} seconds)")

    return type("JobTimeoutException", (JobTimeoutException,), {"__init__": init})


class Deadlines(Timers):
    """The running jobs' timeouts of a process, kept by one thread: at a deadline it raises the job's timeout
    into the job's thread."""

    def __init__(self) -> None:
        super().__init__("job-timeouts", under_lock=True)  # no timeout lands after its job's cancel

    def add(self, seconds: float, thread_id: int, exc_type: type[BaseException]) -> list[Any]:
        return self.call_later(seconds, functools.partial(_raise_timeout, thread_id, exc_type))


def _raise_timeout(thread_id: int, exc_type: type[BaseException]) -> None:
    raise_in_thread(thread_id, exc_type)
    waiting.wake(thread_id)


DEADLINES = Deadlines()


class ThreadDeathPenalty(BaseDeathPenalty):
    """A job's timeout in a slot: raised into the thread that entered the penalty at its deadline."""

    def __init__(self, timeout: float, exception: type[BaseException] = JobTimeoutException, **kwargs):
        super().__init__(timeout, exception, **kwargs)
        self._entry: list[Any] | None = None

    def setup_death_penalty(self) -> None:
        if self._timeout > 0:
            self._entry = DEADLINES.add(self._timeout, threading.get_ident(), timeout_exception(self._timeout))

    def cancel_death_penalty(self) -> None:
        if self._entry is not None:
            DEADLINES.cancel(self._entry)
            self._entry = None


class SlotMixin:
    """What a worker needs to be one slot of a :class:`SlotPool`; first in the bases."""

    death_penalty_class = ThreadDeathPenalty
    slot_thread_id: int | None = None  # the thread running this slot's loop
    first_slot = True  # SlotPool sets it False on every slot but its first

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's, then a job of a ``cpu_bound`` task waits for the process's :data:`CPU_GATE`: threads that
        hold the GIL only take turns on one core, each switch costing, so slots run such jobs one at a time
        (jobs of other tasks go on beside it). Before the job's timeout starts; its heartbeats go on."""
        super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]
        task = self.catalogue.for_path(job.func_name)  # type: ignore[attr-defined]
        if task is not None and task.cpu_bound:
            with CPU_GATE:
                while _gate["owner"] is not None:
                    CPU_GATE.wait(GATE_POLL)
                _gate["owner"] = self

    def execute_job(self, job: Job, queue: Queue):
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            with CPU_GATE:
                if _gate["owner"] is self:
                    _gate["owner"] = None
                    CPU_GATE.notify()

    def clean_group_registries(self) -> None:
        """RQ's, from the first slot only: one lock covers every worker, so the other slots' tries (a round trip
        each, at start and every maintenance interval) would fail anyway."""
        if self.first_slot:
            super().clean_group_registries()  # type: ignore[misc]

    def _raise_into_job(self, exc_type: type[BaseException]) -> bool:
        """Raise into the slot's running job while RQ's perform_job can catch it; False if none runs."""
        if self.slot_thread_id is None or not self.job_interruptible():  # type: ignore[attr-defined]
            return False
        raised = raise_in_thread(self.slot_thread_id, exc_type)
        waiting.wake(self.slot_thread_id)  # a tasks.wait() in the job ends now
        return raised

    def subscribe(self) -> None:
        """Nothing: the pool listens on every slot's command channel on one connection (SlotPool.run)."""

    def unsubscribe(self) -> None:
        """Nothing: see :meth:`subscribe`."""

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the running job (``DELETE /jobs/<id>``; RQ has marked it to be stored as stopped)."""
        self._raise_into_job(JobStopRequested)

    def interrupt_job(self) -> None:
        self._raise_into_job(ShutdownRequeue)

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:
        """Stop after the running job (``finish``), or requeue it at once (``requeue``); no signal handlers
        change (RQ's would, from a thread that may not)."""
        self.stop_requested = True
        if self.shutdown_mode == "requeue":  # type: ignore[attr-defined]
            execution = self.execution  # type: ignore[attr-defined]
            if execution is not None and self.job_interruptible():  # type: ignore[attr-defined]
                self._requeue_job_id = execution.job_id
                self.interrupt_job()


class SlotWorker(SlotMixin, InProcessWorker):
    """A slot with RQ's job lifecycle."""


class LeanSlotWorker(SlotMixin, LeanInProcessWorker):
    """A slot with the job lifecycle of fastpath/job_path.py."""


def slot_class(fast_paths: bool) -> type[SlotWorker] | type[LeanSlotWorker]:
    return LeanSlotWorker if fast_paths else SlotWorker


class SlotPool:
    """Runs one worker per slot, each in a thread, until the process is told to stop."""

    def __init__(self, workers: Sequence[SlotWorker | LeanSlotWorker], *, burst: bool = False, logging_level: str):
        self.workers = list(workers)
        for worker in self.workers[1:]:
            worker.first_slot = False
        self.burst = burst
        self.logging_level = logging_level
        self.stopping = False
        self.failure: BaseException | None = None  # what ended a slot other than a stop

    @property
    def stop_requested(self) -> bool:
        """Whether the slots were told to stop (as a worker's ``stop_requested``)."""
        return self.stopping

    def busy(self) -> int:
        """Slots running a job now."""
        return sum(1 for w in self.workers if w.executions)

    def busy_slots(self) -> float:
        """:meth:`busy` for the busy-slots gauge."""
        return float(self.busy())

    def stop(self) -> None:
        """Every slot: finish (or requeue) its job, take no other."""
        self.stopping = True
        for worker in self.workers:
            worker.request_stop()

    def run(self) -> None:
        """Start the slots, wait for them all to end; re-raises what ended one unasked (Redis gone at start)."""
        signals = {"count": 0}

        def handle(signum: int, _frame: object) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                log.warning("signal %s again: cold shutdown, %d jobs left to the heartbeat bound", signum, self.busy())
                raise SystemExit(1)
            log.info("signal %s: %s shutdown of %d job slots", signum, self.workers[0].shutdown_mode, len(self.workers))
            self.stop()

        # The slots' command channels (stop a job, shut down) on one connection and thread, not one a slot;
        # subscribed before any slot takes a job, so no stop for a running job can be missed.
        pubsub = self.workers[0].connection.pubsub()
        pubsub.subscribe(**{w.pubsub_channel_name: w.handle_payload for w in self.workers})
        listener = pubsub.run_in_thread(sleep_time=1, daemon=True, exception_handler=self._listener_error)
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        threads = [
            threading.Thread(target=self._run_slot, args=(w,), name=f"slot-{i}", daemon=True)
            for i, w in enumerate(self.workers)
        ]
        try:
            self._register_births()
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)  # (a bounded join lets the main thread take signals)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            listener.stop()
            listener.join(timeout=2)
            pubsub.close()
        if self.failure is not None:
            raise self.failure

    def _register_births(self) -> None:
        """RQ's ``bootstrap`` for every slot, its writes in one round trip: RQ's ``register_birth`` (less its check
        for a live worker of the same name: slots are named after their process) and the ``started`` state.
        Slot by slot, 200 slots took 0.4 s of round trips before the last one took a job."""
        first = self.workers[0]
        setup_loghandlers(self.logging_level, name="rq.worker")
        setup_loghandlers(self.logging_level, name="rq.job")
        with first.connection.pipeline() as pipe:
            for worker in self.workers:
                pipe.delete(worker.key)
                worker.birth_date = worker.last_heartbeat = now()
                pipe.hset(worker.key, mapping=worker.serialize())
                worker_registration.register(worker, pipe)
                pipe.expire(worker.key, worker.worker_ttl + 60)
                worker.set_state(WorkerStatus.STARTED, pipeline=pipe)
            pipe.execute()
        for worker in self.workers:
            worker.mark_beaten()
        first.log.info("%d job slots started with PID %d, listening on %s", len(self.workers), os.getpid(),
                       ", ".join(first.queue_names()))  # fmt: skip

    @staticmethod
    def _listener_error(exc: BaseException, pubsub: object, thread: object) -> None:
        """Keep listening through a Redis outage (redis-py subscribes again on reconnect) or a bad command."""
        if isinstance(exc, UNAVAILABLE_ERRORS):
            log.warning("job slots' command channels: redis unavailable: %s; retrying in 2 s", exc)
            time.sleep(2)
        else:
            log.exception("job slots' command channels: %s", exc)

    def _run_slot(self, worker: SlotWorker | LeanSlotWorker) -> None:
        """RQ's work loop for one slot, of its public methods: take a job, run it, beat; until stopped."""
        worker.slot_thread_id = threading.get_ident()
        try:
            try:
                while not worker.stop_requested:
                    try:
                        worker.check_for_suspension(self.burst)
                    except StopRequested:  # suspended (rq suspend) in burst mode
                        break
                    if worker.should_run_maintenance_tasks:  # as RQ's loop does: due, a worker takes no job ahead
                        worker.run_maintenance_tasks()
                    wait = None if self.burst else IDLE_POLL
                    taken = worker.dequeue_job_and_maintain_ttl(wait, max_idle_time=wait)
                    if taken is None:
                        if self.burst:
                            break
                        continue
                    worker.execute_job(*taken)
                    worker.heartbeat()
            finally:
                worker.teardown()
        except BaseException as exc:  # a slot's end is reported, then all slots stop
            if not (self.stopping and isinstance(exc, UNAVAILABLE_ERRORS)):
                if not isinstance(exc, UNAVAILABLE_ERRORS):
                    log.exception("job slot %s ended: %s", worker.name, exc)
                self.failure = self.failure or exc
            if not self.stopping:
                self.stop()
