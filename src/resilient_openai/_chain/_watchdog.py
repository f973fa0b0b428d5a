"""Ending a sync stream's read that outlives its limit (the asyncio guard bounds each read itself).

httpcore fixes a body's read limit once, when the body starts, so a sync stream cannot tighten it
after the first token (``stream_idle``) or as the call's deadline nears. The process's
:data:`WATCHDOG` (one daemon thread, started on first use) keeps for each watched read the
monotonic time it must end by; when that passes with the read still waiting, it shuts the
connection's socket down, the read fails at once, and the guard reports a stall, as the transport's
own read timeout would have. Between reads nothing is watched: a caller slow to take the next
chunk is never mistaken for a stalled upstream.

Only HTTP/1.1 connections over a real socket are watched: shutting down an HTTP/2 connection would
end its other streams, and an in-process transport follows the changed limit itself.
"""

from __future__ import annotations

import _socket
import contextlib
import math
import os
import socket
import threading
import time
from typing import Any, Final

__all__ = ["RESCAN", "WATCHDOG", "ReadWatchdog", "Watched"]

#: While streams are watched the thread looks at them at least this often (seconds): the most a
#: read may outlive its limit when its due was written during a scan.
RESCAN: Final = 0.1


class Watched:
    """One stream's connection, as the watchdog sees it: when its current read must end by."""

    __slots__ = ("_sock", "due", "fired")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        #: Monotonic seconds the read under way must end by (inf: no read under way).
        self.due = math.inf
        #: Set when the watchdog ended a read: the failure that follows is a stall, not a cut.
        self.fired = False

    def fire(self) -> None:
        """End the read under way: shut the connection down. The base socket's own method, so a
        TLS socket's state is left alone; a socket closed meanwhile fails cleanly (EBADF)."""
        with contextlib.suppress(OSError):
            _socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            self.fired = True


class ReadWatchdog:
    """Ends watched reads past their due time (see the module docs). Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._watched: set[Watched] = set()
        #: When the thread wakes next (monotonic; inf: when something is watched).
        self._wakes = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, response: Any) -> Watched | None:
        """Watch the connection ``response`` (an ``httpx2.Response``) streams from, or None where
        a read cannot be ended from outside (HTTP/2, no socket: an in-process transport)."""
        if response.http_version != "HTTP/1.1":
            return None
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return None
        watched = Watched(sock)
        with self._cond:
            self._watched.add(watched)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="resilient-stream-watchdog", daemon=True
                )
                self._thread.start()
        return watched

    def due(self, watched: Watched, due: float) -> None:
        """``watched``'s next read must end by ``due`` (``watched.due = inf`` once it returned).

        No lock unless ``due`` is sooner than the thread's next wake (a new stream, or the first
        token's idle limit): then it is woken. A due written while the thread was scanning is
        seen at its next wake, at most :data:`RESCAN` later.
        """
        watched.due = due
        if due < self._wakes:
            with self._cond:
                self._wakes = due
                self._cond.notify()

    def forget(self, watched: Watched) -> None:
        """The stream is over: its connection is no longer watched."""
        watched.due = math.inf
        with self._cond:
            self._watched.discard(watched)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                soonest = math.inf
                for watched in list(self._watched):
                    if watched.due <= now:
                        self._watched.discard(watched)
                        watched.fire()
                    else:
                        soonest = min(soonest, watched.due)
                if self._watched:
                    soonest = min(soonest, now + RESCAN)
                self._wakes = soonest
                self._cond.wait(None if math.isinf(soonest) else soonest - now)

    def _forked(self) -> None:
        """In a forked child: no thread, nothing watched, a lock no parent thread may hold."""
        self._cond = threading.Condition(threading.Lock())
        self._watched = set()
        self._wakes = math.inf
        self._thread = None


#: The process's watchdog.
WATCHDOG = ReadWatchdog()
os.register_at_fork(after_in_child=WATCHDOG._forked)
