"""The circuit breaker's state machine: which calls get a permit, and what each outcome does.

Pure: no locks, no I/O of its own, no clock reads. The caller (:class:`CircuitBreaker`) holds
its lock around every method that may change anything (``state`` and ``generation`` are single
reads, safe without it) and passes in ``now`` (monotonic seconds) and, where a circuit may open,
``wall`` (epoch seconds, only for ``opened_at``). State changes are not announced here:
each one is appended to :attr:`BreakerState.outbox`, which the caller drains and publishes after
releasing its lock.

The state name, the consecutive-failure counter, the half-open success counter and ``opened_at``
live in a ``pybreaker.CircuitBreakerStorage`` (its memory storage does no I/O), so that a shared
storage can later carry them between workers. The generation, the break deadline and the probe
leases are this process's own: monotonic time and in-flight calls mean nothing elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import pybreaker

from .._classify import Verdict
from ._window import SlidingWindow, WindowCounts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._policy import BreakerPolicy

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "ISOLATED",
    "OPEN",
    "REJECTED",
    "TRANSITIONS",
    "BreakerState",
    "IllegalTransitionError",
    "Outcome",
    "Transition",
    "break_for",
    "check_transition",
    "honoured_retry_after",
    "outcome_of",
]

CLOSED: Final = pybreaker.STATE_CLOSED
OPEN: Final = pybreaker.STATE_OPEN
HALF_OPEN: Final = pybreaker.STATE_HALF_OPEN
#: Forced open by an operator: no probe is ever admitted until someone closes or resets it.
ISOLATED: Final = "isolated"

#: Every legal state change. Anything else is a bug and raises :class:`IllegalTransitionError`.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        CLOSED: frozenset({OPEN, ISOLATED}),
        OPEN: frozenset({HALF_OPEN, CLOSED, ISOLATED}),
        HALF_OPEN: frozenset({OPEN, CLOSED, ISOLATED}),
        ISOLATED: frozenset({CLOSED}),
    }
)

#: What :meth:`BreakerState.admit` returns when a call is refused. ``0`` is an ordinary permit,
#: anything above is a half-open probe's token.
REJECTED: Final = -1
_ORDINARY: Final = 0


class IllegalTransitionError(RuntimeError):
    """A state change the transition table does not allow was attempted (a bug, never user error)."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"illegal circuit breaker transition {old!r} -> {new!r}")
        self.old = old
        self.new = new


def check_transition(old: str, new: str) -> None:
    """Raise :class:`IllegalTransitionError` unless ``old -> new`` is in :data:`TRANSITIONS`."""
    allowed = TRANSITIONS.get(old)
    if allowed is None or new not in allowed:
        raise IllegalTransitionError(old, new)


class Outcome(Enum):
    """What a verdict means to the breaker."""

    SUCCESS = "success"
    FAILURE = "failure"
    #: Says nothing about the target's health (cancellation, the caller's own mistake...).
    IGNORED = "ignored"


def outcome_of(verdict: Verdict | None, policy: BreakerPolicy) -> Outcome:
    """Sort a verdict into success / failure / ignored under ``policy``.

    ``None`` (an explicit :meth:`Permit.ignore`) is ignored; so is everything when the policy is
    disabled. Quota exhaustion is ignored while ``quota_break > 0``: it belongs to one credential,
    not to the target, and :class:`~resilient_openai._breaker.QuotaLedger` holds that credential
    out instead. With ``quota_break = 0`` it is a failure if listed in ``failure_verdicts`` and
    ignored if not, like any other verdict.
    """
    if verdict is None or not policy.enabled:
        return Outcome.IGNORED
    if verdict is Verdict.SUCCESS:
        return Outcome.SUCCESS
    if verdict is Verdict.QUOTA_EXHAUSTED and policy.quota_break > 0:
        return Outcome.IGNORED
    if verdict in policy.failure_verdicts:
        return Outcome.FAILURE
    return Outcome.IGNORED


def break_for(policy: BreakerPolicy, reopenings: int) -> float:
    """The open period after ``k = reopenings`` reopenings in a row.

    ``break_duration * break_multiplier**k``, capped at ``break_max`` (overflow included).
    """
    try:
        grown = policy.break_duration * policy.break_multiplier**reopenings
    except OverflowError:
        return policy.break_max
    return min(grown, policy.break_max)


def honoured_retry_after(retry_after: float | None, cap: float) -> float:
    """The part of a server's Retry-After the breaker obeys: 0 when absent or unreadable.

    A server may lengthen a break but never past ``cap`` (``break_max``): the policy says how
    long a target may be kept out at most, and a garbled or hostile header (``Retry-After:
    86400``, an overflow) cannot keep it out for longer.
    """
    if retry_after is None or not retry_after > 0:  # None, negative, zero or NaN
        return 0.0
    return min(retry_after, cap)


@dataclass(frozen=True, slots=True)
class Transition:
    """One real state change, waiting in the outbox to be published as an event."""

    old: str
    new: str
    reason: str
    #: For a move to ``open``: the length of the break, in seconds.
    retry_after: float | None = None


