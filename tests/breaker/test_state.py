"""The pure state machine: transition table, outcome sorting, break growth and every rule, time passed in."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import pybreaker
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_openai._breaker._state import (
    CLOSED,
    HALF_OPEN,
    ISOLATED,
    OPEN,
    REJECTED,
    TRANSITIONS,
    BreakerState,
    IllegalTransitionError,
    Outcome,
    Transition,
    break_for,
    check_transition,
    honoured_retry_after,
    outcome_of,
)
from resilient_openai._classify import Verdict
from resilient_openai._policy import BreakerPolicy

T0 = 1_000.0
WALL0 = 1_767_225_600.0
FAIL = Verdict.SERVER_ERROR
OK = Verdict.SUCCESS


class Driver:
    """A state machine plus its own notion of time, so tests read like a timeline."""

    def __init__(self, **policy: Any) -> None:
        # The mechanics are tested with a 30 s first break growing to 300 s, unless given.
        self.policy = BreakerPolicy(**{"break_duration": 30.0, "break_max": 300.0, **policy})
        self.storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self.now = T0
        self.machine = BreakerState(self.policy, self.storage, now=self.now, wall=self.wall)

    @property
    def wall(self) -> float:
        return WALL0 + (self.now - T0)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def admit(self) -> tuple[int, int]:
        """(generation, token) for an admitted call; fails the test on a rejection."""
        token = self.machine.admit(self.now)
        assert token != REJECTED, f"rejected in {self.machine.state}"
        return self.machine.generation, token

    def call(self, verdict: Verdict | None, **outcome: Any) -> None:
        """Admit one call and record its outcome straight away."""
        self.report(*self.admit(), verdict, **outcome)

    def report(
        self,
        generation: int,
        token: int,
        verdict: Verdict | None,
        *,
        duration: float = 0.1,
        retry_after: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.machine.record(generation, token, verdict, duration, retry_after, error, self.now, self.wall)

    def trip(self) -> None:
        """Fail until the circuit opens (consecutive mode)."""
        while self.machine.state == CLOSED:
            self.call(FAIL)

    @property
    def state(self) -> str:
        return self.machine.state


# -- the transition table -----------------------------------------------------------------------

_STATES = (CLOSED, OPEN, HALF_OPEN, ISOLATED)
_LEGAL = {
    (CLOSED, OPEN),
    (CLOSED, ISOLATED),
    (OPEN, HALF_OPEN),
    (OPEN, CLOSED),
    (OPEN, ISOLATED),
    (HALF_OPEN, OPEN),
    (HALF_OPEN, CLOSED),
    (HALF_OPEN, ISOLATED),
    (ISOLATED, CLOSED),
}


def test_state_names_are_pybreakers() -> None:
    """Closed / open / half-open are pybreaker's own constants."""
    assert (CLOSED, OPEN, HALF_OPEN) == (
        pybreaker.STATE_CLOSED,
        pybreaker.STATE_OPEN,
        pybreaker.STATE_HALF_OPEN,
    )


@pytest.mark.parametrize(("old", "new"), sorted(_LEGAL))
def test_legal_transitions_pass(old: str, new: str) -> None:
    """Every move in the table is allowed."""
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"), sorted(set(itertools.product((*_STATES, "bogus"), repeat=2)) - _LEGAL)
)
def test_illegal_transitions_raise(old: str, new: str) -> None:
    """Anything not in the table (self-moves and unknown states included) raises."""
    with pytest.raises(IllegalTransitionError, match="illegal circuit breaker transition"):
        check_transition(old, new)


def test_the_table_is_exactly_the_documented_one() -> None:
    """TRANSITIONS lists the legal moves and nothing else."""
    assert {(old, new) for old, news in TRANSITIONS.items() for new in news} == _LEGAL


_ops = st.lists(
    st.sampled_from(
        ["ok", "fail", "ignore", "quota", "slow", "wait", "acquire", "isolate", "close", "reset"]
    ),
    max_size=80,
)


@given(ops=_ops)
def test_random_operation_sequences_only_make_legal_moves(ops: list[str]) -> None:
    """Whatever happens, every change in the outbox is legal and follows from the previous one."""
    driver = Driver(fail_max=2, break_duration=5.0, break_max=20.0, slow_call_threshold=1.0, min_calls=2)
    machine = driver.machine
    held: list[tuple[int, int]] = []
    state = CLOSED
    for op in ops:
        if op == "wait":
            driver.advance(3.0)
        elif op == "acquire":
            token = machine.admit(driver.now)
            if token != REJECTED:
                held.append((machine.generation, token))
        elif op == "isolate":
            machine.isolate(driver.wall)
        elif op == "close":
            machine.close()
        elif op == "reset":
            machine.reset()
        elif held:
            generation, token = held.pop(0)
            verdict = {"ok": OK, "slow": OK, "fail": FAIL, "ignore": None, "quota": Verdict.QUOTA_EXHAUSTED}[
                op
            ]
            driver.report(generation, token, verdict, duration=2.0 if op == "slow" else 0.1)
        for change in machine.drain():
            assert change.old == state
            check_transition(change.old, change.new)
            state = change.new
        assert machine.state == state


