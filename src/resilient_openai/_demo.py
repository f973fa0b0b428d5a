"""The engine behind ``resilient-openai demo``: a scripted outage under steady load, as records.

:class:`DemoRun` serves the fake upstream on a loopback socket (or points at a real endpoint),
sends chat completions at a steady rate through one resilient client, from threads or asyncio
tasks driven by the shared load driver (:mod:`resilient_openai.testing._load`), and switches
the fake's faults as the scenario's phases go by. Every call becomes a :class:`CallRecord`
(when, which phase, who answered, how long, which error) and every breaker transition a
:class:`BreakerChange`; :class:`DemoResult` sums them up per phase.

Nothing here draws or prints, and nothing needs typer, rich or matplotlib: the CLI renders what
this produces, and tests run it headless.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypedDict

import openai

from ._breaker import default_key
from ._client import resilient
from ._clock import SYSTEM_CLOCK
from ._fallback.plan import route_for
from ._health import health
from ._policy import Policy
from ._runtime import HttpClientFactory
from .observe.events import BreakerStateChanged, Event
from .testing import Delay, FakeUpstream, Fault, Ok, Status
from .testing._load import Call, Load, Outcome, percentile

if TYPE_CHECKING:
    from collections.abc import Iterator

    from openai.types.chat import ChatCompletionMessageParam

__all__ = [
    "DEFAULT_SCENARIO",
    "DEMO_API_KEY",
    "DEMO_FALLBACK_MODEL",
    "DEMO_MODEL",
    "PHASE_KINDS",
    "BreakerChange",
    "CallRecord",
    "DemoConfig",
    "DemoResult",
    "DemoRun",
    "Phase",
    "PhaseSummary",
    "Snapshot",
    "breaker_label",
    "breaker_timeline",
    "demo_policy",
    "parse_scenario",
    "percentile",
    "phase_faults",
]

#: The phases a scenario may name, each a way the fake upstream behaves (see :func:`phase_faults`).
PHASE_KINDS: Final = ("healthy", "storm", "slow", "recovery")
DEFAULT_SCENARIO: Final = "healthy:5,storm:8,slow:4,recovery:6"
DEMO_MODEL: Final = "gpt-demo"
DEMO_FALLBACK_MODEL: Final = "gpt-demo-mini"
DEMO_API_KEY: Final = "sk-demo-not-a-real-key"
#: The phase name used when the demo runs against a real endpoint (nothing is scripted there).
LIVE_PHASE: Final = "live"

#: Questions the load cycles through: few enough that the cache has answers when the storm hits.
DEMO_PROMPTS: Final = (
    "What is a circuit breaker, in one sentence?",
    "Name one reason to retry an HTTP request.",
    "What does HTTP 503 mean?",
    "Give me a synonym for 'resilient'.",
    "What is exponential backoff?",
    "Why cache answers from a language model?",
)
#: How long the live percentiles look back, in seconds.
RECENT_WINDOW: Final = 5.0
_CONDUCTOR_PERIOD: Final = 0.05
_MAX_BUG_REPORTS: Final = 5


# --------------------------------------------------------------------------------------------
# The scenario: parsing, and what the fake does in each phase (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the scenario: what the upstream does (``name``), from ``start`` for ``duration`` s."""

    name: str
    duration: float
    start: float = 0.0

    @property
    def end(self) -> float:
        """Seconds after the run's start at which this phase ends."""
        return self.start + self.duration


def _laid_out(pairs: Iterable[tuple[str, float]]) -> tuple[Phase, ...]:
    """Phases one after the other, each starting where the previous one ended."""
    phases: list[Phase] = []
    start = 0.0
    for name, duration in pairs:
        phases.append(Phase(name, duration, start))
        start += duration
    return tuple(phases)


