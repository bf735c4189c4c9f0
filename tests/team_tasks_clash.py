"""A second module with a task named as one of tests/team_tasks.py's: the catalogue refuses the pair."""

from __future__ import annotations

from taskqueue.tasks import task


@task(name="team.summarize")
def summarize_again(values: list[float]) -> float:
    return sum(values)
