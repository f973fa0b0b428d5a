"""ResponseCache: expiry on the injected clock, both size bounds, refusal, stats, thread safety."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from typing import Any

import pytest

from resilient_openai._errors import ConfigError
from resilient_openai._fallback.cache import CachedAnswer, CacheStats, ResponseCache
from resilient_openai._policy import CachePolicy
from resilient_openai.testing._clock import FakeClock


def _answer(size: int = 10, text: str = "x") -> CachedAnswer:
    body = (text * size)[:size].encode()
    return CachedAnswer(operation="chat.completions", model="gpt-4o-mini", body=body, stored_at=0.0)


def _cache(clock: FakeClock | None = None, **policy: Any) -> ResponseCache:
    return ResponseCache(CachePolicy(**policy), clock=clock or FakeClock())


def test_a_stored_answer_is_returned() -> None:
    """``get`` returns exactly what ``put`` stored."""
    cache = _cache()
    answer = _answer()
    assert cache.put("k", answer) is True
    assert cache.get("k") == answer


def test_an_unknown_key_misses() -> None:
    """``get`` of a key never stored is None."""
    assert _cache().get("nope") is None


def test_a_newer_answer_replaces_the_older() -> None:
    """Storing under an existing key replaces the answer and keeps one entry."""
    cache = _cache()
    cache.put("k", _answer(text="a"))
    cache.put("k", _answer(text="b"))
    assert cache.get("k") == _answer(text="b")
    assert cache.stats().entries == 1


def test_answers_expire_after_the_ttl() -> None:
    """An answer is served until ``ttl`` seconds have passed on the clock, then never again."""
    clock = FakeClock()
    cache = _cache(clock, ttl=60.0)
    cache.put("k", _answer())
    clock.advance(59.9)
    assert cache.get("k") is not None
    clock.advance(0.1)
    assert cache.get("k") is None


def test_expiry_is_not_counted_as_eviction() -> None:
    """Expired answers leave the stats without counting as evictions."""
    clock = FakeClock()
    cache = _cache(clock, ttl=10.0)
    cache.put("a", _answer())
    clock.advance(10.0)
    cache.put("b", _answer())
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (1, 10, 0)


def test_the_entry_bound_evicts_the_least_recently_used() -> None:
    """Past ``max_entries``, the answer used longest ago goes first."""
    cache = _cache(max_entries=2)
    cache.put("a", _answer())
    cache.put("b", _answer())
    cache.get("a")
    cache.put("c", _answer())
    assert [cache.get(k) is not None for k in "abc"] == [True, False, True]
    assert cache.stats().evictions == 1


def test_the_byte_bound_evicts_until_the_answer_fits() -> None:
    """Past ``max_bytes``, least recently used answers go until the new one fits."""
    cache = _cache(max_bytes=100)
    for key in "abc":
        cache.put(key, _answer(40))
    stats = cache.stats()
    assert cache.get("a") is None
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 80, 1)


def test_a_larger_replacement_counts_only_other_evictions() -> None:
    """Growing an answer in place evicts others to make room, not itself."""
    cache = _cache(max_bytes=100)
    cache.put("a", _answer(40))
    cache.put("b", _answer(40))
    cache.put("b", _answer(90))
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (1, 90, 1)


def test_an_oversize_answer_is_refused() -> None:
    """An answer larger than ``max_bytes`` is not stored and evicts nothing."""
    cache = _cache(max_bytes=100)
    cache.put("small", _answer(60))
    assert cache.put("big", _answer(101)) is False
    assert cache.get("big") is None
    assert cache.get("small") is not None
    assert (cache.stats().refused, cache.stats().evictions) == (1, 0)


def test_an_answer_of_exactly_max_bytes_fits() -> None:
    """The byte bound is inclusive."""
    assert _cache(max_bytes=100).put("k", _answer(100)) is True


def test_clear_empties_the_cache_and_keeps_counters() -> None:
    """``clear`` drops every answer; lifetime counters stay."""
    cache = _cache()
    cache.put("k", _answer())
    cache.clear()
    stats = cache.stats()
    assert cache.get("k") is None
    assert (stats.entries, stats.bytes, stats.stores) == (0, 0, 1)


def test_stats_count_hits_misses_and_stores() -> None:
    """Every counter moves with its operation, and ``asdict`` of the snapshot is JSON."""
    cache = _cache()
    cache.put("k", _answer(7))
    cache.get("k")
    cache.get("k")
    cache.get("other")
    stats = cache.stats()
    assert stats == CacheStats(entries=1, bytes=7, hits=2, misses=1, stores=1, evictions=0, refused=0)
    assert json.loads(json.dumps(dataclasses.asdict(stats))) == dataclasses.asdict(stats)


def test_a_disabled_cache_stores_nothing() -> None:
    """With ``enabled=False`` nothing is stored and nothing is counted."""
    cache = ResponseCache(CachePolicy(enabled=False), clock=FakeClock())
    assert cache.put("k", _answer()) is False
    assert cache.get("k") is None
    assert cache.stats() == CacheStats(0, 0, 0, 0, 0, 0, 0)


def test_an_unusable_policy_is_rejected_naming_each_key() -> None:
    """Bounds that leave no room are refused when the policy is built, each named."""
    with pytest.raises(ConfigError) as raised:
        _cache(max_entries=0, max_bytes=0, ttl=0.0)
    assert [p.split(":")[0] for p in raised.value.problems] == ["max_entries", "max_bytes", "ttl"]


def test_concurrent_use_keeps_the_bounds_and_the_counts() -> None:
    """Threads hammering one cache never break its bounds or lose a count."""
    threads, rounds = 8, 200
    cache = _cache(max_entries=50, max_bytes=2_000)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(rounds):
                cache.put(f"{worker}-{i}", _answer(10 + i % 30))
                cache.get(f"{(worker + 1) % threads}-{i}")
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    # Switch threads every microsecond so that unguarded cachetools bookkeeping would interleave
    # (with the default 5 ms interval an unlocked cache passes this test by luck).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    stats = cache.stats()
    assert errors == []
    assert stats.stores == threads * rounds
    assert stats.hits + stats.misses == threads * rounds
    assert stats.entries <= 50
    assert stats.bytes <= 2_000
    assert stats.entries + stats.evictions == stats.stores
