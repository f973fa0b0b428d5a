"""The retry budget alone: deposits, withdrawals, the floor, the sliding window, the registry."""

from __future__ import annotations

import threading

from resilient_openai import RetryBudget
from resilient_openai._budget import BudgetRegistry, BudgetSnapshot, TargetBudget
from resilient_openai.testing import FakeClock


def _budget(clock: FakeClock, **policy: object) -> TargetBudget:
    return TargetBudget("t", RetryBudget.model_validate(policy), clock=clock)


def _withdrawn(budget: TargetBudget, tries: int) -> int:
    """How many of ``tries`` withdrawals the budget allowed."""
    return sum(budget.withdraw() for _ in range(tries))


def test_the_floor_allows_retries_without_requests(clock: FakeClock) -> None:
    """With no traffic, min_per_second * window retries are allowed, then none."""
    budget = _budget(clock, ratio=0.2, window=10.0, min_per_second=0.5)
    assert _withdrawn(budget, 10) == 5


def test_requests_buy_retries_at_the_ratio(clock: FakeClock) -> None:
    """100 first attempts at 20 % buy 20 retries, on top of the floor."""
    budget = _budget(clock, ratio=0.2, window=10.0, min_per_second=0.1)
    for _ in range(100):
        budget.deposit()
    assert _withdrawn(budget, 50) == 21
    assert budget.snapshot() == BudgetSnapshot("t", requests=100, retries=21, limit=21, exhausted=True)


def test_a_ratio_times_requests_is_not_lost_to_float_error(clock: FakeClock) -> None:
    """0.29 * 100 is 28.999... in floats: the budget still allows 29."""
    budget = _budget(clock, ratio=0.29, window=10.0, min_per_second=0.0)
    for _ in range(100):
        budget.deposit()
    assert _withdrawn(budget, 50) == 29


def test_a_refused_withdrawal_takes_nothing(clock: FakeClock) -> None:
    """Asking an exhausted budget leaves its retry count as it was."""
    budget = _budget(clock, ratio=0.0, window=10.0, min_per_second=0.1)
    assert budget.withdraw()
    assert not budget.withdraw()
    assert not budget.withdraw()
    assert budget.snapshot().retries == 1


def test_counts_leave_the_window_when_it_has_passed(clock: FakeClock) -> None:
    """Requests and retries count for one window, then the floor is whole again."""
    budget = _budget(clock, ratio=0.5, window=10.0, min_per_second=0.1)
    for _ in range(4):
        budget.deposit()
    assert _withdrawn(budget, 10) == 3
    clock.advance(9.0)
    assert budget.snapshot() == BudgetSnapshot("t", requests=4, retries=3, limit=3, exhausted=True)
    clock.advance(1.0)
    assert budget.snapshot() == BudgetSnapshot("t", requests=0, retries=0, limit=1, exhausted=False)
    assert _withdrawn(budget, 10) == 1


def test_the_window_slides_a_tenth_at_a_time(clock: FakeClock) -> None:
    """Counts from an older tenth of the window leave first; newer ones stay."""
    budget = _budget(clock, ratio=1.0, window=10.0, min_per_second=0.0)
    budget.deposit()
    clock.advance(5.0)
    budget.deposit()
    budget.deposit()
    clock.advance(5.0)
    assert budget.snapshot().requests == 2
    clock.advance(5.0)
    assert budget.snapshot().requests == 0


def test_a_bucket_reused_after_a_long_pause_starts_empty(clock: FakeClock) -> None:
    """After many windows of silence the same bucket slot holds no old counts."""
    budget = _budget(clock, ratio=1.0, window=10.0, min_per_second=0.0)
    budget.deposit()
    clock.advance(100.0)
    assert budget.snapshot().requests == 0
    assert not budget.withdraw()


def test_threads_never_overdraw(clock: FakeClock) -> None:
    """Many threads withdrawing at once get exactly the budget's limit between them."""
    budget = _budget(clock, ratio=0.2, window=10.0, min_per_second=1.0)
    for _ in range(50):
        budget.deposit()
    start = threading.Barrier(8)
    allowed: list[int] = []

    def spend() -> None:
        start.wait()
        allowed.append(_withdrawn(budget, 100))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 20


def test_registry_keeps_one_budget_per_target(clock: FakeClock) -> None:
    """The same name gives the same budget, made with the policy of its first use."""
    budgets = BudgetRegistry(clock=clock, limit=10)
    first = budgets.get("a", RetryBudget(min_per_second=0.1))
    assert first is not None
    assert budgets.get("a", RetryBudget(min_per_second=5.0)) is first
    assert first.snapshot().limit == 1
    assert budgets.get("b", RetryBudget()) is not first


def test_registry_gives_no_budget_when_it_is_off(clock: FakeClock) -> None:
    """A disabled budget is no budget: nothing is counted or shown."""
    budgets = BudgetRegistry(clock=clock, limit=10)
    assert budgets.get("a", RetryBudget(enabled=False)) is None
    assert budgets.snapshot() == []


def test_registry_forgets_the_least_recently_used_past_its_limit(clock: FakeClock) -> None:
    """Past ``limit`` targets the one used longest ago is dropped, and starts afresh if seen again."""
    budgets = BudgetRegistry(clock=clock, limit=2)
    policy = RetryBudget()
    a = budgets.get("a", policy)
    assert a is not None
    a.deposit()
    budgets.get("b", policy)
    budgets.get("a", policy)
    budgets.get("c", policy)
    assert [snapshot.name for snapshot in budgets.snapshot()] == ["a", "c"]
    budgets.get("b", policy)
    assert [snapshot.name for snapshot in budgets.snapshot()] == ["c", "b"]
    again = budgets.get("a", policy)
    assert again is not None
    assert again is not a
    assert again.snapshot().requests == 0
