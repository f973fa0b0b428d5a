"""The attempt layer: give each attempt its time limits, and watch a stream's first event.

Non-streaming attempts get ``timeouts.attempt`` for every network wait; a stream gets
``timeouts.first_token`` from sending to its first content event, then ``timeouts.stream_idle``
between events. Every limit is cut to the time left before the call's deadline, so a silent upstream
costs at most what is left, never attempts x timeout.
"""

from __future__ import annotations

from typing import Any

import httpx2

from .. import _sdk
from .._clock import Clock
from ..observe.events import EventBus
from ._call import AsyncHandler, Call, Handler, Outcome
from ._stream import AsyncStreamGuard, SyncStreamGuard
from ._watch import StreamWatch
from ._watchdog import WATCHDOG
from .terminal import failed

__all__ = ["AsyncAttempt", "SyncAttempt"]


def _prepare(call: Call) -> None:
    """Set this attempt's limits and body on the call's options."""
    remaining = max(call.deadline - call.attempt_started, 0.001)
    target = call.target
    assert target is not None
    limits = target.timeouts
    first = call.first_limit()
    model = target.model
    body = call.body
    if model is not None and body is not None and body.get("model") != model:
        body = {**body, "model": model}
    read, connect = min(first, remaining), min(limits.connect, remaining)
    configured = read == first and connect == limits.connect
    _sdk.prepare_attempt(call.options, read=read, connect=connect, body=body, configured=configured)


def _watch(
    call: Call, clock: Clock, bus: EventBus, response: httpx2.Response, result: Any, sent: float
) -> StreamWatch:
    """The watch of a stream whose headers arrived: ``first_token`` counts from ``sent`` to the
    first content event, ``stream_idle`` between later events, and neither passes the deadline."""
    target = call.target
    assert target is not None
    limits = target.timeouts
    first_token_by = sent + call.first_limit()
    now = clock.now()
    # The transport fixes one read limit for the whole body: long enough for the first token and
    # for an idle gap, never past the deadline (the guards bound each read exactly; for a sync
    # stream this stays the backstop where the watchdog cannot end a read).
    body = min(max(first_token_by - now, limits.stream_idle), call.deadline - now)
    _sdk.read_limit(response.request, max(body, 0.001))
    return StreamWatch(
        operation=call.operation, model=call.model, breaker=target.name, clock=clock, bus=bus,
        deadline=call.deadline, request=response.request, hooks=call.hooks, result=result,
        first_token_by=first_token_by, idle=limits.stream_idle,
    )  # fmt: skip


#: Encodings httpx2 decompresses (any other is passed through as it is).
_COMPRESSED = frozenset({"gzip", "deflate", "br", "zstd"})


def _encoded(response: httpx2.Response) -> bool:
    """A compressed body: the guard reads raw bytes, so it leaves such a (rare) stream to the SDK."""
    encodings = response.headers.get("content-encoding", "").lower().replace(" ", "").split(",")
    return any(encoding in _COMPRESSED for encoding in encodings)


class SyncAttempt:
    """Per-attempt limits and stream priming (threads)."""

    __slots__ = ("_bus", "_clock", "_next")

    def __init__(self, next: Handler, clock: Clock, bus: EventBus) -> None:
        self._next = next
        self._clock = clock
        self._bus = bus

    def __call__(self, call: Call) -> Outcome:
        next = self._next
        _prepare(call)
        outcome: Outcome = next(call)
        if not call.stream or not outcome.ok:
            return outcome
        response = _sdk.response_of(outcome.result)
        if response is None or not isinstance(response.stream, httpx2.SyncByteStream) or _encoded(response):
            return outcome
        watch = _watch(call, self._clock, self._bus, response, outcome.result, call.attempt_started)
        guard = SyncStreamGuard(response.stream, watch, response.request, WATCHDOG.watch(response))
        response.stream = guard
        try:
            guard.prime()
        except Exception as exc:
            return failed(exc, self._clock)
        return Outcome(outcome.result, watch=watch)


class AsyncAttempt:
    """Per-attempt limits and stream priming (asyncio tasks)."""

    __slots__ = ("_bus", "_clock", "_next")

    def __init__(self, next: AsyncHandler, clock: Clock, bus: EventBus) -> None:
        self._next = next
        self._clock = clock
        self._bus = bus

    async def __call__(self, call: Call) -> Outcome:
        next = self._next
        _prepare(call)
        outcome: Outcome = await next(call)
        if not call.stream or not outcome.ok:
            return outcome
        response = _sdk.response_of(outcome.result)
        if response is None or not isinstance(response.stream, httpx2.AsyncByteStream) or _encoded(response):
            return outcome
        watch = _watch(call, self._clock, self._bus, response, outcome.result, call.attempt_started)
        guard = AsyncStreamGuard(response.stream, watch, response.request)
        response.stream = guard
        try:
            await guard.prime()
        except Exception as exc:
            return failed(exc, self._clock)
        return Outcome(outcome.result, watch=watch)
