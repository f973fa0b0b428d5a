"""CircuitBreaker: the permit protocol, thread safety, rejections, events and snapshots, on a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from datetime import UTC, datetime
from typing import Any

import pybreaker
import pytest

from resilient_openai._breaker import CircuitBreaker, Permit
from resilient_openai._classify import Verdict
from resilient_openai._errors import CircuitOpenError
from resilient_openai._policy import BreakerPolicy
from resilient_openai.observe.events import BreakerStateChanged, CallRejected, Event, EventBus
from resilient_openai.testing._clock import FakeClock

FAIL = Verdict.SERVER_ERROR
OK = Verdict.SUCCESS


def _breaker(
    clock: FakeClock | None = None, bus: EventBus | None = None, name: str = "api.test/v1:m", **policy: Any
) -> CircuitBreaker:
    return CircuitBreaker(name, _mechanics(**policy), clock=clock or FakeClock(), bus=bus or EventBus())


def _mechanics(**policy: Any) -> BreakerPolicy:
    """A policy for testing the mechanics: the 30 s first break, growing to 300 s, unless given."""
    return BreakerPolicy(**{"break_duration": 30.0, "break_max": 300.0, **policy})


def _call(breaker: CircuitBreaker, verdict: Verdict, **kwargs: Any) -> None:
    kwargs.setdefault("duration", 0.1)
    breaker.acquire().record(verdict, **kwargs)


def _trip(breaker: CircuitBreaker, **kwargs: Any) -> None:
    while breaker.state == "closed":
        _call(breaker, FAIL, **kwargs)


def _rejection(breaker: CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    return caught.value


def _joined(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock?)"


# -- the permit protocol ------------------------------------------------------------------------


def test_a_closed_breaker_hands_out_permits() -> None:
    """acquire() on a closed circuit returns an ordinary (non-probe) permit."""
    permit = _breaker().acquire()
    assert isinstance(permit, Permit)
    assert not permit.is_probe
    assert not permit.done


def test_consecutive_mode_caller_error_is_neither_counted_nor_a_reset() -> None:
    """fail_max=5: 4 failures, a caller error, a failure -> closed; the sixth outcome opens it."""
    breaker = _breaker(fail_max=5)
    for verdict in [FAIL, FAIL, FAIL, FAIL, Verdict.CALLER_ERROR, FAIL]:
        assert breaker.state == "closed"
        _call(breaker, verdict)
    assert breaker.state == "open"


def test_ratio_mode_through_the_shell() -> None:
    """1 of 1 stays closed below min_calls; 5 of 5 with min_calls=5 opens."""
    breaker = _breaker(mode="ratio", min_calls=5, failure_ratio=0.5)
    _call(breaker, FAIL)
    assert breaker.state == "closed"
    for _ in range(4):
        _call(breaker, FAIL)
    assert breaker.state == "open"


def test_ratio_mode_failures_older_than_the_window_do_not_count() -> None:
    """Failures a window ago are gone: 4 old + 4 new of min_calls=5 stay closed."""
    clock = FakeClock()
    breaker = _breaker(clock, mode="ratio", min_calls=5, window=30.0)
    for _ in range(4):
        _call(breaker, FAIL)
    clock.advance(30.0)
    for _ in range(4):
        _call(breaker, FAIL)
    assert breaker.state == "closed"
    assert breaker.snapshot().window_failures == 4


def test_only_the_first_record_counts() -> None:
    """Recording twice on one permit counts once; ignore() after record is a no-op."""
    breaker = _breaker(fail_max=2)
    permit = breaker.acquire()
    permit.record(FAIL, duration=0.1)
    permit.record(FAIL, duration=0.1)
    permit.ignore()
    assert permit.done
    assert (breaker.state, breaker.snapshot().consecutive_failures) == ("closed", 1)


def test_ignore_counts_as_nothing() -> None:
    """An ignored permit neither fails nor resets the run of failures."""
    breaker = _breaker(fail_max=5)
    _call(breaker, FAIL)
    breaker.acquire().ignore()
    assert breaker.snapshot().consecutive_failures == 1


def test_slow_successes_trip_through_the_shell() -> None:
    """Successes slower than the threshold count as slow and can open the circuit."""
    breaker = _breaker(slow_call_threshold=1.0, slow_call_ratio=1.0, min_calls=3)
    for _ in range(3):
        _call(breaker, OK, duration=1.5)
    assert breaker.state == "open"


def test_a_disabled_policy_never_opens() -> None:
    """enabled=False: failures are not counted and every call is admitted."""
    breaker = _breaker(enabled=False, fail_max=1)
    for _ in range(10):
        _call(breaker, FAIL)
    assert breaker.state == "closed"


# -- rejections ---------------------------------------------------------------------------------


def test_an_open_circuit_rejects_with_context() -> None:
    """The error names the breaker, in the message and as ``breaker``."""
    breaker = _breaker(fail_max=1)
    _trip(breaker)
    error = _rejection(breaker)
    assert str(error) == "circuit 'api.test/v1:m' is open"
    assert error.breaker == "api.test/v1:m"


def test_retry_after_is_the_remaining_break_to_the_tick() -> None:
    """retry_after equals the break left on the fake clock, exactly."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=30.0)
    _trip(breaker)
    clock.advance(12.5)
    assert _rejection(breaker).retry_after == 17.5
    clock.advance(17.25)
    assert _rejection(breaker).retry_after == 0.25