# -- sorting outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        (Verdict.SUCCESS, Outcome.SUCCESS),
        (Verdict.SERVER_ERROR, Outcome.FAILURE),
        (Verdict.CONNECTION_ERROR, Outcome.FAILURE),
        (Verdict.TIMEOUT, Outcome.FAILURE),
        (Verdict.REQUEST_TIMEOUT, Outcome.FAILURE),
        (Verdict.STREAM_INTERRUPTED, Outcome.FAILURE),
        (Verdict.QUOTA_EXHAUSTED, Outcome.IGNORED),
        (Verdict.RATE_LIMITED, Outcome.IGNORED),
        (Verdict.CANCELLED, Outcome.IGNORED),
        (Verdict.CALLER_ERROR, Outcome.IGNORED),
        (Verdict.CONTENT_FILTERED, Outcome.IGNORED),
        (Verdict.CONTEXT_LENGTH_EXCEEDED, Outcome.IGNORED),
        (Verdict.CIRCUIT_OPEN, Outcome.IGNORED),
        (None, Outcome.IGNORED),
    ],
)
def test_outcome_of_under_the_default_policy(verdict: Verdict | None, expected: Outcome) -> None:
    """Success, the default failure verdicts, and everything else ignored (quota included: the
    quota ledger holds the credential out, not the breaker the target)."""
    assert outcome_of(verdict, BreakerPolicy()) is expected


@pytest.mark.parametrize(
    ("failure_verdicts", "expected"),
    [
        (frozenset({Verdict.SERVER_ERROR}), Outcome.IGNORED),
        (frozenset({Verdict.QUOTA_EXHAUSTED}), Outcome.FAILURE),
    ],
)
def test_quota_without_a_quota_break_is_an_ordinary_verdict(
    failure_verdicts: frozenset[Verdict], expected: Outcome
) -> None:
    """With ``quota_break = 0`` quota is a failure if listed, else ignored."""
    policy = BreakerPolicy(quota_break=0.0, failure_verdicts=failure_verdicts)
    assert outcome_of(Verdict.QUOTA_EXHAUSTED, policy) is expected


@pytest.mark.parametrize("verdict", [Verdict.SUCCESS, Verdict.SERVER_ERROR, Verdict.QUOTA_EXHAUSTED])
def test_a_disabled_policy_ignores_everything(verdict: Verdict) -> None:
    """``enabled = False``: no outcome counts."""
    assert outcome_of(verdict, BreakerPolicy(enabled=False)) is Outcome.IGNORED


# -- break growth and Retry-After ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reopenings", "expected"), [(0, 10.0), (1, 20.0), (2, 40.0), (3, 50.0), (4, 50.0), (10_000, 50.0)]
)
def test_break_grows_geometrically_up_to_the_cap(reopenings: int, expected: float) -> None:
    """``break_duration * multiplier**k`` capped at ``break_max``, even when the power overflows."""
    policy = BreakerPolicy(break_duration=10.0, break_multiplier=2.0, break_max=50.0)
    assert break_for(policy, reopenings) == expected


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 0.0),
        (-3.0, 0.0),
        (0.0, 0.0),
        (math.nan, 0.0),
        (45.5, 45.5),
        (300.0, 300.0),
        (7_200.0, 300.0),
        (86_400.0, 300.0),
        (math.inf, 300.0),
    ],
)
def test_honoured_retry_after(retry_after: float | None, expected: float) -> None:
    """Absent or unreadable is 0; a server may lengthen a break up to the cap, never past it."""
    assert honoured_retry_after(retry_after, 300.0) == expected


# -- consecutive mode ---------------------------------------------------------------------------


def test_fail_max_failures_in_a_row_open_the_circuit() -> None:
    """The fifth failure in a row opens, with the count in the reason."""
    driver = Driver(fail_max=5)
    for _ in range(4):
        driver.call(FAIL)
    assert driver.state == CLOSED
    driver.call(FAIL)
    assert driver.state == OPEN
    assert driver.machine.drain() == [Transition(CLOSED, OPEN, "5 consecutive failures", 30.0)]


