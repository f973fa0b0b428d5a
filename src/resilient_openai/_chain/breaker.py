"""The breaker gate: ask the target's breaker for a permit, call with no lock held, report back.

A stream's outcome is only known when it ends, so for a live stream the permit is handed to the
stream's watch, which records it then (completed: success; cut or stalled: failure; abandoned or
cancelled by the caller: ignored).
"""

from __future__ import annotations

from typing import Any

from .._classify import Verdict, classify
from .._clock import Clock
from ._call import AsyncHandler, Call, Handler

__all__ = ["AsyncBreakerGate", "SyncBreakerGate"]


def _failed(call: Call, exc: BaseException, clock: Clock, started: float, permit: Any) -> None:
    outcome = classify(exc, now_epoch=clock.wall())
    permit.record(outcome.verdict, duration=clock.now() - started, retry_after=outcome.retry_after, error=exc)


def _succeeded(call: Call, clock: Clock, started: float, permit: Any) -> None:
    watch = call.stream_watch
    if watch is not None:
        watch.hand_permit(permit, started)
    else:
        permit.record(Verdict.SUCCESS, duration=clock.now() - started)


class SyncBreakerGate:
    """Admits or rejects each attempt through the target's circuit breaker (threads)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def __call__(self, call: Call, next: Handler) -> Any:
        target = call.target
        breaker = target.breaker if target is not None else None
        if breaker is None:
            return next(call)
        permit = breaker.acquire()
        started = self._clock.now()
        try:
            result = next(call)
        except BaseException as exc:
            _failed(call, exc, self._clock, started, permit)
            raise
        _succeeded(call, self._clock, started, permit)
        return result


class AsyncBreakerGate:
    """Admits or rejects each attempt through the target's circuit breaker (asyncio tasks)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def __call__(self, call: Call, next: AsyncHandler) -> Any:
        target = call.target
        breaker = target.breaker if target is not None else None
        if breaker is None:
            return await next(call)
        permit = breaker.acquire()
        started = self._clock.now()
        try:
            result = await next(call)
        except BaseException as exc:
            # Cancellation lands here too: the breaker counts it as ignored, never as a failure.
            _failed(call, exc, self._clock, started, permit)
            raise
        _succeeded(call, self._clock, started, permit)
        return result
