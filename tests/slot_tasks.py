"""Tasks for the job-slot tests: which process and thread ran a job, and a job that outlives its timeout."""

from __future__ import annotations

import os
import threading
import time

from taskqueue import tasks


@tasks.task(name="slots.wait", retries=0)
def wait_then_say_where(seconds: float) -> dict[str, object]:
    """Wait ``seconds`` like an I/O-bound job, then say where it ran."""
    tasks.wait(seconds)
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@tasks.task(name="slots.overrun", timeout=1, retries=0)
def overrun(seconds: float) -> None:
    """Wait longer than the task's own timeout (1 s)."""
    tasks.wait(seconds)


@tasks.task(name="slots.compute", cpu_bound=True, retries=0)
def compute(rounds: int) -> dict[str, float]:
    """Pure-Python work that holds the GIL; says when it began and ended (wall clock)."""
    began = time.time()
    total = 0
    for i in range(rounds):
        total += i * i
    return {"began": began, "ended": time.time()}
