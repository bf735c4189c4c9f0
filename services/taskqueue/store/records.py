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