def test_a_caller_error_neither_resets_nor_counts() -> None:
    """4 failures, a caller error, a failure: still closed; the sixth outcome (fifth failure) opens."""
    driver = Driver(fail_max=5)
    for verdict in [FAIL, FAIL, FAIL, FAIL, Verdict.CALLER_ERROR]:
        driver.call(verdict)
    assert (driver.state, driver.machine.consecutive_failures) == (CLOSED, 4)
    driver.call(FAIL)
    assert driver.state == OPEN


def test_a_success_resets_the_run() -> None:
    """Failures separated by a success never reach ``fail_max``."""
    driver = Driver(fail_max=3)
    for verdict in [FAIL, FAIL, OK, FAIL, FAIL]:
        driver.call(verdict)
    assert (driver.state, driver.machine.consecutive_failures) == (CLOSED, 2)


# -- ratio mode ---------------------------------------------------------------------------------


def test_ratio_mode_waits_for_min_calls() -> None:
    """One failure in one call is 100 % but below ``min_calls``: still closed."""
    driver = Driver(mode="ratio", failure_ratio=0.5, min_calls=5)
    driver.call(FAIL)
    assert driver.state == CLOSED


def test_ratio_mode_opens_at_the_ratio() -> None:
    """5 failures out of 5 calls with ``min_calls = 5`` open the circuit."""
    driver = Driver(mode="ratio", failure_ratio=0.5, min_calls=5, fail_max=100)
    for _ in range(4):
        driver.call(FAIL)
    assert driver.state == CLOSED
    driver.call(FAIL)
    assert driver.state == OPEN
    assert driver.machine.drain()[0].reason == "5 of 5 calls failed in 30s"


def test_ratio_mode_counts_successes_against_failures() -> None:
    """2 failures in 5 calls stay under a 0.5 ratio."""
    driver = Driver(mode="ratio", failure_ratio=0.5, min_calls=5)
    for verdict in [OK, FAIL, OK, FAIL, OK]:
        driver.call(verdict)
    assert driver.state == CLOSED


def test_ratio_mode_forgets_failures_older_than_the_window() -> None:
    """4 failures, then a window later 1 failure: only 1 of 1 is seen, below ``min_calls``."""
    driver = Driver(mode="ratio", failure_ratio=0.5, min_calls=5, window=30.0)
    for _ in range(4):
        driver.call(FAIL)
    driver.advance(30.0)
    driver.call(FAIL)
    assert driver.state == CLOSED
    assert driver.machine.window(driver.now) == (1, 1, 0)


def test_ignored_outcomes_stay_out_of_the_window() -> None:
    """Cancelled calls are neither calls nor failures in the ratio."""
    driver = Driver(mode="ratio", min_calls=2)
    driver.call(Verdict.CANCELLED)
    driver.call(Verdict.CALLER_ERROR)
    assert driver.machine.window(driver.now) == (0, 0, 0)


# -- slow calls ---------------------------------------------------------------------------------


def test_slow_successes_open_at_the_slow_call_ratio() -> None:
    """With a threshold set, enough slow successes open the circuit."""
    driver = Driver(slow_call_threshold=2.0, slow_call_ratio=0.5, min_calls=4)
    for duration in (0.1, 3.0, 0.1):
        driver.call(OK, duration=duration)
    assert driver.state == CLOSED
    driver.call(OK, duration=2.5)
    assert driver.state == OPEN
    assert driver.machine.drain()[0].reason == "2 of 4 calls slower than 2s"


def test_without_a_threshold_nothing_is_slow() -> None:
    """``slow_call_threshold = None``: long successes are just successes."""
    driver = Driver(min_calls=1)
    driver.call(OK, duration=1_000.0)
    assert driver.machine.window(driver.now) == (1, 0, 0)


# -- open, half-open, growth --------------------------------------------------------------------


def test_open_rejects_until_the_break_is_over() -> None:
    """While open every call is refused; retry_after counts down to the end of the break."""
    driver = Driver(fail_max=1, break_duration=30.0)
    driver.trip()
    driver.advance(12.5)
    assert driver.machine.admit(driver.now) == REJECTED
    assert driver.machine.retry_after(driver.now) == 17.5


def test_the_first_call_after_the_break_is_a_probe() -> None:
    """After the break the next admission moves to half-open and hands out a probe token."""
    driver = Driver(fail_max=1, break_duration=30.0)
    driver.trip()
    driver.machine.drain()
    driver.advance(30.0)
    _, token = driver.admit()
    assert token > 0
    assert driver.machine.drain() == [Transition(OPEN, HALF_OPEN, "break elapsed")]


