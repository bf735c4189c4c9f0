"""Your own tasks: a module outside the package joins the catalogue; the API checks arguments against the
functions' type hints; a worker runs catalogue tasks and nothing else.

Real redis-server, generator (gunicorn) and worker processes; the team's module is tests/team_tasks.py,
loaded with TASKQUEUE_TASK_MODULES (the processes' PYTHONPATH is the checkout).
"""

from __future__ import annotations

import re
import subprocess

import pytest
import requests
from rq import Queue

from taskqueue.store.records import SERIALIZER
from taskqueue.tasks import CatalogueError, load, task
from tests.support import BIN, ROOT, wait_status

# The tests through the API and workers are marked behaviour: make test runs them again with the fast paths off.


@pytest.fixture
def team_env(app_env):
    return {**app_env, "PYTHONPATH": str(ROOT), "TASKQUEUE_TASK_MODULES": "tests.team_tasks"}


@pytest.mark.behaviour
def test_a_team_task_is_enqueued_over_http_and_finishes_with_its_result(team_env, processes):
    gen, _ = processes.generator(env=team_env), processes.worker(env=team_env)
    body = {"task": "team.summarize", "args": {"values": [1, 2, 4.5], "label": "sizes", "tags": {"csv": True}}}
    r = requests.post(gen.base + "/jobs", json=body, timeout=5)
    assert r.status_code == 202, r.text
    doc = wait_status(gen.base, r.json()["jobId"], {"finished", "failed"}, timeout=15)
    assert doc["status"] == "finished", doc
    assert doc["result"] == {"label": "sizes", "mean": 2.5, "count": 3, "tags": ["csv"]}
    assert doc["task"] == "team.summarize"
    # The seed's flow is unchanged beside it.
    started = requests.get(gen.base + "/start?delay=0", timeout=5).json()
    done = wait_status(gen.base, started["jobId"], {"finished"}, timeout=15)
    assert done["result"] == "Processed message generating task with delay: 0 after 0 seconds"


@pytest.mark.behaviour
def test_get_tasks_lists_the_catalogue_with_each_schema(team_env, processes):
    gen = processes.generator(env=team_env)
    listed = {t["name"]: t for t in requests.get(gen.base + "/tasks", timeout=5).json()["tasks"]}
    assert set(listed) >= {"sleep", "hash", "noop", "fail", "team.summarize"}  # (and installed packages')
    team = listed["team.summarize"]
    assert team["description"] == "Summarize a list of numbers."
    assert (team["queue"], team["timeout"], team["retries"]) == ("default", 60, 0)  # the decorator's
    assert (listed["noop"]["timeout"], listed["noop"]["retries"]) == (180, 2)  # the generator's settings
    schema = team["schema"]
    assert schema["required"] == ["values"] and schema["additionalProperties"] is False
    assert schema["properties"]["values"]["items"] == {"type": "number"}
    assert schema["properties"]["statistic"]["enum"] == ["mean", "max"]
    assert schema["properties"]["digits"].items() >= {"minimum": 0, "maximum": 6}.items()
    assert listed["sleep"]["schema"]["properties"]["seconds"]["maximum"] == 120  # TASKQUEUE_DELAY_LIMIT
    # The OpenAPI document's request body has the same schema for the task.
    variants = requests.get(gen.base + "/openapi.json", timeout=5).json()["components"]["schemas"]["JobRequest"]
    (team_variant,) = [v for v in variants["oneOf"] if v["properties"]["task"] == {"const": "team.summarize"}]
    assert team_variant["properties"]["args"] == schema


BAD_ARGUMENTS = [
    ({"values": [1], "digits": True}, "digits", "valid integer"),  # a bool is not an int
    ({"values": [1], "digits": 2.5}, "digits", "valid integer"),  # nor is a float (2.0 is: JSON Schema's integer)
    ({"label": "x"}, "values", "Field required"),  # missing
    ({"values": [1], "colour": "red"}, "colour", "Extra inputs are not permitted"),  # unknown
    ({"values": [1], "digits": 7}, "digits", "less than or equal to 6"),  # out of bounds
    ({"values": [1, "2"]}, "values.1", "valid number"),  # a wrong type in a list
    ({"values": []}, "values", "at least 1 item"),
    ({"values": [1], "statistic": "median"}, "statistic", "'mean' or 'max'"),
    ({"values": [1], "tags": {"a": "yes"}}, "tags.a", "valid boolean"),
    ({"values": [1], "label": "x" * 41}, "label", "at most 40 characters"),
]


