"""RQ's records in Redis as taskqueue reads and writes them: JSON job data and the registries by state."""

from __future__ import annotations

from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer

# JSON on both sides of Redis: a job hash never holds a pickle, and one that does is refused.
SERIALIZER = JSONSerializer

REGISTRIES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "deferred": DeferredJobRegistry,
    "canceled": CanceledJobRegistry,
}

# In a job's hash: times the exporter put the job back from a worker that died before it claimed it
# (exporter/collector.py); a fast-path worker claims such a job before it runs it (fastpath/job_path.py).
RETURNS_FIELD = "taskqueue_returns"
