"""Question 1: what does one *successful* chat completion cost through each stack, next to the raw SDK?

Four variants answer the same request from the same fake upstream:

- ``raw``: ``openai.OpenAI(max_retries=0)``, the baseline;
- ``resilient``: ``resilient(client)`` with the default :class:`~resilient_openai.Policy`;
- ``full chain``: a fallback route model -> cache -> canned, so every success is also stored in
  the response cache;
- ``hand-rolled``: tenacity + ``pybreaker.CircuitBreaker.call`` + a locked ``TTLCache``
  (:mod:`benchmarks._handrolled`).

Measured twice: on the in-process transport (``FakeUpstream().transport()``, no socket: the
library's overhead is least diluted) and over loopback HTTP to a fake upstream in a child
process. Variants are interleaved round by round; the table gives the median time per call and
the median of the per-round ratios to ``raw`` with its interquartile range.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import openai

from resilient_openai import FallbackPolicy, FallbackStep, Policy, Route, resilient
from resilient_openai.testing import FakeUpstream

from ._common import (
    BACKUP_MODEL,
    MESSAGES,
    MODEL,
    goal_verdict,
    inprocess_client,
    interleaved,
    loopback_client,
    markdown_table,
    spread,
    upstream_process,
)
from ._handrolled import HandRolled

__all__ = ["GOAL", "SuccessPathResult", "full_chain_policy", "headline", "measure", "report", "run"]

#: ``resilient(client)`` should cost at most this much of a raw call, in process.
GOAL = 1.03

TRANSPORTS = ("in-process", "loopback")


def full_chain_policy() -> Policy:
    """The default policy plus a route model -> cache -> canned for every model."""
    steps = (
        FallbackStep(kind="model", model=BACKUP_MODEL),
        FallbackStep(kind="cache"),
        FallbackStep(kind="canned", text="The assistant is unavailable right now."),
    )
    return Policy(fallback=FallbackPolicy(routes={"*": Route(steps=steps)}))


def _variants(make: Callable[[], openai.OpenAI]) -> dict[str, Callable[[], object]]:
    raw = make()
    wrapped = resilient(make())
    full = resilient(make(), full_chain_policy())
    hand = HandRolled(make())

    def call_raw() -> object:
        return raw.chat.completions.create(model=MODEL, messages=MESSAGES)

    def call_resilient() -> object:
        return wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)

    def call_full() -> object:
        return full.chat.completions.create(model=MODEL, messages=MESSAGES)

    def call_hand() -> object:
        return hand.create(model=MODEL, messages=MESSAGES)

    return {"raw": call_raw, "resilient": call_resilient, "full chain": call_full, "hand-rolled": call_hand}


@dataclass(frozen=True, slots=True)
class SuccessPathResult:
    """Seconds per call, one sample per round, by transport then variant."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rounds: int = 0
    batch: int = 0


def measure(transport: str, *, rounds: int, batch: int, warmup: int) -> dict[str, list[float]]:
    """Per-round seconds per call of every variant on ``transport`` (``in-process``/``loopback``)."""
    with ExitStack() as stack:
        if transport == "in-process":
            upstream = FakeUpstream()

            def make() -> openai.OpenAI:
                return inprocess_client(upstream)
        elif transport == "loopback":
            base_url = stack.enter_context(upstream_process())

            def make() -> openai.OpenAI:
                return loopback_client(base_url)
        else:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        return interleaved(_variants(make), rounds=rounds, batch=batch, warmup=warmup)


def run(
    *, rounds: int = 120, batch: int = 12, warmup: int = 100, transports: tuple[str, ...] = TRANSPORTS
) -> SuccessPathResult:
    """Measure every transport; about 4 x rounds x batch calls each."""
    samples = {t: measure(t, rounds=rounds, batch=batch, warmup=warmup) for t in transports}
    return SuccessPathResult(samples=samples, rounds=rounds, batch=batch)


def report(result: SuccessPathResult) -> str:
    """The Markdown section for RESULTS.md."""
    rows = []
    verdicts = []
    for transport, samples in result.samples.items():
        raw = samples["raw"]
        for name, values in samples.items():
            per_call = spread(values)
            ratio = spread([value / base for value, base in zip(values, raw, strict=True)])
            goal = "-"
            if transport == "in-process" and name == "resilient":
                goal = f"<= {GOAL:.2f}x: {goal_verdict(ratio.median, GOAL, at_most=True)}"
                verdicts.append(goal)
            extra = per_call.median - spread(raw).median
            rows.append(
                [
                    f"{transport}: {name}",
                    f"{per_call.median * 1e6:.0f}",
                    f"{extra * 1e6:+.0f}" if name != "raw" else "",
                    f"{ratio.median:.3f}x",
                    f"{ratio.low:.3f}-{ratio.high:.3f}",
                    goal,
                ]
            )
    table = markdown_table(
        ["variant", "median us/call", "vs raw, us", "ratio to raw", "ratio IQR", "goal"], rows
    )
    return "\n".join(
        [
            "## 1. Cost of one successful chat completion",
            "",
            "One non-streaming `chat.completions.create` answered by the fake upstream. "
            f"{result.rounds} interleaved rounds of {result.batch} calls per variant and transport; "
            "the ratio is taken per round against the raw SDK's batch of the same round.",
            "",
            table,
            "",
        ]
    )


def headline(result: SuccessPathResult) -> list[list[str]]:
    """The goal row for the summary: ``[what, measured, goal, verdict]``."""
    samples = result.samples.get("in-process")
    if not samples:
        return []
    ratio = spread([a / b for a, b in zip(samples["resilient"], samples["raw"], strict=True)]).median
    return [
        [
            "1. `resilient(client)` success path, in process",
            f"{ratio:.3f}x raw",
            f"<= {GOAL:.2f}x",
            goal_verdict(ratio, GOAL, at_most=True),
        ]
    ]