def test_the_rejection_is_chained_to_the_failure_that_opened_it() -> None:
    """``__cause__`` is the error recorded with the tripping failure."""
    breaker = _breaker(fail_max=1)
    boom = ConnectionError("upstream down")
    _call(breaker, FAIL, error=boom)
    assert _rejection(breaker).__cause__ is boom


def test_a_failure_from_before_the_trip_does_not_extend_the_break() -> None:
    """A call admitted while closed, failing after the trip with a long Retry-After, changes nothing."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=2, break_duration=30.0)
    early = breaker.acquire()
    _trip(breaker)
    clock.advance(10.0)
    early.record(FAIL, duration=10.0, retry_after=500.0)
    assert _rejection(breaker).retry_after == 20.0
    clock.advance(20.0)
    assert breaker.acquire().is_probe


def test_break_durations_grow_and_are_capped() -> None:
    """Each failed probe reopens for longer, up to break_max."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=10.0, break_multiplier=3.0, break_max=60.0)
    _trip(breaker)
    seen = []
    for _ in range(4):
        wait = _rejection(breaker).retry_after
        assert wait is not None
        seen.append(wait)
        clock.advance(wait)
        _call(breaker, FAIL)
    assert seen == [10.0, 30.0, 60.0, 60.0]
    assert breaker.snapshot().reopen_count == 4


def test_a_retry_after_longer_than_the_break_is_honoured() -> None:
    """The server's 90 s beats a 30 s break."""
    breaker = _breaker(fail_max=1, break_duration=30.0)
    _call(breaker, FAIL, retry_after=90.0)
    assert _rejection(breaker).retry_after == 90.0


def test_quota_exhaustion_leaves_the_circuit_closed() -> None:
    """QUOTA_EXHAUSTED is one credential's problem: the shared circuit stays closed, uncounted."""
    breaker = _breaker(fail_max=1, quota_break=600.0)
    _call(breaker, Verdict.QUOTA_EXHAUSTED)
    assert breaker.state == "closed"
    snapshot = breaker.snapshot()
    assert (snapshot.consecutive_failures, snapshot.last_failure) == (0, None)


# -- half-open ----------------------------------------------------------------------------------


def test_fifty_threads_after_the_break_get_exactly_one_probe() -> None:
    """50 threads released together: one permit, 49 immediate rejections."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=30.0, half_open_probes=1, probe_lease=60.0)
    _trip(breaker)
    clock.advance(30.0)
    barrier = threading.Barrier(50)
    permits: list[Permit] = []
    rejected: list[CircuitOpenError] = []

    def contend() -> None:
        barrier.wait()
        try:
            permits.append(breaker.acquire())
        except CircuitOpenError as exc:
            rejected.append(exc)

    _joined([threading.Thread(target=contend) for _ in range(50)])
    assert (len(permits), len(rejected)) == (1, 49)
    assert permits[0].is_probe
    assert {exc.retry_after for exc in rejected} == {60.0}


def test_tasks_share_the_probe_slot_like_threads() -> None:
    """From asyncio tasks too, only half_open_probes permits go out."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=1.0, half_open_probes=2)
    _trip(breaker)
    clock.advance(1.0)

    async def contend() -> Permit | None:
        await asyncio.sleep(0)
        try:
            return breaker.acquire()
        except CircuitOpenError:
            return None

    async def main() -> list[Permit | None]:
        return list(await asyncio.gather(*(contend() for _ in range(10))))

    results = asyncio.run(main())
    assert sum(result is not None for result in results) == 2


