"""The generator's enqueue path: RQ's records for new jobs in one Redis command, however many jobs.

Stock ``Queue.enqueue_many`` builds a ``Job`` object per job and sends MULTI, SADD, two HSETs and an
RPUSH per job, then EXEC: most of its client CPU goes to building and packing those commands
(docs/performance-history.md). :class:`Enqueuer` writes the same records - the job
hash field for field, the queue's list and the queues set - with one EVALSHA of a Lua script, which
Redis runs atomically as it runs a MULTI/EXEC.

The fields every job of a task shares (status, origin, timeout, TTLs, retries, meta and RQ's empty
placeholders) come from RQ itself: a template ``Job`` made once per task with ``Job.create`` and
serialized by ``Job.to_dict``. Only what differs per job - the id, the data, the description and the
timestamps - is made here, with RQ's own serializer and helpers (a small call's data and description
once, then kept: ``/start`` makes eleven different ones); a job's ``created_at`` equals its
``enqueued_at``. Only plain jobs take this path (the API enqueues nothing else: no dependencies, no
TTL, at the back). rq is pinned, and tests/test_enqueue_path.py compares the records with stock RQ's.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import get_call_string, now

from taskqueue.fastpath.script_call import OwnConnectionScript
from taskqueue.fastpath.timestamps import rq_timestamp
from taskqueue.store.enqueue import BaseEnqueuer, JobRequest, JobSettings
from taskqueue.tasks import Task

# Fields written per job; the rest of the hash is the task's template.
PER_JOB_FIELDS = ("created_at", "enqueued_at", "data", "description")
DESCRIPTION_MAX_ARG = 75  # RQ's Job.get_call_string truncates each argument's repr to this
# A job's data and description are kept for calls this small (``/start``'s sleep(20..30)), this many.
KEPT_PAYLOAD_BYTES = 128
KEPT_PAYLOADS = 1024
# A version 4 UUID's variant digit (binary 10xx) for each random hex digit.
UUID_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}

# The script's text: the tasks' templates as a Lua table, then this. KEYS: the queue's list, RQ's
# set of queues, an idempotency key (NO_IDEMPOTENCY_KEY for none), one job hash per job. ARGV: '1' if this call may be
# a repeat (else '0'), the idempotency key's TTL (0: none), then per job its task, id, timestamp, data
# and description. Jobs go on the queue in the order given. Returns the number of jobs written: 0 when
# a call that may be a repeat finds its first job written already, i.e. when redis-py retries a call
# whose reply was lost (job ids are fresh uuid4s, and a script runs whole), so a retry never queues the
# jobs twice. The first and only attempt on the script's own connection is no repeat: no check.
ENQUEUE = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local ttl, ids = tonumber(ARGV[2]), {}
for j = 4, #KEYS do
    local a = 3 + (j - 4) * 5
    redis.call('HSET', KEYS[j], 'created_at', ARGV[a + 2], 'enqueued_at', ARGV[a + 2],
               'data', ARGV[a + 3], 'description', ARGV[a + 4], unpack(TEMPLATES[ARGV[a]]))
    ids[#ids + 1] = ARGV[a + 1]
    if #ids == 1000 then  -- unpack() has a stack limit
        redis.call('RPUSH', KEYS[1], unpack(ids))
        ids = {}
    end
end
if #ids > 0 then redis.call('RPUSH', KEYS[1], unpack(ids)) end
redis.call('SADD', KEYS[2], KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
return #KEYS - 3
"""
# The third key when a call has no idempotency key: in our namespace (Redis ACL users may name only those
# keys, '' included), and never written (its TTL is 0); an Idempotency-Key header has 1 to 128 characters.
NO_IDEMPOTENCY_KEY = "taskqueue:idempotency:"
LUA_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:,[]{}")


