"""Tasks and the catalogue of them: what a client may enqueue by name, and what a worker may run.

A task is a plain module-level function marked with :func:`task`. Its parameters and their constraints
come from its type hints (``int``, ``float``, ``bool``, ``str``, lists, dicts, ``Literal``, ``Annotated``
with pydantic's ``Field`` bounds): pydantic builds one model per task that checks a request's
arguments and gives the task's JSON Schema. The checks are strict, as JSON Schema reads JSON: ``true`` is not
an integer, nor is ``1.5`` (``2.0`` is the integer 2), a number is not a string, NaN and infinities
are refused, unknown arguments are refused, and defaults apply.

A job in Redis names its function by its import path; :class:`Catalogue` maps those paths back to
tasks, so a worker can refuse a job whose function is not one of them (worker/classes.py).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

MARK = "taskqueue_task"  # the attribute :func:`task` sets on a function: its Task
ARGUMENTS_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


class TaskInputError(ValueError):
    """The client's task name or arguments are not acceptable; ``field`` names the argument at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class CatalogueError(Exception):
    """A task that cannot be registered: a bad signature, a name taken twice, a module that fails to import."""


@dataclass(frozen=True)
class Task:
    """An enqueueable function, its name, and the model its arguments are checked against."""

    name: str
    func: Callable[..., Any]
    description: str
    arguments_model: type[BaseModel]
    timeout: int | None = None  # seconds; None: the generator's TASKQUEUE_JOB_TIMEOUT
    retries: int | None = None  # None: TASKQUEUE_RETRIES
    queue: str | None = None  # None: the generator's first queue (TASKQUEUE_QUEUES)
    cpu_bound: bool = False  # holds the GIL while it runs: a process's job slots run one such job at a time

    @property
    def path(self) -> str:
        """The import path a job hash names (RQ's ``func_name``)."""
        return f"{self.func.__module__}.{self.func.__qualname__}"

    def args_schema(self) -> dict[str, Any]:
        """The JSON Schema of the task's ``args`` object."""
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        return schema

    def arguments(self, args: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> list[Any]:
        """The function's positional arguments from a request's ``args``, checked (JSON values only).

        ``context`` reaches the validators of the task's hints (the built-in sleep reads its limit there).
        """
        try:
            checked = self.arguments_model.model_validate(whole_numbers(args), context=context)
        except ValidationError as exc:
            errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
            reasons = "; ".join(f"argument '{where}': {msg}" for where, msg in errors)
            raise TaskInputError(f"task '{self.name}': {reasons}", errors[0][0]) from None
        values = checked.model_dump(mode="json")
        return [values[name] for name in self.arguments_model.model_fields]


def whole_numbers(value: Any) -> Any:
    """``value`` with each float that is a whole number made an int: JSON Schema's reading of JSON (``2.0`` is
    the integer 2), which a strict ``int`` would refuse. A ``float`` parameter takes ints as they are."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


def _arguments_model(func: Callable[..., Any], name: str) -> type[BaseModel]:
    path = f"{func.__module__}.{func.__qualname__}"
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise CatalogueError(f"task {name!r} ({path}): its type hints do not resolve: {exc}") from None
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            raise CatalogueError(
                f"task {name!r} ({path}): parameter '{param.name}' must be a plain one (no *, **, / or keyword-only)"
            )
        if param.name not in hints:
            raise CatalogueError(f"task {name!r} ({path}): parameter '{param.name}' needs a type hint")
        fields[param.name] = (hints[param.name], ... if param.default is inspect.Parameter.empty else param.default)
    try:
        return create_model(f"{name}.args", __config__=ARGUMENTS_CONFIG, **fields)
    except Exception as exc:  # a hint pydantic cannot check, a parameter name it reserves
        raise CatalogueError(f"task {name!r} ({path}): {exc}") from None


def make_task(
    func: Callable[..., Any],
    name: str | None = None,
    description: str | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    queue: str | None = None,
    cpu_bound: bool = False,
) -> Task:
    """The Task of ``func`` (what :func:`task` attaches), or a CatalogueError saying what is wrong with it."""
    name = name or func.__name__
    path = f"{func.__module__}.{getattr(func, '__qualname__', '?')}"
    if not inspect.isfunction(func) or func.__qualname__ != func.__name__:
        raise CatalogueError(f"task {name!r} ({path}): must be a function at the top level of its module")
    if not name or not set(name) <= NAME_CHARS or len(name) > 100:
        raise CatalogueError(f"task {name!r} ({path}): a name is 1-100 of a-z, 0-9, '_', '.' and '-'")
    if (timeout is not None and timeout < 1) or (retries is not None and retries < 0):
        raise CatalogueError(f"task {name!r} ({path}): timeout must be >= 1 second and retries >= 0")
    if queue is not None and (not queue or not set(queue) <= NAME_CHARS or len(queue) > 100):
        raise CatalogueError(f"task {name!r} ({path}): a queue name is 1-100 of a-z, 0-9, '_', '.' and '-'")
    doc = description if description is not None else inspect.getdoc(func) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    return Task(name, func, summary, _arguments_model(func, name), timeout, retries, queue, cpu_bound)


F = typing.TypeVar("F", bound=Callable[..., Any])


@overload
def task(func: F, /) -> F: ...
@overload
def task(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    queue: str | None = None,
    cpu_bound: bool = False,
) -> Callable[[F], F]: ...
def task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    queue: str | None = None,
    cpu_bound: bool = False,
) -> Any:
    """Mark a function as a task: ``@task`` or ``@task(name="reports.summarize", timeout=600, retries=3)``.

    The function is returned unchanged (a direct call runs it as before). ``name`` defaults to the
    function's, ``description`` to its docstring's first paragraph; ``timeout`` and ``retries`` to the
    generator's settings; ``queue`` (where its jobs wait, one of the generator's TASKQUEUE_QUEUES) to
    the first of those. ``cpu_bound=True`` says the function holds the GIL while it runs (pure-Python
    computing): the job slots of a worker process then run one of its jobs at a time, since more would
    only take turns on one core (``--job-slots``). A bad signature raises CatalogueError here, when its
    module is imported.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, MARK, make_task(f, name, description, timeout, retries, queue, cpu_bound))
        return f

    return mark if func is None else mark(func)


