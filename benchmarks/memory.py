"""Question 5: does memory stay bounded? The response cache at its limits, and a long run.

- Cache at its bounds: a :class:`~resilient_openai._fallback.cache.ResponseCache` is filled with
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
import sys
import tracemalloc
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletionMessageParam

from resilient_openai import CachePolicy, FallbackPolicy, FallbackStep, Policy, Route, health, resilient
from resilient_openai._fallback.cache import CachedAnswer, ResponseCache
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
    """Memory after ``calls`` calls (``traced`` is None when tracemalloc was off)."""

    calls: int
    cache_entries: int
    #: ``sys.getallocatedblocks()``; None in traced runs, where the kept snapshots add their own.
    blocks: int | None
    rss: int
    traced: int | None = None


@dataclass(frozen=True, slots=True)
class LongRun:
    """Readings of one run, and (traced runs) the source lines that grew most once the cache was full."""

    readings: list[Reading] = field(default_factory=list)
    growth: list[tuple[str, int]] = field(default_factory=list)
    max_entries: int = 0


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """All three measurements."""

    bounds: list[CacheBound] = field(default_factory=list)
    long_run: LongRun = field(default_factory=LongRun)
    traced_run: LongRun = field(default_factory=LongRun)


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


def _full_chain_client(upstream: FakeUpstream, max_entries: int) -> openai.OpenAI:
    steps = (
        FallbackStep(kind="model", model=BACKUP_MODEL),
        FallbackStep(kind="cache"),
        FallbackStep(kind="canned", text="Unavailable."),
    )
    policy = Policy(
        fallback=FallbackPolicy(routes={"*": Route(steps=steps)}),
        cache=CachePolicy(max_entries=max_entries),
    )
    return resilient(inprocess_client(upstream), policy)


def long_run(*, calls: int, every: int, max_entries: int = 1_000, traced: bool = False) -> LongRun:
    """``calls`` distinct chat completions through the full chain, reading memory every ``every``.

    With ``traced``, tracemalloc runs throughout (about 5x slower) and the lines that grew most
    between the first reading with a full cache and the last are reported.
    """
    upstream = FakeUpstream()
    client = _full_chain_client(upstream, max_entries)

    def entries() -> int:
        stats = health(client)["cache"]
        return int(stats["entries"]) if stats is not None else 0

    readings: list[Reading] = []
    snapshots: list[tracemalloc.Snapshot] = []
    gc.collect()
    if traced:
        tracemalloc.start()
    try:
        for index in range(1, calls + 1):
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": f"Prompt number {index}"}
            ]
            client.chat.completions.create(model=MODEL, messages=messages)
            if index % every:
                continue
            upstream.reset_counts()  # the fake keeps every request it saw; that is not ours
            gc.collect()
            current = tracemalloc.get_traced_memory()[0] if traced else None
            blocks = None if traced else sys.getallocatedblocks()
            readings.append(Reading(index, entries(), blocks, rss_bytes(), current))
            if traced and index >= 2 * max_entries:
                snapshots.append(tracemalloc.take_snapshot())
                del snapshots[1:-1]  # keep the first full-cache snapshot and the latest
    finally:
        if traced:
            tracemalloc.stop()
    growth: list[tuple[str, int]] = []
    if len(snapshots) == 2:
        ours = tracemalloc.Filter(False, tracemalloc.__file__)  # the snapshots themselves
        first, last = (snapshot.filter_traces([ours]) for snapshot in snapshots)
        for stat in last.compare_to(first, "lineno")[:3]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("src/")[-1]
            growth.append((f"{where}:{frame.lineno}", stat.size_diff))
    client.close()
    return LongRun(readings, growth, max_entries)


def run(
    *, offered: int = 5_000, calls: int = 20_000, every: int = 2_000, traced_calls: int = 6_000
) -> MemoryResult:
    """All three measurements at their published sizes."""
    bounds = [
        cache_at_bounds(
            "max_entries binds", max_entries=1_000, max_bytes=16 * MIB, offered=offered, sizes=(500, 1500)
        ),
        cache_at_bounds(
            "max_bytes binds", max_entries=1_024, max_bytes=1 * MIB, offered=offered, sizes=(2000, 6000)
        ),
    ]
    untraced = long_run(calls=calls, every=every)
    traced = long_run(calls=traced_calls, every=max(traced_calls // 6, 1), traced=True)
    return MemoryResult(bounds, untraced, traced)


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
    lines = [
        "## 5. Memory",
        "",
        "### The response cache at its bounds",
        "",
        '5x more answers offered than the cache may keep. "traced" is the Python memory allocated '
        "while filling the cache that is still held (bodies, keys, entries, the TTLCache's links); "
        "overhead per entry is that minus the body bytes.",
        "",
        bounds,
        "",
        "### A long run through the full chain",
        "",
        "Distinct prompts through model -> cache -> canned "
        f"(cache `max_entries={result.long_run.max_entries:,}`), "
        "in process; the fake upstream's own request log is cleared before each reading. First without "
        "tracemalloc (RSS and `sys.getallocatedblocks()`, the count of live Python allocations, are "
        "undisturbed), then a shorter run with tracemalloc on (its own tables inflate RSS there).",
        "",
    ]
    for title, run in (("untraced", result.long_run), ("tracemalloc on", result.traced_run)):
        rows = [
            [
                f"{r.calls:,}",
                f"{r.cache_entries:,}",
                "-" if r.blocks is None else f"{r.blocks:,}",
                _kib(r.rss),
                "-" if r.traced is None else _kib(r.traced),
            ]
            for r in run.readings
        ]
        lines += [
            f"{title}:",
            "",
            markdown_table(["calls", "cache entries", "live blocks", "RSS KiB", "traced KiB"], rows),
            "",
        ]
        full = [r for r in run.readings if r.calls >= 2 * run.max_entries]
        if len(full) >= 2:
            first, last = full[0], full[-1]
            change = f"RSS {(last.rss - first.rss) / 1024:+,.0f} KiB"
            if first.blocks is not None and last.blocks is not None:
                change += f", {last.blocks - first.blocks:+,} live blocks"
            if first.traced is not None and last.traced is not None:
                change += f", traced {(last.traced - first.traced) / 1024:+,.1f} KiB"
            lines += [f"From {first.calls:,} to {last.calls:,} calls (cache full): {change}.", ""]
        if run.growth:
            lines += ["Largest growths over that span, by source line:", ""]
            lines += [f"- `{where}`: {size / 1024:+,.1f} KiB" for where, size in run.growth]
            lines.append("")
    return "\n".join(lines)
