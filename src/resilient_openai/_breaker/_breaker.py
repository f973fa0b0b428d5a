"""The thread-safe circuit breaker: a permit protocol around :class:`BreakerState`.

``acquire()`` gives a :class:`Permit` or raises :class:`~resilient_openai.CircuitOpenError` at
once; the caller makes its call with no lock held and reports with :meth:`Permit.record`. A
``threading.Lock`` guards the state machine for a few microseconds per acquire and per record,
never across the call, and events go to the bus only after it is released. Nothing here blocks
or awaits, so the same breaker serves threads and asyncio tasks alike.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pybreaker

from .._errors import CircuitOpenError
from ..observe.events import BreakerStateChanged, CallRejected
from ._state import CLOSED, REJECTED, BreakerState

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._classify import Verdict
    from .._clock import Clock
    from .._policy import BreakerPolicy
    from ..observe.events import EventBus
    from ._state import Transition

__all__ = ["BreakerSnapshot", "CircuitBreaker", "Permit"]


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state at one instant, for dashboards and health endpoints.

    Plain values only, so ``dataclasses.asdict(snapshot)`` serialises straight to JSON.
    """

    name: str
    #: ``closed``, ``open``, ``half-open`` or ``isolated``. An ``open`` circuit whose break is over
    #: still reads ``open`` (with ``retry_after`` 0) until the next call moves it to half-open.
    state: str
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow: int
    #: Wall time (epoch seconds) the circuit last opened or was isolated; None while closed.
    opened_at: float | None
    #: Seconds until a call would be admitted; None when one would be now, or (isolated) never.
    retry_after: float | None
    #: Reopenings since the circuit last closed: how far the break has grown.
    reopen_count: int
    #: The verdict of the last counted failure (e.g. ``"server_error"``), if any.
    last_failure: str | None


class Settles(Protocol):
    """What a permit reports to: a breaker, in-process or shared."""

    name: str

    def _settle(
        self,
        permit: Permit,
        verdict: Verdict | None,
        duration: float,
        retry_after: float | None,
        error: BaseException | None,
    ) -> None: ...


