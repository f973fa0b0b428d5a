"""Question 7: in each kind of outage, what does the caller get, how fast, and at what cost upstream?

Each scenario makes its primary model misbehave one way, then sends the same request through four
clients side by side, each on its own in-process :class:`~resilient_openai.testing.FakeUpstream`
on the real clock, where the fallback model always answers at once:

- ``raw SDK``: ``openai.OpenAI`` with its defaults (``max_retries=2``, its own backoff);
- ``plain``: :class:`Plain`, the primary once, then on any failure the fallback model once;
- ``hand-rolled``: tenacity + pybreaker + cachetools (:mod:`._handrolled`) with the same fallback;
- ``resilient``: ``resilient(client, Policy(...))``, the README's policy with one route step to
  the fallback model, otherwise the defaults.

Time limits are scaled down (every client gets the same ``timeout`` through its own options);
backoffs are each client's own defaults. A sustained condition runs a short sequence of calls
per client, a passing one a single call. Every (scenario, client) cell runs in its own thread at
once, so the whole table takes as long as its slowest cell. Reported per cell: what the caller
got (an answer from which model, or which error), the time to the whole answer, and how many
requests reached each model. Run ``python -m benchmarks.scenarios [--quick]`` to print the table.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from resilient_openai import (
    SYSTEM_CLOCK,
    FallbackPolicy,
    FallbackStep,
    Policy,
    Route,
    Timeouts,
    resilient,
)
from resilient_openai.testing import (
    Cut,
    FakeUpstream,
    Fault,
    Garbage,
    Ok,
    Silence,
    Stall,
    Status,
)

from ._common import BACKUP_MODEL, MESSAGES, MODEL, inprocess_client, markdown_table
from ._handrolled import HandRolled

__all__ = [
    "CLIENTS",
    "Answer",
    "Cell",
    "Plain",
    "Scenario",
    "ScenariosResult",
    "read",
    "report",
    "run",
    "scenarios",
    "table",
]

CLIENTS = ("raw SDK", "plain", "hand-rolled", "resilient")
WARM_UP: list[Any] = [{"role": "user", "content": "warm-up"}]


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer as the caller reads it: which model wrote it, and its text."""

    model: str
    text: str


def read(
    result: ChatCompletion | openai.Stream[ChatCompletionChunk], seen: list[str] | None = None
) -> Answer:
    """The whole answer of a completion or a stream; a stream's pieces go to ``seen`` as they come."""
    if isinstance(result, ChatCompletion):
        return Answer(result.model, result.choices[0].message.content or "")
    model, pieces = "", seen if seen is not None else []
    for chunk in result:
        model = chunk.model
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return Answer(model, "".join(pieces))


class Plain:
    """The deliberately plain client: the primary once; on any failure, the fallback model once."""

    def __init__(self, client: openai.OpenAI, fallback_model: str) -> None:
        self.client = client
        self.fallback_model = fallback_model

    def create(self, **kwargs: Any) -> Answer:
        """The answer, read whole (a stream too, so that a broken one can still fall back)."""
        try:
            return read(self.client.chat.completions.create(**kwargs))
        except Exception:
            return read(self.client.chat.completions.create(**{**kwargs, "model": self.fallback_model}))


@dataclass(frozen=True, slots=True)
class Scenario:
    """One way the primary model misbehaves; the fallback model always answers."""

    name: str
    about: str
    #: How the primary answers every request (once ``script`` is used up).
    primary: Fault
    #: How it answers its first requests, in order.
    script: tuple[Fault, ...] = ()
    #: Seconds after the first call from which the primary answers normally again.
    heals_after: float | None = None
    calls: int = 1
    stream: bool = False


