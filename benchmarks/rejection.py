"""Question 3: how fast does an open circuit answer? p50 / p99 of a rejected call.

The breaker of the target is forced open with ``breakers(client).isolate(name)``, so no request
is ever sent (the benchmark checks that the fake upstream saw none). Each call is timed alone:

- ``CircuitOpenError``: ``client.chat.completions.create`` raising, no fallback configured;
- ``canned fallback``: the same call answered by a canned text (a full ``ChatCompletion``);
- ``client.post()``: the same rejection entered through the SDK's lower-level ``post`` with a
  ready JSON body, which skips the SDK's argument transform (``maybe_transform``): what the chain
  itself costs on a rejection (breakdown);
- ``breaker.acquire()``: the breaker's own rejection, without the SDK or the chain (breakdown).

Most of a rejected ``create`` is the SDK's own work before its ``request`` method (turning the
arguments into a request body), which the raw SDK pays on every call too; the breakdown rows
show what the chain and the breaker themselves cost.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from openai.types.chat import ChatCompletion

from resilient_openai import (
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    Route,
    breakers,
    resilient,
)
from resilient_openai._breaker import default_key
from resilient_openai.testing import FakeUpstream
from resilient_openai.testing._load import percentile

from ._common import MESSAGES, MODEL, goal_verdict, inprocess_client, markdown_table, quiet_heap

__all__ = ["GOAL_P99", "RejectionResult", "headline", "measure", "report", "run"]

#: A rejection should take less than this (seconds) at the 99th percentile.
GOAL_P99 = 0.0002


@dataclass(frozen=True, slots=True)
class RejectionResult:
    """Seconds per rejected call, every call, by variant."""

    samples: dict[str, list[float]] = field(default_factory=dict)


def _variants(upstream: FakeUpstream) -> dict[str, Callable[[], object]]:
    bare = resilient(inprocess_client(upstream))
    canned_route = Route(steps=(FallbackStep(kind="canned", text="Busy right now, please retry."),))
    canned = resilient(
        inprocess_client(upstream), Policy(fallback=FallbackPolicy(routes={"*": canned_route}))
    )
    name = default_key(str(bare.base_url), MODEL)
    for client in (bare, canned):
        breakers(client).isolate(name)
    breaker = breakers(bare).get(name)

    def rejected() -> object:
        try:
            return bare.chat.completions.create(model=MODEL, messages=MESSAGES)
        except CircuitOpenError as error:
            return error

    def answered() -> object:
        return canned.chat.completions.create(model=MODEL, messages=MESSAGES)

    body = {"model": MODEL, "messages": MESSAGES}

    def posted() -> object:
        try:
            return bare.post("/chat/completions", body=body, cast_to=ChatCompletion)
        except CircuitOpenError as error:
            return error

    def acquire() -> object:
        try:
            return breaker.acquire()
        except CircuitOpenError as error:
            return error

    return {
        "create() -> CircuitOpenError": rejected,
        "create() -> canned fallback": answered,
        "post() -> CircuitOpenError": posted,
        "breaker.acquire()": acquire,
    }


def measure(*, calls: int, batch: int = 500, warmup: int = 200) -> dict[str, list[float]]:
    """``calls`` individually timed calls per variant, in interleaved batches of ``batch``."""
    upstream = FakeUpstream()
    variants = _variants(upstream)
    for call in variants.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    clock = time.perf_counter
    names = list(variants)
    done = 0
    index = 0
    with quiet_heap():
        while done < calls:
            size = min(batch, calls - done)
            for name in names if index % 2 == 0 else reversed(names):
                call = variants[name]
                record = samples[name].append
                gc.collect()
                for _ in range(size):
                    started = clock()
                    call()
                    record(clock() - started)
            done += size
            index += 1
    if upstream.count():
        raise RuntimeError(f"invalid measurement: {upstream.count()} request(s) reached the upstream")
    return samples


def run(*, calls: int = 20_000) -> RejectionResult:
    """Measure ``calls`` rejections of each variant."""
    return RejectionResult(measure(calls=calls))


def report(result: RejectionResult) -> str:
    """The Markdown section for RESULTS.md."""
    rows = []
    for name, values in result.samples.items():
        p99 = percentile(values, 99, math.nan)
        goal = goal_verdict(p99, GOAL_P99, at_most=True) if name.startswith("create()") else "(breakdown)"
        rows.append(
            [
                name,
                f"{percentile(values, 50, math.nan) * 1e6:.1f}",
                f"{p99 * 1e6:.1f}",
                f"{percentile(values, 99.9, math.nan) * 1e6:.1f}",
                f"{max(values) * 1e6:.0f}",
                goal,
            ]
        )
    count = len(next(iter(result.samples.values()), []))
    table = markdown_table(["variant", "p50 us", "p99 us", "p99.9 us", "max us", "goal p99 < 200 us"], rows)
    return "\n".join(
        [
            "## 3. Open-circuit rejection",
            "",
            f"The target's breaker isolated; {count} individually timed calls per variant, in process "
            "(no request reaches the upstream).",
            "",
            table,
            "",
        ]
    )


def headline(result: RejectionResult) -> list[list[str]]:
    """The goal rows for the summary: ``[what, measured, goal, verdict]``."""
    rows = []
    for name, values in result.samples.items():
        if name.startswith("create()"):
            p99 = percentile(values, 99, math.nan)
            rows.append(
                [
                    f"3. open circuit, {name}",
                    f"p99 {p99 * 1e6:.0f} us",
                    "p99 < 200 us",
                    goal_verdict(p99, GOAL_P99, at_most=True),
                ]
            )
    return rows
