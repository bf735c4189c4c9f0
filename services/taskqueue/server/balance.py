"""Kept-alive connections spread evenly over the generator's worker processes.

The worker processes share one listening socket, and a new connection goes to whichever process
accepts it first; a kept-alive connection stays there. A burst of connections can land mostly on one
process, which then saturates its core while the other idles. So the processes count their open
connections in memory the master shares with them (one slot a process), and a process holding more
than its share (the total divided by the processes, rounded up) answers its next request on a
connection with ``Connection: close``: the client reconnects, and the new connection lands anew, on the
less busy process as often as not, until the split is even.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os


class ConnectionShare:
    """Each worker process's open connections, in shared memory made by the master before it forks them."""

    def __init__(self, processes: int):
        self.processes = processes
        slots = max(8, 4 * processes)  # processes overlap during a reload: old ones end as new ones start
        self._pids = multiprocessing.RawArray(ctypes.c_int, slots)
        self._open = multiprocessing.RawArray(ctypes.c_int, slots)
        self._lock = multiprocessing.Lock()
        self._slot = -1

    def join(self) -> None:
        """In a worker process at its start: take a free slot (none free: this process takes no part)."""
        with self._lock:
            for i, pid in enumerate(self._pids):
                if pid == 0:
                    self._pids[i], self._open[i], self._slot = os.getpid(), 0, i
                    return

    def leave(self, pid: int) -> None:
        """In the master, once a worker process has ended: free its slot."""
        with self._lock:
            for i, held in enumerate(self._pids):
                if held == pid:
                    self._pids[i] = self._open[i] = 0

    def opened(self) -> None:
        if self._slot >= 0:  # a process writes only its own slot: no lock
            self._open[self._slot] += 1

    def closed(self) -> None:
        if self._slot >= 0:
            self._open[self._slot] -= 1

    def over(self) -> bool:
        """Whether this process holds more than its share of all the processes' connections."""
        if self._slot < 0:
            return False
        share = -(-sum(self._open[:]) // self.processes)
        return self._open[self._slot] > share
