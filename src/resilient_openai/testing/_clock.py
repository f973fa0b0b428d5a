"""A clock that only moves when told to, for tests that must not sleep."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~resilient_openai.Clock` whose time advances only through ``advance`` and sleeps.

    ``sleep`` and ``asleep`` return at once after moving time forward, and are recorded in
    :attr:`sleeps` so a test can assert how long the chain *would* have waited. Safe to share
    between threads.
    """

    def __init__(self, start: float = 1_000.0, *, epoch: float = 1_767_225_600.0) -> None:
        self._now = start
        self._epoch = epoch - start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._epoch + self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds}))")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)