def scenarios(timeout: float, sequence: int) -> tuple[Scenario, ...]:
    """The scenarios, waits scaled to the clients' ``timeout``; a sustained one makes ``sequence`` calls."""
    late = 4 * timeout
    return (
        Scenario("silent primary", "the primary never answers (sustained)", Silence(), calls=sequence),
        Scenario(
            "slow first token",
            f"every primary stream sends its headers, then its first token after {late:g} s (sustained)",
            Stall(0, late),
            calls=sequence,
            stream=True,
        ),
        Scenario(
            "stream cut mid-answer",
            "one primary stream is cut after 5 of its 60 tokens; then it is healthy",
            Ok(),
            script=(Cut(5),),
            stream=True,
        ),
        Scenario(
            "stream stalled mid-answer",
            f"one primary stream pauses {late:g} s after 5 of its 60 tokens; then it is healthy",
            Ok(),
            script=(Stall(5, late),),
            stream=True,
        ),
        Scenario(
            "flapping primary",
            "the primary's requests alternate 503, ok, 503, ok ... (sustained)",
            Ok(),
            script=(Status(503), Ok()) * (6 * sequence),
            calls=2 * sequence,
        ),
        Scenario(
            "429 with Retry-After",
            "the primary answers 429 with `retry-after: 1` for 1 s, then is healthy",
            Status(429, headers={"retry-after": "1"}),
            heals_after=1.0,
        ),
        Scenario(
            "429 without Retry-After",
            "the primary answers 429 (no header) for 1 s, then is healthy",
            Status(429),
            heals_after=1.0,
        ),
        Scenario(
            "429 insufficient_quota",
            "the primary answers 429 `insufficient_quota` (sustained: the bill is unpaid)",
            Status(429, code_str="insufficient_quota", type="insufficient_quota"),
            calls=sequence,
        ),
        Scenario(
            "context length exceeded",
            "the primary answers 400 `context_length_exceeded` (the same long prompt, every call)",
            Status(400, code_str="context_length_exceeded", message="maximum context length exceeded"),
            calls=sequence,
        ),
        Scenario(
            "malformed 200: HTML",
            "the primary answers 200 with an HTML body, like a proxy's error page (sustained)",
            Garbage("<html><body><h1>502 Bad Gateway</h1></body></html>"),
            calls=sequence,
        ),
        Scenario(
            "malformed 200: no choices",
            "the primary answers 200 with JSON lacking `choices` (sustained)",
            Garbage({"id": "chatcmpl-broken", "object": "chat.completion"}),
            calls=sequence,
        ),
    )


@dataclass(frozen=True, slots=True)
class Cell:
    """One client in one scenario: what each call got, how long it took, and the requests sent."""

    scenario: Scenario
    client: str
    got: tuple[str, ...]
    seconds: tuple[float, ...]
    primary_requests: int
    fallback_requests: int


@dataclass(frozen=True, slots=True)
class ScenariosResult:
    """Every cell, in scenario then client order, and the run's settings."""

    timeout: float
    sequence: int
    cells: list[Cell] = field(default_factory=list)
    elapsed: float = 0.0


Caller = Callable[[list[Any], bool, list[str]], Answer]


def _caller(client: str, upstream: FakeUpstream, timeout: float) -> Caller:
    """A function making one call through ``client`` on ``upstream`` and reading the answer whole."""
    if client == "plain":
        plain = Plain(inprocess_client(upstream).with_options(timeout=timeout), BACKUP_MODEL)
        return lambda messages, stream, seen: plain.create(model=MODEL, messages=messages, stream=stream)
    if client == "hand-rolled":
        hand = HandRolled(
            inprocess_client(upstream).with_options(timeout=timeout), fallback_model=BACKUP_MODEL
        )

        def call_hand(messages: list[Any], stream: bool, seen: list[str]) -> Answer:
            result, cached = hand.create(model=MODEL, messages=messages, stream=stream)
            answer = read(result, seen)
            return Answer("cache", answer.text) if cached else answer

        return call_hand
    if client == "raw SDK":
        sdk = inprocess_client(upstream, max_retries=2).with_options(timeout=timeout)
    else:
        limits = Timeouts(attempt=timeout, connect=timeout, first_token=timeout, stream_idle=timeout)
        route = Route(steps=(FallbackStep(kind="model", model=BACKUP_MODEL),))
        policy = Policy(timeouts=limits, fallback=FallbackPolicy(routes={MODEL: route}))
        sdk = resilient(inprocess_client(upstream), policy, clock=SYSTEM_CLOCK)
    return lambda messages, stream, seen: read(
        sdk.chat.completions.create(model=MODEL, messages=messages, stream=stream), seen
    )


def _label(answer: Answer) -> str:
    return {MODEL: "primary", BACKUP_MODEL: "fallback"}.get(answer.model, answer.model or "empty") + " answer"


def _error(exc: Exception, seen: list[str]) -> str:
    kind = type(exc)
    module = kind.__module__.split(".")[0]
    ours = module in ("openai", "resilient_openai", "builtins")
    name = kind.__name__ if ours else f"{module}.{kind.__name__}"
    return f"{name} after {len(seen)} chunks" if seen else name


def _cell(scenario: Scenario, client: str, timeout: float) -> Cell:
    """Warm the client up on a healthy upstream, then play the scenario through it."""
    upstream = FakeUpstream(clock=SYSTEM_CLOCK)
    call = _caller(client, upstream, timeout)
    call(WARM_UP, scenario.stream, [])  # a different prompt: the hand-rolled cache has no answer for ours
    upstream.reset_counts()
    upstream.script(MODEL, scenario.script)
    upstream.set_default(MODEL, scenario.primary)
    heal = None
    if scenario.heals_after is not None:
        heal = threading.Timer(scenario.heals_after, upstream.set_default, (MODEL, Ok()))
        heal.start()
    got, seconds = [], []
    try:
        for _ in range(scenario.calls):
            seen: list[str] = []
            started = time.perf_counter()
            try:
                got.append(_label(call(MESSAGES, scenario.stream, seen)))
            except Exception as exc:  # what the caller got, whatever it is
                got.append(_error(exc, seen))
            seconds.append(time.perf_counter() - started)
    finally:
        if heal is not None:
            heal.cancel()
    return Cell(
        scenario, client, tuple(got), tuple(seconds), upstream.count(MODEL), upstream.count(BACKUP_MODEL)
    )


