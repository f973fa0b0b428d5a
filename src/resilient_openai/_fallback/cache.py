"""The stale-if-error store: complete, successful upstream answers, kept to answer outages.

A :class:`ResponseCache` maps a request key (:func:`resilient_openai._fallback.keys.request_key`)
to the last good answer for it, as raw JSON bytes. It is bounded three ways, all from
:class:`~resilient_openai._policy.CachePolicy`: entries expire ``ttl`` seconds after they were
stored (on the injected clock), and the cache never holds more than ``max_entries`` answers or
more than ``max_bytes`` bytes of answer bodies.

How both size bounds are enforced: one ``cachetools.TTLCache`` whose ``maxsize`` is the byte
budget and whose ``getsizeof`` is the body length, so cachetools itself evicts to stay under
``max_bytes``; right after each insertion we evict again while the entry count exceeds
``max_entries``. Both evictions go through ``TTLCache.popitem``, which first drops expired
entries and then the least recently used one, so there is a single eviction order and a single
structure to keep consistent (a two-level design would need two to agree).

The same cache is shared by threads and asyncio tasks. cachetools is not thread-safe, so every
dict operation runs under one ``threading.Lock``; the lock is never held across I/O or an
``await`` (there is none in here), so a task holding it cannot stall the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TTLCache

if TYPE_CHECKING:
    from .._clock import Clock
    from .._policy import CachePolicy

__all__ = ["CacheStats", "CachedAnswer", "ResponseCache"]


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One complete, successful answer, as the upstream sent it.

    ``body`` is the JSON response body: the bytes of a non-streamed answer, or the equivalent
    non-streamed answer assembled from a finished stream
    (:mod:`resilient_openai._fallback.assemble`). ``stored_at`` is wall time (epoch seconds), so a
    fallback can say how old the answer it serves is.
    """

    operation: str
    model: str | None
    body: bytes
    stored_at: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of the cache for dashboards and tests; plain numbers, so ``asdict`` is JSON.

    ``entries`` and ``bytes`` describe live (unexpired) answers now. The rest count since the
    cache was made: ``hits`` and ``misses`` from :meth:`ResponseCache.get`, ``stores`` answers
    accepted by :meth:`ResponseCache.put`, ``evictions`` live answers dropped to respect a size
    bound (expiry is not an eviction), ``refused`` answers larger than the whole byte budget.
    """

    entries: int
    bytes: int
    hits: int
    misses: int
    stores: int
    evictions: int
    refused: int


def _size(answer: CachedAnswer) -> int:
    """What an answer costs against ``max_bytes``: its body, which dwarfs the bookkeeping."""
    return len(answer.body)


class _Entries(TTLCache[str, CachedAnswer, float]):
    """A TTL cache that counts the live answers it drops to stay within a bound.

    cachetools calls :meth:`popitem` exactly when it evicts for size; expiry goes another way,
    so an expired answer is never counted as an eviction.
    """

    evictions = 0

    def popitem(self) -> tuple[str, CachedAnswer]:
        self.evictions += 1
        return super().popitem()


class ResponseCache:
    """Last good answers by request key, bounded by age, entry count and bytes; thread-safe.

    A disabled policy (``enabled=False``) makes a cache that stores nothing and counts nothing.
    """

    def __init__(self, policy: CachePolicy, *, clock: Clock) -> None:
        self._enabled = policy.enabled
        self._max_entries = policy.max_entries
        self._max_bytes = policy.max_bytes
        self._lock = threading.Lock()
        self._entries = _Entries(
            maxsize=max(policy.max_bytes, 0), ttl=policy.ttl, timer=clock.now, getsizeof=_size
        )
        self._hits = 0
        self._misses = 0
        self._stores = 0
        self._refused = 0

    def get(self, key: str) -> CachedAnswer | None:
        """The live answer stored under ``key`` (marking it recently used), or None."""
        if not self._enabled:
            return None
        with self._lock:
            answer = self._entries.get(key)
            if answer is None:
                self._misses += 1
            else:
                self._hits += 1
        return answer

    def put(self, key: str, answer: CachedAnswer) -> bool:
        """Store ``answer`` under ``key``, replacing any older one; False if it was not stored.

        An answer larger than ``max_bytes`` is refused rather than emptying the cache for it
        (an older answer under the same key stays). Otherwise the least recently used answers
        are evicted until both bounds hold.
        """
        if not self._enabled:
            return False
        size = _size(answer)
        with self._lock:
            if size > self._max_bytes:
                self._refused += 1
                return False
            entries = self._entries
            with entries.timer:  # one reading of the clock for the whole update
                entries[key] = answer  # cachetools evicts LRU answers to fit the byte budget
                while len(entries) > self._max_entries:
                    entries.popitem()  # never ``key``: it was just made the most recently used
            self._stores += 1
        return True

    def clear(self) -> None:
        """Drop every answer. The counters keep running: they describe the cache's lifetime."""
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        """Counters and current size, read consistently under the lock."""
        with self._lock:
            self._entries.expire()
            return CacheStats(
                entries=len(self._entries),
                bytes=int(self._entries.currsize),
                hits=self._hits,
                misses=self._misses,
                stores=self._stores,
                evictions=self._entries.evictions,
                refused=self._refused,
            )
