"""A circuit breaker whose state every worker shares through Redis (``[shared]`` in the policy).

The same permit protocol as :class:`~._breaker.CircuitBreaker`. Each worker acts on a *local
view* of the shared state (state, generation, until when a refusal holds), kept current by the
link's pushes and refreshes (:mod:`._redis`); :func:`admission` decides from it alone:

* closed: admit, lock-free, no Redis round trip; the outcome is queued and sent in the
  background (successes batched, a failure at once: it can trip the circuit). A success slower
  than ``slow_call_threshold`` is sent as a slow one, and a failure with the Retry-After the
  server asked for, so slow-call tripping and a server's longer break are cluster-wide too;
* open inside its break, isolated, or half-open with every probe slot taken: refuse locally;
* otherwise (a break just ended, a probe slot may be free): ask Redis, bounded by ``timeout``,
  for one of the ``half_open_probes`` slots of the whole cluster (a lease that a dead worker's
  probe gives back when it expires).

An asyncio caller takes :meth:`SharedCircuitBreaker.acquire_nowait`, which answers None where a
call would wait on Redis: it then awaits the breaker's first read on its loop and asks for a probe
slot on a worker thread, so no event loop ever waits on a socket.

While Redis is unreachable, ``on_unavailable`` decides: ``local`` hands every call to an
in-process breaker that starts from this worker's last view of the shared one (an open circuit
stays open for the rest of its break, an isolated one stays isolated; a fresh start each time
Redis comes back), ``open`` refuses, ``closed`` admits without counting.

A refusal carries the breaker's name and ``retry_after``, and chains as ``__cause__`` the failure
that opened the circuit when this worker reported it (another worker's exception never reaches
this one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
import time
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

import pybreaker

from .._classify import Verdict
from .._errors import CircuitOpenError
from ..observe.events import BreakerStateChanged, CallRejected
from ._breaker import BreakerSnapshot, CircuitBreaker, Permit
from ._redis import RECONNECT_INTERVAL, REFRESH_INTERVAL, Reply
from ._state import CLOSED, HALF_OPEN, ISOLATED, OPEN, Outcome, honoured_retry_after, outcome_of

if TYPE_CHECKING:
    from .._clock import Clock
    from .._policy import BreakerPolicy
    from ..observe.events import EventBus
    from ._redis import RedisLink

__all__ = ["Admission", "SharedCircuitBreaker", "View", "admission"]


class View(NamedTuple):
    """What this worker knows of a shared breaker, replaced whole (one atomic attribute write)."""

    state: str
    gen: int
    #: Monotonic time until which a call is refused without asking Redis (inf: isolated).
    until: float


class Admission(Enum):
    """What a worker does with a call, from its view alone."""

    ADMIT = "admit"
    REFUSE = "refuse"
    ASK = "ask"


def admission(view: View, now: float) -> Admission:
    """Whether a call is admitted, refused, or must ask Redis for a probe slot. Pure."""
    if view.state == CLOSED:
        return Admission.ADMIT
    if now < view.until:
        return Admission.REFUSE
    return Admission.ASK


def view_of(reply: Reply, now: float) -> View:
    """The local view a script's reply gives, at monotonic ``now``.

    A half-open refusal is held at most :data:`REFRESH_INTERVAL` locally: a slot freed without a
    published change would otherwise wait for a whole lease.
    """
    if reply.wait < 0:
        return View(reply.state, reply.gen, math.inf)
    wait = min(reply.wait, REFRESH_INTERVAL) if reply.state == HALF_OPEN else reply.wait
    return View(reply.state, reply.gen, now + wait)


def _resolve(read: asyncio.Future[None]) -> None:
    if not read.done():
        read.set_result(None)


class SharedCircuitBreaker:
    """One target's breaker, shared by every worker through ``link`` (see the module docs)."""

    __slots__ = (
        "__weakref__", "_bus", "_cause", "_clock", "_failed", "_first", "_link", "_local", "_lock",
        "_outcomes", "_own", "_reply", "_slow_after", "_view", "name", "policy",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock,
        bus: EventBus,
        link: RedisLink,
        reply: Reply | None = None,
    ) -> None:
        """``reply``: the shared state read just before (None: Redis did not answer; closed)."""
        self.name = name
        self.policy = policy
        self._clock = clock
        self._bus = bus
        self._link = link
        # Judged once per verdict, so the hot path is one dict lookup.
        self._outcomes = {verdict: outcome_of(verdict, policy) for verdict in (*Verdict, None)}
        threshold = policy.slow_call_threshold
        self._slow_after = math.inf if threshold is None else threshold
        #: The last failure this worker reported, and the generation it was admitted in; the
        #: error becomes ``_cause`` when the circuit opens in the next generation.
        self._failed: tuple[int, BaseException | None] = (-1, None)
        #: The error chained onto refusals while the circuit is open (None: not this worker's).
        self._cause: BaseException | None = None
        #: Decides alone while Redis is unreachable (``on_unavailable = "local"``); made from
        #: the last view when first needed in each outage of Redis.
        self._local: CircuitBreaker | None = None
        #: Redis refused this breaker's script (its key holds something else): it decides as
        #: while Redis is unreachable, until a script runs on its key again.
        self._own = link.refuses(name)
        # Guards a permit's one report and the view's replacement; never held across I/O.
        self._lock = threading.Lock()
        self._view = View(CLOSED, 0, 0.0)
        self._reply = Reply(CLOSED, 0, 0.0, 0, 0, None, False, "", "", 0)
        #: A first read still under way (:meth:`read_soon`) and the monotonic time a call stops
        #: waiting for it; None once a call has waited (a later answer is adopted when it comes).
        self._first: tuple[concurrent.futures.Future[Reply | None], float] | None = None
        if reply is not None:
            self.adopt(reply)
        link.follow(self)

    @property
    def state(self) -> str:
        """The shared state as this worker last saw it (the local breaker's while Redis is down)."""
        if (self._own or not self._link.up) and self._link.shared.on_unavailable == "local":
            return self._alone().state
        return self._view.state

    def read_soon(self, within: float) -> None:
        """Start this breaker's first read on the link's reader thread instead of waiting for it
        here (an asyncio caller's event loop must not): until a call has awaited it in
        :meth:`first_read` (at most ``within`` seconds from now), :meth:`acquire_nowait` answers
        None."""
        future = self._link.read_soon(self.name, self.policy) if within > 0 else None
        if future is not None:
            future.add_done_callback(self._read)
            self._first = (future, time.monotonic() + within)

    def _read(self, future: concurrent.futures.Future[Reply | None]) -> None:
        reply = None if future.cancelled() or future.exception() else future.result()
        if reply is not None:
            self.adopt(reply)

    async def first_read(self) -> None:
        """Wait for the first read :meth:`read_soon` started (up to its deadline) on the event
        loop, taking no thread, and adopt it (its callback may run just after this wakes); at
        once when there is none."""
        first = self._first
        if first is None:
            return
        future, deadline = first
        loop = asyncio.get_running_loop()
        read: asyncio.Future[None] = loop.create_future()

        def wake(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_resolve, read)

        future.add_done_callback(wake)
        await asyncio.wait([read], timeout=max(deadline - time.monotonic(), 0.0))
        self._first = None
        if future.done():
            self._read(future)

    def acquire(self) -> Permit:
        """A permit for one call, or :class:`~resilient_openai.CircuitOpenError` at once; asks
        Redis for a probe slot when a break has ended."""
        permit = self.acquire_nowait()
        return permit if permit is not None else self._ask()

    def acquire_nowait(self) -> Permit | None:
        """:meth:`acquire`, or None where it would wait on Redis (the first read is under way, or
        a break has ended and a probe slot must be asked for): an asyncio caller then waits for
        the read with :meth:`first_read` and asks for the slot off its event loop."""
        if self._first is not None:
            return None
        if not self._link.up or self._own:
            return self._unavailable()
        view = self._view
        if view.state == CLOSED:  # admission()'s first rule, inlined: no clock read, no lock, no Redis
            return Permit(self, view.gen, 0)
        now = self._clock.now()
        if admission(view, now) is Admission.ASK:
            return None
        return self._refuse(view, now)

    def _ask(self) -> Permit:
        """Decide with Redis: a probe slot of the cluster's, once the view says a break is over."""
        view, now = self._view, self._clock.now()
        verdict = admission(view, now)
        if verdict is Admission.ADMIT:  # a first read still under way: closed until it says more
            return Permit(self, view.gen, 0)
        if verdict is Admission.ASK:
            link = self._link
            probe = link.probe_id()
            reply = link.run(self.name, self.policy, "admit", link.lease(probe))
            if reply is None:
                return self._unavailable()
            self.adopt(reply)
            if reply.admitted:
                return Permit(self, reply.gen, 0 if reply.state == CLOSED else probe)
        return self._refuse(self._view, now)

    def _refuse(self, view: View, now: float) -> Permit:
        retry_after = None if math.isinf(view.until) else max(view.until - now, 0.0)
        if self._bus:
            shown = math.inf if retry_after is None else retry_after
            self._bus.emit(CallRejected(self._clock.wall(), self.name, shown))
        raise CircuitOpenError(
            f"circuit '{self.name}' is open", breaker=self.name, retry_after=retry_after
        ) from self._cause

    def _unavailable(self) -> Permit:
        mode = self._link.shared.on_unavailable
        if mode == "local":
            return self._alone().acquire()
        if mode == "open":
            now = self._clock.now()
            return self._refuse(View(OPEN, 0, now + RECONNECT_INTERVAL), now)
        return Permit(self, -1, 0)  # "closed": admitted, and its outcome goes nowhere

    def _settle(
        self,
        permit: Permit,
        verdict: Verdict | None,
        duration: float,
        retry_after: float | None,
        error: BaseException | None,
    ) -> None:
        """Queue ``permit``'s outcome for Redis (a probe's goes at once); only the first counts."""
        with self._lock:
            # Checked and set under the lock: a stream's watch and an error path may race.
            if permit._done:
                return
            permit._done = True
        outcome = self._outcomes[verdict]
        link = self._link
        generation = permit._generation
        if generation < 0 or not link.up:
            return
        after = 0.0
        if outcome is Outcome.FAILURE:
            self._failed = (generation, error)
            after = honoured_retry_after(retry_after, self.policy.break_max)
        if permit._probe:
            code = {Outcome.SUCCESS: "S", Outcome.FAILURE: "F", Outcome.IGNORED: "I"}[outcome]
            # A probe's outcome decides the circuit: the flusher sends it at once, so the caller
            # (an asyncio one too) never waits on Redis for it.
            link.settles.append((self, link.lease(permit._probe), f"{generation}:{code}", f"{after:.3f}"))
            link.wake.set()
            return
        if outcome is Outcome.SUCCESS:
            link.queue.append((self, generation, "W" if duration > self._slow_after else "S", 0.0))
        elif outcome is Outcome.FAILURE:
            link.queue.append((self, generation, "F", after))
            link.wake.set()  # a failure may trip the circuit: no batching delay

    @property
    def version(self) -> int:
        """The version of the shared hash this worker's view was last taken from."""
        return self._reply.version

    def adopt(self, reply: Reply) -> None:
        """Take Redis's word for this breaker's state, unless a newer reply came first.

        Replies and pushes arrive from callers, the flusher and the listener at once, and within
        one generation too (a probe refused while another worker frees the slot): the hash's
        version orders them, and the lock keeps the check and the write together.
        """
        with self._lock:
            if self._own:  # a script runs on this breaker's key again: shared from here on
                self._own, self._local = False, None
            old, last = self._view, self._reply
            if reply.version < last.version or (reply.version == last.version and reply.gen < last.gen):
                return  # an answer overtaken by a newer one
            self._view = view_of(reply, self._clock.now())
            self._reply = reply
            if reply.gen != old.gen or old.state != reply.state:
                # The circuit opened right after the generation this worker's last failure was
                # admitted in: that failure (or one beside it, from another worker) tripped it.
                failed_in, error = self._failed
                opened = reply.state == OPEN and failed_in == reply.gen - 1
                self._cause = error if opened else None
        if old.state != reply.state and self._bus:
            retry_after = reply.wait if reply.wait >= 0 else None
            why = f"{reply.reason} (worker {reply.by})"
            at = self._clock.wall()
            self._bus.emit(BreakerStateChanged(at, self.name, old.state, reply.state, why, retry_after))

    def refused(self) -> None:
        """Redis refused this breaker's script: decide as ``on_unavailable`` says until it runs."""
        self._own = True

    def reconnected(self) -> None:
        """Redis is back: the shared state rules again; the next outage starts its own local breaker."""
        self._local = None

    def _alone(self) -> CircuitBreaker:
        """The breaker this worker decides with while Redis is unreachable: made on first need
        from the last shared view (its state, what is left of its break, how far the break has
        grown), so losing Redis in the middle of an outage does not make every worker pay
        ``fail_max`` again, probe sooner than the fleet would, or lift an operator's isolation."""
        local = self._local
        if local is not None:
            return local
        with self._lock:
            if self._local is None:
                self._local = CircuitBreaker(
                    self.name, self.policy, clock=self._clock, bus=self._bus, storage=self._seed(),
                    reopen_count=self._reply.reopens if self._view.state != CLOSED else 0,
                )  # fmt: skip
            return self._local

    def _seed(self) -> pybreaker.CircuitBreakerStorage:
        """An in-process storage holding the last view: open for what is left of its break (a
        half-open circuit: none left, so the next call probes), isolated, or closed."""
        view = self._view
        if view.state == CLOSED:
            return pybreaker.CircuitMemoryStorage(CLOSED)
        wall = self._clock.wall()
        if view.state == ISOLATED or math.isinf(view.until):
            storage = pybreaker.CircuitMemoryStorage(ISOLATED)
            storage.opened_at = datetime.fromtimestamp(wall, UTC)
            return storage
        left = max(view.until - self._clock.now(), 0.0)
        storage = pybreaker.CircuitMemoryStorage(OPEN)
        # The local breaker serves ``opened_at + break_duration - now`` of its break: ``left``.
        storage.opened_at = datetime.fromtimestamp(wall + left - self.policy.break_duration, UTC)
        return storage

    def _act(self, op: str) -> None:
        reply = self._link.run(self.name, self.policy, op)
        if reply is not None:
            self.adopt(reply)
        else:  # Redis did not answer: the operator acts on this worker's own breaker only
            getattr(self._alone(), op)()

    def isolate(self) -> None:
        """Force the circuit open for every worker until :meth:`close` or :meth:`reset`.

        While Redis cannot be reached, this (like :meth:`close` and :meth:`reset`) acts on this
        worker's local breaker only.
        """
        self._act("isolate")

    def close(self) -> None:
        """Close the circuit for every worker now, clearing its counters."""
        self._act("close")

    def reset(self) -> None:
        """Make the breaker fresh and closed for every worker; older outcomes are dropped."""
        self._act("reset")

    def snapshot(self) -> BreakerSnapshot:
        """The shared state as this worker last saw it (refreshed at least every 0.5 s)."""
        if (self._own or not self._link.up) and self._link.shared.on_unavailable == "local":
            return self._alone().snapshot()
        view, reply = self._view, self._reply
        now = self._clock.now()
        return BreakerSnapshot(
            name=self.name,
            state=view.state,
            consecutive_failures=reply.failures,
            window_calls=0,
            window_failures=0,
            window_slow=0,
            opened_at=reply.opened_at if view.state != CLOSED else None,
            retry_after=max(view.until - now, 0.0) if view.state == OPEN else None,
            reopen_count=reply.reopens,
            last_failure=None,
        )

    def __repr__(self) -> str:
        return f"<SharedCircuitBreaker {self.name!r} {self.state}>"
