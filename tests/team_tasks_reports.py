"""A team's task whose jobs wait on a queue of their own: ``@task(queue="reports")``. A generator loads this
module only with ``reports`` in its TASKQUEUE_QUEUES."""

from __future__ import annotations

from taskqueue.tasks import task


@task(name="team.report", queue="reports", retries=0)
def report(title: str) -> str:
    return f"report: {title}"
