"""Question 5: does memory stay bounded? The response cache at its limits, and a long run.

- Cache at its bounds: a :class:`~resilient_openai.fallback.cache.ResponseCache` is filled with
  5x more answers than it may hold, once where ``max_entries`` binds and once where
  ``max_bytes`` binds. Reported: entries and body bytes kept, evictions, the Python memory the
  cache holds (tracemalloc) and the process RSS.
- Long run: 20 000 in-process calls with distinct prompts through the full chain (fallback
  route model -> cache -> canned, so every answer is stored and the cache churns at its
  ``max_entries``), with a tracemalloc reading after every 2 000 calls. Flat readings once the
  cache is full mean nothing else accumulates; the largest growths between the first full-cache
  reading and the last are listed by source line.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from dataclasses import dataclass, field

from openai.types.chat import ChatCompletionMessageParam

from resilient_openai import CachePolicy, FallbackPolicy, FallbackStep, Policy, Route, resilient
from resilient_openai.fallback.cache import CachedAnswer, ResponseCache
from resilient_openai.testing import FakeClock, FakeUpstream

from ._common import BACKUP_MODEL, MODEL, inprocess_client, markdown_table, rss_bytes

__all__ = ["CacheBound", "LongRun", "MemoryResult", "cache_at_bounds", "long_run", "report", "run"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CacheBound:
    """One fill of the cache past its bounds, and what it kept."""

    scenario: str
    max_entries: int
    max_bytes: int
    offered: int
    offered_bytes: int
    entries: int
    bytes: int
    evictions: int
    traced: int
    rss_growth: int


@dataclass(frozen=True, slots=True)
class Reading:
    """Memory after ``calls`` calls of the long run."""

    calls: int
    traced: int
    rss: int
    cache_entries: int


@dataclass(frozen=True, slots=True)
class LongRun:
    """The long run's readings and the source lines that grew most after the cache filled."""

    readings: list[Reading] = field(default_factory=list)
    growth: list[tuple[str, int]] = field(default_factory=list)
    max_entries: int = 0


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """Both measurements."""

    bounds: list[CacheBound] = field(default_factory=list)
    long_run: LongRun = field(default_factory=LongRun)


def cache_at_bounds(
    scenario: str, *, max_entries: int, max_bytes: int, offered: int, sizes: tuple[int, int]
) -> CacheBound:
    """Offer ``offered`` answers with body sizes drawn from ``sizes`` and see what is kept."""
    rng = random.Random(42)
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = ResponseCache(
        CachePolicy(max_entries=max_entries, max_bytes=max_bytes, ttl=3600.0), clock=FakeClock()
    )
    offered_bytes = 0
    for index in range(offered):
        size = rng.randint(*sizes)
        offered_bytes += size
        body = b'{"id":"%08d","x":"' + b"a" * max(size - 20, 0) + b'"}'
        cache.put(f"{index:064x}", CachedAnswer("chat.completions", MODEL, body[:size], 1.0e9))
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    stats = cache.stats()
    result = CacheBound(
        scenario=scenario,
        max_entries=max_entries,
        max_bytes=max_bytes,
        offered=offered,
        offered_bytes=offered_bytes,
        entries=stats.entries,
        bytes=stats.bytes,
        evictions=stats.evictions,
        traced=traced,
        rss_growth=rss_bytes() - rss_before,
    )
    del cache
    return result


