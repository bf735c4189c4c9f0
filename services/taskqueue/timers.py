"""Timers: one thread calls each function at its time, for a process's many short-lived deadlines.

A thread a deadline (``threading.Timer``) would cost a thread start each; a job's timeout in a job slot and
the claim of a job that runs past the worker's short-job budget are set and cancelled once a job.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Timers:
    """Calls each function at its time, in one daemon thread (started at the first use). A function runs in
    that thread: keep it short, it delays the ones due after it."""

    def __init__(self, name: str, under_lock: bool = False) -> None:
        """``under_lock``: call each function holding the timers' lock, so that once :meth:`cancel` returns no
        call of that entry can still be running (for quick calls only: a call holds up every set and cancel)."""
        self.name = name
        self._under_lock = under_lock
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []  # [deadline, seq, function, live]
        self._live = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, seconds: float, function: Callable[[], object]) -> list[Any]:
        """Call ``function()`` in ``seconds``; the entry returned is what :meth:`cancel` takes."""
        entry = [time.monotonic() + seconds, next(self._seq), function, True]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            if self._heap[0] is entry:  # the thread waits for an earlier time otherwise: no need to wake it
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """After this returns the entry's function is not called (one called before may still be running,
        unless the timers call under their lock)."""
        with self._cond:
            if entry[3]:
                entry[3] = False
                self._live -= 1
                if len(self._heap) > 2 * self._live + 64:  # drop the cancelled ones the heap still holds
                    self._heap = [e for e in self._heap if e[3]]
                    heapq.heapify(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and not self._heap[0][3]:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                entry = heapq.heappop(self._heap)
                entry[3] = False
                self._live -= 1
                if self._under_lock:
                    self._call(entry)
                    continue
            self._call(entry)  # outside the lock: setting and cancelling others never waits for a call

    def _call(self, entry: list[Any]) -> None:
        try:
            entry[2]()
        except Exception:  # a function's failure is its own; the others still run
            log.exception("%s: a timed call failed", self.name)
