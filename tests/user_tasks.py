"""Tasks a user's own module might hold, for the worker's tests: outcomes that are hard to store.

The tests enqueue them through RQ directly, as a team's own code could; the test worker loads them with
``TASKQUEUE_TASK_MODULES=tests.user_tasks`` (its PYTHONPATH is the checkout).
"""

from __future__ import annotations

from taskqueue.tasks import task


class UnprintableError(Exception):
    """An exception whose message cannot be made: its ``__str__`` raises."""

    def __str__(self) -> str:
        raise ValueError("no message")


@task
def return_surrogate() -> str:
    """A result holding a lone UTF-16 surrogate (JSON allows it, UTF-8 does not)."""
    return "half a pair: \ud800"


@task
def raise_surrogate() -> None:
    """An error message holding lone surrogates."""
    raise RuntimeError("bad text \udfff and \ud83d")


@task
def raise_unprintable() -> None:
    raise UnprintableError()


@task
def return_set() -> set[int]:
    """A result JSON cannot hold."""
    return {1, 2, 3}


@task
def return_large(size: int) -> str:
    """A result of ``size`` characters."""
    return "x" * size


@task
def raise_large(size: int) -> None:
    """An error message of ``size`` characters."""
    raise RuntimeError("e" * size)


@task
def raise_forged() -> None:
    """A message whose last line looks like another exception."""
    raise KeyError("boom\nValueError: this line was written by the job")
