"""The breaker gate: ask the target's breaker for a permit, call with no lock held, report back.

The outcome below is already classified; the gate records its verdict on the permit. A live
stream's outcome is only known when it ends, so its permit goes to the stream's watch, which
records it then (completed: success; cut or stalled: failure; abandoned or cancelled by the
caller: ignored).
"""

from __future__ import annotations

from .._breaker import Permit
from .._classify import Classification, Verdict, classify
from .._clock import Clock
from .._errors import CircuitOpenError
from ._call import AsyncHandler, Call, Handler, Outcome

__all__ = ["AsyncBreakerGate", "SyncBreakerGate"]


def _rejected(exc: CircuitOpenError) -> Outcome:
    return Outcome(error=exc, judged=Classification(Verdict.CIRCUIT_OPEN, retry_after=exc.retry_after))


def _report(permit: Permit, outcome: Outcome, clock: Clock, started: float) -> Outcome:
    watch = outcome.watch
    if watch is not None:
        watch.hand_permit(permit, started)
    else:
        judged = outcome.judged
        permit.record(
            judged.verdict,
            duration=clock.now() - started,
            retry_after=judged.retry_after,
            error=outcome.error,
        )
    return outcome


def _interrupted(permit: Permit, exc: BaseException, clock: Clock, started: float) -> None:
    """The attempt ended by an exception that is not an outcome (cancellation): ignored, mostly."""
    permit.record(classify(exc).verdict, duration=clock.now() - started, error=exc)


class SyncBreakerGate:
    """Admits or rejects each attempt through the target's circuit breaker (threads)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def __call__(self, call: Call, next: Handler) -> Outcome:
        target = call.target
        breaker = target.breaker if target is not None else None
        if breaker is None:
            result: Outcome = next(call)
            return result
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            return _rejected(exc)
        started = call.attempt_started
        try:
            outcome: Outcome = next(call)
        except BaseException as exc:
            _interrupted(permit, exc, self._clock, started)
            raise
        return _report(permit, outcome, self._clock, started)


class AsyncBreakerGate:
    """Admits or rejects each attempt through the target's circuit breaker (asyncio tasks)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def __call__(self, call: Call, next: AsyncHandler) -> Outcome:
        target = call.target
        breaker = target.breaker if target is not None else None
        if breaker is None:
            result: Outcome = await next(call)
            return result
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            return _rejected(exc)
        started = call.attempt_started
        try:
            outcome: Outcome = await next(call)
        except BaseException as exc:
            # Cancellation lands here: the breaker counts it as ignored, never as a failure.
            _interrupted(permit, exc, self._clock, started)
            raise
        return _report(permit, outcome, self._clock, started)