class Permit:
    """The right to make one call through a breaker, and the duty to say how it went.

    Report exactly once, with :meth:`record` or :meth:`ignore`; later reports are no-ops. A permit
    that is never reported costs nothing in the closed state; in half-open it holds a probe slot
    until its lease (``probe_lease``) runs out.
    """

    __slots__ = ("_breaker", "_done", "_generation", "_probe")

    def __init__(self, breaker: Settles, generation: int, probe: int) -> None:
        self._breaker = breaker
        self._generation = generation
        self._probe = probe
        self._done = False

    @property
    def is_probe(self) -> bool:
        """True when this permit holds one of the half-open circuit's probe slots."""
        return self._probe > 0

    @property
    def done(self) -> bool:
        """True once an outcome was recorded (or ignored)."""
        return self._done

    def record(
        self,
        verdict: Verdict,
        *,
        duration: float,
        retry_after: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Report how the call went: its verdict, how long it took, what the server asked.

        ``Verdict.SUCCESS`` is a success; a verdict in the policy's ``failure_verdicts`` is a
        failure; anything else is ignored (counts as neither, and frees a probe slot), quota
        exhaustion too while ``quota_break > 0`` (the quota ledger holds that credential out).
        ``error`` becomes the ``__cause__`` of rejections if this outcome opens the circuit.
        Only the first report counts.
        """
        if not self._done:  # cheap early exit; the breaker re-checks under its lock
            self._breaker._settle(self, verdict, duration, retry_after, error)

    def ignore(self) -> None:
        """Give the permit back without an outcome (e.g. the caller walked away)."""
        if not self._done:
            self._breaker._settle(self, None, 0.0, None, None)

    def __repr__(self) -> str:
        kind = "probe" if self._probe else "permit"
        return f"<{kind} of {self._breaker.name!r} gen={self._generation} done={self._done}>"


class CircuitBreaker:
    """One target's circuit breaker (see the ``breaker`` package docs for the model).

    ``storage`` holds the state name, the consecutive-failure count and ``opened_at``; the
    default is pybreaker's in-memory storage. Use :meth:`acquire` before each call and report on
    the permit after it.
    """

    __slots__ = ("__weakref__", "_bus", "_clock", "_lock", "_machine", "name", "policy")

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock,
        bus: EventBus,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        reopen_count: int = 0,
    ) -> None:
        """``storage`` holds the state (pybreaker's in-memory one when None); ``reopen_count``
        how far the break has already grown, when this breaker takes over from another."""
        self.name = name
        self.policy = policy
        self._clock = clock
        self._bus = bus
        if storage is None:
            storage = pybreaker.CircuitMemoryStorage(CLOSED)
        self._machine = BreakerState(
            policy, storage, now=clock.now(), wall=clock.wall(), reopen_count=reopen_count
        )
        # Guards the state machine only. Held for a handful of attribute updates, never across
        # a user's call and never while a listener runs.
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """``closed``, ``open``, ``half-open`` or ``isolated``.

        Open moves to half-open lazily, on the first :meth:`acquire` after the break.
        """
        return self._machine.state

    def acquire(self) -> Permit:
        """A permit for one call, or :class:`~resilient_openai.CircuitOpenError` at once.

        In half-open, at most ``half_open_probes`` permits are out; every other caller is
        refused immediately (never queued). The error's ``retry_after`` is the time until a
        call could be admitted (None when isolated); its ``__cause__`` is the failure that
        opened the circuit, when known.
        """
        machine = self._machine
        # Fast path, without the lock: a closed circuit admits everyone and changes nothing, so
        # all it needs is a (generation, state) pair that held at some instant. The generation
        # is read first: if the circuit trips and even comes back between the two reads, the
        # permit carries an older generation than the state it saw, so its outcome is dropped
        # as stale; never the reverse (a permit stamped with a newer generation than it earned).
        generation = machine.generation
        if machine.state == CLOSED:
            return Permit(self, generation, 0)
        # Not closed: admission may change state, so it is decided under the lock.
        with self._lock:
            # Read the clock under the lock: a reading taken before it could be older than
            # one another thread already fed the machine.
            now = self._clock.now()
            token = machine.admit(now)
            generation = machine.generation
            moved = machine.drain()
            if token == REJECTED:
                retry_after, cause = machine.retry_after(now), machine.cause
        # Lock released: listeners may call back into this breaker.
        self._publish(moved)
        if token != REJECTED:
            return Permit(self, generation, token)
        if self._bus:
            at = self._clock.wall()
            self._bus.emit(CallRejected(at, self.name, math.inf if retry_after is None else retry_after))
        raise CircuitOpenError(
            f"circuit '{self.name}' is open", breaker=self.name, retry_after=retry_after
        ) from cause

    #: :meth:`acquire` never waits on anything but this process: it is its own non-blocking
    #: form (the shared breaker's ``acquire_nowait`` may answer None instead).
    acquire_nowait = acquire

    def _settle(
        self,
        permit: Permit,
        verdict: Verdict | None,
        duration: float,
        retry_after: float | None,
        error: BaseException | None,
    ) -> None:
        """Record ``permit``'s outcome (``verdict`` None: ignored) unless it already has one."""
        machine = self._machine
        clock = self._clock
        with self._lock:
            # Checked and set under the lock: two threads reporting the same permit must not
            # both count (a stream's watch and an error path can race to report).
            if permit._done:
                return
            permit._done = True
            now, wall = clock.now(), clock.wall()
            machine.record(
                permit._generation, permit._probe, verdict, duration, retry_after, error, now, wall
            )
            if not machine.outbox:
                return
            moved = machine.drain()
        self._publish(moved)

    def _publish(self, moved: list[Transition]) -> None:
        """Announce state changes; called with the lock released.

        Two threads that both changed state publish in whatever order they leave the lock, so
        a listener may (rarely) see ``open -> half-open`` before ``closed -> open``; each event
        names both ends of its own change.
        """
        bus = self._bus
        if not (bus and moved):
            return
        at = self._clock.wall()
        for change in moved:
            bus.emit(
                BreakerStateChanged(at, self.name, change.old, change.new, change.reason, change.retry_after)
            )

    def _act(self, action: Callable[[BreakerState], object]) -> None:
        """Run an operator action on the machine under the lock, then publish what it changed."""
        with self._lock:
            action(self._machine)
            moved = self._machine.drain()
        self._publish(moved)

    def isolate(self) -> None:
        """Force the circuit open until :meth:`close` or :meth:`reset`; no probe is admitted."""
        self._act(lambda machine: machine.isolate(self._clock.wall()))

    def close(self) -> None:
        """Close the circuit now (from open, half-open or isolated), clearing its counters."""
        self._act(BreakerState.close)

    def reset(self) -> None:
        """Make this a fresh closed breaker: counters, window, break growth and history cleared.

        Outcomes of calls admitted before the reset are dropped when they arrive.
        """
        self._act(BreakerState.reset)

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state, counters and timing right now."""
        machine = self._machine
        with self._lock:
            # Read everything in one critical section so the fields agree with each other.
            now = self._clock.now()
            calls, failures, slow = machine.window(now)
            last_failure = machine.last_failure
            return BreakerSnapshot(
                name=self.name,
                state=machine.state,
                consecutive_failures=machine.consecutive_failures,
                window_calls=calls,
                window_failures=failures,
                window_slow=slow,
                opened_at=machine.opened_at,
                retry_after=machine.retry_after(now),
                reopen_count=machine.reopen_count,
                last_failure=None if last_failure is None else last_failure.value,
            )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state}>"
