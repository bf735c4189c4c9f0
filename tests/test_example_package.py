"""examples/csv_summary, a team's task package, installed as a user installs theirs (``make venv`` installs
it into the venv): its task reaches every process's catalogue through its entry point, with no
TASKQUEUE_TASK_MODULES, and runs on the real stack. (Its own tests: examples/csv_summary/tests.)"""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import entry_points

import requests

from tests.support import BIN, wait_status

CSV = "city,population\nOslo,709000\nBergen,291000\nTrondheim,212000\n"


def test_an_installed_packages_task_runs_through_its_entry_point(app_env, processes):
    assert "csv_summary" in {ep.name for ep in entry_points(group="taskqueue.tasks")}
    assert "TASKQUEUE_TASK_MODULES" not in app_env
    gen, _ = processes.generator(env=app_env), processes.worker(env=app_env)
    listed = {t["name"]: t for t in requests.get(gen.base + "/tasks", timeout=5).json()["tasks"]}
    assert (listed["csv.summarize"]["timeout"], listed["csv.summarize"]["retries"]) == (120, 2)
    body = {"task": "csv.summarize", "args": {"csv_text": CSV, "bins": 2}}
    r = requests.post(gen.base + "/jobs", json=body, timeout=5)
    assert r.status_code == 202, r.text
    doc = wait_status(gen.base, r.json()["jobId"], {"finished", "failed"}, timeout=15)
    assert doc["status"] == "finished", doc
    population = doc["result"]["columns"]["population"]
    assert (doc["result"]["rows"], population["max"], population["histogram"]["counts"]) == (3, 709000, [2, 1])
    # The command a user reaches for, on the same stack.
    command = [str(BIN / "taskqueue"), "--url", gen.base, "enqueue", "csv.summarize", f"csv_text={json.dumps(CSV)}"]
    cli = subprocess.run([*command, "--wait"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["result"]["columns"]["city"]["distinct"] == 3
    # A URL off the allow-list (empty by default) fails the job with the reason; nothing is fetched.
    r = requests.post(
        gen.base + "/jobs", json={"task": "csv.summarize", "args": {"url": gen.base + "/list"}}, timeout=5
    )
    failed = wait_status(gen.base, r.json()["jobId"], {"failed"}, timeout=30)
    assert "not in CSV_SUMMARY_ALLOWED_HOSTS" in failed["error"]
