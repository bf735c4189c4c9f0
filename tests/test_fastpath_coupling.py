"""The other libraries' names that ``taskqueue/fastpath/`` relies on (its COUPLING.md) still mean what they
meant, and each fast path still applies: an upgrade that renames a symbol, or turns a fast path into a
silent no-op, fails here (and in each module's own tests, which compare its records with stock RQ's)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest
from redis.client import Pipeline
from rq import SimpleWorker
from rq.job import Job, JobStatus

from taskqueue.fastpath import redis_pipeline
from taskqueue.fastpath.job_path import LeanJobPath
from taskqueue.store.connection import connect
from taskqueue.store.records import SERIALIZER
from taskqueue.tasks import noop

COUPLING = Path(__file__).parents[1] / "services" / "taskqueue" / "fastpath" / "COUPLING.md"


def test_the_pins_coupling_md_names_are_the_installed_versions():
    text = COUPLING.read_text()
    for package in ("rq", "redis", "gunicorn", "gevent"):
        pinned = re.search(rf"`{package}==([\w.]+)`", text)
        assert pinned, f"COUPLING.md names no pin for {package}"
        assert importlib.metadata.version(package) == pinned.group(1), f"{package} changed: re-check COUPLING.md"


def test_every_private_name_used_in_fastpath_is_listed_in_coupling_md():
    """An underscore attribute that fastpath/ reads or writes and does not define itself (on ``self`` too:
    its classes subclass RQ's) is another library's, and COUPLING.md names it."""
    listed = COUPLING.read_text()
    code = "\n".join(line.split("#")[0] for p in COUPLING.parent.glob("*.py") for line in p.read_text().splitlines())
    ours = set(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=]+)?=[^=]", code)) | set(re.findall(r"def (_[a-z]\w*)", code))
    used = set(re.findall(r"\.(_[a-z]\w*)", code)) - ours
    assert used, "the scan finds nothing: the test would pass whatever fastpath/ does"
    for name in sorted(used):
        assert f".{name}`" in listed, f"{name}, used in fastpath/, is not in COUPLING.md"


def test_rq_job_keeps_the_attributes_the_job_path_sets_and_reads(redis_client):
    """``Job._status`` is what ``get_status(refresh=False)`` answers; ``Job._result`` holds what ``perform()``
    returned; ``Job._dependency_ids`` lists a job's dependencies."""
    job = Job.create(noop, connection=redis_client, serializer=SERIALIZER)
    job._status = JobStatus.FINISHED
    assert job.get_status(refresh=False) == JobStatus.FINISHED
    job = Job.create(pow, args=(2, 5), connection=redis_client, serializer=SERIALIZER)
    job.save()
    assert job.perform() == 32 and job._result == 32
    child = Job.create(noop, depends_on=job, connection=redis_client, serializer=SERIALIZER)
    assert child._dependency_ids == [job.id]


def test_rq_worker_keeps_the_names_the_job_path_uses(redis_client):
    """``Worker._stop_requested`` says a stop was asked for; ``_enqueue_dependents_safely(queue, job)`` exists."""
    worker = SimpleWorker(["default"], connection=redis_client)
    assert worker._stop_requested is False
    assert list(inspect.signature(SimpleWorker._enqueue_dependents_safely).parameters) == ["self", "queue", "job"]


def test_the_lean_path_overrides_only_methods_rq_still_has():
    """A renamed upstream method would leave our override uncalled: the fast path would silently stop."""
    own = {"_take", "_started", "_wait_for_job", "_resume_interrupted_take", "_give_back_prefetched",
           "_write_with_counters", "_counters_pending", "_pop", "_pop_keys", "_popped", "_next_of_take",
           "_start_unclaimed", "_write_take", "_add_take", "_write_end", "_after_ends", "_claim", "_claim_late",
           "claim_running", "_final_progress", "_write_success"}  # fmt: skip
    for name, member in vars(LeanJobPath).items():
        if callable(member) and not name.startswith("__") and name not in own:
            assert hasattr(SimpleWorker, name), f"RQ's worker has no {name} any more"


def test_a_plain_pipeline_goes_out_without_redis_pys_execute(cfg, monkeypatch):
    """``send`` applies: redis-py's ``Pipeline.execute`` is not called for a plain pipeline (a wrapper that
    counts the calls and runs the real one)."""
    calls = []
    real = Pipeline.execute
    monkeypatch.setattr(Pipeline, "execute", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    client = connect(cfg, retries=0)  # the worker's client: no retries, send's case
    with client.pipeline(transaction=True) as pipe:
        pipe.set("k", "v")
        pipe.get("k")
        assert redis_pipeline.send(pipe) == [True, b"v"]
    assert calls == []


@pytest.mark.parametrize("name", ["command_stack", "scripts", "watching", "explicit_transaction", "response_callbacks"])
def test_redis_py_pipeline_keeps_the_attributes_send_reads(redis_client, name):
    with redis_client.pipeline() as pipe:
        assert hasattr(pipe, name)


def test_outside_fastpath_no_private_import_and_no_module_attribute_replaced():
    """The rest of the package imports no private name of another library (dunders are public), and no
    module anywhere assigns to an attribute of an imported module (no monkeypatching)."""
    package = COUPLING.parents[1]
    checked = 0
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("taskqueue"):
                names = [part for n in (node.module, *(a.name for a in node.names)) for part in n.split(".")]
                if "fastpath" not in path.parts:
                    private = [n for n in names if n.startswith("_") and not n.endswith("__")]
                    assert not private, f"{path.name} imports a private name: {private}"
                modules |= {a.asname or a.name for a in node.names if inspect.ismodule(_resolve(node.module, a.name))}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                    assert target.value.id not in modules, f"{path.name}: assigns {target.value.id}.{target.attr}"
        checked += 1
    assert checked > 20


def _resolve(module: str, name: str):
    """The object ``from module import name`` binds (None if it cannot be imported here)."""
    try:
        return getattr(importlib.import_module(module), name, None) or importlib.import_module(f"{module}.{name}")
    except ImportError:
        return None
