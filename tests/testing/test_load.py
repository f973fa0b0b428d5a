"""The load driver: calls handed out by id, recorded as outcomes, from threads and tasks."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from resilient_openai.testing._load import Call, Load, Outcome, percentile


def test_threads_make_count_calls_each_with_its_own_id() -> None:
    """Back to back, threads make exactly ``count`` calls; ids and numbers are unique."""
    load = Load(count=20)
    load.run_threads(lambda call: call.number * 2, threads=4)
    outcomes = load.outcomes()
    assert sorted(o.call.number for o in outcomes) == list(range(20))
    assert len({o.call.id for o in outcomes}) == 20
    assert all(o.call.id.startswith("t") for o in outcomes)
    assert all(o.result == o.call.number * 2 and o.error is None for o in outcomes)
    assert load.in_flight == 0


def test_an_exception_is_the_outcome_not_a_crash() -> None:
    """A call that raises ends as an outcome carrying the error; it has no provenance."""

    def fail(call: Call) -> object:
        raise ValueError(call.id)

    load = Load(count=3)
    load.run_threads(fail, threads=1)
    assert [str(o.error) for o in load.outcomes()] == ["t0.1", "t0.2", "t0.3"]
    assert all(o.result is None and o.provenance is None for o in load.outcomes())


def test_on_outcome_sees_every_call_and_keep_false_keeps_none() -> None:
    """``on_outcome`` runs once per call; with ``keep=False`` the driver holds nothing."""
    seen: list[Outcome] = []
    load = Load(count=5, on_outcome=seen.append, keep=False)
    load.run_threads(lambda call: None, threads=2)
    assert len(seen) == 5
    assert load.outcomes() == []


def test_a_crashing_observer_ends_the_run_and_is_raised() -> None:
    """An exception from ``on_outcome`` is a harness bug: the run stops and it is raised."""

    def boom(outcome: Outcome) -> None:
        raise RuntimeError("observer broke")

    with pytest.raises(RuntimeError, match="observer broke"):
        Load(count=50, on_outcome=boom).run_threads(lambda call: None, threads=3)


def test_tasks_make_count_calls() -> None:
    """Asyncio tasks drive an async function the same way, with ids of their own."""

    async def call(handed: Call) -> int:
        await asyncio.sleep(0)
        return handed.number

    load = Load(count=12)
    asyncio.run(load.run_tasks(call, tasks=5))
    assert sorted(o.result for o in load.outcomes()) == list(range(12))  # type: ignore[type-var]
    assert all(o.call.id.startswith("a") for o in load.outcomes())


def test_threads_and_tasks_run_together() -> None:
    """``run`` drives both kinds at once from one count."""

    async def acall(handed: Call) -> str:
        return "task"

    load = Load(count=30)
    load.run(lambda call: "thread", 2, acall, 3)
    assert len(load.outcomes()) == 30
    assert load.peak >= 1


def test_a_rate_spaces_the_calls() -> None:
    """With a rate, each call is due at least one period after the one before it."""
    load = Load(rate=1_000_000.0, count=10)
    load.run_threads(lambda call: None, threads=3)
    due = sorted(o.call.due for o in load.outcomes())
    assert all(later - earlier >= 1e-6 * 0.999 for earlier, later in itertools.pairwise(due))


def test_a_stopped_load_hands_out_nothing() -> None:
    """After ``stop()`` no call starts."""
    load = Load(count=10)
    load.stop()
    load.run_threads(lambda call: None, threads=2)
    assert load.outcomes() == []


def test_percentile_nearest_rank_and_default() -> None:
    """Nearest rank; the default (None unless given) for no values."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99.9) == 100.0
    assert percentile([], 50) is None
    assert percentile([], 50, 0.0) == 0.0


def test_an_origin_in_the_past_puts_the_load_that_far_into_its_run() -> None:
    """Loads given one origin (as worker processes are) share one timeline: elapsed counts from it."""
    load = Load(origin=time.monotonic() - 5.0, duration=5.5)
    assert 5.0 <= load.elapsed() < 5.5
