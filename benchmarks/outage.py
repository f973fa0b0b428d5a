"""Question 4: what do callers see while the upstream is down, and how fast does traffic come back?

Every variant gets its own fake upstream on 127.0.0.1 (in real time), all four run at once on
the same timeline: 100 calls arrive at 5 per second (20 s), and from t = 2 s to t = 12 s the
primary model answers 503 to everything; before and after, it answers at once. The variants:

- ``raw SDK``: ``openai.OpenAI()`` with its default ``max_retries=2``;
- ``hand-rolled``: tenacity + pybreaker (``fail_max=5``, ``reset_timeout=2``) + TTLCache;
- ``resilient + canned``: ``resilient(client)``, breaker break 2 s (not growing), canned text;
- ``resilient + fallback model``: the same, with a fallback model that stays healthy.

Prompts cycle through 10 texts, so a cache warmed in the first 2 s could answer the rest.
Reported per variant: the error rate callers see, median and p99 latency, how many requests
reached the failing model during the outage, and the time from the end of the outage to the
first answer from the primary model. ``plot`` draws every call's outcome and latency over time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pybreaker
from openai.types.chat import ChatCompletionMessageParam

from resilient_openai import (
    SYSTEM_CLOCK,
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    RetryRule,
    Route,
    Source,
    provenance,
    resilient,
)
from resilient_openai.testing import FakeUpstream, Ok, Status
from resilient_openai.testing._load import Call, Load, Outcome, percentile

from ._common import BACKUP_MODEL, MODEL, loopback_client, markdown_table, server_fixes
from ._handrolled import HandRolled

__all__ = [
    "CallOutcome",
    "OutageConfig",
    "OutageResult",
    "VariantSummary",
    "plot",
    "report",
    "run",
    "summarize",
]

UPSTREAM = "upstream"
FALLBACK = "fallback"
ERROR = "error"

VARIANTS = ("raw SDK", "hand-rolled", "resilient + canned", "resilient + fallback model")


@dataclass(frozen=True, slots=True)
class OutageConfig:
    """The scenario; the defaults are the published one, tests shrink it."""

    calls: int = 100
    rate: float = 5.0
    outage_start: float = 2.0
    outage_end: float = 12.0
    break_duration: float = 2.0
    #: The raw SDK's own retries (its default is 2).
    raw_max_retries: int = 2
    #: Backoff base of the hand-rolled and resilient retries (0.5 s, as the SDK's).
    backoff: float = 0.5
    prompts: int = 10


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One call: when it arrived and ended (seconds from the start), and who answered."""

    variant: str
    arrived: float
    ended: float
    outcome: str

    @property
    def latency(self) -> float:
        """Seconds the caller waited."""
        return self.ended - self.arrived


@dataclass(frozen=True, slots=True)
class OutageResult:
    """Every call of every variant, and the requests each upstream saw (seconds from the start)."""

    config: OutageConfig
    calls: list[CallOutcome] = field(default_factory=list)
    #: Per variant, the arrival times of requests for the primary model at its upstream.
    primary_requests: dict[str, list[float]] = field(default_factory=dict)
    #: When the outage actually started and ended (seconds from the start).
    outage: tuple[float, float] = (0.0, 0.0)
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """What one variant's callers experienced."""

    variant: str
    calls: int
    errors: int
    fallbacks: int
    median: float
    p99: float
    during_outage: int
    recovery: float | None