def long_run(*, calls: int = 20_000, every: int = 2_000, max_entries: int = 1_000) -> LongRun:
    """``calls`` distinct chat completions through the full chain, reading memory every ``every``."""
    upstream = FakeUpstream()
    steps = (
        FallbackStep(kind="model", model=BACKUP_MODEL),
        FallbackStep(kind="cache"),
        FallbackStep(kind="canned", text="Unavailable."),
    )
    policy = Policy(
        fallback=FallbackPolicy(routes={"*": Route(steps=steps)}),
        cache=CachePolicy(max_entries=max_entries),
    )
    client = resilient(inprocess_client(upstream), policy)

    def cache_entries() -> int:
        engine_cache = getattr(type(client), "_resilience").cache  # noqa: B009 - an internal, on purpose
        return int(engine_cache.stats().entries) if engine_cache is not None else 0

    readings: list[Reading] = []
    snapshots: list[tracemalloc.Snapshot] = []
    gc.collect()
    tracemalloc.start()
    try:
        for index in range(1, calls + 1):
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"Prompt number {index}"}]
            client.chat.completions.create(model=MODEL, messages=messages)
            if index % every == 0:
                upstream.reset_counts()  # the fake keeps every request it saw; that is not ours
                gc.collect()
                readings.append(Reading(index, tracemalloc.get_traced_memory()[0], rss_bytes(), cache_entries()))
                if index >= max_entries + every:
                    snapshots.append(tracemalloc.take_snapshot())
                    del snapshots[1:-1]  # keep the first full-cache snapshot and the latest
    finally:
        tracemalloc.stop()
    growth: list[tuple[str, int]] = []
    if len(snapshots) == 2:
        ignore = tracemalloc.Filter(False, tracemalloc.__file__)
        first, last = (s.filter_traces([ignore]) for s in snapshots)
        for stat in last.compare_to(first, "lineno")[:3]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("src/")[-1]
            growth.append((f"{where}:{frame.lineno}", stat.size_diff))
    client.close()
    return LongRun(readings, growth, max_entries)


def run(*, offered: int = 5_000, calls: int = 20_000, every: int = 2_000) -> MemoryResult:
    """Both measurements at their published sizes."""
    bounds = [
        cache_at_bounds("max_entries binds", max_entries=1_000, max_bytes=16 * MIB, offered=offered, sizes=(500, 1500)),
        cache_at_bounds("max_bytes binds", max_entries=1_024, max_bytes=1 * MIB, offered=offered, sizes=(2000, 6000)),
    ]
    return MemoryResult(bounds, long_run(calls=calls, every=every))


def _kib(value: int) -> str:
    return f"{value / 1024:,.0f}"


def report(result: MemoryResult) -> str:
    """The Markdown section for RESULTS.md."""
    bound_rows = [
        [
            b.scenario,
            f"{b.max_entries:,} / {_kib(b.max_bytes)}",
            f"{b.offered:,} / {_kib(b.offered_bytes)}",
            f"{b.entries:,} / {_kib(b.bytes)}",
            f"{b.evictions:,}",
            _kib(b.traced),
            f"{(b.traced - b.bytes) / max(b.entries, 1):.0f}",
            _kib(b.rss_growth),
        ]
        for b in result.bounds
    ]
    bounds = markdown_table(
        [
            "scenario",
            "limit: entries / KiB",
            "offered: answers / KiB",
            "kept: entries / KiB",
            "evictions",
            "traced KiB",
            "overhead B/entry",
            "RSS growth KiB",
        ],
        bound_rows,
    )
    run = result.long_run
    reading_rows = [
        [f"{r.calls:,}", f"{r.cache_entries:,}", _kib(r.traced), _kib(r.rss)] for r in run.readings
    ]
    readings = markdown_table(["calls", "cache entries", "traced KiB", "RSS KiB"], reading_rows)
    lines = [
        "## 5. Memory",
        "",
        "### The response cache at its bounds",
        "",
        "5x more answers offered than the cache may keep. \"traced\" is the Python memory allocated "
        "while filling the cache that is still held (bodies, keys, entries, the TTLCache's links); "
        "overhead per entry is that minus the body bytes.",
        "",
        bounds,
        "",
        "### A long run through the full chain",
        "",
        f"Distinct prompts through model -> cache -> canned (cache `max_entries={run.max_entries:,}`), "
        "in process, tracemalloc on; the fake upstream's own request log is cleared before each reading.",
        "",
        readings,
        "",
    ]
    if len(run.readings) >= 2:
        full = [r for r in run.readings if r.calls >= run.max_entries * 2] or run.readings
        drift = full[-1].traced - full[0].traced
        lines += [
            f"Traced memory from {full[0].calls:,} to {full[-1].calls:,} calls (cache full): "
            f"{drift / 1024:+,.0f} KiB.",
            "",
        ]
    if run.growth:
        lines += ["Largest growths over that span, by source line:", ""]
        lines += [f"- `{where}`: {size / 1024:+,.1f} KiB" for where, size in run.growth]
        lines.append("")
    return "\n".join(lines)