def test_probes_are_bounded() -> None:
    """At most ``half_open_probes`` probes are out; the next caller is refused."""
    driver = Driver(fail_max=1, half_open_probes=2, break_duration=30.0)
    driver.trip()
    driver.advance(30.0)
    driver.admit()
    driver.admit()
    assert driver.machine.admit(driver.now) == REJECTED


def test_close_after_successful_probes_close() -> None:
    """``close_after`` successful probes close the circuit; fewer do not."""
    driver = Driver(fail_max=1, half_open_probes=3, close_after=2, break_duration=30.0)
    driver.trip()
    driver.advance(30.0)
    driver.call(OK)
    assert driver.state == HALF_OPEN
    driver.call(OK)
    assert driver.state == CLOSED
    assert driver.machine.drain()[-1] == Transition(HALF_OPEN, CLOSED, "2 probe(s) succeeded")


def test_a_failed_probe_reopens_with_a_longer_break() -> None:
    """Each reopening multiplies the break, up to ``break_max``."""
    driver = Driver(fail_max=1, break_duration=10.0, break_multiplier=2.0, break_max=35.0)
    driver.trip()
    breaks = [driver.machine.retry_after(driver.now)]
    for _ in range(3):
        driver.advance(breaks[-1] or 0.0)
        driver.call(FAIL)
        breaks.append(driver.machine.retry_after(driver.now))
    assert breaks == [10.0, 20.0, 35.0, 35.0]
    assert driver.machine.reopen_count == 3


def test_closing_resets_the_break_growth() -> None:
    """After a close the next trip gets the first break again."""
    driver = Driver(fail_max=1, break_duration=10.0, break_multiplier=2.0, break_max=100.0)
    driver.trip()
    driver.advance(10.0)
    driver.call(FAIL)
    driver.advance(20.0)
    driver.call(OK)
    assert (driver.state, driver.machine.reopen_count) == (CLOSED, 0)
    driver.trip()
    assert driver.machine.retry_after(driver.now) == 10.0


def test_a_longer_retry_after_is_honoured() -> None:
    """A Retry-After longer than the break becomes the break."""
    driver = Driver(fail_max=1, break_duration=30.0)
    driver.call(FAIL, retry_after=90.0)
    assert driver.machine.retry_after(driver.now) == 90.0


def test_a_retry_after_never_holds_the_circuit_past_break_max() -> None:
    """``Retry-After: 86400`` lengthens the break only up to ``break_max``."""
    driver = Driver(fail_max=1, break_duration=10.0, break_max=60.0)
    driver.call(FAIL, retry_after=86_400.0)
    assert driver.machine.retry_after(driver.now) == 60.0


def test_a_shorter_retry_after_does_not_shorten_the_break() -> None:
    """The break is at least ``break_duration``."""
    driver = Driver(fail_max=1, break_duration=30.0)
    driver.call(FAIL, retry_after=5.0)
    assert driver.machine.retry_after(driver.now) == 30.0


@pytest.mark.parametrize("retry_after", [None, 60.0, 3_600.0])
def test_quota_never_opens_the_shared_circuit(retry_after: float | None) -> None:
    """Quota exhaustion, however often, leaves the circuit closed: it belongs to one credential."""
    driver = Driver(fail_max=1, quota_break=600.0)
    for _ in range(3):
        driver.call(Verdict.QUOTA_EXHAUSTED, retry_after=retry_after)
    assert driver.state == CLOSED
    assert driver.machine.drain() == []


def test_quota_on_a_probe_frees_its_slot_and_leaves_the_circuit_half_open() -> None:
    """A probe that hits the quota says nothing of the target: half-open, the next probe admitted."""
    driver = Driver(fail_max=1, break_duration=10.0, quota_break=600.0)
    driver.trip()
    driver.advance(10.0)
    driver.call(Verdict.QUOTA_EXHAUSTED)
    assert driver.state == HALF_OPEN
    assert driver.admit()[1] > 0


# -- generations, leases, ignored probes --------------------------------------------------------


def test_an_outcome_from_before_the_trip_does_not_extend_the_break() -> None:
    """A failure (with a long Retry-After) from a call admitted while closed changes nothing once open."""
    driver = Driver(fail_max=1, break_duration=30.0)
    old = driver.admit()
    driver.trip()
    driver.advance(10.0)
    driver.report(*old, FAIL, retry_after=1_000.0)
    assert driver.machine.retry_after(driver.now) == 20.0