def parse_scenario(text: str, *, total: float | None = None) -> tuple[Phase, ...]:
    """Read ``"healthy:5,storm:8,slow:4,recovery:6"`` into phases (durations in seconds).

    A phase may appear more than once. ``total`` stretches or shrinks every phase in proportion
    so the scenario lasts that long. Raises ``ValueError`` naming the faulty part.
    """
    pairs: list[tuple[str, float]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, seconds = part.partition(":")
        name = name.strip().lower()
        if name not in PHASE_KINDS:
            raise ValueError(f"unknown phase {name!r} in {part!r}; allowed: {', '.join(PHASE_KINDS)}")
        try:
            duration = float(seconds) if sep else math.nan
        except ValueError:
            duration = math.nan
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"phase {part!r} needs a duration in seconds > 0, like '{name}:5'")
        pairs.append((name, duration))
    if not pairs:
        raise ValueError("the scenario names no phase; e.g. " + DEFAULT_SCENARIO)
    if total is not None:
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"the duration must be > 0 seconds, got {total}")
        scale = total / sum(duration for _, duration in pairs)
        pairs = [(name, duration * scale) for name, duration in pairs]
    return _laid_out(pairs)


def phase_at(phases: Sequence[Phase], elapsed: float) -> tuple[int, float]:
    """The index of the phase running ``elapsed`` s into the run, and how far into it (0..1).

    Past the end it stays in the last phase (calls still in flight finish there).
    """
    for index, phase in enumerate(phases):
        if elapsed < phase.end:
            return index, max(elapsed - phase.start, 0.0) / phase.duration
    return len(phases) - 1, 1.0


def phase_faults(kind: str, fraction: float, *, slow_delay: float, rng: random.Random) -> tuple[Fault, Fault]:
    """How the fake answers the primary model and its fallback model ``fraction`` into a phase.

    - ``healthy`` / ``recovery``: both answer, with a little random latency;
    - ``storm``: the primary answers 503; the fallback model holds for the first half of the
      storm, then fails too, so the cache and the canned reply get their turn;
    - ``slow``: the primary takes ``slow_delay`` seconds (beyond the attempt timeout); the
      fallback model answers.
    """
    primary_latency = 0.015 + min(rng.expovariate(1 / 0.03), 0.4)
    fallback_latency = 0.008 + min(rng.expovariate(1 / 0.015), 0.2)
    fallback_ok = Ok(latency=fallback_latency)
    if kind == "storm":
        return Status(503), fallback_ok if fraction < 0.5 else Status(503)
    if kind == "slow":
        return Delay(slow_delay, then=Ok()), fallback_ok
    return Ok(latency=primary_latency), fallback_ok


def slow_delay_for(policy: Policy) -> float:
    """How long the ``slow`` phase makes the primary wait: past the attempt timeout when that is short.

    With a long attempt timeout (a production policy) the wait is capped at 5 s, and the phase
    shows slow answers instead of timeouts.
    """
    return min(policy.timeouts.attempt + 1.0, 5.0)


def demo_policy(
    model: str,
    fallback_model: str | None,
    *,
    attempt: float = 1.0,
    total: float = 3.0,
    break_duration: float = 3.0,
    fail_max: int = 5,
) -> Policy:
    """The policy the demo uses when none is given: short limits, a quick breaker, a full route.

    ``model`` falls back to ``fallback_model`` (when given), then to the cache, then to a canned
    reply. Retries are few and quick, and the breaker's break does not grow, so a 25-second run
    shows it open, probe and close more than once.
    """
    retry_rule = {"attempts": 2, "base": 0.1, "cap": 0.5}
    steps: list[dict[str, Any]] = []
    if fallback_model is not None:
        steps.append({"kind": "model", "model": fallback_model})
    steps += [
        {"kind": "cache"},
        {"kind": "canned", "text": "[canned] {model} is unavailable right now ({reason}). Try again soon."},
    ]
    data: dict[str, Any] = {
        "retry": {
            "rules": {
                verdict: dict(retry_rule) for verdict in ("server_error", "timeout", "connection_error")
            },
        },
        "timeouts": {
            "total": total,
            "attempt": attempt,
            "connect": min(0.5, attempt),
            "first_token": attempt,
            "stream_idle": attempt,
        },
        "breaker": {
            "mode": "consecutive",
            "fail_max": fail_max,
            "break_duration": break_duration,
            "break_multiplier": 1.0,
            "break_max": break_duration,
            "probe_lease": total,
        },
        "fallback": {"routes": {model: {"steps": steps}}},
        "cache": {"ttl": 600.0},
    }
    return Policy.from_dict(data)


