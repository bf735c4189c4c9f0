"""The built-in tasks, registered as a user's are: the seed's sleep, and three for seeing the queue work."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from taskqueue.tasks.catalogue import task
from taskqueue.tasks.report import progress
from taskqueue.tasks.waiting import wait

# The import paths these tasks had before they were a module of their own: jobs enqueued then name them.
LEGACY_PATHS = {
    "taskqueue.tasks.save_to_file": "sleep",
    "taskqueue.tasks.hash_chain": "hash",
    "taskqueue.tasks.noop": "noop",
    "taskqueue.tasks.fail": "fail",
}


def save_to_file(msg: str, delayTime: int) -> str:  # the seed's function and argument names
    """The seed's job: sleep, then return the seed's message (what jobs of the old path still run).

    The sleep is :func:`~taskqueue.tasks.waiting.wait`: a stop or timeout ends it at once, in a job slot too.
    Its progress is the seconds slept, one report a second."""
    for second in range(delayTime):
        progress(second, delayTime, "sleeping")
        wait(1)
    progress(delayTime, delayTime, "done")
    return f"Processed message {msg} after {delayTime} seconds"


def seed_message(seconds: int) -> str:
    """The message the seed's job carries: the ``/start`` answer and the result quote it."""
    return f"generating task with delay: {seconds}"


def _within_delay_limit(seconds: int, info: ValidationInfo) -> int:
    limit = (info.context or {}).get("delay_limit")
    if limit is not None and seconds > limit:
        raise PydanticCustomError(
            "less_than_equal", "Input should be less than or equal to {le} (TASKQUEUE_DELAY_LIMIT)", {"le": limit}
        )
    return seconds


@task(name="sleep")
def sleep(seconds: Annotated[int, Field(ge=0), AfterValidator(_within_delay_limit)]) -> str:
    """The seed's task: sleep `seconds` (at most TASKQUEUE_DELAY_LIMIT), return the seed's message."""
    return save_to_file(seed_message(seconds), seconds)


@task(name="hash", cpu_bound=True)
def hash_chain(
    rounds: Annotated[int, Field(ge=1, le=50_000_000)], seed: Annotated[str, Field(max_length=200)] = "taskqueue"
) -> dict[str, Any]:
    """CPU-bound: `rounds` chained SHA-256 hashes."""
    digest = seed.encode()
    for i in range(rounds):
        if not i & 0xFFFF:  # every 65,536 rounds: the check costs less than the hash
            progress(i, rounds)
        digest = hashlib.sha256(digest).digest()
    progress(rounds, rounds)
    return {"rounds": rounds, "digest": digest.hex()}


@task
def noop() -> None:
    """Returns at once."""


@task
def fail(message: Annotated[str, Field(max_length=200)] = "requested failure") -> None:
    """Always raises, to exercise retries and the failed registry."""
    raise RuntimeError(message)
