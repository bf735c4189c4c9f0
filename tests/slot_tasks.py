"""Tasks for the job-slot tests: which process and thread ran a job, and a job that outlives its timeout."""

from __future__ import annotations

import os
import threading

from taskqueue.tasks import task
from taskqueue.tasks.builtin import interruptible_sleep


@task(name="slots.wait", retries=0)
def wait(seconds: float) -> dict[str, object]:
    """Wait ``seconds`` like an I/O-bound job, then say where it ran."""
    interruptible_sleep(seconds)
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@task(name="slots.overrun", timeout=1, retries=0)
def overrun(seconds: float) -> None:
    """Wait longer than the task's own timeout (1 s)."""
    interruptible_sleep(seconds)