# --------------------------------------------------------------------------------------------
# What a run produces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call of the demo: when it started (s after the run's start), in which phase, how it ended.

    ``source`` is the provenance's source (``"upstream"``, ``"cache"``...) or None on an error;
    ``error`` the exception's class name; ``bug`` is True for an exception that is not an
    ``openai.OpenAIError`` (or an answer with no provenance): the library broke its contract.
    """

    start: float
    latency: float
    phase: int
    source: str | None
    model: str | None
    error: str | None
    bug: bool
    attempts: int

    @property
    def end(self) -> float:
        """Seconds after the run's start at which the call ended."""
        return self.start + self.latency


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A breaker changed state ``at`` seconds after the run's start."""

    at: float
    breaker: str
    old: str
    new: str
    reason: str


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    """The calls that started in one phase, summed up."""

    phase: Phase
    calls: int
    by_source: Mapping[str, int]
    errors: Mapping[str, int]
    bugs: int
    p50: float | None
    p95: float | None
    p99: float | None
    #: Requests the fake upstream received during the phase (None against a real endpoint).
    upstream_requests: int | None
    #: The same, by the model asked for.
    upstream_by_model: Mapping[str, int] | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run as it stands, for a live view: counts so far, recent latency, breaker states."""

    elapsed: float
    total: float
    phase: Phase
    phase_index: int
    calls: int
    in_flight: int
    by_source: Mapping[str, int]
    errors: Mapping[str, int]
    bugs: int
    #: Latency percentiles of the calls that ended in the last :data:`RECENT_WINDOW` seconds.
    p50: float | None
    p95: float | None
    p99: float | None
    upstream_requests: int | None
    #: ``health(client)["breakers"]``: one dict per breaker (name, state, retry_after...).
    breakers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """Everything a finished run recorded, and its per-phase summary."""

    config: DemoConfig
    base_url: str
    phases: tuple[Phase, ...]
    records: tuple[CallRecord, ...]
    breaker_changes: tuple[BreakerChange, ...]
    #: Final ``health(client)["breakers"]``, including breakers that never changed state.
    breakers: tuple[Mapping[str, Any], ...]
    summaries: tuple[PhaseSummary, ...]
    upstream_requests: int | None
    #: Wall seconds from the first call to the last call's end.
    duration: float
    #: Tracebacks of the first few unexpected exceptions.
    bug_reports: tuple[str, ...]

    @property
    def bugs(self) -> int:
        """How many calls ended in something other than an answer or an ``openai.OpenAIError``."""
        return sum(1 for record in self.records if record.bug)

    @property
    def ok(self) -> bool:
        """True when every call ended with an answer or a documented error."""
        return self.bugs == 0

    def by_source(self) -> Counter[str]:
        """Answers per source over the whole run."""
        return Counter(record.source for record in self.records if record.source is not None)

    def errors(self) -> Counter[str]:
        """Errors per exception class over the whole run."""
        return Counter(record.error for record in self.records if record.error is not None)

    def breaker_label(self, name: str) -> str:
        """A breaker's name without the run's own endpoint, e.g. ``gpt-demo`` (others stay whole)."""
        return breaker_label(self.base_url, name)


def breaker_label(base_url: str, name: str) -> str:
    """``name`` without the ``host:port/path:`` of ``base_url``: the fake's port means nothing to a reader."""
    return name.removeprefix(default_key(base_url, None) + ":")