def test_a_probe_lease_expiry_frees_the_slot() -> None:
    """A probe that never reports loses its slot after probe_lease seconds."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=30.0, probe_lease=60.0)
    _trip(breaker)
    clock.advance(30.0)
    breaker.acquire()  # a probe that never reports
    clock.advance(59.0)
    assert _rejection(breaker).retry_after == 1.0
    clock.advance(1.0)
    assert breaker.acquire().is_probe


def test_an_ignored_probe_gives_the_slot_back_without_closing() -> None:
    """A cancelled probe frees the slot; the circuit stays half-open."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=30.0)
    _trip(breaker)
    clock.advance(30.0)
    breaker.acquire().record(Verdict.CANCELLED, duration=0.5)
    assert breaker.state == "half-open"
    assert breaker.acquire().is_probe


def test_a_successful_probe_closes_and_a_failed_one_reopens() -> None:
    """close_after=1: one success closes; before that, one failure reopens."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=30.0)
    _trip(breaker)
    clock.advance(30.0)
    _call(breaker, FAIL)
    assert breaker.state == "open"
    clock.advance(60.0)
    _call(breaker, OK)
    assert breaker.state == "closed"


# -- races --------------------------------------------------------------------------------------


def test_racing_failures_are_counted_exactly() -> None:
    """16 threads x 500 failures: the count is exactly 8000."""
    breaker = _breaker(fail_max=10**6)
    barrier = threading.Barrier(16)

    def hammer() -> None:
        barrier.wait()
        for _ in range(500):
            breaker.acquire().record(FAIL, duration=0.01)

    _joined([threading.Thread(target=hammer) for _ in range(16)])
    snapshot = breaker.snapshot()
    assert (snapshot.consecutive_failures, snapshot.window_calls, snapshot.window_failures) == (
        8000,
        8000,
        8000,
    )


def test_racing_reports_of_one_permit_count_once() -> None:
    """Many threads recording the same permit: one outcome counts."""
    breaker = _breaker(fail_max=100)
    permit = breaker.acquire()
    barrier = threading.Barrier(20)

    def report() -> None:
        barrier.wait()
        permit.record(FAIL, duration=0.1)

    _joined([threading.Thread(target=report) for _ in range(20)])
    assert breaker.snapshot().consecutive_failures == 1


# -- operator actions ---------------------------------------------------------------------------


def test_isolate_holds_the_circuit_open_until_closed() -> None:
    """Isolated: rejected with no retry_after, however long we wait; close() admits again."""
    clock = FakeClock()
    breaker = _breaker(clock)
    breaker.isolate()
    clock.advance(1e6)
    assert breaker.state == "isolated"
    assert _rejection(breaker).retry_after is None
    breaker.close()
    assert not breaker.acquire().is_probe


def test_close_from_open_admits_at_once() -> None:
    """close() on an open circuit ends the break."""
    breaker = _breaker(fail_max=1)
    _trip(breaker)
    breaker.close()
    assert breaker.state == "closed"
    breaker.acquire()


def test_reset_clears_counters_and_growth() -> None:
    """reset(): closed, no failures, no growth, no history."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=1, break_duration=10.0)
    _trip(breaker)
    clock.advance(10.0)
    _call(breaker, FAIL)
    breaker.reset()
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.reopen_count, snapshot.consecutive_failures, snapshot.last_failure) == (
        "closed",
        0,
        0,
        None,
    )
    _trip(breaker)
    assert _rejection(breaker).retry_after == 10.0


# -- events -------------------------------------------------------------------------------------


