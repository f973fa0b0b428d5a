"""The health metrics a breaker decides from: failures in a row, and a time-bucketed sliding window.

Pure: no locks and no clock reads. Everything that depends on time takes ``now`` (monotonic
seconds) from the caller, who holds the breaker's lock while calling in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pybreaker

__all__ = ["ConsecutiveFailures", "SlidingWindow", "WindowCounts"]

#: Bucket index meaning "nothing recorded yet": far enough in the past that the first reading
#: clears every bucket.
_NEVER = -(1 << 62)


class ConsecutiveFailures:
    """Failures in a row, kept in a pybreaker storage so a shared storage shares the count.

    A success resets the count; an ignored outcome leaves it alone (it says nothing either way).
    The count itself lives in ``storage.counter``; this class only gives it breaker vocabulary
    and avoids a storage write for the common "success while already at zero" case.
    """

    __slots__ = ("_storage",)

    def __init__(self, storage: pybreaker.CircuitBreakerStorage) -> None:
        self._storage = storage

    @property
    def count(self) -> int:
        """Failures since the last success (or reset)."""
        return self._storage.counter

    def failure(self) -> int:
        """Count one more failure in a row; returns the new count."""
        storage = self._storage
        storage.increment_counter()
        return storage.counter

    def success(self) -> None:
        """A success ends the run of failures."""
        if self._storage.counter:
            self._storage.reset_counter()

    def clear(self) -> None:
        """Forget the run (the circuit closed or was reset)."""
        self._storage.reset_counter()


class WindowCounts(NamedTuple):
    """Calls, failures and slow successes recorded over the last ``window`` seconds."""

    calls: int
    failures: int
    slow: int


class SlidingWindow:
    """Calls, failures and slow calls over the last ``window`` seconds, in a ring of buckets.

    The window is cut into ``buckets`` equal slices. Recording adds to the slice ``now`` falls in;
    moving into a new slice zeroes the slices that fell out of the window and takes them off the
    running totals, so :meth:`record` and :meth:`snapshot` cost O(1) amortised (at most one pass
    over the ring, however long the clock jumped). Expiry is bucket-grained: an outcome is
    counted for at least ``window - window / buckets`` seconds and never for ``window`` or more.
    """

    __slots__ = (
        "_calls",
        "_failures",
        "_head",
        "_size",
        "_slow",
        "_total_calls",
        "_total_failures",
        "_total_slow",
        "_width",
    )

    def __init__(self, window: float, buckets: int = 10) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self._width = window / buckets
        self._size = buckets
        #: Absolute index (``floor(now / width)``) of the newest bucket.
        self._head = _NEVER
        # Per-bucket counts, and running totals over the live buckets (valid as of the last
        # record or snapshot: expiry happens when time is next passed in).
        self._calls: list[int] = []
        self._failures: list[int] = []
        self._slow: list[int] = []
        self._total_calls = self._total_failures = self._total_slow = 0
        self._reset()

    def _advance(self, now: float) -> int:
        """Expire the buckets that fell out of the window; return the ring slot for ``now``."""
        index = int(now // self._width)
        head = self._head
        if index <= head:
            # Same bucket (the common case), or a reading slightly older than one already
            # seen: with a lock around us that cannot happen, but clamping keeps a stale `now`
            # from rewinding the ring and wiping live buckets.
            return head % self._size
        size = self._size
        if index - head >= size:
            self._reset()
        else:
            calls, failures, slow = self._calls, self._failures, self._slow
            for expired in range(head + 1, index + 1):
                slot = expired % size
                self._total_calls -= calls[slot]
                self._total_failures -= failures[slot]
                self._total_slow -= slow[slot]
                calls[slot] = failures[slot] = slow[slot] = 0
        self._head = index
        return index % size

    def record(self, now: float, *, failed: bool, slow: bool = False) -> None:
        """Count one call that ended at ``now``: a failure, or a success that may have been slow."""
        slot = self._advance(now)
        # bools add as 0/1: no branches on the hot path.
        self._calls[slot] += 1
        self._failures[slot] += failed
        self._slow[slot] += slow
        self._total_calls += 1
        self._total_failures += failed
        self._total_slow += slow

    def snapshot(self, now: float) -> WindowCounts:
        """The totals over the window ending at ``now``."""
        self._advance(now)
        return WindowCounts(self._total_calls, self._total_failures, self._total_slow)

    def clear(self) -> None:
        """Forget everything (the circuit closed or was reset)."""
        self._reset()
        self._head = _NEVER

    def _reset(self) -> None:
        size = self._size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._total_calls = self._total_failures = self._total_slow = 0