def summarize(
    phases: Sequence[Phase],
    records: Sequence[CallRecord],
    arrivals: Sequence[tuple[float, str | None]] | None,
) -> tuple[PhaseSummary, ...]:
    """Per-phase counts and latency percentiles; upstream requests by the phase they arrived in.

    ``arrivals`` holds each upstream request's time (s after the run's start) and model, or is
    None when nobody counted them (a real endpoint).
    """
    by_phase: dict[int, Counter[str]] = {index: Counter() for index in range(len(phases))}
    for at, model in arrivals or ():
        by_phase[phase_at(phases, at)[0]][model or "?"] += 1
    summaries = []
    for index, phase in enumerate(phases):
        mine = [record for record in records if record.phase == index]
        latencies = [record.latency for record in mine]
        summaries.append(
            PhaseSummary(
                phase=phase,
                calls=len(mine),
                by_source=Counter(r.source for r in mine if r.source is not None),
                errors=Counter(r.error for r in mine if r.error is not None),
                bugs=sum(1 for r in mine if r.bug),
                p50=percentile(latencies, 50),
                p95=percentile(latencies, 95),
                p99=percentile(latencies, 99),
                upstream_requests=None if arrivals is None else by_phase[index].total(),
                upstream_by_model=None if arrivals is None else dict(by_phase[index]),
            )
        )
    return tuple(summaries)


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How to run the demo.

    Against the embedded fake (``base_url`` None) the scenario's phases are played out on
    ``model`` and on the models of its fallback route; against a real endpoint nothing is
    scripted and ``api_key`` is sent. ``policy`` None uses :func:`demo_policy`.
    """

    phases: tuple[Phase, ...] = field(default_factory=lambda: parse_scenario(DEFAULT_SCENARIO))
    concurrency: int = 16
    rate: float = 20.0
    use_async: bool = False
    policy: Policy | None = None
    base_url: str | None = None
    model: str = DEMO_MODEL
    api_key: str = DEMO_API_KEY
    #: Builds the HTTP client of each fallback target made from ``base_url`` (see ``resilient()``).
    http_client: HttpClientFactory | None = None
    prompts: tuple[str, ...] = DEMO_PROMPTS
    #: One call in this many asks a question never asked before, which no cache can answer.
    fresh_every: int = 5
    max_tokens: int = 32
    seed: int = 7

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be > 0 calls per second, got {self.rate}")
        if not self.phases:
            raise ValueError("the scenario needs at least one phase")
        if not self.prompts:
            raise ValueError("the demo needs at least one prompt")

    @property
    def fake(self) -> bool:
        """True when the demo runs against the embedded fake upstream."""
        return self.base_url is None

    @property
    def total(self) -> float:
        """The scenario's length in seconds."""
        return self.phases[-1].end


class _Request(TypedDict):
    """The arguments of one demo call to ``chat.completions.create``."""

    model: str
    messages: list[ChatCompletionMessageParam]
    max_tokens: int


