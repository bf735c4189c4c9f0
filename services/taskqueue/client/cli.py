"""``taskqueue``: enqueue a task, read or wait for a job, list the tasks, from a shell.

    taskqueue tasks
    taskqueue enqueue hash rounds=1000            # values are JSON where they parse: 1000, true, [1,2], "x"
    taskqueue wait 3f2c...  --timeout 120         # a progress line while it waits; exit 1 if the job failed
    taskqueue status 3f2c...

The API's URL comes from ``--url`` or ``TASKQUEUE_URL`` (default http://127.0.0.1:8000), a token from
``TASKQUEUE_TOKEN``. Answers are printed as JSON; an API error prints its JSON error and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from taskqueue.client import ApiError, Client, WaitTimeout

DEFAULT_URL = "http://127.0.0.1:8000"


def parse_args_pairs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs: each value as JSON when it parses (``5``, ``true``, ``[1, 2]``), else as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"taskqueue: expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


BAR_WIDTH = 24


def progress_bar(progress: dict[str, Any] | None) -> str:
    """The progress a task reported, as ``[#####.....]  42% message`` (or ``42 message`` without a total)."""
    if not progress:
        return ""
    current, total, message = progress.get("current"), progress.get("total"), progress.get("message") or ""
    if isinstance(total, int | float) and total > 0 and isinstance(current, int | float):
        share = min(max(current / total, 0.0), 1.0)
        filled = round(share * BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} {message}".rstrip()
    return f"{current} {message}".rstrip()


class Progress:
    """The job's status while ``wait`` polls, on stderr: one line rewritten on a terminal, else a line a change."""

    def __init__(self) -> None:
        self.tty, self.last = sys.stderr.isatty(), ("", "")

    def __call__(self, doc: dict[str, Any], elapsed: float) -> None:
        status, bar = doc.get("status", "?"), progress_bar(doc.get("progress"))
        if self.tty:
            sys.stderr.write(f"\r{f'{status:<10} {elapsed:6.1f} s {bar}'.rstrip():<79}")
        elif (status, bar) != self.last:  # a line when the status or the progress changes
            sys.stderr.write(f"{status} after {elapsed:.1f} s {bar}".rstrip() + "\n")
        self.last = (status, bar)
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskqueue", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TASKQUEUE_URL", DEFAULT_URL), help="the API (TASKQUEUE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tasks", help="list the task catalogue")
    enqueue = commands.add_parser("enqueue", help="enqueue TASK with key=value arguments; prints the job id")
    enqueue.add_argument("task")
    enqueue.add_argument("args", nargs="*", metavar="key=value")
    enqueue.add_argument("--idempotency-key")
    enqueue.add_argument("--retry-for", type=float, default=0.0, help="seconds to retry while busy (429/503)")
    enqueue.add_argument("--wait", action="store_true", help="then wait for the job, as `wait` does")
    enqueue.add_argument("--callback-url", metavar="URL", help="POST the job's outcome to URL when it ends")
    later = enqueue.add_mutually_exclusive_group()
    later.add_argument("--delay", type=float, metavar="SECONDS", help="run it no earlier than SECONDS from now")
    later.add_argument("--run-at", metavar="TIME", help="run it no earlier than TIME (ISO 8601 with a zone)")
    for name in ("status", "wait"):
        sub = commands.add_parser(name, help=f"{name} a job")
        sub.add_argument("job_id")
    for sub in (enqueue, commands.choices["wait"]):
        sub.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    args = parser.parse_args(argv)
    client = Client(args.url, token=os.environ.get("TASKQUEUE_TOKEN") or None)
    try:
        if args.command == "tasks":
            _print(client.tasks())
            return 0
        if args.command == "status":
            _print(client.status(args.job_id))
            return 0
        job_id = args.job_id if args.command == "wait" else None
        if args.command == "enqueue":
            job_id = client.enqueue(
                args.task,
                idempotency_key=args.idempotency_key,
                retry_for=args.retry_for,
                run_at=args.run_at,
                delay_seconds=args.delay,
                callback_url=args.callback_url,
                **parse_args_pairs(args.args),
            )
            if not args.wait:
                print(job_id)
                return 0
        assert job_id is not None
        progress = Progress()
        try:
            doc = client.wait(job_id, timeout=args.timeout, on_poll=progress)
        finally:
            progress.end()
        _print(doc)
        return 0 if doc["status"] == "finished" else 1
    except ApiError as exc:
        error = {"status": exc.status, "code": exc.code, "message": exc.message}
        if exc.field is not None:
            error["field"] = exc.field
        if exc.retry_after is not None:
            error["retryAfter"] = exc.retry_after
        print(json.dumps({"error": error}), file=sys.stderr)
        return 2
    except WaitTimeout as exc:
        print(json.dumps({"error": {"code": "wait_timeout", "message": str(exc)}, "job": exc.status}), file=sys.stderr)
        return 3
    except OSError as exc:  # the API did not answer
        print(json.dumps({"error": {"code": "unreachable", "message": f"{args.url}: {exc}"}}), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
