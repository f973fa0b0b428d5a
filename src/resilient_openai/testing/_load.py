"""The one load driver: the demo, the outage benchmark and the chaos run drive traffic with :class:`Load`.

Callers (threads and/or asyncio tasks) make calls, each identified by its :class:`Call` id (which
can travel to the upstream in a header, to match each request to its call) and each ending as an
:class:`Outcome`. Nothing here knows about OpenAI beyond reading provenance.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from .._provenance import Provenance, provenance

__all__ = ["Call", "Load", "Outcome", "percentile"]


@dataclass(frozen=True, slots=True)
class Call:
    """One call handed to a caller: its id, its rank, and when the schedule placed it.

    ``id`` is unique in the run: ``"t3.17"`` is thread caller 3's 17th call, ``"a5.2"`` task
    caller 5's 2nd. ``number`` counts the calls handed out, from 0. ``due`` is in seconds after
    the run's start.
    """

    id: str
    number: int
    due: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended: start and end (seconds after the run's start), its result or error.

    ``provenance`` is read from the error, or else from the result; None when neither came out
    of a resilient client.
    """

    call: Call
    start: float
    end: float
    result: object
    error: Exception | None
    provenance: Provenance | None

    @property
    def latency(self) -> float:
        """Seconds the caller waited."""
        return self.end - self.start


