"""A task for the progress tests and bench/progress_bench.py: a tight loop that reports its progress each turn."""

from __future__ import annotations

import time

from taskqueue import tasks


@tasks.task(name="progress.loop", retries=0)
def loop(calls: int, report: bool = True) -> dict[str, float]:
    """``calls`` turns of a loop that calls ``progress`` each turn (or, ``report=false``, does nothing): its seconds."""
    started = time.perf_counter()
    if report:
        for i in range(calls):
            tasks.progress(i, calls, "looping")
    else:
        for _ in range(calls):
            pass
    return {"seconds": time.perf_counter() - started}
