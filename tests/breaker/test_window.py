"""The sliding window: calls, failures and slow calls over the last ``window`` seconds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_openai._breaker._window import SlidingWindow, WindowCounts


def test_window_counts_calls_failures_and_slow_successes() -> None:
    """Every recorded call counts; failures and slow successes are counted apart."""
    window = SlidingWindow(10.0)
    window.record(100.0, False)
    window.record(100.0, False, slow=True)
    window.record(100.5, True)
    assert window.snapshot(101.0) == WindowCounts(calls=3, failures=1, slow=1)


def test_a_failure_is_never_also_slow() -> None:
    """A slow failure is a failure, not a slow call."""
    window = SlidingWindow(10.0)
    window.record(100.0, True, slow=True)
    assert window.snapshot(100.0) == WindowCounts(1, 1, 0)


def test_outcomes_older_than_the_window_do_not_count() -> None:
    """Exactly ``window`` seconds later an outcome has expired."""
    window = SlidingWindow(10.0, buckets=10)
    window.record(100.3, True)
    assert window.snapshot(110.3) == WindowCounts(0, 0, 0)


def test_outcomes_within_window_minus_one_slice_still_count() -> None:
    """An outcome is counted for at least ``window - window / buckets`` seconds."""
    window = SlidingWindow(10.0, buckets=10)
    window.record(100.9, True)
    assert window.snapshot(109.8) == WindowCounts(1, 1, 0)


def test_only_the_expired_slices_leave_the_window() -> None:
    """Newer outcomes stay when older ones expire."""
    window = SlidingWindow(10.0, buckets=10)
    window.record(100.0, True)
    window.record(105.0, False)
    window.record(108.0, True)
    assert window.snapshot(111.0) == WindowCounts(2, 1, 0)
    assert window.snapshot(115.5) == WindowCounts(1, 1, 0)


def test_a_long_jump_clears_everything() -> None:
    """A clock jump of many windows leaves an empty window, then counts afresh."""
    window = SlidingWindow(10.0)
    window.record(100.0, True)
    window.record(1_000_000.0, False)
    assert window.snapshot(1_000_000.0) == WindowCounts(1, 0, 0)


def test_a_stale_reading_is_counted_in_the_current_slice() -> None:
    """A ``now`` older than one already seen neither rewinds the ring nor loses counts."""
    window = SlidingWindow(10.0)
    window.record(150.0, False)
    window.record(120.0, True)
    assert window.snapshot(150.0) == WindowCounts(2, 1, 0)
    assert window.snapshot(159.5) == WindowCounts(2, 1, 0)


def test_clear_empties_the_window() -> None:
    """``clear`` forgets every slice."""
    window = SlidingWindow(10.0)
    window.record(100.0, True)
    window.record(104.0, True)
    window.clear()
    assert window.snapshot(105.0) == WindowCounts(0, 0, 0)


@pytest.mark.parametrize(("window", "buckets"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_invalid_shapes_are_refused(window: float, buckets: int) -> None:
    """A window must be positive and have at least one bucket."""
    with pytest.raises(ValueError, match="must be"):
        SlidingWindow(window, buckets)


_events = st.lists(
    st.tuples(st.integers(min_value=0, max_value=7), st.booleans(), st.booleans()), max_size=60
)


@given(events=_events, size=st.integers(min_value=1, max_value=6))
def test_window_agrees_with_a_naive_recount(events: list[tuple[int, bool, bool]], size: int) -> None:
    """At every step the ring's totals equal a recount of the outcomes in the live slices."""
    # One-second slices, integer times: the reference rule is exact (no float rounding).
    window = SlidingWindow(float(size), buckets=size)
    now = 1_000
    seen: list[tuple[int, bool, bool]] = []
    for step, failed, slow in events:
        now += step
        window.record(float(now), failed, slow)
        seen.append((now, failed, slow))
        live = [(failed, slow) for at, failed, slow in seen if now - at < size]
        expected = WindowCounts(
            calls=len(live),
            failures=sum(failed for failed, _ in live),
            slow=sum(slow and not failed for failed, slow in live),
        )
        assert window.snapshot(float(now)) == expected
