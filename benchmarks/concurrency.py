"""Question 2: do concurrent callers serialize on one breaker? Throughput next to the raw SDK.

The upstream answers every request after a fixed 20 ms (a fake upstream on 127.0.0.1 in a child
process, so its work does not share the client's GIL). With that latency, N callers that never
wait on each other get about N times the throughput of one; a lock held across the call (as
``pybreaker.CircuitBreaker.call`` does) brings N threads back to the throughput of one.

- threads: 8 threads share one client (so one breaker) for a fixed time: ``raw``,
  ``resilient``, and ``pybreaker``: the raw client called through one ``CircuitBreaker.call``;
- tasks: 200 asyncio tasks share one ``AsyncOpenAI``: ``raw`` and ``resilient``.

Variants alternate round by round; throughput is calls completed per second of wall time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pybreaker

from resilient_openai import resilient

from ._common import (
    MESSAGES,
    MODEL,
    async_loopback_client,
    goal_verdict,
    loopback_client,
    markdown_table,
    spread,
    upstream_process,
)

__all__ = [
    "TASKS_GOAL",
    "THREADS_GOAL",
    "ConcurrencyResult",
    "headline",
    "measure_tasks",
    "measure_threads",
    "report",
    "run",
]

THREADS_GOAL = 0.97
TASKS_GOAL = 0.95


def _drive_threads(call: Callable[[], object], threads: int, seconds: float) -> float:
    """Calls per second with ``threads`` threads calling ``call`` in a loop for ``seconds``."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = 0.0

    def worker(index: int) -> None:
        start.wait()
        done = 0
        while time.perf_counter() < stop_at:
            call()
            done += 1
        counts[index] = done

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    stop_at = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


async def _drive_tasks(call: Callable[[], Awaitable[object]], tasks: int, seconds: float) -> float:
    """Calls per second with ``tasks`` tasks awaiting ``call`` in a loop for ``seconds``."""
    stop_at = time.perf_counter() + seconds
    counts = [0] * tasks

    async def worker(index: int) -> None:
        done = 0
        while time.perf_counter() < stop_at:
            await call()
            done += 1
        counts[index] = done

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return sum(counts) / (time.perf_counter() - began)


async def _open_connections(call: Callable[[], Awaitable[object]], tasks: int) -> None:
    """Open the pool's connections before measuring: one burst of ``tasks`` concurrent calls."""
    await asyncio.gather(*(call() for _ in range(tasks)))


