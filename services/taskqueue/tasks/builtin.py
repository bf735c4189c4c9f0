"""The allow-list of tasks a client may enqueue, with their argument validation.

A request names a task by its key here, never by a Python path, so input cannot choose
what code a worker imports.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class TaskInputError(ValueError):
    """The client's task name or arguments are not acceptable."""


def save_to_file(msg: str, delayTime: int) -> str:  # the seed's argument names
    """The seed's job: sleep, then return the seed's message."""
    time.sleep(delayTime)
    return f"Processed message {msg} after {delayTime} seconds"


def hash_chain(rounds: int, seed: str = "taskqueue") -> dict[str, Any]:
    """CPU-bound work: ``rounds`` iterations of SHA-256 over its own output."""
    digest = seed.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"rounds": rounds, "digest": digest.hex()}


def noop() -> None:
    """Does nothing: for measuring the queue's own overhead."""


def fail(message: str = "requested failure") -> None:
    """Always raises: for seeing retries and failure handling work."""
    raise RuntimeError(message)


@dataclass(frozen=True)
class Param:
    """One argument of a task: an integer within bounds or a string up to a length."""

    kind: type
    low: int = 0
    high: int | None = None  # None: the configured delay limit
    default: Any = None

    def schema(self, delay_limit: int) -> dict[str, Any]:
        if self.kind is int:
            high = delay_limit if self.high is None else self.high
            return {"type": "integer", "minimum": self.low, "maximum": high}
        return {"type": "string", "maxLength": self.high}

    def check(self, name: str, value: Any, delay_limit: int) -> Any:
        if self.kind is int:
            high = delay_limit if self.high is None else self.high
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON has one number type: 5.0 is the integer 5
            if isinstance(value, bool) or not isinstance(value, int):
                raise TaskInputError(f"argument '{name}' must be an integer")
            if not self.low <= value <= high:
                raise TaskInputError(f"argument '{name}' must be between {self.low} and {high}")
        elif not isinstance(value, str) or len(value) > (self.high or 0):
            raise TaskInputError(f"argument '{name}' must be a string of at most {self.high} characters")
        return value


@dataclass(frozen=True)
class Task:
    """An enqueueable task: the function and its parameters, in the order the function takes them."""

    name: str
    func: Callable[..., Any]
    params: dict[str, Param]
    description: str

    def args_schema(self, delay_limit: int) -> dict[str, Any]:
        """The JSON schema of ``args`` (the OpenAPI document uses it)."""
        return {
            "type": "object",
            "properties": {n: p.schema(delay_limit) for n, p in self.params.items()},
            "required": [n for n, p in self.params.items() if p.default is None],
            "additionalProperties": False,
        }

    def arguments(self, args: Mapping[str, Any], delay_limit: int) -> list[Any]:
        """Validated positional arguments for the function."""
        unknown = sorted(set(args) - set(self.params))
        if unknown:
            raise TaskInputError(f"unknown argument(s) for task '{self.name}': {', '.join(unknown)}")
        values = []
        for name, param in self.params.items():
            value = args.get(name, param.default)
            if value is None:
                raise TaskInputError(f"argument '{name}' is required")
            values.append(param.check(name, value, delay_limit))
        return values


class SleepTask(Task):
    """The seed's job takes the seed's message and the delay."""

    def arguments(self, args: Mapping[str, Any], delay_limit: int) -> list[Any]:
        (seconds,) = super().arguments(args, delay_limit)
        return [f"generating task with delay: {seconds}", seconds]


TASKS: dict[str, Task] = {
    "sleep": SleepTask(
        "sleep", save_to_file, {"seconds": Param(int)}, "The seed's task: sleep `seconds`, return the seed's message."
    ),
    "hash": Task(
        "hash", hash_chain, {"rounds": Param(int, 1, 50_000_000)}, "CPU-bound: `rounds` chained SHA-256 hashes."
    ),
    "noop": Task("noop", noop, {}, "Returns at once."),
    "fail": Task(
        "fail",
        fail,
        {"message": Param(str, high=200, default="requested failure")},
        "Always raises, to exercise retries and the failed registry.",
    ),
}

# The RQ function path of each task, and back: what a job hash names.
FUNC_NAMES = {name: f"{t.func.__module__}.{t.func.__qualname__}" for name, t in TASKS.items()}
TASK_BY_FUNC = {func: name for name, func in FUNC_NAMES.items()}


def validate(name: Any, args: Any, delay_limit: int) -> tuple[Task, list[Any]]:
    """Check a client's task name and arguments; return the task and its positional arguments."""
    if not isinstance(name, str) or name not in TASKS:
        raise TaskInputError(f"'task' must be one of: {', '.join(sorted(TASKS))}")
    if not isinstance(args, dict):
        raise TaskInputError("'args' must be an object")
    task = TASKS[name]
    return task, task.arguments(args, delay_limit)


def task_name(func_name: str | None) -> str:
    """The task key for an RQ job's function path ('other' for anything not on the list)."""
    return TASK_BY_FUNC.get(func_name or "", "other")