def _messages(index: int, prompts: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Question number {index % prompts}: what is new today?"}]


def _policy(config: OutageConfig, step: FallbackStep) -> Policy:
    """The default policy with a short break that does not grow (so recovery shows) and ``backoff``."""
    rules = {verdict: RetryRule(base=config.backoff) for verdict in RetryPolicy().rules}
    breaker = BreakerPolicy(
        break_duration=config.break_duration, break_multiplier=1.0, break_max=config.break_duration
    )
    return Policy(
        retry=RetryPolicy(rules=rules),
        breaker=breaker,
        fallback=FallbackPolicy(routes={MODEL: Route(steps=(step,))}),
    )


Caller = Callable[[list[ChatCompletionMessageParam]], str]


def _callers(config: OutageConfig, urls: dict[str, str], stack: ExitStack) -> dict[str, Caller]:
    """For each variant, a function that makes one call and says who answered it."""
    raw = loopback_client(urls["raw SDK"], max_retries=config.raw_max_retries)
    hand = HandRolled(
        loopback_client(urls["hand-rolled"]),
        fail_max=5,
        reset_timeout=config.break_duration,
        backoff=config.backoff,
    )
    canned_step = FallbackStep(kind="canned", text="Busy right now; please retry in a minute.")
    canned = resilient(loopback_client(urls["resilient + canned"]), _policy(config, canned_step))
    backup_step = FallbackStep(kind="model", model=BACKUP_MODEL)
    backup = resilient(loopback_client(urls["resilient + fallback model"]), _policy(config, backup_step))
    for client in (raw, hand.client, canned, backup):
        stack.callback(client.close)

    def call_raw(messages: list[ChatCompletionMessageParam]) -> str:
        raw.chat.completions.create(model=MODEL, messages=messages)
        return UPSTREAM

    def call_hand(messages: list[ChatCompletionMessageParam]) -> str:
        _, cached = hand.create(model=MODEL, messages=messages)
        return FALLBACK if cached else UPSTREAM

    def through(client: openai.OpenAI) -> Caller:
        def call(messages: list[ChatCompletionMessageParam]) -> str:
            result = client.chat.completions.create(model=MODEL, messages=messages)
            record = provenance(result)
            return UPSTREAM if record is not None and record.source is Source.UPSTREAM else FALLBACK

        return call

    return {
        "raw SDK": call_raw,
        "hand-rolled": call_hand,
        "resilient + canned": through(canned),
        "resilient + fallback model": through(backup),
    }


def _switch(
    upstreams: dict[str, FakeUpstream], config: OutageConfig, load: Load, outage: list[float]
) -> None:
    """Start, then end, the outage of the primary model on every upstream; note when, in ``outage``."""
    for at, fault in ((config.outage_start, Status(503)), (config.outage_end, Ok())):
        time.sleep(max(at - load.elapsed(), 0.0))
        for upstream in upstreams.values():
            upstream.set_default(MODEL, fault)
        outage.append(load.elapsed())


def _variant(call: Call) -> tuple[str, int]:
    """Which variant makes the driven call, and which of its turns it is: they take turns."""
    turn, position = divmod(call.number, len(VARIANTS))
    return VARIANTS[position], turn


def _ended(outcome: Outcome) -> CallOutcome:
    """One driven call as this benchmark reports it; a caller's bug is raised, not counted."""
    variant, _ = _variant(outcome.call)
    if outcome.error is None:
        return CallOutcome(variant, outcome.start, outcome.end, str(outcome.result))
    if isinstance(outcome.error, openai.OpenAIError | pybreaker.CircuitBreakerError):
        return CallOutcome(variant, outcome.start, outcome.end, ERROR)
    raise outcome.error


def run(config: OutageConfig | None = None, *, workers: int = 96) -> OutageResult:
    """Play the scenario against all four variants at once (about ``calls / rate`` seconds)."""
    config = config or OutageConfig()
    upstreams = {name: FakeUpstream(clock=SYSTEM_CLOCK) for name in VARIANTS}
    with ExitStack() as stack:
        stack.enter_context(server_fixes())
        urls = {name: stack.enter_context(upstream.serve()) for name, upstream in upstreams.items()}
        callers = _callers(config, urls, stack)
        warm: list[ChatCompletionMessageParam] = [{"role": "user", "content": "warm-up"}]
        for caller in callers.values():  # open a connection each; lazy imports happen now
            caller(warm)
        for upstream in upstreams.values():
            upstream.reset_counts()
        # The variants take turns, a quarter period apart, so they do not fight for the GIL at
        # the same instant; each variant's calls are one period apart, half a period off its edges.
        load = Load(
            rate=config.rate * len(VARIANTS), offset=0.5 / config.rate, count=config.calls * len(VARIANTS)
        )
        outage: list[float] = []
        switch = threading.Thread(target=_switch, args=(upstreams, config, load, outage), daemon=True)
        switch.start()
        order = list(callers.values())
        load.run_threads(
            lambda call: order[call.number % len(order)](
                _messages(call.number // len(order), config.prompts)
            ),
            workers,
        )
        switch.join()
        elapsed = load.elapsed()
        primary = {
            name: [r.at - load.t0 for r in upstream.requests if r.model == MODEL]
            for name, upstream in upstreams.items()
        }
    calls = sorted((_ended(outcome) for outcome in load.outcomes()), key=lambda c: c.arrived)
    return OutageResult(config, calls, primary, (outage[0], outage[1]), elapsed)


def summarize(result: OutageResult) -> list[VariantSummary]:
    """One line per variant: errors, latency, load on the failing model, recovery."""
    start, end = result.outage
    summaries = []
    for variant in VARIANTS:
        calls = [c for c in result.calls if c.variant == variant]
        latencies = [c.latency for c in calls]
        recovered = [c.ended for c in calls if c.outcome == UPSTREAM and c.ended >= end]
        summaries.append(
            VariantSummary(
                variant=variant,
                calls=len(calls),
                errors=sum(c.outcome == ERROR for c in calls),
                fallbacks=sum(c.outcome == FALLBACK for c in calls),
                median=percentile(latencies, 50, math.nan),
                p99=percentile(latencies, 99, math.nan),
                during_outage=sum(start <= at < end for at in result.primary_requests.get(variant, [])),
                recovery=min(recovered) - end if recovered else None,
            )
        )
    return summaries


_COLOURS = {UPSTREAM: "#2b8a3e", FALLBACK: "#1c7ed6", ERROR: "#e03131"}


def plot(result: OutageResult, path: Path) -> None:
    """Draw every call (arrival time vs latency, coloured by who answered) for each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullLocator

    start, end = result.outage
    summaries = {s.variant: s for s in summarize(result)}
    figure, axes = plt.subplots(len(VARIANTS), 1, figsize=(10, 2.3 * len(VARIANTS)), sharex=True)
    for axis, variant in zip(axes, VARIANTS, strict=True):
        calls = [c for c in result.calls if c.variant == variant]
        axis.axvspan(start, end, color="#ffe3e3", label="upstream returns 503")
        for outcome, colour in _COLOURS.items():
            chosen = [c for c in calls if c.outcome == outcome]
            axis.scatter(
                [c.arrived for c in chosen],
                [max(c.latency * 1000, 0.1) for c in chosen],
                s=14,
                color=colour,
                label=outcome,
            )
        hits = result.primary_requests.get(variant, [])
        axis.plot(
            hits, [0.15] * len(hits), "|", color="#495057", markersize=8, label="request to failing model"
        )
        axis.set_yscale("log")
        axis.set_ylim(0.1, 20_000)
        axis.yaxis.set_major_locator(LogLocator(numticks=6))
        axis.yaxis.set_minor_locator(NullLocator())
        axis.set_ylabel("latency (ms)")
        summary = summaries[variant]
        axis.set_title(
            f"{variant}: {summary.errors} errors, {summary.fallbacks} fallbacks, "
            f"{summary.during_outage} requests to the failing model during the outage",
            fontsize=9,
            loc="left",
        )
    axes[-1].set_xlabel("call arrival (s)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper right", ncol=5, fontsize=8)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.93, hspace=0.35)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(result: OutageResult, image: str | None = "outage-timeline.png") -> str:
    """The Markdown section for RESULTS.md (linking ``image`` when given)."""
    config = result.config
    rows = []
    for s in summarize(result):
        rows.append(
            [
                s.variant,
                f"{s.errors / s.calls * 100:.0f} % ({s.errors}/{s.calls})",
                str(s.fallbacks),
                f"{s.median * 1000:.1f}",
                f"{s.p99 * 1000:.0f}",
                str(s.during_outage),
                "never" if s.recovery is None else f"{s.recovery:.2f}",
            ]
        )
    table = markdown_table(
        [
            "variant",
            "errors seen by callers",
            "fallback answers",
            "median ms",
            "p99 ms",
            "requests to failing model during outage",
            "end of outage -> first primary answer, s",
        ],
        rows,
    )
    start, end = result.outage
    lines = [
        f"## 4. A {config.outage_end - config.outage_start:g} s outage",
        "",
        f"{config.calls} calls at {config.rate:g}/s per variant, all four variants at once against their own "
        f"loopback upstream; the primary model answered 503 from t = {start:.2f} s to {end:.2f} s "
        f"(the run took {result.elapsed:.1f} s). Breakers: {config.break_duration:g} s break, not growing. "
        f"New calls arrive half a period off the outage's edges (the first {0.5 / config.rate:.2f} s after "
        "its end; the variants a quarter period apart); a retry of a call made during the outage can land "
        "sooner.",
        "",
        table,
        "",
    ]
    if image:
        lines += [f"![Outcome and latency of every call over time]({image})", ""]
    return "\n".join(lines)
