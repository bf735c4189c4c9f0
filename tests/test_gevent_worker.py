"""The generator's gevent worker takes turns between connections (services/taskqueue/gevent_worker.py)."""

from __future__ import annotations

import socket
import threading
import time

from tests.support import Generator

PIPELINED = 400
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
STATUS_LINE = b"HTTP/1.1 200 "


def _count_responses(sock: socket.socket, want: int, seen: list[int]) -> None:
    """Read from ``sock`` until ``want`` response status lines have come, counting them in ``seen[0]``."""
    data = b""
    while seen[0] < want:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
        seen[0] = data.count(STATUS_LINE)


def test_a_client_pipelining_requests_does_not_hold_up_another_connection(app_env, tmp_path):
    """One process, one client with 400 requests pipelined on its connection: a request sent on a
    second, open connection once the first answers have come is answered after a few more of them,
    not after all (stock GeventWorker: after all 400, checked by hand)."""
    gen = Generator(app_env, tmp_path, web_workers=1).start()
    busy = socket.create_connection(("127.0.0.1", gen.port), timeout=30)
    other = socket.create_connection(("127.0.0.1", gen.port), timeout=30)
    try:
        seen = [0]
        reader = threading.Thread(target=_count_responses, args=(busy, PIPELINED, seen), daemon=True)
        reader.start()
        busy.sendall(REQUEST * PIPELINED)
        deadline = time.monotonic() + 10
        while seen[0] == 0 and time.monotonic() < deadline:  # the process is busy with the pipeline
            time.sleep(0.0005)
        other.sendall(REQUEST)
        answer = other.recv(65536)
        served_before = seen[0]  # the reader may lag: an undercount, bounded by what it has read
        reader.join(timeout=30)
        assert answer.startswith(STATUS_LINE)
        assert seen[0] == PIPELINED, "every pipelined request is answered"
        assert served_before < PIPELINED // 4, f"the other connection waited for {served_before} requests"
    finally:
        busy.close()
        other.close()
        gen.stop()
