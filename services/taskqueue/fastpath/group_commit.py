"""Group commit: concurrent callers' items go to Redis together, in one call, with no added wait.

A Redis round trip costs a gunicorn process more CPU (the system calls and wake-ups around it) than Flask
and gunicorn together spend on a request (docs/performance-history.md). :class:`GroupCommit` lets the
threads of one process share it: the first caller sends its item at once; callers that arrive while a
call is in flight queue up, and when it returns the next one in line sends everything queued in one call.
Nobody waits for a timer, so a lone request takes one round trip as before, and under load the calls
carry several items each.

A sender may have a step to take before each call that lets other callers run (the enqueue script's
connection check: under gevent a turn of the event loop). Given as ``before_batch``, it runs before the
sender takes what is waiting, so the callers it let in go in the same call (docs/performance-history.md,
change 19).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    """One caller's item, and the lock it sleeps on until its result (or its turn to send) is in."""

    __slots__ = ("error", "item", "lead", "result", "wake")

    def __init__(self, item: T):
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.lead = False
        self.wake = threading.Lock()  # a lock as a one-shot event: cheaper than threading.Event
        self.wake.acquire()


class GroupCommit(Generic[T, R]):
    """Send each caller's item through ``send(items) -> results`` (one result per item, in order),
    batching the items of callers that arrive while a call is in flight (at most ``max_batch``), and
    those that arrive during ``before_batch()``, which each sender runs before it takes the batch."""

    def __init__(
        self,
        send: Callable[[Sequence[T]], Sequence[R]],
        max_batch: int = 1000,
        before_batch: Callable[[], object] | None = None,
    ):
        self._send = send
        self._before_batch = before_batch
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Slot[T, R]] = []
        self._busy = False  # a caller is sending; invariant: _waiting is empty unless _busy

    def submit(self, item: T) -> R:
        """The result of ``send`` for ``item``; raises what ``send`` raised for its batch."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            slot.lead = not self._busy
            self._busy = True
        if not slot.lead:
            try:
                slot.wake.acquire()  # until the result is in, or it is this caller's turn to send
            except BaseException:  # killed or timed out while in line (gevent): leave the line
                self._leave(slot)
                raise
        if slot.lead:
            self._send_waiting(slot)
        if slot.error is not None:
            if slot.lead:
                raise slot.error
            # Every caller of the batch fails; each raises its own copy (a traceback is per raise).
            if not isinstance(slot.error, Exception):  # the sender was interrupted (SystemExit...)
                raise RuntimeError("the call carrying this item was interrupted") from slot.error
            try:
                error = copy.copy(slot.error)
            except Exception:  # an exception type that cannot be rebuilt from its args
                raise slot.error from None
            raise error from slot.error
        return slot.result  # type: ignore[return-value]

    def _send_waiting(self, slot: _Slot[T, R]) -> None:
        """Send what is waiting (``slot``, this caller's, first), then pass the turn on or end it."""
        if self._before_batch is not None:
            try:
                self._before_batch()
            except BaseException:  # killed in it (gevent), or it failed: out of line, the turn to the next
                self._leave(slot)
                raise
        with self._lock:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
        try:
            for s, r in zip(batch, self._send([s.item for s in batch]), strict=True):  # one result an item
                s.result = r
        except BaseException as exc:  # every caller of the batch gets it, the sender included
            for s in batch:
                s.error = exc
        finally:
            for s in batch[1:]:
                s.wake.release()
            self._pass_turn()

    def _pass_turn(self) -> None:
        """Give the turn to the first caller in line, or end it if nobody waits."""
        with self._lock:
            if not self._waiting:
                self._busy = False
                return
            nxt = self._waiting[0]
            nxt.lead = True
        nxt.wake.release()

    def _leave(self, slot: _Slot[T, R]) -> None:
        """A caller interrupted in line (or in ``before_batch``): out of it, and its turn (if it had it) to the next."""
        with self._lock:
            if slot not in self._waiting:
                return  # already in a batch being sent: its result is set and dropped
            self._waiting.remove(slot)
            had_turn = slot.lead
        if had_turn:
            self._pass_turn()
