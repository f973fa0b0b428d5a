"""The fake upstream's plan for one request: what to do, in order, decided without I/O.

:class:`~resilient_openai.testing.FakeUpstream` turns a fault into a plan; its in-process
transports and its loopback server (:mod:`._server`) only carry a plan out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Decide", "Hangup", "Plan", "Reply", "Wait"]


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait ``seconds`` (before the headers, or between body pieces); ``math.inf`` waits forever."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close the connection: before the headers, nothing is sent; in the body, nothing more."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Send the status and headers; without a ``content-length`` header the body is a chunked stream."""

    status: int
    headers: tuple[tuple[str, str], ...]


Plan = tuple[Wait | threading.Event | Reply | bytes | Hangup, ...]
"""What the fake does for one request, in order: waits (an event: until it is set), then a reply's
headers, its body pieces and pauses; a hang-up ends it."""

Decide = Callable[[str, str, Mapping[str, str], bytes], Plan]
"""Records one request (method, path, headers, raw body) and returns its plan."""
