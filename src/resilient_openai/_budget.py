"""Retry budgets: retries to one target limited to a share of its recent requests.

Each first attempt on a target deposits one request; each retry withdraws one. A retry is
allowed while the retries in the window stay within ``ratio * requests + min_per_second *
window`` (:class:`~resilient_openai.RetryBudget`), as Finagle's ``RetryBudget`` does with its
``percentCanRetry`` and ``minRetriesPerSec`` over a ``ttl``. The window is ten buckets on the
injected clock, so counts leave it a tenth of a window at a time. No I/O: the retry layer asks,
and carries out the answer.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._clock import Clock
    from ._policy import RetryBudget

__all__ = ["BudgetRegistry", "BudgetSnapshot", "TargetBudget"]

#: Buckets per window.
BUCKETS: Final = 10
#: Absorbs float error in ``ratio * requests`` (0.29 * 100 is 28.999...96, and means 29).
_EPSILON: Final = 1e-9


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """One target's budget as ``health()`` shows it: counts over the current window."""

    name: str
    #: First attempts on the target in the window.
    requests: int
    #: Retries made in the window.
    retries: int
    #: Retries the window allows with these requests (the floor included).
    limit: int
    #: The next retry would be refused.
    exhausted: bool


class TargetBudget:
    """The retry budget of one target: request and retry counts in a bucketed sliding window.

    Thread-safe; the lock covers a few counters, never a call.
    """

    __slots__ = (
        "_clock", "_lock", "_ratio", "_requests", "_reserve", "_retries", "_ticks", "_width", "name",
    )  # fmt: skip

    def __init__(self, name: str, policy: RetryBudget, *, clock: Clock) -> None:
        self.name = name
        self._clock = clock
        self._ratio = policy.ratio
        self._reserve = policy.min_per_second * policy.window
        self._width = policy.window / BUCKETS
        self._lock = threading.Lock()
        # Bucket i counts the tick (clock / width) it was last used for; a stale one is reset on use.
        self._ticks = [-math.inf] * BUCKETS
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS

    def deposit(self) -> None:
        """Count a first attempt on the target."""
        with self._lock:
            self._requests[self._bucket_locked()] += 1

    def withdraw(self) -> bool:
        """Take one retry from the budget: False (and nothing taken) when it is exhausted."""
        with self._lock:
            bucket = self._bucket_locked()
            requests, retries = self._totals_locked()
            if retries >= self._limit(requests):
                return False
            self._retries[bucket] += 1
            return True

    def snapshot(self) -> BudgetSnapshot:
        """The counts over the current window."""
        with self._lock:
            self._bucket_locked()
            requests, retries = self._totals_locked()
        limit = self._limit(requests)
        return BudgetSnapshot(self.name, requests, retries, limit, retries >= limit)

    def _limit(self, requests: int) -> int:
        return math.floor(self._ratio * requests + self._reserve + _EPSILON)

    def _bucket_locked(self) -> int:
        """The current bucket, emptied first if it last served an older tick. Caller holds the lock."""
        tick = math.floor(self._clock.now() / self._width)
        bucket = tick % BUCKETS
        if self._ticks[bucket] != tick:
            self._ticks[bucket] = tick
            self._requests[bucket] = 0
            self._retries[bucket] = 0
        return bucket

    def _totals_locked(self) -> tuple[int, int]:
        """Requests and retries of the buckets within the window. Caller holds the lock, after
        :meth:`_bucket_locked` (so the newest tick is the current one)."""
        oldest = max(self._ticks) - BUCKETS
        requests = retries = 0
        for tick, made, retried in zip(self._ticks, self._requests, self._retries, strict=True):
            if tick > oldest:
                requests += made
                retries += retried
        return requests, retries


class BudgetRegistry:
    """The retry budgets of one client, one per target (by breaker name), at most ``limit``.

    A budget is made on first use with the target's policy; past ``limit`` the least recently
    used one is forgotten (a target seen again starts afresh, its floor intact). Thread-safe;
    the lock covers the dict operations only.
    """

    __slots__ = ("_budgets", "_clock", "_limit", "_lock", "epoch")

    def __init__(self, *, clock: Clock, limit: int) -> None:
        self._clock = clock
        self._limit = limit
        #: Bumped whenever a budget is forgotten, so holders of budgets know to ask again.
        self.epoch = 0
        self._budgets: OrderedDict[str, TargetBudget] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, policy: RetryBudget) -> TargetBudget | None:
        """The budget of target ``name``, made with ``policy`` on first use; None when disabled."""
        if not policy.enabled:
            return None
        with self._lock:
            budget = self._budgets.get(name)
            if budget is not None:
                self._budgets.move_to_end(name)
                return budget
            budget = self._budgets[name] = TargetBudget(name, policy, clock=self._clock)
            if len(self._budgets) > self._limit:
                self._budgets.popitem(last=False)
                self.epoch += 1
            return budget

    def snapshot(self) -> list[BudgetSnapshot]:
        """A snapshot of every budget, least recently used first."""
        return [budget.snapshot() for budget in self]

    def __iter__(self) -> Iterator[TargetBudget]:
        """The budgets (a copy of the list: safe while others create or evict)."""
        with self._lock:
            budgets = list(self._budgets.values())
        return iter(budgets)
