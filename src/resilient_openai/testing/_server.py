"""The fake upstream on a loopback socket: real connections, real waits, real cuts.

A threaded HTTP/1.1 server carries out the plans :class:`~resilient_openai.testing.FakeUpstream`
decides. Streams use chunked transfer encoding, so a cut is a body that ends without its last
chunk; a reset closes the connection before any byte. Stopping the server wakes every wait.
"""

from __future__ import annotations

import math
import socket
import threading
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._plan import Decide, Hangup, Reply, Wait

if TYPE_CHECKING:
    from collections.abc import Iterator


__all__ = ["serve_upstream"]

# How long leaving serve_upstream waits for request threads to notice the stop, in total.
_JOIN_TIMEOUT = 2.0


class _Server(ThreadingHTTPServer):
    """The HTTP server plus what its handlers share: the decision, a stop flag, live connections."""

    daemon_threads = True
    block_on_close = False
    #: Hundreds of clients may connect at once (benchmarks, chaos runs): don't refuse them.
    request_queue_size = 1024

    def __init__(self, decide: Decide, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.decide = decide
        self.stopping = threading.Event()
        self.live_lock = threading.Lock()
        self.live: dict[threading.Thread, socket.socket] = {}


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests by carrying out the upstream's plans with real time."""

    protocol_version = "HTTP/1.1"
    #: Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        """Register the connection so stopping the server can close it."""
        super().setup()
        with self.server.live_lock:
            self.server.live[threading.current_thread()] = self.connection

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            with self.server.live_lock:
                self.server.live.pop(threading.current_thread(), None)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a test tool should not write to stderr for every request."""

    def do_GET(self) -> None:
        """Answer a request; the plan tells an unknown path or method from a known one."""
        try:
            self._carry_out()
        except OSError:
            # The client went away (it timed out or closed the stream): nothing left to tell it.
            self.close_connection = True

    do_POST = do_PUT = do_DELETE = do_GET

    def _wait(self, step: Wait | threading.Event) -> bool:
        """Wait for real; ``False`` when cut short because the server is stopping."""
        stopping = self.server.stopping
        if isinstance(step, threading.Event):
            while not step.wait(0.01):
                if stopping.is_set():
                    return False
            return True
        return not stopping.wait(None if math.isinf(step.seconds) else step.seconds)

    def _carry_out(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        plan = self.server.decide(self.command, urlsplit(self.path).path, headers, raw)
        # A hang-up or a wait cut short by the stop closes the connection: before the headers the
        # client sees a disconnect, in a body a missing terminating chunk.
        closing, self.close_connection = self.close_connection, True
        chunked = False
        for step in plan:
            if isinstance(step, Hangup) or (
                isinstance(step, Wait | threading.Event) and not self._wait(step)
            ):
                return
            if isinstance(step, Reply):
                self.send_response(step.status)
                for name, value in step.headers:
                    self.send_header(name, value)
                chunked = all(name != "content-length" for name, _ in step.headers)
                if chunked:
                    self.send_header("transfer-encoding", "chunked")
                self.end_headers()
            elif isinstance(step, bytes):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(step), step) if chunked else step)
                self.wfile.flush()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        self.close_connection = closing


@contextmanager
def serve_upstream(decide: Decide, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve on ``host:port`` (port 0: any free one) what ``decide`` plans for each request, and
    yield the ``/v1`` base URL."""
    server = _Server(decide, (host, port))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai-upstream", daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}/v1"
    finally:
        # Stop accepting, wake every waiting handler, close every connection, join the threads.
        server.stopping.set()
        server.shutdown()
        with server.live_lock:
            live = dict(server.live)
        for connection in live.values():
            # Idle keep-alive handlers block reading the next request: shutting the socket wakes them.
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        for handler in live:
            handler.join(_JOIN_TIMEOUT / max(len(live), 1))
        thread.join(_JOIN_TIMEOUT)
