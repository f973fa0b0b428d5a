"""The breaker gate: ask the target's breaker for a permit, call with no lock held, report back.

The outcome below is already classified; the gate records its verdict on the permit. A live
stream's outcome is only known when it ends, so its permit goes to the stream's watch, which
records it then (completed: success; cut or stalled: failure; abandoned or cancelled by the
caller: ignored).

Quota belongs to a credential, not to the target: the breaker ignores an exhausted quota, and the
gate tells the quota ledger instead, which then refuses that credential (the call's tenant scope)
on this target for ``quota_break``, like an open circuit, while everyone else goes through.
"""

from __future__ import annotations

import asyncio
import time

from .._breaker import AnyBreaker, Permit, QuotaLedger, SharedCircuitBreaker, quota_hold
from .._classify import Classification, Verdict, classify
from .._clock import Clock
from .._errors import CircuitOpenError
from ._call import AsyncHandler, Call, Handler, Outcome
from ._tenant import scope

__all__ = ["AsyncBreakerGate", "SyncBreakerGate"]


def _rejected(exc: CircuitOpenError) -> Outcome:
    return Outcome(error=exc, judged=Classification(Verdict.CIRCUIT_OPEN, retry_after=exc.retry_after))


def _out_of_quota(quota: QuotaLedger, breaker: AnyBreaker, call: Call) -> Outcome | None:
    """The refusal of a call whose credential is out of quota on this target (None: it may go).
    Only asked while some credential is (``quota.active``), so the common call computes no scope."""
    target = call.target
    assert target is not None
    credential = scope(target.client, call.options)
    refused = quota.refusal(breaker.name, credential) if credential is not None else None
    return None if refused is None else _rejected(refused)


def _report(permit: Permit, outcome: Outcome, clock: Clock, started: float) -> None:
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


def _note_quota(quota: QuotaLedger, breaker: AnyBreaker, call: Call) -> None:
    """The call's quota ran out: hold its credential out of this target for ``quota_break``."""
    hold = quota_hold(Verdict.QUOTA_EXHAUSTED, breaker.policy)
    target = call.target
    assert target is not None
    credential = scope(target.client, call.options) if hold > 0 else None
    if credential is not None:  # None: no stable credential, each of its calls asks the upstream
        quota.exhausted(breaker.name, credential, hold)


def _acquire_asking_sync(breaker: AnyBreaker, call: Call) -> Permit:
    """A permit from a shared breaker that asks Redis for a probe slot: the wait counts in the
    call's one ``timeout`` on Redis, so a shared cache read after it waits only what is left."""
    started = time.monotonic()
    try:
        return breaker.acquire()
    finally:
        call.redis_waited += time.monotonic() - started


async def _acquire_asking(breaker: SharedCircuitBreaker, call: Call) -> Permit:
    """A permit that waits on Redis, never blocking the event loop: the first read of the shared
    state is awaited, and a probe slot asked for on a worker thread; both count in the call's
    one ``timeout`` on Redis (as in a thread)."""
    started = time.monotonic()
    try:
        await breaker.first_read()
        permit = breaker.acquire_nowait()
        return permit if permit is not None else await _acquire_off_loop(breaker)
    finally:
        call.redis_waited += time.monotonic() - started


async def _acquire_off_loop(breaker: SharedCircuitBreaker) -> Permit:
    """A permit from a breaker that must ask Redis for it, asked on a worker thread so the event
    loop runs on meanwhile. A caller cancelled while it waits gives the permit back, if one came."""
    future = asyncio.get_running_loop().run_in_executor(None, breaker.acquire)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_give_back)
        raise


def _give_back(future: asyncio.Future[Permit]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().ignore()


def _interrupted(permit: Permit, exc: BaseException, clock: Clock, started: float) -> None:
    """The attempt ended by an exception that is not an outcome (cancellation): ignored, mostly."""
    permit.record(classify(exc).verdict, duration=clock.now() - started, error=exc)


class SyncBreakerGate:
    """Admits or rejects each attempt through the target's circuit breaker and the quota ledger
    (threads)."""

    __slots__ = ("_clock", "_next", "_quota")

    def __init__(self, next: Handler, clock: Clock, quota: QuotaLedger) -> None:
        self._next = next
        self._clock = clock
        self._quota = quota

    def __call__(self, call: Call) -> Outcome:
        next = self._next
        target = call.target
        breaker = target.breaker if target is not None else None
        if breaker is None:
            result: Outcome = next(call)
            return result
        quota = self._quota
        if quota.active:
            refused = _out_of_quota(quota, breaker, call)
            if refused is not None:
                return refused
        try:
            permit = breaker.acquire_nowait()
            if permit is None:  # only a shared breaker waits on Redis
                permit = _acquire_asking_sync(breaker, call)
        except CircuitOpenError as exc:
            return _rejected(exc)
        started = call.attempt_started
        try:
            outcome: Outcome = next(call)
        except BaseException as exc:
            _interrupted(permit, exc, self._clock, started)
            raise
        _report(permit, outcome, self._clock, started)
        if outcome.judged.verdict is Verdict.QUOTA_EXHAUSTED:
            _note_quota(quota, breaker, call)
        return outcome


class AsyncBreakerGate:
    """Admits or rejects each attempt through the target's circuit breaker and the quota ledger
    (asyncio tasks)."""

    __slots__ = ("_clock", "_next", "_quota")

    def __init__(self, next: AsyncHandler, clock: Clock, quota: QuotaLedger) -> None:
        self._next = next
        self._clock = clock
        self._quota = quota

    async def __call__(self, call: Call) -> Outcome:
        next = self._next
        target = call.target
        breaker = target.breaker if target is not None else None
        if breaker is None:
            result: Outcome = await next(call)
            return result
        quota = self._quota
        if quota.active:
            refused = _out_of_quota(quota, breaker, call)
            if refused is not None:
                return refused
        try:
            permit = breaker.acquire_nowait()
            if permit is None:  # only a shared breaker waits on Redis
                assert isinstance(breaker, SharedCircuitBreaker)
                permit = await _acquire_asking(breaker, call)
        except CircuitOpenError as exc:
            return _rejected(exc)
        started = call.attempt_started
        try:
            outcome: Outcome = await next(call)
        except BaseException as exc:
            # Cancellation lands here: the breaker counts it as ignored, never as a failure.
            _interrupted(permit, exc, self._clock, started)
            raise
        _report(permit, outcome, self._clock, started)
        if outcome.judged.verdict is Verdict.QUOTA_EXHAUSTED:
            _note_quota(quota, breaker, call)
        return outcome