def measure_threads(
    base_url: str, *, threads: int, seconds: float, rounds: int, warmup: float = 0.2
) -> dict[str, list[float]]:
    """Throughput per round of 8 threads through raw, resilient and pybreaker-wrapped clients."""
    raw = loopback_client(base_url)
    wrapped = resilient(loopback_client(base_url))
    guarded = loopback_client(base_url)
    breaker: Any = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    variants: dict[str, Callable[[], object]] = {
        "raw": lambda: raw.chat.completions.create(model=MODEL, messages=MESSAGES),
        "resilient": lambda: wrapped.chat.completions.create(model=MODEL, messages=MESSAGES),
        "pybreaker.call": lambda: breaker.call(
            guarded.chat.completions.create, model=MODEL, messages=MESSAGES
        ),
    }
    for call in variants.values():  # warm up: connections opened, code paths compiled
        _drive_threads(call, threads, warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            samples[name].append(_drive_threads(variants[name], threads, seconds))
    for client in (raw, wrapped, guarded):
        client.close()
    return samples


async def measure_tasks(
    base_url: str, *, tasks: int, seconds: float, rounds: int, warmup: float = 0.3
) -> dict[str, list[float]]:
    """Throughput per round of ``tasks`` asyncio tasks through raw and resilient async clients."""
    raw = async_loopback_client(base_url)
    wrapped = resilient(async_loopback_client(base_url))

    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "raw": lambda: raw.chat.completions.create(model=MODEL, messages=MESSAGES),
        "resilient": lambda: wrapped.chat.completions.create(model=MODEL, messages=MESSAGES),
    }
    for call in variants.values():
        await _open_connections(call, tasks)
        await _drive_tasks(call, tasks, warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            samples[name].append(await _drive_tasks(variants[name], tasks, seconds))
    await raw.close()
    await wrapped.close()
    return samples


@dataclass(frozen=True, slots=True)
class ConcurrencyResult:
    """Calls per second, one sample per round, by variant; and the settings they ran with."""

    threads: dict[str, list[float]] = field(default_factory=dict)
    tasks: dict[str, list[float]] = field(default_factory=dict)
    thread_count: int = 0
    task_count: int = 0
    latency: float = 0.0
    seconds: float = 0.0
    rounds: int = 0


def run(
    *,
    threads: int = 8,
    tasks: int = 200,
    latency: float = 0.02,
    seconds: float = 0.75,
    rounds: int = 8,
) -> ConcurrencyResult:
    """Both measurements against one upstream process (about 5 x rounds x seconds in all)."""
    with upstream_process(latency) as base_url:
        by_thread = measure_threads(base_url, threads=threads, seconds=seconds, rounds=rounds)
        by_task = asyncio.run(measure_tasks(base_url, tasks=tasks, seconds=seconds, rounds=rounds))
    return ConcurrencyResult(by_thread, by_task, threads, tasks, latency, seconds, rounds)


def _rows(label: str, samples: dict[str, list[float]], goal: float) -> list[list[str]]:
    raw = samples["raw"]
    rows = []
    for name, values in samples.items():
        ratio = spread([value / base for value, base in zip(values, raw, strict=True)])
        verdict = (
            f">= {goal:.2f}x: {goal_verdict(ratio.median, goal, at_most=False)}"
            if name == "resilient"
            else "-"
        )
        rows.append(
            [
                f"{label}: {name}",
                f"{spread(values).median:.0f}",
                f"{ratio.median:.3f}x",
                f"{ratio.low:.3f}-{ratio.high:.3f}",
                verdict,
            ]
        )
    return rows


def report(result: ConcurrencyResult) -> str:
    """The Markdown section for RESULTS.md."""
    rows = _rows(f"{result.thread_count} threads", result.threads, THREADS_GOAL)
    rows += _rows(f"{result.task_count} tasks", result.tasks, TASKS_GOAL)
    latency = max(result.latency, 1e-6)
    ceiling_threads = result.thread_count / latency
    table = markdown_table(["variant", "calls/s (median)", "ratio to raw", "ratio IQR", "goal"], rows)
    return "\n".join(
        [
            "## 2. Concurrency through one breaker",
            "",
            f"Loopback upstream in a child process answering after {result.latency * 1000:.0f} ms; "
            f"{result.rounds} interleaved rounds of {result.seconds:g} s per variant. "
            f"{result.thread_count} threads could reach at most ~{ceiling_threads:.0f} calls/s; one "
            f"caller at a time (a lock held across the call) at most ~{1 / latency:.0f} calls/s. "
            "The 200 tasks are bound by the client's CPU instead, so their ratio is the library's "
            "per-call cost under load.",
            "",
            table,
            "",
        ]
    )


def headline(result: ConcurrencyResult) -> list[list[str]]:
    """The goal rows for the summary: ``[what, measured, goal, verdict]``."""
    rows = []
    for label, samples, goal in (
        (f"2. {result.thread_count} threads through one breaker", result.threads, THREADS_GOAL),
        (f"2. {result.task_count} asyncio tasks", result.tasks, TASKS_GOAL),
    ):
        if samples:
            ratio = spread([a / b for a, b in zip(samples["resilient"], samples["raw"], strict=True)]).median
            rows.append(
                [
                    label,
                    f"{ratio:.3f}x raw throughput",
                    f">= {goal:.2f}x",
                    goal_verdict(ratio, goal, at_most=False),
                ]
            )
    return rows
