"""The attempt layer: give each attempt its time limits, and watch a stream's first event.

Non-streaming attempts get ``timeouts.attempt`` for every network wait; streams get
``timeouts.first_token`` until the response arrives, then ``timeouts.stream_idle`` between
events. Every limit is cut to the time left before the call's deadline, so a silent upstream
costs at most what is left, never attempts x timeout.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from .._clock import Clock
from ..observe.events import EventBus
from ._call import AsyncHandler, Call, Handler
from ._stream import AsyncStreamGuard, StreamWatch, SyncStreamGuard

__all__ = ["AsyncAttempt", "SyncAttempt", "caller_limit", "http_response_of"]


def _prepare(call: Call, clock: Clock) -> float:
    """Set ``call.send_options`` for this attempt; return the seconds left before the deadline."""
    remaining = max(call.deadline - clock.now(), 0.001)
    target = call.target
    assert target is not None
    limits = target.timeouts
    # The SDK builds a fresh options object for every call and copies it again inside
    # request(): this call's copy is ours to adjust for each attempt.
    options = call.options
    first = limits.first_token if call.stream else limits.attempt
    own = call.caller_timeout
    if own is not None:
        first = min(first, own)
    options.timeout = httpx2.Timeout(min(first, remaining), connect=min(limits.connect, remaining))
    options.max_retries = 0
    model = target.model
    body = call.body
    if model is not None and body is not None and body.get("model") != model:
        options.json_data = {**body, "model": model}
    elif body is not None:
        options.json_data = body
    call.send_options = options
    call.stream_watch = None
    return remaining


def _unreadable(call: Call, exc: ValueError) -> openai.APIError:
    """A 200 whose body the SDK could not parse (truncated JSON): the server's fault, as an SDK error.

    Judged a server error, so it is retried and fallen back from like any other.
    """
    return openai.APIError(
        f"the upstream's answer could not be read: {exc}", call.describe_request(), body=None
    )


def caller_limit(per_call: object, per_client: object) -> float | None:
    """The read limit the caller set on the call (or else on the client), if any."""
    chosen = per_call if isinstance(per_call, int | float | httpx2.Timeout) else per_client
    if isinstance(chosen, httpx2.Timeout):
        return chosen.read
    if isinstance(chosen, int | float) and not isinstance(chosen, bool):
        return float(chosen)
    return None


def http_response_of(result: Any) -> httpx2.Response | None:
    """The HTTP response under a Stream, AsyncStream or raw-response wrapper."""
    for name in ("response", "http_response"):
        candidate = getattr(result, name, None)
        if isinstance(candidate, httpx2.Response):
            return candidate
    return None


def _watch(call: Call, clock: Clock, bus: EventBus, response: httpx2.Response) -> StreamWatch:
    target = call.target
    assert target is not None
    watch = StreamWatch(
        operation=call.operation,
        model=call.model,
        breaker=target.name,
        clock=clock,
        bus=bus,
        deadline=call.deadline,
        request=response.request,
    )
    # The body's reads take their limit from this dict when the body is first read, after the
    # headers: from here on a stall is measured against the idle limit, not the first-token one.
    limits = response.request.extensions.get("timeout")
    if isinstance(limits, dict):
        limits["read"] = min(target.timeouts.stream_idle, max(call.deadline - clock.now(), 0.001))
    call.stream_watch = watch
    return watch


class SyncAttempt:
    """Per-attempt limits and stream priming (threads)."""

    __slots__ = ("_bus", "_clock")

    def __init__(self, clock: Clock, bus: EventBus) -> None:
        self._clock = clock
        self._bus = bus

    def __call__(self, call: Call, next: Handler) -> Any:
        _prepare(call, self._clock)
        try:
            result = next(call)
        except ValueError as exc:
            raise _unreadable(call, exc) from exc
        if call.stream:
            response = http_response_of(result)
            if response is not None and isinstance(response.stream, httpx2.SyncByteStream):
                watch = _watch(call, self._clock, self._bus, response)
                guard = SyncStreamGuard(response.stream, watch, response.request)
                response.stream = guard
                guard.prime()
        return result


class AsyncAttempt:
    """Per-attempt limits and stream priming (asyncio tasks)."""

    __slots__ = ("_bus", "_clock")

    def __init__(self, clock: Clock, bus: EventBus) -> None:
        self._clock = clock
        self._bus = bus

    async def __call__(self, call: Call, next: AsyncHandler) -> Any:
        _prepare(call, self._clock)
        try:
            result = await next(call)
        except ValueError as exc:
            raise _unreadable(call, exc) from exc
        if call.stream:
            response = http_response_of(result)
            if response is not None and isinstance(response.stream, httpx2.AsyncByteStream):
                watch = _watch(call, self._clock, self._bus, response)
                guard = AsyncStreamGuard(response.stream, watch, response.request)
                response.stream = guard
                await guard.prime()
        return result