def run(*, timeout: float = 0.25, sequence: int = 10) -> ScenariosResult:
    """Every scenario through every client, all cells at once (as long as the slowest cell)."""
    started = time.perf_counter()
    plays = [(scenario, client) for scenario in scenarios(timeout, sequence) for client in CLIENTS]
    with ThreadPoolExecutor(max_workers=len(plays)) as pool:
        cells = list(pool.map(lambda play: _cell(play[0], play[1], timeout), plays))
    return ScenariosResult(timeout, sequence, cells, time.perf_counter() - started)


def _tally(got: tuple[str, ...]) -> str:
    if len(got) == 1:
        return got[0]
    return ", ".join(f"{count} x {what}" for what, count in Counter(got).most_common())


def _rows(result: ScenariosResult) -> Iterator[list[str]]:
    previous = None
    for cell in result.cells:
        name = cell.scenario.name
        ms = [s * 1000 for s in cell.seconds]
        time_ms = f"{ms[0]:.0f}" if len(ms) == 1 else f"{statistics.median(ms):.0f} / {max(ms):.0f}"
        yield [
            f"**{name}**" if name != previous else "",
            cell.client,
            str(len(cell.got)),
            _tally(cell.got),
            time_ms,
            f"{sum(cell.seconds):.2f}",
            str(cell.primary_requests),
            str(cell.fallback_requests),
        ]
        previous = name


def table(result: ScenariosResult) -> str:
    """The Markdown table alone, one row per scenario and client."""
    headers = [
        "scenario",
        "client",
        "calls",
        "what the caller got",
        "ms to answer (median / max)",
        "total s",
        "requests to primary",
        "requests to fallback",
    ]
    return markdown_table(headers, list(_rows(result)))


def report(result: ScenariosResult) -> str:
    """The Markdown section for RESULTS.md: the scenarios, how to read the table, the table."""
    seen: dict[str, Scenario] = {}
    for cell in result.cells:
        seen.setdefault(cell.scenario.name, cell.scenario)
    about = [f"- **{s.name}**: {s.about}{'; streamed' if s.stream else ''}." for s in seen.values()]
    t = result.timeout
    lines = [
        "## 7. Outage scenarios, four clients side by side",
        "",
        "The same chat request through four clients, each on its own in-process fake upstream on the "
        "real clock, where the fallback model (`gpt-4o-backup`) always answers at once:",
        "",
        "- **raw SDK**: `openai.OpenAI(timeout=T)`, otherwise defaults: `max_retries=2`, its own backoff "
        "(0.5 s doubling, jittered), no fallback;",
        "- **plain**: `benchmarks.scenarios.Plain`, the primary once with timeout T, on any failure the "
        "fallback model once (no retry, no breaker); it reads a stream whole before answering;",
        "- **hand-rolled**: `benchmarks._handrolled` (tenacity 3 attempts + pybreaker `fail_max=5` + "
        "TTLCache) on an SDK client with timeout T, then the fallback model once, then its cache;",
        "- **resilient**: `resilient(client, Policy(...))` with one route step to the fallback model and "
        "`timeouts` attempt, connect, first_token and stream_idle set to T; everything else default "
        "(3 attempts, 0.5 s backoff, breaker `fail_max=5` / 5 s break, 60 s total).",
        "",
        f"T = {t:g} s for every client. The scenarios (a sustained one makes a short sequence of calls "
        "per client, with totals below; a passing one a single call):",
        "",
        *about,
        "",
        "How to read it: **what the caller got** counts the calls by outcome: an answer written by the "
        "primary or the fallback model, or the exception the caller saw (a non-`openai` exception is "
        "named with its package; *after N chunks* means a stream had already delivered N chunks; an "
        "`AttributeError` or `TypeError` is the caller's own `.choices[0]` failing on what the SDK "
        "returned without complaint: the HTML page as a `str`, or a `ChatCompletion` whose `choices` "
        "is `None`). "
        "**ms to answer** runs from the call to the whole answer (a stream read to its end) or the "
        "error: one value for a single call, else the median and the slowest; **total s** adds up a "
        "sequence's calls (a median hides a breaker that answers half the calls at once). **requests to "
        "primary / fallback** count what reached each model at the fake, retries included: the load a "
        "client puts on a failing upstream. All cells ran at once, each in its own thread, so times "
        "carry a few milliseconds of noise; the hand-rolled and resilient backoffs are random "
        f"(jittered). This run took {result.elapsed:.1f} s.",
        "",
        table(result),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenarios", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter timeouts and sequences")
    args = parser.parse_args(argv)
    result = run(timeout=0.1, sequence=2) if args.quick else run()
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
