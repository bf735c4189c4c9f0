"""Header work that gunicorn and Werkzeug redo for every request, done once and kept, in a serving process.

- **Date.** gunicorn formats the ``Date`` header of every response with ``email.utils.formatdate``;
  the header counts whole seconds, so :class:`PerSecondDate` formats it once a second.
- **Trusted peers.** gunicorn decides for every request whether the peer may set forwarding headers
  (``X-Forwarded-Proto``, ``forwarded_allow_ips``) by parsing the peer's address and testing it against
  the allowed networks; a kept-alive connection asks the same question each time. :class:`KnownPeers`
  keeps the answers (per address and allow list, at most ``MAX_PEERS``).
- **Location.** Werkzeug converts a response's ``Location`` from IRI to URI, quoting each part of the
  URL; :class:`PlainPathFirst` returns an absolute path that holds nothing to quote (``/status/<id>``)
  as it is, which is what the conversion returns for it.

Each stands in for the function it wraps with the same results (tests/test_header_shortcuts.py
compares them); together they save ~35-40 µs of the ~790 a ``/start`` request costs (docs/performance-history.md,
change 18).
:func:`install` puts them in place in the process that calls it: the generator's gunicorn worker,
after the fork (``FairGeventWorker.init_process``), so the arbiter and anything else keeps the originals.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.http import message as gunicorn_message
from werkzeug.wrappers import response as werkzeug_response

MAX_PEERS = 4096
# An absolute path of characters Werkzeug's iri_to_uri leaves as they are in a path: unreserved,
# sub-delims, ':', '@', '/' and '%' (already quoted). No '?' or '#', no '//' (a host), nothing else.
PLAIN_PATH = re.compile(r"/(?!/)[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")


class PerSecondDate:
    """gunicorn's ``http_date()``: the current time formatted once a second; a given timestamp, each time."""

    clock = staticmethod(time.time)

    def __init__(self, format_date: Callable[..., str]):
        self.format_date = format_date
        self._second: int | None = None
        self._text = ""

    def __call__(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return self.format_date(timestamp)
        second = int(self.clock())  # formatdate drops the fraction: the same text for the whole second
        if second != self._second:
            self._text, self._second = self.format_date(second), second
        return self._text


class KnownPeers:
    """gunicorn's ``_ip_in_allow_list(ip, allow_list, networks)``, answered once per address and allow list.

    ``networks`` is what gunicorn's Config derives from ``allow_list``, so the pair is the key.
    """

    def __init__(self, check: Callable[[str, Sequence[str], Any], bool]):
        self.check = check
        self._known: dict[tuple[str, tuple[str, ...]], bool] = {}

    def __call__(self, ip_str: str, allow_list: Sequence[str], networks: Any) -> bool:
        key = (ip_str, tuple(allow_list))
        answer = self._known.get(key)
        if answer is None:
            if len(self._known) >= MAX_PEERS:  # many clients: start over rather than grow
                self._known.clear()
            answer = self._known[key] = self.check(ip_str, allow_list, networks)
        return answer


class PlainPathFirst:
    """Werkzeug's ``iri_to_uri``, skipped for an absolute path with nothing to quote."""

    def __init__(self, convert: Callable[[str], str]):
        self.convert = convert

    def __call__(self, iri: str) -> str:
        return iri if PLAIN_PATH.fullmatch(iri) else self.convert(iri)


def install() -> None:
    """Put the three in place of gunicorn's and Werkzeug's functions in this process (once)."""
    if not isinstance(gunicorn_util.http_date, PerSecondDate):
        gunicorn_util.http_date = PerSecondDate(gunicorn_util.http_date)
    if not isinstance(gunicorn_message._ip_in_allow_list, KnownPeers):
        gunicorn_message._ip_in_allow_list = KnownPeers(gunicorn_message._ip_in_allow_list)
    if not isinstance(werkzeug_response.iri_to_uri, PlainPathFirst):
        werkzeug_response.iri_to_uri = PlainPathFirst(werkzeug_response.iri_to_uri)
