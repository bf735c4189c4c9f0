"""The task catalogue: the functions a client may enqueue by name, and the only ones a worker runs.

Write a task as a plain function and mark it with :func:`task`; name its module in
``TASKQUEUE_TASK_MODULES`` or in an entry point of the group ``taskqueue.tasks`` (discovery.py). A
request names a task, never a Python path, so input cannot choose what code a worker imports.
"""

from taskqueue.tasks.builtin import fail, hash_chain, noop, save_to_file  # the paths older jobs name
from taskqueue.tasks.catalogue import Catalogue, CatalogueError, Task, TaskInputError, task
from taskqueue.tasks.discovery import ENTRY_POINT_GROUP, load, load_or_exit
from taskqueue.tasks.report import progress
from taskqueue.tasks.waiting import wait

__all__ = [
    "ENTRY_POINT_GROUP",
    "Catalogue",
    "CatalogueError",
    "Task",
    "TaskInputError",
    "fail",
    "hash_chain",
    "load",
    "load_or_exit",
    "noop",
    "progress",
    "save_to_file",
    "task",
    "wait",
]
