"""Where the catalogue's tasks come from: the built-in module, named modules, installed packages.

Every process (generator, worker, exporter) loads the same catalogue at start, from the built-in
tasks, the modules named in ``TASKQUEUE_TASK_MODULES`` (comma-separated import paths) and the entry
points of installed packages in the group ``taskqueue.tasks`` (each names a module, or one task
function). A module that fails to import, or two tasks with one name, stop the process at start.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from types import ModuleType

from taskqueue.tasks import builtin
from taskqueue.tasks.catalogue import MARK, Catalogue, CatalogueError, Task, tasks_in

ENTRY_POINT_GROUP = "taskqueue.tasks"


def _import(name: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except CatalogueError:
        raise
    except Exception as exc:
        raise CatalogueError(f"{origin} {name!r} failed to import: {type(exc).__name__}: {exc}") from None


def load(module_names: Sequence[str] = (), entry_points: bool = True) -> Catalogue:
    """The catalogue of the built-in tasks, ``module_names`` and (with ``entry_points``) installed packages'."""
    modules = [builtin, *(_import(name, "task module") for name in module_names)]
    functions: list[Task] = []
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except CatalogueError:
                raise
            except Exception as exc:
                raise CatalogueError(
                    f"entry point {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                ) from None
            if isinstance(loaded, ModuleType):
                modules.append(loaded)
            elif isinstance(getattr(loaded, MARK, None), Task):
                functions.append(getattr(loaded, MARK))
            else:
                raise CatalogueError(f"entry point {ep.name!r} ({ep.value}) is neither a module nor a task")
    return Catalogue([*tasks_in(modules), *functions], builtin.LEGACY_PATHS)


def load_or_exit(prog: str, module_names: Sequence[str], queues: Sequence[str] | None = None) -> Catalogue:
    """:func:`load` for a process at its start: a catalogue error ends it with status 2 and one line.

    With ``queues`` (the generator's), a task for another queue is such an error too.
    """
    try:
        catalogue = load(module_names)
        if queues is not None:
            catalogue.check_queues(queues)
        return catalogue
    except CatalogueError as exc:
        sys.stderr.write(f"{prog}: task catalogue error: {exc}\n")
        raise SystemExit(2) from None