@pytest.mark.behaviour
def test_bad_arguments_answer_400_naming_the_field(team_env, processes, redis_client):
    """Each bad argument of BAD_ARGUMENTS, and NaN and infinities (Python's JSON reads them), through one generator."""
    gen = processes.generator(env=team_env)
    for args, field, reason in BAD_ARGUMENTS:
        r = requests.post(gen.base + "/jobs", json={"task": "team.summarize", "args": args}, timeout=5)
        assert r.status_code == 400, (args, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_task" and error["field"] == field, (args, error)
        assert reason in error["message"] and f"'{field}'" in error["message"], (args, error)
    for literal in ("NaN", "Infinity", "-Infinity"):
        data = '{"task": "team.summarize", "args": {"values": [' + literal + "]}}"
        r = requests.post(gen.base + "/jobs", data=data, headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["field"] == "values.0", r.text
    assert redis_client.llen("rq:queue:default") == 0


@pytest.mark.behaviour
def test_a_plain_rq_job_naming_a_function_outside_the_catalogue_never_runs(team_env, processes, redis_client, tmp_path):
    """Jobs written with plain RQ, as anyone who can write to Redis could: os.system, and an importable function of
    the team's module that is not a task. Neither is called; each fails with a clear error; the worker goes on."""
    gen, worker = processes.generator(env=team_env), processes.worker(env=team_env)
    queue = Queue("default", connection=redis_client, serializer=SERIALIZER)
    marker, shell_marker = tmp_path / "touched", tmp_path / "shell-ran"
    jobs = [
        queue.enqueue("tests.team_tasks.touch", str(marker)),
        queue.enqueue("os.system", f"touch {shell_marker}"),
    ]
    for job in jobs:
        doc = wait_status(gen.base, job.id, {"finished", "failed"}, timeout=15)
        assert doc["status"] == "failed", doc
        assert doc["task"] == "other"
        assert re.search(r"refused: \S+ is not a task of this worker's catalogue", doc["error"]), doc
    assert not marker.exists() and not shell_marker.exists()
    # The worker carries on, and counted the refusals.
    noop = requests.post(gen.base + "/jobs", json={"task": "noop"}, timeout=5).json()["jobId"]
    assert wait_status(gen.base, noop, {"finished"}, timeout=15)["status"] == "finished"
    text = requests.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
    refused = [
        ln for ln in text.splitlines()
        if ln.startswith("taskqueue_jobs_completed_total{") and 'task="other"' in ln and 'outcome="failed"' in ln
    ]  # fmt: skip
    assert [float(ln.rsplit(" ", 1)[1]) for ln in refused] == [2.0], text


@pytest.mark.behaviour
def test_a_task_for_its_own_queue_waits_there_for_that_queues_workers(app_env, processes, redis_client, tmp_path):
    """``@task(queue="reports")``: its jobs wait on ``reports``, with a backlog of their own, and only a worker of
    that queue takes them; a batch is all or none; a generator without the queue refuses to start."""
    env = {**app_env, "PYTHONPATH": str(ROOT), "TASKQUEUE_TASK_MODULES": "tests.team_tasks_reports"}
    proc = subprocess.run(
        [str(BIN / "taskqueue-generator"), "--metrics-port", "0"],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    said = "is for queue 'reports', which is not in TASKQUEUE_QUEUES (high,default,low)"
    assert proc.returncode == 2 and said in proc.stderr
    env |= {"TASKQUEUE_QUEUES": "default,reports", "TASKQUEUE_MAX_BACKLOG": "2"}
    gen = processes.generator(env=env)
    listed = {t["name"]: t["queue"] for t in requests.get(gen.base + "/tasks", timeout=5).json()["tasks"]}
    assert (listed["team.report"], listed["sleep"]) == ("reports", "default")
    seed = requests.get(gen.base + "/start?delay=0", timeout=5)
    reports = [
        requests.post(gen.base + "/jobs", json={"task": "team.report", "args": {"title": title}}, timeout=5)
        for title in ("q3", "q4", "q5")
    ]
    assert [r.status_code for r in [seed, *reports]] == [200, 202, 202, 429], [r.text for r in reports]
    # Each queue's backlog (2) is its own: the default queue's job took none of the reports queue's room.
    assert "queue 'reports'" in reports[2].json()["error"]["message"]
    assert (redis_client.llen("rq:queue:reports"), redis_client.llen("rq:queue:default")) == (2, 1)
    # /list covers the generator's queues, in TASKQUEUE_QUEUES order.
    ids = [r.json()["jobId"] for r in [seed, *reports[:2]]]
    queued = requests.get(gen.base + "/list?state=queued", timeout=5).json()
    assert (queued["jobs"], queued["total"]) == (ids, 3)
    page = requests.get(gen.base + "/list?state=queued&offset=1&limit=1", timeout=5).json()
    assert page["jobs"] == ids[1:2]
    # A batch for several queues is one transaction: refused whole when one of its queues is full.
    mixed = {"jobs": [{"task": "noop"}, {"task": "team.report", "args": {"title": "x"}}]}
    r = requests.post(gen.base + "/jobs/batch", json=mixed, timeout=5)
    assert r.status_code == 429 and r.json()["error"]["code"] == "backlog_full", r.text
    assert (redis_client.llen("rq:queue:reports"), redis_client.llen("rq:queue:default")) == (2, 1)
    # A worker of the reports queue alone runs the report, and leaves the default queue's job where it is.
    processes.worker(env={**env, "TASKQUEUE_QUEUES": "reports"})
    doc = wait_status(gen.base, ids[2], {"finished", "failed"}, timeout=15)
    assert (doc["status"], doc["result"], doc["queue"]) == ("finished", "report: q4", "reports"), doc
    assert requests.get(f"{gen.base}/status/{ids[0]}", timeout=5).json()["status"] == "queued"


@pytest.mark.parametrize(
    ("modules", "said"),
    [
        ("tests.no_such_module", "task module 'tests.no_such_module' failed to import: ModuleNotFoundError"),
        ("tests.team_tasks,tests.team_tasks_clash", "two tasks are named 'team.summarize'"),
    ],
    ids=["missing", "clash"],
)
@pytest.mark.parametrize("command", ["taskqueue-generator", "taskqueue-worker", "taskqueue-exporter"])
def test_a_bad_task_module_stops_each_process_at_start_with_one_line(app_env, command, modules, said, tmp_path):
    env = {**app_env, "PYTHONPATH": str(ROOT), "TASKQUEUE_TASK_MODULES": modules}
    proc = subprocess.run(
        [str(BIN / command), "--metrics-port", "0"], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{command}: task catalogue error: ") and said in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def ok_task(x: int) -> int:  # (a function the decorator takes, but for the options given it)
    return x


def bad_untyped(x):  # (top-level functions the decorator refuses; not decorated here: this module must import)
    return x


def bad_star(*values: int) -> int:
    return 0


def bad_keyword_only(*, x: int) -> int:
    return x


def test_the_decorator_refuses_what_cannot_be_a_task():
    def nested(x: int) -> int:
        return x

    cases = [
        (nested, "must be a function at the top level of its module"),
        (bad_untyped, "parameter 'x' needs a type hint"),
        (bad_star, "parameter 'values' must be a plain one"),
        (bad_keyword_only, "parameter 'x' must be a plain one"),
        (print, "must be a function at the top level"),
    ]
    for func, said in cases:
        with pytest.raises(CatalogueError, match=re.escape(said)):
            task(func)
    with pytest.raises(CatalogueError, match="a name is 1-100 of"):
        task(name="Has Spaces")(bad_star)
    with pytest.raises(CatalogueError, match="timeout must be >= 1"):
        task(timeout=0)(bad_star)
    for queue in ("", "two words", "q" * 101):
        with pytest.raises(CatalogueError, match="a queue name is 1-100 of"):
            task(queue=queue)(ok_task)


def test_the_built_in_tasks_check_their_arguments_strictly():
    catalogue = load(entry_points=False)
    assert catalogue["sleep"].arguments({"seconds": 3}, {"delay_limit": 5}) == [3]
    assert catalogue["sleep"].arguments({"seconds": 3.0}) == [3]  # the integer 3, as JSON Schema reads it
    assert catalogue["hash"].arguments({"rounds": 2}) == [2, "taskqueue"]
    assert catalogue["fail"].arguments({}) == ["requested failure"]
    for args, said in [
        ({"seconds": 6}, "less than or equal to 5 (TASKQUEUE_DELAY_LIMIT)"),
        ({"seconds": -1}, "greater than or equal to 0"),
        ({"seconds": "3"}, "valid integer"),
        ({"seconds": True}, "valid integer"),
        ({"seconds": 2.5}, "valid integer"),
    ]:
        with pytest.raises(ValueError, match=re.escape(said)):
            catalogue["sleep"].arguments(args, {"delay_limit": 5})
    # Jobs enqueued before the tasks moved name their old paths: still catalogue tasks.
    assert catalogue.task_name("taskqueue.tasks.save_to_file") == "sleep"
    assert catalogue.task_name("taskqueue.tasks.builtin.sleep") == "sleep"
    assert catalogue.for_path("os.system") is None
    assert catalogue["noop"].args_schema() == {"additionalProperties": False, "properties": {}, "type": "object"}
