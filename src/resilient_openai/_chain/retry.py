"""The retry layer: try the same target again while its rule, the server and the deadline allow.

Exactly one retry layer exists: the SDK's own retries are switched off inside the chain. Below
this layer every attempt comes back as an :class:`~resilient_openai._chain._call.Outcome`,
classified once where it failed; this layer decides from it (:mod:`resilient_openai._backoff`)
and hands the last outcome up to the fallback layer. Each target's retry budget
(:mod:`resilient_openai._budget`) is credited with every first attempt that was sent and asked
before every retry: when it refuses, the outcome is final on this target.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .._backoff import decide_open_circuit_wait, decide_retry
from .._classify import Classification, Verdict
from .._clock import Clock
from .._errors import DeadlineExceededError
from ..observe.events import AttemptFailed, EventBus, RetryBudgetExhausted, RetryScheduled
from ._call import AsyncHandler, Call, Handler, Outcome

__all__ = ["AsyncRetry", "SyncRetry"]

_SHUT = frozenset({"open", "isolated"})
#: The attempt-record verdict of an attempt refused because the call's deadline had passed.
DEADLINE_REFUSED = "deadline_exceeded"
_DEADLINE = Classification(Verdict.TIMEOUT)


class _Judge:
    """What both shells share: the deadline check and the decision after each attempt."""

    __slots__ = ("_bus", "_clock", "_rand")

    def __init__(self, clock: Clock, bus: EventBus, rand: Callable[[], float]) -> None:
        self._clock = clock
        self._bus = bus
        self._rand = rand

    def refused(self, call: Call) -> Outcome | None:
        """An attempt refused because the call's deadline has passed (None: go ahead).

        Checked before the breaker is asked for a permit, so running out of time is never
        counted against a target that was not even called.
        """
        now = call.attempt_started = self._clock.now()
        if call.deadline - now > 0:
            return None
        # Recorded like a rejection by an open circuit: refused, nothing was sent.
        call.record(DEADLINE_REFUSED, None, 0.0)
        target = call.target
        name = target.name if target is not None else None
        error = DeadlineExceededError(
            f"deadline passed before attempt {call.attempt} on '{name}'",
            breaker=name, attempts=len(call.attempts), operation=call.operation, model=call.model,
        )  # fmt: skip
        return Outcome(error=error, judged=_DEADLINE)

    def wait(self, call: Call, outcome: Outcome, started: float, waited_open: bool) -> float | None:
        """Record the attempt; the wait before the next one, or None when this outcome is final."""
        clock = self._clock
        now = clock.now()
        judged = outcome.judged
        call.record(judged.verdict._value_, judged.status, now - started)  # not .value: a descriptor
        target = call.target
        assert target is not None
        if call.attempt == 1 and judged.verdict is not Verdict.CIRCUIT_OPEN:
            # A first attempt that reached the target (an open circuit's rejection sent nothing).
            budget = target.budget
            if budget is not None:
                budget.deposit()
        if outcome.error is None:
            return None
        remaining = call.deadline - now
        limit = call.first_limit()
        delay = decide_retry(
            judged, policy=target.retry, attempt=call.attempt, remaining=remaining, rand=self._rand(),
            has_next=call.has_next, spent=now - started, limit=limit,
        ).delay  # fmt: skip
        breaker = target.breaker
        over_budget = False
        if delay is not None:
            if breaker is not None and breaker.state in _SHUT:
                # This failure (or a racing one) opened the circuit: waiting would only buy a rejection.
                delay = None
            elif (budget := target.budget) is not None and not budget.withdraw():
                # Asked last, so only a retry that is really made is taken from the budget.
                delay, over_budget = None, True
        elif not waited_open:
            # Wait out an open circuit at most once per target: the probe after it decides. Not
            # taken from the budget: the breaker already bounds its probes.
            delay = decide_open_circuit_wait(
                judged, policy=target.retry, remaining=remaining, has_fallback=call.has_next
            )
        bus = self._bus
        if bus:
            wall = clock.wall()
            verdict = judged.verdict.value
            bus.emit(
                AttemptFailed(
                    wall, call.operation, call.model, target.name, call.attempt, verdict, judged.status
                )
            )
            if delay is not None:
                bus.emit(
                    RetryScheduled(
                        wall, call.operation, call.model, target.name, call.attempt, delay, verdict
                    )
                )
            elif over_budget:
                bus.emit(
                    RetryBudgetExhausted(wall, call.operation, call.model, target.name, call.attempt, verdict)
                )
        return delay


class SyncRetry:
    """Retries one target in a thread, sleeping on the injected clock."""

    __slots__ = ("_clock", "_judge", "_next")

    def __init__(
        self,
        next: Handler,
        clock: Clock,
        bus: EventBus,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._next = next
        self._clock = clock
        self._judge = _Judge(clock, bus, rand)

    def __call__(self, call: Call) -> Outcome:
        next = self._next
        clock, judge = self._clock, self._judge
        call.attempt = 0
        waited_open = False
        while True:
            call.attempt += 1
            refused = judge.refused(call)
            if refused is not None:
                return refused
            outcome: Outcome = next(call)
            delay = judge.wait(call, outcome, call.attempt_started, waited_open)
            if delay is None:
                return outcome
            waited_open = waited_open or outcome.judged.verdict is Verdict.CIRCUIT_OPEN
            clock.sleep(delay)


class AsyncRetry:
    """Retries one target in a task, sleeping on the injected clock. Cancellation is never retried."""

    __slots__ = ("_clock", "_judge", "_next")

    def __init__(
        self,
        next: AsyncHandler,
        clock: Clock,
        bus: EventBus,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._next = next
        self._clock = clock
        self._judge = _Judge(clock, bus, rand)

    async def __call__(self, call: Call) -> Outcome:
        next = self._next
        clock, judge = self._clock, self._judge
        call.attempt = 0
        waited_open = False
        while True:
            call.attempt += 1
            refused = judge.refused(call)
            if refused is not None:
                return refused
            outcome: Outcome = await next(call)
            delay = judge.wait(call, outcome, call.attempt_started, waited_open)
            if delay is None:
                return outcome
            waited_open = waited_open or outcome.judged.verdict is Verdict.CIRCUIT_OPEN
            await clock.asleep(delay)
