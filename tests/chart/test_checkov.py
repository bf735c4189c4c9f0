"""checkov's Kubernetes checks pass on the rendered chart, for every case of the matrix.

checkov's dependencies conflict with the project's pins, so it lives in its own virtualenv
(.venv-checkov, made by `make venv`/.ci/run) or wherever $CHECKOV points. Skipped checks and
their reasons are in checkov.yaml beside this file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.rendering import CASES, ROOT, objects

CONFIG = Path(__file__).with_name("checkov.yaml")


def checkov_binary() -> str:
    candidates = [os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov"), shutil.which("checkov")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    pytest.fail("checkov not found: python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30")


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    for name, case in CASES.items():
        with open(out / f"{name}.yaml", "w") as f:
            yaml.safe_dump_all(objects(case), f, sort_keys=False)
    proc = subprocess.run(
        [
            checkov_binary(),
            "--config-file",
            str(CONFIG),
            "-d",
            str(out),
            "--quiet",
            "--compact",
            "-o",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_EXPERIMENTAL_IMAGE_REFERENCING": "False"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_kubernetes_checks_pass(checkov_report):
    summary = checkov_report["summary"]
    failed = [
        f"{f['check_id']} {f['check_name']}: {f['resource']} ({Path(f['file_path']).name})"
        for f in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 6 * 10, summary  # every case's objects were scanned
    assert summary["passed"] > 500, summary


def test_every_skipped_check_has_a_reason():
    text = CONFIG.read_text()
    skipped = yaml.safe_load(text)["skip-check"]
    assert skipped
    for check in skipped:
        before = text.split(f"- {check}")[0].rstrip().splitlines()
        assert before and before[-1].lstrip().startswith("#") and len(before[-1]) > 20, check
        assert re.fullmatch(r"CKV2?_K8S_\d+", check)
