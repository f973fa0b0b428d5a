"""The sliding window a breaker decides from in ratio mode (and for slow calls).

Pure: no locks and no clock reads. Everything that depends on time takes ``now`` (monotonic
seconds) from the caller, who holds the breaker's lock while calling in.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SlidingWindow", "WindowCounts"]

#: Slice index meaning "nothing recorded yet": far enough in the past that the first reading
#: clears every slice.
_NEVER = -(1 << 62)


class WindowCounts(NamedTuple):
    """Calls, failures and slow successes recorded over the last ``window`` seconds."""

    calls: int
    failures: int
    slow: int


class SlidingWindow:
    """Calls, failures and slow calls over the last ``window`` seconds, in a ring of buckets.

    The window is cut into ``buckets`` equal slices, each counting ``[calls, failures, slow]``,
    and running totals over the ring are kept beside them. When time moves into a new slice, the
    slices that fell out of the window are taken off the totals and zeroed. So :meth:`record` and
    :meth:`snapshot` cost O(1) amortised (at most one pass over the ring, however far the clock
    jumped).

    Expiry is slice-grained: an outcome is counted for at least ``window - window / buckets``
    seconds and never for ``window`` seconds or more.
    """

    __slots__ = ("_head", "_live", "_ring", "_size", "_totals", "_width")

    def __init__(self, window: float, buckets: int = 10) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self._width = window / buckets
        self._size = buckets
        self.clear()

    def clear(self) -> None:
        """Forget everything (the circuit closed or was reset)."""
        self._ring = [[0, 0, 0] for _ in range(self._size)]
        self._totals = [0, 0, 0]
        #: The slice being filled, and its absolute index (``floor(now / width)``).
        self._live = self._ring[0]
        self._head = _NEVER

    def _roll(self, index: int) -> None:
        """Move the head to slice ``index`` (> head), expiring the slices that left the window."""
        head, size, ring = self._head, self._size, self._ring
        if index - head >= size:
            self.clear()
            ring = self._ring
        else:
            totals = self._totals
            for expired in range(head + 1, index + 1):
                # Slot `expired % size` last held slice `expired - size`: out of the window now.
                old = ring[expired % size]
                totals[0] -= old[0]
                totals[1] -= old[1]
                totals[2] -= old[2]
                old[0] = old[1] = old[2] = 0
        self._head = index
        self._live = ring[index % size]

    def record(self, now: float, failed: bool, slow: bool = False) -> None:
        """Count one call that ended at ``now``: a failure, or a success that may have been slow.

        A ``now`` older than one already seen is counted in the current slice: time only moves
        forward here, so a late reading can never rewind the ring and wipe live slices.
        """
        index = int(now // self._width)
        if index > self._head:
            self._roll(index)
        live, totals = self._live, self._totals
        live[0] += 1
        totals[0] += 1
        if failed or slow:
            kind = 1 if failed else 2
            live[kind] += 1
            totals[kind] += 1

    def snapshot(self, now: float) -> WindowCounts:
        """The totals over the window ending at ``now``."""
        index = int(now // self._width)
        if index > self._head:
            self._roll(index)
        return WindowCounts(*self._totals)
