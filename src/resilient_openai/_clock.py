"""The one clock every time-dependent part of the chain reads.

Retry sleeps, deadlines, breaker windows, cache TTLs and event timestamps all go through a
:class:`Clock`, so a test can swap in :class:`resilient_openai.testing.FakeClock` and never sleep.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time plus the two ways of waiting on it."""

    def now(self) -> float:
        """Monotonic seconds: only differences between two readings mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for humans (snapshots, logs)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


SYSTEM_CLOCK: Clock = SystemClock()
