"""Tasks for the job-slot tests: which process and thread ran a job, and a job that outlives its timeout."""

from __future__ import annotations

import os
import threading

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
