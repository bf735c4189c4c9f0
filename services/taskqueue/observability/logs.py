"""Structured logging: one JSON object (or one text line) per record, with the job id when there is one."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# The id of the job the current process (or thread) is working on, for every log line it writes.
current_job_id: ContextVar[str | None] = ContextVar("current_job_id", default=None)


class JobIdFilter(logging.Filter):
    """Stamps each record with ``job_id`` from :data:`current_job_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, job id, and any exception summary."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if getattr(record, "job_id", None):
            doc["job_id"] = record.job_id
        if record.exc_info and record.exc_info[1] is not None:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


# rq 3.0.0's format strings of the INFO lines its worker writes for every job: taken, OK, completed
# in, result kept (pinned; tests/test_job_path.py checks that none of these lines appear).
PER_JOB_TEMPLATES = frozenset(
    {
        "Worker %s: %s: %s (%s)",
        "Worker %s: %s: %s",
        "Successfully completed %s job in %ss on worker %s",
        "Successfully completed job %s in %ss on worker %s",
        "Worker %s: job %s result is kept for %s seconds",
    }
)


class WithoutPerJobLines(logging.LoggerAdapter):
    """A worker's logger that drops the INFO lines RQ writes for every job, before a record is made.

    At hundreds of jobs a second they cost more than a no-op job (docs/performance-history.md), and a
    logging filter only sees them once the record exists. Failures, timeouts and retries are logged at
    WARNING and above and pass. ``TASKQUEUE_LOG_JOB_LINES=true`` keeps them all.
    """

    def info(self, msg, *args, **kwargs) -> None:
        if msg not in PER_JOB_TEMPLATES:
            self.logger.info(msg, *args, stacklevel=2, **kwargs)

    @property
    def level(self) -> int:
        """RQ reads its worker's logger level for the scheduler it starts (``work(with_scheduler=True)``)."""
        return self.logger.level


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s] %(message)s"


def setup(log_format: str, level: str) -> None:
    """Configure the root logger once for this process (RQ's and gunicorn's loggers propagate to it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