class BreakerState:
    """The state machine behind one :class:`~resilient_openai._breaker.CircuitBreaker`.

    * ``closed``: every call is admitted; outcomes feed the failure count and the window, and the
      mode's threshold (or the slow-call ratio) opens the circuit.
    * ``open``: every call is refused until the break is over; the next :meth:`admit` after that
      moves to ``half-open``.
    * ``half-open``: at most ``half_open_probes`` probes are out at a time (a probe that has not
      reported within ``probe_lease`` seconds loses its slot); ``close_after`` successes close the
      circuit, one failure reopens it with a longer break.
    * ``isolated``: refused until :meth:`close` or :meth:`reset`.

    Every state change bumps :attr:`generation`. A permit carries the generation it was issued
    in, and an outcome from an older generation is dropped: a call that started before the
    circuit tripped can neither extend the open period nor close it.
    """

    __slots__ = (
        "_next_probe",
        "_open_until",
        "_outcomes",
        "_probes",
        "_slow_after",
        "_storage",
        "_window",
        "cause",
        "generation",
        "last_failure",
        "outbox",
        "policy",
        "reopen_count",
    )

    def __init__(
        self,
        policy: BreakerPolicy,
        storage: pybreaker.CircuitBreakerStorage,
        *,
        now: float,
        wall: float,
        buckets: int = 10,
        reopen_count: int = 0,
    ) -> None:
        """``reopen_count``: how far the break has already grown (a machine taking over from a
        shared breaker's state)."""
        self.policy = policy
        self._storage = storage
        self._window = SlidingWindow(policy.window, buckets)
        # Judged once per verdict here, so the hot path is one dict lookup.
        self._outcomes: dict[Verdict | None, Outcome] = {
            verdict: outcome_of(verdict, policy) for verdict in (*Verdict, None)
        }
        threshold = policy.slow_call_threshold
        self._slow_after = math.inf if threshold is None else threshold
        #: Bumped on every state change (and on reset); permits carry the one they were issued in.
        self.generation = 0
        #: Reopenings since the circuit was last closed: the ``k`` in the break's growth.
        self.reopen_count = reopen_count
        self.last_failure: Verdict | None = None
        #: The error whose outcome opened the circuit, chained onto rejections while known.
        self.cause: BaseException | None = None
        self.outbox: list[Transition] = []
        self._probes: dict[int, float] = {}  # probe token -> lease deadline (monotonic)
        self._next_probe = 1
        self._open_until = now
        state = storage.state
        if state not in TRANSITIONS:
            raise ValueError(f"storage holds unknown breaker state {state!r}")
        opened_at = storage.opened_at
        if state == OPEN and opened_at is not None:
            # A storage that outlived us (or is shared) says open: serve the rest of the break.
            remaining = opened_at.timestamp() + policy.break_duration - wall
            self._open_until = now + max(remaining, 0.0)

    @property
    def state(self) -> str:
        """``closed``, ``open``, ``half-open`` or ``isolated``, as the storage holds it."""
        return self._storage.state

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row while closed (kept while open, to show what tripped it)."""
        return self._storage.counter

    @property
    def opened_at(self) -> float | None:
        """Wall time (epoch seconds) the circuit last opened or was isolated, unless it is closed."""
        opened_at = self._storage.opened_at
        if opened_at is None or self._storage.state == CLOSED:
            return None
        return opened_at.timestamp()

    def window(self, now: float) -> WindowCounts:
        """Calls, failures and slow calls over the window ending at ``now``."""
        return self._window.snapshot(now)

    def retry_after(self, now: float) -> float | None:
        """Seconds until a call would be admitted, or None: admitted now, or never by itself (isolated)."""
        state = self._storage.state
        if state == OPEN:
            return max(self._open_until - now, 0.0)
        if state == HALF_OPEN and len(self._probes) >= self.policy.half_open_probes:
            # All slots are out; the soonest one that can come free without a report is the
            # earliest lease to expire.
            return max(min(self._probes.values()) - now, 0.0)
        return None

    def drain(self) -> list[Transition]:
        """Take the state changes made since the last drain, oldest first."""
        moved, self.outbox = self.outbox, []
        return moved

    def admit(self, now: float) -> int:
        """Decide on one call: :data:`REJECTED`, ``0`` (admitted), or a probe token (> 0)."""
        state = self._storage.state
        if state == CLOSED:
            return _ORDINARY
        if state == OPEN:
            if now < self._open_until:
                return REJECTED
            self._move(HALF_OPEN, "break elapsed")
        elif state != HALF_OPEN:
            return REJECTED
        probes = self._probes
        limit = self.policy.half_open_probes
        if len(probes) >= limit:
            # Lazily take back the slots of probes that never reported (a lost permit, a hung
            # call): without this one lost probe would keep the circuit half-open forever.
            for token in [token for token, deadline in probes.items() if deadline <= now]:
                del probes[token]
            if len(probes) >= limit:
                return REJECTED
        token = self._next_probe
        self._next_probe = token + 1
        probes[token] = now + self.policy.probe_lease
        return token

    def record(
        self,
        generation: int,
        probe: int,
        verdict: Verdict | None,
        duration: float,
        retry_after: float | None,
        error: BaseException | None,
        now: float,
        wall: float,
    ) -> None:
        """Account for the outcome of a call admitted in ``generation`` (``probe``: its token, or 0).

        ``duration`` is the call's length (for slow-call accounting), ``retry_after`` what the
        server asked for, ``error`` the exception to chain onto rejections if this opens the
        circuit. Positional on purpose: this is the hot path.
        """
        if probe:
            # Whatever the outcome, the probe is over: its half-open slot is free again. (If
            # its lease already expired the slot was taken back then, and this is a no-op.)
            self._probes.pop(probe, None)
        if generation != self.generation:
            # The call started before the circuit last changed state: it describes the
            # upstream as it was then, so it may neither extend an open period nor close one.
            return
        outcome = self._outcomes[verdict]
        if outcome is Outcome.IGNORED:
            return
        storage = self._storage
        state = storage.state
        if state not in (CLOSED, HALF_OPEN):
            # Open / isolated: entering either bumps the generation and neither issues permits,
            # so no outcome of the current generation can arrive there.
            return
        policy = self.policy
        if outcome is Outcome.SUCCESS:
            if state == HALF_OPEN:
                storage.increment_success_counter()
                successes = storage.success_counter
                if successes >= policy.close_after:
                    self._close(f"{successes} probe(s) succeeded")
                return
            slow = duration > self._slow_after
            self._window.record(now, False, slow)
            if storage.counter:  # most successes follow a success: spare the storage a write
                storage.reset_counter()
            if slow:
                calls, _, slow_calls = self._window.snapshot(now)
                if calls >= policy.min_calls and slow_calls / calls >= policy.slow_call_ratio:
                    reason = f"{slow_calls} of {calls} calls slower than {policy.slow_call_threshold:g}s"
                    self._open(now, wall, reason, None, None)
            return
        self.last_failure = verdict
        if state == HALF_OPEN:
            self._open(now, wall, "probe failed", retry_after, error)
        else:
            self._window.record(now, True)
            storage.increment_counter()
            count = storage.counter
            if policy.mode == "consecutive":
                if count >= policy.fail_max:
                    self._open(now, wall, f"{count} consecutive failures", retry_after, error)
                return
            calls, failures, _ = self._window.snapshot(now)
            if calls >= policy.min_calls and failures / calls >= policy.failure_ratio:
                reason = f"{failures} of {calls} calls failed in {policy.window:g}s"
                self._open(now, wall, reason, retry_after, error)

    def _open(
        self,
        now: float,
        wall: float,
        reason: str,
        retry_after: float | None,
        error: BaseException | None,
    ) -> None:
        """Open for the grown break (or the honoured Retry-After, when longer)."""
        policy = self.policy
        reopenings = self.reopen_count + (self._storage.state == HALF_OPEN)
        length = max(break_for(policy, reopenings), honoured_retry_after(retry_after, policy.break_max))
        self._move(OPEN, reason, length)
        self.reopen_count = reopenings
        self._open_until = now + length
        self.cause = error
        self._storage.opened_at = datetime.fromtimestamp(wall, UTC)

    def _close(self, reason: str) -> None:
        self._move(CLOSED, reason)
        self.reopen_count = 0
        self.cause = None
        self._storage.reset_counter()
        self._window.clear()

    def _move(self, new: str, reason: str, retry_after: float | None = None) -> None:
        """Change state (checked against the table first, so a refused move changes nothing)."""
        storage = self._storage
        old = storage.state
        check_transition(old, new)
        storage.state = new
        self.generation += 1
        # Leases belong to one half-open period; probes still out become stale permits.
        self._probes.clear()
        if new == HALF_OPEN:
            storage.reset_success_counter()
        self.outbox.append(Transition(old, new, reason, retry_after))

    def isolate(self, wall: float, reason: str = "manual isolate") -> None:
        """Force the circuit open until :meth:`close` or :meth:`reset` (no-op when isolated)."""
        if self._storage.state != ISOLATED:
            self._move(ISOLATED, reason)
            self._storage.opened_at = datetime.fromtimestamp(wall, UTC)

    def close(self, reason: str = "manual close") -> None:
        """Close the circuit now, clearing its counters and break growth (no-op when closed)."""
        if self._storage.state != CLOSED:
            self._close(reason)

    def reset(self, reason: str = "manual reset") -> None:
        """Back to a fresh closed breaker: counters, window, break growth and history cleared.

        The generation moves on even when already closed, so calls in flight from before the
        reset cannot bring the old counts back.
        """
        if self._storage.state != CLOSED:
            self._close(reason)
        else:
            self.generation += 1
            self._storage.reset_counter()
            self._window.clear()
        self.reopen_count = 0
        self.last_failure = None
        self.cause = None
        self._storage.reset_success_counter()