class Load:
    """Hands calls out to callers and records how each ended (thread-safe, and safe across a loop).

    ``rate`` (calls per second, shared by every caller) places call *n* at ``offset + n / rate``
    seconds, or at once when a caller is late; without a rate, calls start back to back. The run
    methods' ``think`` makes each caller pause a random 0 to 2 x ``think`` seconds before each
    call. No call is handed out at or after ``duration`` seconds, nor past ``count`` calls.
    ``on_outcome`` runs in the caller right after each call (an exception it raises ends
    the run and is raised from :meth:`run_threads` / :meth:`run_tasks`); ``keep=False`` keeps no
    outcome, for runs too long to hold them all. Time is ``time.monotonic`` from ``origin``
    (default: construction); processes on one machine share that clock, so the loads of several
    worker processes given one origin keep one timeline.
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        offset: float = 0.0,
        duration: float | None = None,
        count: int | None = None,
        seed: object = 0,
        on_outcome: Callable[[Outcome], None] | None = None,
        keep: bool = True,
        origin: float | None = None,
    ) -> None:
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be > 0 calls per second, got {rate}")
        self._gap = 0.0 if rate is None else 1.0 / rate
        self._next_due = offset
        self._duration = math.inf if duration is None else duration
        self._count = count
        self._seed = seed
        self._on_outcome = on_outcome
        self._keep = keep
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._outcomes: list[Outcome] = []
        self._handed = 0
        self._ended = 0
        #: The most calls in flight at once so far.
        self.peak = 0
        #: How late the event loop of :meth:`run` ran a 10 ms timer at worst, in seconds.
        self.loop_lag = 0.0
        #: The run's origin on ``time.monotonic``.
        self.t0 = time.monotonic() if origin is None else origin

    def elapsed(self) -> float:
        """Seconds since the run's origin."""
        return time.monotonic() - self.t0

    def stop(self) -> None:
        """Hand out no more calls; calls in flight finish and are recorded."""
        self._stopped.set()

    @property
    def in_flight(self) -> int:
        """Calls handed out that have not ended yet."""
        with self._lock:
            return self._handed - self._ended

    def outcomes(self) -> list[Outcome]:
        """The outcomes kept so far, in the order the calls ended (a copy)."""
        with self._lock:
            return list(self._outcomes)

    def run(
        self,
        call: Callable[[Call], object],
        threads: int,
        acall: Callable[[Call], Awaitable[object]],
        tasks: int,
        *,
        think: float = 0.0,
        task_think: float = 0.0,
    ) -> None:
        """Run ``threads`` callers of ``call`` and, at the same time, ``tasks`` callers of ``acall``.

        ``think`` is the threads' mean pause before each call, ``task_think`` the tasks'.
        The tasks run on a new event loop in a thread of their own; :attr:`loop_lag` records how
        late that loop ran a 10 ms timer at worst (how long a ready task may wait for its turn).
        """

        async def main() -> None:
            watcher = asyncio.create_task(self._watch_lag())
            try:
                await self.run_tasks(acall, tasks, think=task_think)
            finally:
                watcher.cancel()

        self._on_threads([*self._thread_callers(call, threads, think), lambda: asyncio.run(main())])

    async def _watch_lag(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            self.loop_lag = max(self.loop_lag, time.monotonic() - started - 0.01)

    def run_threads(self, call: Callable[[Call], object], threads: int, *, think: float = 0.0) -> None:
        """Run ``threads`` callers of ``call`` on threads until the load is over; re-raise a crash."""
        self._on_threads(self._thread_callers(call, threads, think))

    def _thread_callers(
        self, call: Callable[[Call], object], threads: int, think: float
    ) -> list[Callable[[], None]]:
        def caller(index: int) -> None:
            for step in self._turns("t", index, think):
                if isinstance(step, Call):
                    start = self.elapsed()
                    try:
                        result, error = call(step), None
                    except Exception as exc:
                        result, error = None, exc
                    self._finish(step, start, result, error)
                else:
                    self._stopped.wait(step)

        return [functools.partial(caller, index) for index in range(threads)]

    def _on_threads(self, targets: list[Callable[[], None]]) -> None:
        """Run each target on a thread of its own; the first crash stops the load and is raised here."""
        failures: list[BaseException] = []

        def guarded(target: Callable[[], None]) -> None:
            try:
                target()
            except BaseException as exc:  # raised below, not lost with the thread
                failures.append(exc)
                self.stop()

        pool = [
            threading.Thread(target=guarded, args=(t,), name=f"load-{i}", daemon=True)
            for i, t in enumerate(targets)
        ]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if failures:
            raise failures[0]

    async def run_tasks(
        self, call: Callable[[Call], Awaitable[object]], tasks: int, *, think: float = 0.0
    ) -> None:
        """Run ``tasks`` callers of ``call`` as tasks of the running loop until the load is over."""

        async def caller(index: int) -> None:
            for step in self._turns("a", index, think):
                if isinstance(step, Call):
                    start = self.elapsed()
                    try:
                        result, error = await call(step), None
                    except Exception as exc:
                        result, error = None, exc
                    self._finish(step, start, result, error)
                else:
                    await asyncio.sleep(step)

        try:
            async with asyncio.TaskGroup() as group:
                for index in range(tasks):
                    group.create_task(caller(index))
        except BaseExceptionGroup as group_error:
            self.stop()
            raise group_error.exceptions[0] from None

    def _turns(self, kind: str, index: int, think: float) -> Iterator[float | Call]:
        """One caller's turns, the same for threads and tasks: pauses to wait out, calls to make.

        A pause is a think time (cut short where the load's duration ends) or the wait until the
        next call is due; a call stopped before it was due ends with no outcome.
        """
        rng = random.Random(f"{self._seed}:{kind}{index}")
        for serial in itertools.count(1):
            if self._stopped.is_set():
                return
            if think:
                yield min(rng.uniform(0.0, 2.0 * think), max(self._duration - self.elapsed(), 0.0))
            handed = self._take(f"{kind}{index}.{serial}")
            if handed is None:
                return
            yield max(handed.due - self.elapsed(), 0.0)
            if self._stopped.is_set():
                with self._lock:
                    self._ended += 1
                return
            yield handed

    def _take(self, call_id: str) -> Call | None:
        """The next call, or None when the load is over."""
        with self._lock:
            due = max(self._next_due, self.elapsed()) if self._gap else self.elapsed()
            over = self._count is not None and self._handed >= self._count
            if over or due >= self._duration or self._stopped.is_set():
                return None
            self._next_due = due + self._gap
            handed = Call(call_id, self._handed, due)
            self._handed += 1
            self.peak = max(self.peak, self._handed - self._ended)
            return handed

    def _finish(self, call: Call, start: float, result: object, error: Exception | None) -> None:
        """Record one ended call."""
        end = self.elapsed()
        with self._lock:
            self._ended += 1
        outcome = Outcome(call, start, end, result, error, provenance(result if error is None else error))
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        if self._keep:
            with self._lock:
                self._outcomes.append(outcome)


@overload
def percentile(values: Sequence[float], q: float) -> float | None: ...
@overload
def percentile(values: Sequence[float], q: float, default: float) -> float: ...
def percentile(values: Sequence[float], q: float, default: float | None = None) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by nearest rank; ``default`` when there are none."""
    if not values:
        return default
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]
