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

    The window is cut into ``buckets`` equal slices. The slice ``now`` falls in is counted in
    three plain attributes (recording is three increments at most); when time moves into a new
    slice, the finished one is folded into the ring, the slices that fell out of the window are
    taken off the running totals and zeroed. So :meth:`record` and :meth:`snapshot` cost O(1)
    amortised (at most one pass over the ring, however far the clock jumped).

    Expiry is slice-grained: an outcome is counted for at least ``window - window / buckets``
    seconds and never for ``window`` seconds or more.
    """

    __slots__ = (
        "_calls",
        "_failures",
        "_head",
        "_live_calls",
        "_live_failures",
        "_live_slow",
        "_ring_calls",
        "_ring_failures",
        "_ring_slow",
        "_size",
        "_slow",
        "_width",
    )

    def __init__(self, window: float, buckets: int = 10) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self._width = window / buckets
        self._size = buckets
        #: Absolute index (``floor(now / width)``) of the slice being filled.
        self._head = _NEVER
        # Finished slices, by ``index % buckets`` (the head's own slot is kept at zero), and their
        # totals; then the counts of the slice being filled.
        self._calls: list[int] = []
        self._failures: list[int] = []
        self._slow: list[int] = []
        self._ring_calls = self._ring_failures = self._ring_slow = 0
        self._live_calls = self._live_failures = self._live_slow = 0
        self.clear()

    def _roll(self, index: int) -> None:
        """Move the head to slice ``index`` (> head): fold the finished slice in, expire the old."""
        size = self._size
        head = self._head
        if index - head >= size:
            # Everything, the slice being filled included, is out of the window.
            self.clear()
            self._head = index
            return
        calls, failures, slow = self._calls, self._failures, self._slow
        slot = head % size
        calls[slot] = self._live_calls
        failures[slot] = self._live_failures
        slow[slot] = self._live_slow
        self._ring_calls += self._live_calls
        self._ring_failures += self._live_failures
        self._ring_slow += self._live_slow
        self._live_calls = self._live_failures = self._live_slow = 0
        for expired in range(head + 1, index + 1):
            # Slot `expired % size` last held slice `expired - size`: out of the window now.
            slot = expired % size
            self._ring_calls -= calls[slot]
            self._ring_failures -= failures[slot]
            self._ring_slow -= slow[slot]
            calls[slot] = failures[slot] = slow[slot] = 0
        self._head = index

    def record(self, now: float, failed: bool, slow: bool = False) -> None:
        """Count one call that ended at ``now``: a failure, or a success that may have been slow.

        A ``now`` older than one already seen is counted in the current slice: time only moves
        forward here, so a late reading can never rewind the ring and wipe live slices.
        """
        index = int(now // self._width)
        if index > self._head:
            self._roll(index)
        self._live_calls += 1
        if failed:
            self._live_failures += 1
        elif slow:
            self._live_slow += 1

    def snapshot(self, now: float) -> WindowCounts:
        """The totals over the window ending at ``now``."""
        index = int(now // self._width)
        if index > self._head:
            self._roll(index)
        return WindowCounts(
            self._ring_calls + self._live_calls,
            self._ring_failures + self._live_failures,
            self._ring_slow + self._live_slow,
        )

    def clear(self) -> None:
        """Forget everything (the circuit closed or was reset)."""
        size = self._size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._ring_calls = self._ring_failures = self._ring_slow = 0
        self._live_calls = self._live_failures = self._live_slow = 0
        self._head = _NEVER