class DemoRun:
    """One run of the demo: ``run()`` blocks until every call has ended and returns the result.

    The calls are driven by :class:`~resilient_openai.testing._load.Load` at the configured rate.
    ``on_tick`` (called from the thread that called ``run``, every ``tick`` seconds) receives a
    :class:`Snapshot` for a live view. Ctrl-C (or any error raised by ``on_tick``) stops the load,
    waits for the calls in flight, and propagates.
    """

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.policy = config.policy or demo_policy(config.model, DEMO_FALLBACK_MODEL if config.fake else None)
        self._route_models = tuple(
            step.model
            for step in route_for(self.policy.fallback, config.model).steps
            if step.kind == "model" and step.model is not None
        )
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._load = Load(rate=config.rate, duration=config.total, on_outcome=self._record, keep=False)
        self._over = threading.Event()  # set when the run is over: the conductor stops
        self._records: list[CallRecord] = []
        self._changes: list[BreakerChange] = []
        self._bug_reports: list[str] = []
        self._sources: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._upstream: FakeUpstream | None = None
        self._client: openai.OpenAI | openai.AsyncOpenAI | None = None
        self._base_url = config.base_url or ""

    # -- the public side -----------------------------------------------------------------------

    def run(self, on_tick: Callable[[Snapshot], None] | None = None, tick: float = 0.25) -> DemoResult:
        """Play the scenario under load and return what happened."""
        config = self.config
        with contextlib.ExitStack() as stack:
            if config.fake:
                # On the system clock: its request stamps share the run's time base.
                self._upstream = FakeUpstream(SYSTEM_CLOCK, models=(config.model, *self._route_models))
                self._conduct(0.0)
                base_url = stack.enter_context(self._upstream.serve())
            else:
                assert config.base_url is not None
                base_url = config.base_url
            self._base_url = base_url
            failure: list[BaseException] = []
            driver = threading.Thread(
                target=self._drive, args=(base_url, failure), name="resilient-openai-demo", daemon=True
            )
            conductor = threading.Thread(
                target=self._conductor, name="resilient-openai-demo-faults", daemon=True
            )
            driver.start()
            if config.fake:
                conductor.start()
            try:
                while driver.is_alive():
                    driver.join(tick)
                    if on_tick is not None and driver.is_alive():
                        on_tick(self.snapshot())
            finally:
                self._load.stop()
                self._over.set()
                driver.join()
                if conductor.is_alive():
                    conductor.join()
            if failure:
                raise failure[0]
            return self._result(base_url)

    def breaker_label(self, name: str) -> str:
        """A breaker's name as the live view shows it (see :func:`breaker_label`)."""
        return breaker_label(self._base_url, name)

    def snapshot(self) -> Snapshot:
        """The run as it stands now (safe to call from any thread while it runs)."""
        elapsed = self._load.elapsed()
        config = self.config
        index, _ = phase_at(config.phases, elapsed)
        cutoff = elapsed - RECENT_WINDOW
        with self._lock:
            recent: list[float] = []
            for record in reversed(self._records):
                if record.end < cutoff:
                    break
                recent.append(record.latency)
            done = len(self._records)
            snapshot_sources = dict(self._sources)
            snapshot_errors = dict(self._errors)
            bugs = len(self._bug_reports)
        breakers = _breakers(self._client)
        return Snapshot(
            elapsed=min(elapsed, config.total),
            total=config.total,
            phase=config.phases[index],
            phase_index=index,
            calls=done,
            in_flight=self._load.in_flight,
            by_source=snapshot_sources,
            errors=snapshot_errors,
            bugs=bugs,
            p50=percentile(recent, 50),
            p95=percentile(recent, 95),
            p99=percentile(recent, 99),
            upstream_requests=self._upstream.count() if self._upstream is not None else None,
            breakers=breakers,
        )

    # -- the fake's script ---------------------------------------------------------------------

    def _conductor(self) -> None:
        """Switch the fake's faults as the phases go by, until the run stops."""
        while not self._over.wait(_CONDUCTOR_PERIOD):
            self._conduct(self._load.elapsed())

    def _conduct(self, elapsed: float) -> None:
        upstream = self._upstream
        assert upstream is not None
        phases = self.config.phases
        index, fraction = phase_at(phases, elapsed)
        primary, fallback = phase_faults(
            phases[index].name, fraction, slow_delay=slow_delay_for(self.policy), rng=self._rng
        )
        upstream.set_default(self.config.model, primary)
        for model in self._route_models:
            if model != self.config.model:
                upstream.set_default(model, fallback)

    # -- the load ------------------------------------------------------------------------------

    def _drive(self, base_url: str, failure: list[BaseException]) -> None:
        """Run the load to the end of the scenario (a thread); any crash is handed to ``run``."""
        try:
            if self.config.use_async:
                asyncio.run(self._drive_async(base_url))
            else:
                client = resilient(
                    openai.OpenAI(base_url=base_url, api_key=self.config.api_key),
                    self.policy,
                    listeners=(self._on_event,),
                    http_client=self.config.http_client,
                )
                self._client = client
                with client:
                    self._load.run_threads(
                        lambda call: client.chat.completions.create(**self._request(call)),
                        self.config.concurrency,
                    )
        except BaseException as exc:
            failure.append(exc)
            self._load.stop()

    async def _drive_async(self, base_url: str) -> None:
        client = resilient(
            openai.AsyncOpenAI(base_url=base_url, api_key=self.config.api_key),
            self.policy,
            listeners=(self._on_event,),
            http_client=self.config.http_client,
        )
        self._client = client
        async with client:
            await self._load.run_tasks(
                lambda call: client.chat.completions.create(**self._request(call)),
                self.config.concurrency,
            )

    def _request(self, call: Call) -> _Request:
        """One call's arguments: a fresh question every ``fresh_every`` calls, else one the cache may know."""
        every = self.config.fresh_every
        if every and call.number % every == every - 1:
            prompt = f"Quick check #{call.number}: reply with OK."
        else:
            with self._lock:
                prompt = self._rng.choice(self.config.prompts)
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.config.max_tokens,
        }

    # -- recording -----------------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        """Turn one call's outcome into a :class:`CallRecord` (the load's ``on_outcome``)."""
        record, error = outcome.provenance, outcome.error
        phase, _ = phase_at(self.config.phases, outcome.start)
        source = model = name = report = None
        attempts = len(record.attempts) if record is not None else 0
        if error is not None:
            name = type(error).__name__
            # The contract: every error out of a resilient client is an openai.OpenAIError
            # (the SDK's own, or one of ours deriving from it). Anything else is a bug to show.
            if not isinstance(error, openai.OpenAIError):
                report = "".join(traceback.format_exception(error)).rstrip()
        elif record is None or record.source is None:
            name, attempts = "MissingProvenance", 0
            report = f"an answer came back without provenance: {type(outcome.result).__name__}"
        else:
            source, model = record.source.value, record.model
        call = CallRecord(
            outcome.start, outcome.latency, phase, source, model, name, report is not None, attempts
        )
        with self._lock:
            self._records.append(call)
            if source is not None:
                self._sources[source] += 1
            if name is not None:
                self._errors[name] += 1
            if report is not None and len(self._bug_reports) < _MAX_BUG_REPORTS:
                self._bug_reports.append(report)

    def _on_event(self, event: Event) -> None:
        """The policy listener: note every breaker transition with the run's own time."""
        if isinstance(event, BreakerStateChanged):
            change = BreakerChange(self._load.elapsed(), event.breaker, event.old, event.new, event.reason)
            with self._lock:
                self._changes.append(change)

    def _result(self, base_url: str) -> DemoResult:
        with self._lock:
            records = tuple(sorted(self._records, key=lambda r: r.start))
            changes = tuple(sorted(self._changes, key=lambda c: c.at))
            bug_reports = tuple(self._bug_reports)
        upstream = self._upstream
        arrivals: list[tuple[float, str | None]] | None = None
        if upstream is not None:
            # The fake stamps requests with the system clock, the one the run's start came from.
            arrivals = [(request.at - self._load.t0, request.model) for request in upstream.requests]
        client = self._client
        return DemoResult(
            config=self.config,
            base_url=base_url,
            phases=self.config.phases,
            records=records,
            breaker_changes=changes,
            breakers=_breakers(client),
            summaries=summarize(self.config.phases, records, arrivals),
            upstream_requests=len(arrivals) if arrivals is not None else None,
            duration=max((r.end for r in records), default=0.0),
            bug_reports=bug_reports,
        )


def _breakers(client: object | None) -> tuple[Mapping[str, Any], ...]:
    """The client's breakers from ``health()``, sorted by name so a view's rows stay put."""
    if client is None:
        return ()
    return tuple(sorted(health(client)["breakers"], key=lambda b: str(b["name"])))


def breaker_timeline(result: DemoResult) -> Iterator[tuple[str, list[tuple[float, float, str]]]]:
    """Each breaker's states as ``(start, end, state)`` spans over the run, for plotting.

    A breaker is taken as closed from the start of the run until its first recorded change.
    """
    names = [b["name"] for b in result.breakers]
    names += [c.breaker for c in result.breaker_changes if c.breaker not in names]
    end = max(result.duration, result.phases[-1].end)
    for name in dict.fromkeys(names):
        spans: list[tuple[float, float, str]] = []
        state, since = "closed", 0.0
        for change in result.breaker_changes:
            if change.breaker != name:
                continue
            if change.at > since:
                spans.append((since, change.at, state))
            state, since = change.new, change.at
        spans.append((since, max(end, since), state))
        yield name, spans
