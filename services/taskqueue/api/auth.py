"""Who may do what: API tokens with three nested roles, read from a file that is re-read when it changes.

``TASKQUEUE_API_TOKENS_FILE`` holds one token a line, ``ROLE TOKEN`` (``#`` starts a comment), with the
roles ``read`` (status, list, tasks), ``submit`` (read, and enqueue) and ``admin`` (submit, and cancel,
requeue). A client sends ``Authorization: Bearer <token>``. A request without one has
``TASKQUEUE_ANONYMOUS_ROLE`` (``submit`` by default, so the seed's ``curl /start`` works; ``read`` or
``none`` in production). Cancel and requeue need ``admin``, never given to anonymous requests.

Tokens are kept as SHA-256 digests, and a presented token is hashed and compared with every digest in
constant time, so neither its length nor how much of it matches shows in the answer's timing. The file is
looked at once a second at most: a rotated Kubernetes Secret (an atomic symlink swap) takes effect within a
second of kubelet writing it, without a restart. A token is never logged; a malformed line is logged by its
line number only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import IntEnum

log = logging.getLogger("taskqueue.auth")

RECHECK_EVERY = 1.0  # seconds between looks at the tokens file
MIN_TOKEN_LENGTH = 16


class Role(IntEnum):
    """What a request may do; each role may do all that the ones below it may."""

    NONE = 0
    READ = 1
    SUBMIT = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name.strip().upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Decision:
    """A request's role, and whether it presented a token (which then matched no line when the role is NONE)."""

    role: Role
    presented: bool


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse(text: str, source: str = "tokens file") -> list[tuple[bytes, Role]]:
    """The (digest, role) of each valid line; a bad line is logged by number and skipped."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        role = Role.__members__.get(parts[0].upper()) if len(parts) == 2 else None
        if role is None or role is Role.NONE or len(parts[1]) < MIN_TOKEN_LENGTH:
            log.warning("%s line %d ignored: want 'read|submit|admin TOKEN' (a token of %d characters or more)",
                        source, number, MIN_TOKEN_LENGTH)  # fmt: skip
            continue
        entries.append((_digest(parts[1]), role))
    return entries


class Tokens:
    """The tokens of ``path`` (none when empty), re-read when the file changes."""

    def __init__(self, path: str, anonymous: Role):
        self.path = path
        self.anonymous = anonymous
        self._entries: list[tuple[bytes, Role]] = []
        self._seen: tuple[int, int, int, int] | None = None  # the file's inode, device, size, mtime in ns
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        if path:
            self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
            if not force and seen == self._seen:
                return
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                entries = parse(f.read(), self.path)
        except OSError as exc:  # gone or unreadable (a Secret mid-update): keep the tokens we had
            log.warning("tokens file %s not read: %s; keeping %d tokens", self.path, exc.strerror, len(self._entries))
            return
        self._entries, self._seen = entries, seen
        log.info("tokens file %s: %d tokens", self.path, len(entries))

    def entries(self) -> list[tuple[bytes, Role]]:
        """The current tokens, the file looked at again if a second has passed."""
        if self.path and time.monotonic() - self._checked_at >= RECHECK_EVERY:
            with self._lock:
                if time.monotonic() - self._checked_at >= RECHECK_EVERY:
                    self._reload()
                    self._checked_at = time.monotonic()
        return self._entries

    def decide(self, authorization: str | None) -> Decision:
        """The role of a request with this ``Authorization`` header (None: no header)."""
        if authorization is None:
            return Decision(self.anonymous, False)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Decision(Role.NONE, True)
        presented = _digest(token.strip())
        role = Role.NONE
        for digest, entry_role in self.entries():  # every entry, every time: no early exit
            if hmac.compare_digest(presented, digest) and entry_role > role:
                role = entry_role
        return Decision(role, True)
