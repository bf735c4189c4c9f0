"""A task for the failover test (tests/test_failover.py, bench/failover.py): each run that ends leaves a line.

The line is the client's token for the request (its Idempotency-Key), appended to the file that
``TASKQUEUE_TEST_MARKS`` names in one write: a token with no line never finished, one with two finished twice.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

from pydantic import Field

from taskqueue.tasks import task


@task
def mark(token: Annotated[str, Field(max_length=64)], seconds: Annotated[float, Field(ge=0, le=5)] = 0.1) -> str:
    """Work for ``seconds``, then write ``token`` on a line of its own."""
    time.sleep(seconds)
    fd = os.open(os.environ["TASKQUEUE_TEST_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)
    return token
