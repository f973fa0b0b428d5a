"""The retry layer: try the same target again while its rule, the server and the deadline allow.

Exactly one retry layer exists: the SDK's own retries are switched off inside the chain.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .._backoff import decide_open_circuit_wait, decide_retry
from .._classify import Classification, classify
from .._clock import Clock
from .._errors import DeadlineExceededError
from ..observe.events import AttemptFailed, EventBus, RetryScheduled
from ._call import AsyncHandler, Call, Handler

__all__ = ["AsyncRetry", "SyncRetry", "check_deadline"]

_SHUT = frozenset({"open", "isolated"})
#: The attempt-record verdict of an attempt refused because the call's deadline had passed.
DEADLINE_REFUSED = "deadline_exceeded"


def check_deadline(call: Call, clock: Clock) -> None:
    """Refuse to start an attempt once the call's deadline has passed.

    Checked here, before the breaker is asked for a permit, so running out of time is never
    counted against a target that was not even called.
    """
    if call.deadline - clock.now() <= 0:
        # Recorded like a rejection by an open circuit: refused, nothing was sent.
        call.record(DEADLINE_REFUSED, None, 0.0)
        target = call.target
        name = target.name if target is not None else None
        raise DeadlineExceededError(
            f"deadline passed before attempt {call.attempt} on '{name}'",
            breaker=name, attempts=len(call.attempts), operation=call.operation, model=call.model,
        )  # fmt: skip


def _judge(
    call: Call, exc: Exception, clock: Clock, bus: EventBus, rand: Callable[[], float], started: float
) -> float | None:
    """Record a failed attempt and return the wait before the next one, or None to give up."""
    outcome: Classification = classify(exc, now_epoch=clock.wall())
    now = clock.now()
    call.last_failure = outcome
    call.record(outcome.verdict.value, outcome.status, now - started)
    target = call.target
    assert target is not None
    remaining = call.deadline - now
    delay = decide_retry(
        outcome, policy=target.retry, attempt=call.attempt, remaining=remaining, rand=rand()
    ).delay
    breaker = target.breaker
    if delay is not None and breaker is not None and breaker.state in _SHUT:
        # This failure (or a racing one) opened the circuit: waiting would only buy a rejection.
        delay = None
    elif delay is None:
        delay = decide_open_circuit_wait(
            outcome, policy=target.retry, remaining=remaining, has_fallback=call.has_fallback
        )
        # Wait out an open circuit at most once per target: the probe after it decides.
        if delay is not None and any(a.verdict == "circuit_open" for a in call.attempts[:-1]):
            delay = None
    if bus:
        bus.emit(
            AttemptFailed(
                clock.wall(),
                call.operation,
                call.model,
                target.name,
                call.attempt,
                outcome.verdict.value,
                outcome.status,
            )
        )
        if delay is not None:
            bus.emit(
                RetryScheduled(
                    clock.wall(),
                    call.operation,
                    call.model,
                    target.name,
                    call.attempt,
                    delay,
                    outcome.verdict.value,
                )
            )
    return delay


class SyncRetry:
    """Retries one target in a thread, sleeping on the injected clock."""

    __slots__ = ("_bus", "_clock", "_rand")

    def __init__(self, clock: Clock, bus: EventBus, rand: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self._bus = bus
        self._rand = rand

    def __call__(self, call: Call, next: Handler) -> Any:
        clock = self._clock
        call.attempt = 0
        while True:
            call.attempt += 1
            check_deadline(call, clock)
            started = clock.now()
            try:
                result = next(call)
            except Exception as exc:
                delay = _judge(call, exc, clock, self._bus, self._rand, started)
                if delay is None:
                    raise
                clock.sleep(delay)
                continue
            call.record("success", None, clock.now() - started)
            return result


class AsyncRetry:
    """Retries one target in a task, sleeping on the injected clock. Cancellation is never retried."""

    __slots__ = ("_bus", "_clock", "_rand")

    def __init__(self, clock: Clock, bus: EventBus, rand: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self._bus = bus
        self._rand = rand

    async def __call__(self, call: Call, next: AsyncHandler) -> Any:
        clock = self._clock
        call.attempt = 0
        while True:
            call.attempt += 1
            check_deadline(call, clock)
            started = clock.now()
            try:
                result = await next(call)
            except Exception as exc:
                delay = _judge(call, exc, clock, self._bus, self._rand, started)
                if delay is None:
                    raise
                await clock.asleep(delay)
                continue
            call.record("success", None, clock.now() - started)
            return result