def test_an_outcome_from_before_the_trip_does_not_close() -> None:
    """A success from a call admitted while closed does not count as a probe."""
    driver = Driver(fail_max=1, break_duration=30.0)
    old = driver.admit()
    driver.trip()
    driver.advance(30.0)
    driver.admit()
    driver.report(*old, OK)
    assert driver.state == HALF_OPEN


def test_an_expired_probe_lease_frees_the_slot() -> None:
    """A probe that never reports loses its slot after ``probe_lease`` seconds."""
    driver = Driver(fail_max=1, break_duration=30.0, probe_lease=60.0)
    driver.trip()
    driver.advance(30.0)
    driver.admit()
    driver.advance(59.0)
    assert driver.machine.admit(driver.now) == REJECTED
    assert driver.machine.retry_after(driver.now) == 1.0
    driver.advance(1.0)
    assert driver.machine.admit(driver.now) > 0


def test_an_ignored_probe_gives_its_slot_back_and_does_not_close() -> None:
    """A cancelled probe frees the slot and leaves the circuit half-open."""
    driver = Driver(fail_max=1, break_duration=30.0)
    driver.trip()
    driver.advance(30.0)
    driver.call(Verdict.CANCELLED)
    assert driver.state == HALF_OPEN
    assert driver.machine.admit(driver.now) > 0


def test_an_ignored_probe_does_not_count_toward_close_after() -> None:
    """Ignored probes are not successes: ``close_after = 1`` still needs a real success."""
    driver = Driver(fail_max=1, break_duration=30.0)
    driver.trip()
    driver.advance(30.0)
    for _ in range(3):
        driver.call(None)
    assert driver.state == HALF_OPEN


# -- operator actions and storage ---------------------------------------------------------------


def test_isolate_refuses_everything_until_closed() -> None:
    """Isolated: no probe, ever, and no retry_after; ``close`` reopens the gate."""
    driver = Driver()
    driver.machine.isolate(driver.wall)
    driver.advance(1e9)
    assert driver.machine.admit(driver.now) == REJECTED
    assert driver.machine.retry_after(driver.now) is None
    driver.machine.close()
    assert driver.machine.admit(driver.now) == 0


def test_reset_clears_counts_growth_and_history() -> None:
    """``reset`` leaves a fresh closed machine."""
    driver = Driver(fail_max=1, break_duration=10.0)
    driver.trip()
    driver.advance(10.0)
    driver.call(FAIL)
    driver.machine.reset()
    machine = driver.machine
    assert (machine.state, machine.reopen_count, machine.last_failure, machine.consecutive_failures) == (
        CLOSED,
        0,
        None,
        0,
    )
    assert machine.window(driver.now) == (0, 0, 0)


def test_reset_while_closed_makes_calls_in_flight_stale() -> None:
    """A failure from before a reset does not bring the old count back."""
    driver = Driver(fail_max=2)
    driver.call(FAIL)
    old = driver.admit()
    driver.machine.reset()
    driver.report(*old, FAIL)
    assert driver.machine.consecutive_failures == 0


def test_state_counter_and_opened_at_live_in_the_storage() -> None:
    """The pybreaker storage holds the state name, the failure count and ``opened_at``."""
    driver = Driver(fail_max=3)
    driver.call(FAIL)
    assert driver.storage.counter == 1
    driver.advance(5.0)
    driver.trip()
    assert driver.storage.state == OPEN
    assert driver.storage.opened_at == datetime.fromtimestamp(WALL0 + 5.0, UTC)
    assert driver.machine.opened_at == WALL0 + 5.0


def test_an_open_storage_resumes_the_rest_of_its_break() -> None:
    """A machine built on a storage that says open serves what is left of the break."""
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_OPEN)
    storage.opened_at = datetime.fromtimestamp(WALL0 - 10.0, UTC)
    machine = BreakerState(BreakerPolicy(break_duration=30.0), storage, now=T0, wall=WALL0)
    assert machine.admit(T0) == REJECTED
    assert machine.retry_after(T0) == 20.0


def test_an_unknown_stored_state_is_refused() -> None:
    """A storage holding a state this machine does not know is an error at construction."""
    storage = pybreaker.CircuitMemoryStorage("sideways")
    with pytest.raises(ValueError, match="unknown breaker state 'sideways'"):
        BreakerState(BreakerPolicy(), storage, now=T0, wall=WALL0)


def test_the_error_that_opened_the_circuit_is_kept_as_cause() -> None:
    """The tripping failure's error is remembered until the circuit closes."""
    driver = Driver(fail_max=1, break_duration=10.0)
    boom = ConnectionError("down")
    driver.call(FAIL, error=boom)
    assert driver.machine.cause is boom
    driver.advance(10.0)
    driver.call(OK)
    assert driver.machine.cause is None
