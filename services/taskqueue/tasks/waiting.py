"""A wait that a job's stop or timeout cuts short, for tasks that wait: the built-in ``sleep``, and yours.

In a job slot (worker/slots.py) a stop or a timeout is an exception raised into the job's thread; it
lands between two bytecodes, so a ``time.sleep(60)`` would first run to its end. :func:`wait` sleeps on
an event the worker sets after raising the exception, so it ends at once (and costs no wake-ups while
it waits). With one slot a process, SIGALRM interrupts it as it does ``time.sleep``.
"""

from __future__ import annotations

import threading
import time

_events: dict[int, threading.Event] = {}  # by thread id: a slot's thread lives as long as its process
_lock = threading.Lock()


def _event(thread_id: int) -> threading.Event:
    with _lock:
        return _events.setdefault(thread_id, threading.Event())


def wait(seconds: float) -> None:
    """Sleep ``seconds``, unless the running job is stopped or times out first (then its exception is raised)."""
    event = _event(threading.get_ident())
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        event.wait(left)
        event.clear()  # (woken: the stop's exception lands here, before the loop goes round)


def wake(thread_id: int) -> None:
    """End the thread's :func:`wait` now (after an exception was raised into it)."""
    _event(thread_id).set()