def tasks_in(modules: Iterable[ModuleType]) -> list[Task]:
    """The tasks in the modules' namespaces: each function marked with :func:`task`."""
    return [getattr(v, MARK) for m in modules for v in vars(m).values() if isinstance(getattr(v, MARK, None), Task)]


class Catalogue(Mapping[str, Task]):
    """The tasks by name, and by the import path a job names (with ``aliases``: older paths of a task)."""

    def __init__(self, tasks: Iterable[Task], aliases: Mapping[str, str] | None = None):
        self._by_name: dict[str, Task] = {}
        for t in tasks:
            other = self._by_name.get(t.name)
            if other is not None and other.func is not t.func:
                raise CatalogueError(f"two tasks are named {t.name!r}: {other.path} and {t.path}")
            self._by_name[t.name] = t
        self._by_path = {t.path: t for t in self._by_name.values()}
        for path, name in (aliases or {}).items():
            self._by_path.setdefault(path, self._by_name[name])

    def __getitem__(self, name: str) -> Task:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def for_path(self, func_path: str | None) -> Task | None:
        """The task a job's function path names, or None: not a catalogue task, never to be run."""
        return self._by_path.get(func_path or "")

    def task_name(self, func_path: str | None) -> str:
        """The task's name for a job's function path ('other' for anything not in the catalogue)."""
        found = self.for_path(func_path)
        return found.name if found is not None else "other"

    def check_queues(self, queues: Sequence[str]) -> None:
        """A CatalogueError for a task whose ``queue`` is not one of ``queues`` (no worker would take its jobs)."""
        for t in self._by_name.values():
            if t.queue is not None and t.queue not in queues:
                where = f"task {t.name!r} ({t.path}) is for queue {t.queue!r}"
                raise CatalogueError(f"{where}, which is not in TASKQUEUE_QUEUES ({','.join(queues)})")

    def validate(self, name: Any, args: Any, context: Mapping[str, Any] | None = None) -> tuple[Task, list[Any]]:
        """Check a client's task name and arguments; the task and the function's positional arguments."""
        if not isinstance(name, str) or name not in self._by_name:
            raise TaskInputError(f"'task' must be one of: {', '.join(sorted(self._by_name))}", "task")
        if not isinstance(args, dict):
            raise TaskInputError("'args' must be an object", "args")
        found = self._by_name[name]
        return found, found.arguments(args, context)