def new_job_id() -> str:
    """A random UUID's text, as ``str(uuid.uuid4())`` gives it, without building a UUID object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def lua_string(raw: bytes) -> str:
    """A Lua string literal of exactly these bytes (anything but plain ASCII as a decimal escape)."""
    return '"' + "".join(chr(b) if b in LUA_PLAIN else f"\\{b:03d}" for b in raw) + '"'


def enqueue_script(templates: Mapping[str, Sequence[bytes]]) -> str:
    """The enqueue script with each task's shared field/value pairs written into it.

    Sent once per script cache (EVALSHA), the pairs cost nothing per call: a /start sends 11
    arguments, not 45 (redis-py packs every argument in Python).
    """
    rows = [
        f"    [{lua_string(name.encode())}] = {{{', '.join(map(lua_string, pairs))}}},"
        for name, pairs in templates.items()
    ]
    return "local TEMPLATES = {\n" + "\n".join(rows) + "\n}" + ENQUEUE


class Enqueuer(BaseEnqueuer):
    """RQ's job records for plain jobs of the given tasks, in one Lua script call."""

    def __init__(self, queue: Queue, settings: JobSettings, tasks: Mapping[str, Task]):
        super().__init__(queue, settings)
        encode = queue.connection.get_encoder().encode  # the bytes redis-py would send for each value
        self._func_names: dict[str, str] = {}
        templates: dict[str, list[bytes]] = {}
        for name, task in tasks.items():
            job = Job.create(
                task.func,
                connection=queue.connection,
                serializer=queue.serializer,
                meta={"task": name},
                status=JobStatus.QUEUED,
                origin=queue.name,
                **settings.for_task(task).job_options(),
            )
            self._func_names[name] = job.func_name
            fields = job.to_dict().items()
            templates[name] = [encode(v) for k, value in fields if k not in PER_JOB_FIELDS for v in (k, value)]
        script = queue.connection.register_script(enqueue_script(templates))
        self._script = OwnConnectionScript(script, as_repeat=lambda args: [1, *args[1:]])  # ARGV[1] = 1: check
        self._payloads: dict[bytes, tuple[bytes, str]] = {}  # small calls' data and description, by call

    def check_connection(self) -> None:
        """The script connection's checks, ahead of the next :meth:`enqueue` (which skips them)."""
        self._script.check()

    def _write(
        self, reqs: Sequence[JobRequest], job_ids: Sequence[str] | None, idempotency: tuple[str, int] | None
    ) -> list[tuple[str, datetime | None]]:
        ids = list(job_ids) if job_ids is not None else [new_job_id() for _ in reqs]
        enqueued_at = now()
        stamp = rq_timestamp(enqueued_at)
        idem_key, idem_ttl = idempotency if idempotency is not None else (NO_IDEMPOTENCY_KEY, 0)
        keys = [self.queue.key, Queue.redis_queues_keys, idem_key]
        args: list[Any] = [0, idem_ttl]
        for job_id, req in zip(ids, reqs, strict=True):
            name = req.task.name
            func_name = self._func_names[name]
            keys.append(Job.key_for(job_id))
            data, description = self._payload(func_name, req.args)
            args += (name, job_id, stamp, data, req.description or description)
        self._script(keys=keys, args=args)  # returns 0 for a retry of a call that had run: the jobs exist
        return [(job_id, enqueued_at) for job_id in ids]

    def _payload(self, func_name: str, args: list[Any]) -> tuple[bytes, str]:
        """A call's job data (RQ's serialized, compressed form) and description; a small call's are kept,
        by its serialized form (which tells its arguments' values and types apart)."""
        call = self.queue.serializer.dumps((func_name, None, args, {}))
        kept = self._payloads.get(call)
        if kept is None:
            kept = zlib.compress(call), get_call_string(func_name, args, {}, DESCRIPTION_MAX_ARG)
            if len(call) <= KEPT_PAYLOAD_BYTES and len(self._payloads) < KEPT_PAYLOADS:
                self._payloads[call] = kept
        return kept
