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


def _int_arg(args: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = args.get(name, default)
    if value is None:
        raise TaskInputError(f"argument '{name}' is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskInputError(f"argument '{name}' must be an integer")
    if not low <= value <= high:
        raise TaskInputError(f"argument '{name}' must be between {low} and {high}")
    return value


def _str_arg(args: Mapping[str, Any], name: str, default: str, max_len: int = 200) -> str:
    value = args.get(name, default)
    if not isinstance(value, str):
        raise TaskInputError(f"argument '{name}' must be a string")
    if len(value) > max_len:
        raise TaskInputError(f"argument '{name}' must be at most {max_len} characters")
    return value


@dataclass(frozen=True)
class Task:
    """An enqueueable task: the function, its argument names, and a validator to positional args."""

    name: str
    func: Callable[..., Any]
    arguments: tuple[str, ...]
    validate: Callable[[Mapping[str, Any], int], list[Any]]
    description: str


def _sleep_args(args: Mapping[str, Any], delay_limit: int) -> list[Any]:
    seconds = _int_arg(args, "seconds", 0, delay_limit)
    return [f"generating task with delay: {seconds}", seconds]


TASKS: dict[str, Task] = {
    "sleep": Task(
        "sleep",
        save_to_file,
        ("seconds",),
        _sleep_args,
        "The seed's task: sleep `seconds`, return the seed's message.",
    ),
    "hash": Task(
        "hash",
        hash_chain,
        ("rounds",),
        lambda a, _limit: [_int_arg(a, "rounds", 1, 50_000_000)],
        "CPU-bound: `rounds` chained SHA-256 hashes (1 to 50,000,000).",
    ),
    "noop": Task("noop", noop, (), lambda _a, _limit: [], "Returns at once."),
    "fail": Task(
        "fail",
        fail,
        ("message",),
        lambda a, _limit: [_str_arg(a, "message", "requested failure")],
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
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise TaskInputError("'args' must be an object")
    task = TASKS[name]
    unknown = sorted(set(args) - set(task.arguments))
    if unknown:
        raise TaskInputError(f"unknown argument(s) for task '{name}': {', '.join(unknown)}")
    return task, task.validate(args, delay_limit)


def task_name(func_name: str | None) -> str:
    """The task key for an RQ job's function path ('other' for anything not on the list)."""
    return TASK_BY_FUNC.get(func_name or "", "other")
