"""Choosing prometheus-client's multiprocess directory, before prometheus_client is first imported."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_fresh_dir(path: str) -> str:
    """Point this process and its children at an empty ``path``: old files would be counted again."""
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(p)
    return str(p)


def tmp_path(name: str) -> str:
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), name)