def test_state_changes_are_published_with_reasons() -> None:
    """Every real change is one BreakerStateChanged, with its reason and break."""
    clock = FakeClock()
    events: list[Event] = []
    breaker = _breaker(clock, EventBus([events.append]), fail_max=2, break_duration=30.0)
    _trip(breaker)
    clock.advance(30.0)
    _call(breaker, FAIL)
    breaker.isolate()
    breaker.isolate()  # already isolated: no event
    breaker.close()
    changes = [(e.old, e.new, e.reason, e.retry_after) for e in events if isinstance(e, BreakerStateChanged)]
    assert changes == [
        ("closed", "open", "2 consecutive failures", 30.0),
        ("open", "half-open", "break elapsed", None),
        ("half-open", "open", "probe failed", 60.0),
        ("open", "isolated", "manual isolate", None),
        ("isolated", "closed", "manual close", None),
    ]


def test_each_rejection_is_published() -> None:
    """One CallRejected per refused call, with its retry_after and wall time."""
    clock = FakeClock()
    events: list[Event] = []
    breaker = _breaker(clock, EventBus([events.append]), fail_max=1, break_duration=30.0)
    _trip(breaker)
    for _ in range(3):
        _rejection(breaker)
    rejected = [e for e in events if isinstance(e, CallRejected)]
    assert rejected == [CallRejected(clock.wall(), "api.test/v1:m", 30.0)] * 3


def test_listeners_run_outside_the_lock() -> None:
    """A listener that calls snapshot() and acquire() on the same breaker does not deadlock."""
    seen: list[tuple[str, str, str]] = []
    holder: list[CircuitBreaker] = []

    def reenter(event: Event) -> None:
        if isinstance(event, BreakerStateChanged):
            breaker = holder[0]
            try:
                breaker.acquire()
                outcome = "admitted"
            except CircuitOpenError:
                outcome = "rejected"
            seen.append((event.new, breaker.snapshot().state, outcome))

    holder.append(_breaker(bus=EventBus([reenter]), fail_max=1))
    _joined([threading.Thread(target=_trip, args=(holder[0],))])
    assert seen == [("open", "open", "rejected")]


def test_a_raising_listener_does_not_break_the_call() -> None:
    """A listener error is logged; record() returns and acquire() raises only CircuitOpenError."""

    def explode(event: Event) -> None:
        raise RuntimeError("listener bug")

    breaker = _breaker(bus=EventBus([explode]), fail_max=1)
    _call(breaker, FAIL)
    assert breaker.state == "open"
    _rejection(breaker)


# -- snapshots and storage ----------------------------------------------------------------------


def test_snapshot_describes_an_open_breaker() -> None:
    """Every field of an open breaker's snapshot, and it serialises to JSON."""
    clock = FakeClock()
    breaker = _breaker(clock, fail_max=3, break_duration=30.0)
    _call(breaker, OK, duration=0.2)
    _trip(breaker)
    opened = clock.wall()
    clock.advance(5.0)
    snapshot = breaker.snapshot()
    assert dataclasses.asdict(snapshot) == {
        "name": "api.test/v1:m",
        "state": "open",
        "consecutive_failures": 3,
        "window_calls": 4,
        "window_failures": 3,
        "window_slow": 0,
        "opened_at": opened,
        "retry_after": 25.0,
        "reopen_count": 0,
        "last_failure": "server_error",
    }
    json.dumps(dataclasses.asdict(snapshot))


def test_a_closed_snapshot_has_no_opening() -> None:
    """Closed: no opened_at, no retry_after."""
    snapshot = _breaker().snapshot()
    assert (snapshot.state, snapshot.opened_at, snapshot.retry_after) == ("closed", None, None)


def test_a_given_storage_holds_state_counter_and_opened_at() -> None:
    """A pybreaker storage passed in is where state, failure count and opened_at live."""
    clock = FakeClock()
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breaker = CircuitBreaker("s", BreakerPolicy(fail_max=2), clock=clock, bus=EventBus(), storage=storage)
    _call(breaker, FAIL)
    assert (storage.state, storage.counter) == ("closed", 1)
    _call(breaker, FAIL)
    assert (storage.state, storage.counter) == ("open", 2)
    assert storage.opened_at == datetime.fromtimestamp(clock.wall(), UTC)
