"""A team's own task module, outside the package: what ``TASKQUEUE_TASK_MODULES=tests.team_tasks`` loads."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from taskqueue.tasks import task


@task(name="team.summarize", timeout=60, retries=0)
def summarize(
    values: Annotated[list[float], Field(min_length=1, max_length=1000)],
    label: Annotated[str, Field(max_length=40)] = "values",
    statistic: Literal["mean", "max"] = "mean",
    digits: Annotated[int, Field(ge=0, le=6)] = 2,
    tags: dict[str, bool] | None = None,
) -> dict[str, object]:
    """Summarize a list of numbers.

    The second paragraph is not part of the description.
    """
    value = statistics.fmean(values) if statistic == "mean" else max(values)
    return {"label": label, statistic: round(value, digits), "count": len(values), "tags": sorted(tags or {})}


def touch(path: str) -> None:
    """Not a task: a job naming it must never run (the file it would write tells)."""
    Path(path).write_text("ran")
