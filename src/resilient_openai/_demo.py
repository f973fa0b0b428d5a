"""The engine behind ``resilient-openai demo``: a scripted outage under steady load, as records.

:class:`DemoRun` plays a :class:`Stage` (the fake upstream on a loopback socket, its faults
switched as the scenario's phases go by) to one :class:`Caller` (chat completions at a steady
rate through one resilient client, from threads or asyncio tasks driven by the shared load
driver, :mod:`resilient_openai.testing._load`). The workers mode
(:mod:`resilient_openai._demo_workers`) plays one stage to a caller in each worker process. A
:class:`DemoResult` is the run so far (for a live view) or finished: every call as a
:class:`CallRecord`, every breaker transition, and a :class:`PhaseSummary` per phase (those
records live in :mod:`resilient_openai._demo_result`, and are exported from here too).

Nothing here draws or prints, and nothing needs typer, rich or matplotlib: the CLI renders what
this produces, and tests run it headless.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import openai

from ._client import resilient
from ._clock import SYSTEM_CLOCK
from ._demo_result import (
    DEMO_MODEL,
    FAILING_PHASES,
    Arrival,
    BreakerChange,
    CallRecord,
    DemoResult,
    Phase,
    PhaseSummary,
    WorkerStatus,
    breaker_timeline,
    phase_at,
)
from ._fallback.plan import route_for
from ._health import health
from ._policy import Policy
from ._runtime import HttpClientFactory
from .observe.events import BreakerStateChanged, Event
from .testing import Delay, FakeUpstream, Fault, Ok, Status
from .testing._load import Call, Load, Outcome, percentile

__all__ = [
    "DEFAULT_SCENARIO",
    "DEMO_FALLBACK_MODEL",
    "DEMO_MODEL",
    "FAILING_PHASES",
    "WORKER_HEADER",
    "Arrival",
    "BreakerChange",
    "CallRecord",
    "Caller",
    "DemoConfig",
    "DemoResult",
    "DemoRun",
    "Phase",
    "PhaseSummary",
    "Stage",
    "WorkerStatus",
    "breaker_timeline",
    "demo_policy",
    "parse_scenario",
    "percentile",
    "phase_at",
    "phase_faults",
    "warm_up",
]

#: The phases a scenario may name, each a way the fake upstream behaves (see :func:`phase_faults`).
PHASE_KINDS: Final = ("healthy", "storm", "slow", "recovery")
DEFAULT_SCENARIO: Final = "healthy:5,storm:8,slow:4,recovery:6"
DEMO_FALLBACK_MODEL: Final = "gpt-demo-mini"
#: The header a worker process's client sends, so the one upstream counts requests per worker.
WORKER_HEADER: Final = "x-demo-worker"

#: Questions the load cycles through: few enough that the cache has answers when the storm hits.
DEMO_PROMPTS: Final = (
    "What is a circuit breaker, in one sentence?",
    "Name one reason to retry an HTTP request.",
    "What does HTTP 503 mean?",
    "Give me a synonym for 'resilient'.",
    "What is exponential backoff?",
    "Why cache answers from a language model?",
)
#: One call in this many asks a question never asked before, which no cache can answer.
FRESH_EVERY: Final = 5
#: How often the fake's faults are switched and a live view is handed a new result, in seconds.
TICK: Final = 0.05
_MAX_BUG_REPORTS: Final = 5

_ClientT = TypeVar("_ClientT", openai.OpenAI, openai.AsyncOpenAI)


def parse_scenario(text: str, *, total: float | None = None) -> tuple[Phase, ...]:
    """Read ``"healthy:5,storm:8,slow:4,recovery:6"`` into phases laid end to end (seconds).

    A phase may appear more than once. ``total`` stretches or shrinks every phase in proportion
    so the scenario lasts that long. Raises ``ValueError`` naming the faulty part.
    """
    if total is not None and not (math.isfinite(total) and total > 0):
        raise ValueError(f"the duration must be > 0 seconds, got {total}")
    phases: list[Phase] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
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
        start = phases[-1].end if phases else 0.0
        phases.append(Phase(name, start, start + duration))
    if not phases:
        raise ValueError("the scenario names no phase; e.g. " + DEFAULT_SCENARIO)
    scale = 1.0 if total is None else total / phases[-1].end
    return tuple(Phase(p.name, p.start * scale, p.end * scale) for p in phases)


def phase_faults(kind: str, fraction: float, *, slow_delay: float, rng: random.Random) -> tuple[Fault, Fault]:
    """How the fake answers the primary model and its fallback model ``fraction`` into a phase.

    - ``healthy`` / ``recovery``: both answer, with a little random latency;
    - ``storm``: the primary answers 503; the fallback model holds for the first half of the
      storm, then fails too, so the cache and the canned reply get their turn;
    - ``slow``: the primary takes ``slow_delay`` seconds (beyond the attempt timeout); the
      fallback model answers.
    """
    primary_latency = 0.015 + min(rng.expovariate(1 / 0.03), 0.4)
    fallback_ok = Ok(latency=0.008 + min(rng.expovariate(1 / 0.015), 0.2))
    if kind == "storm":
        return Status(503), fallback_ok if fraction < 0.5 else Status(503)
    if kind == "slow":
        return Delay(slow_delay, then=Ok()), fallback_ok
    return Ok(latency=primary_latency), fallback_ok


def demo_policy(model: str, fallback_model: str, *, break_duration: float = 3.0) -> Policy:
    """The policy the demo uses when none is given: short limits, a quick breaker, a full route.

    ``model`` falls back to ``fallback_model``, then to the cache, then to a canned reply.
    Retries are few and quick, and the breaker's break does not grow, so a 25-second run shows
    it open, probe and close more than once.
    """
    retry_rule = {"attempts": 2, "base": 0.1, "cap": 0.5}
    canned = "[canned] {model} is unavailable right now ({reason}). Try again soon."
    return Policy.from_dict({
        "retry": {"rules": {v: retry_rule for v in ("server_error", "timeout", "connection_error")}},
        "timeouts": {"total": 3.0, "attempt": 1.0, "connect": 0.5, "first_token": 1.0, "stream_idle": 1.0},
        "breaker": {
            "mode": "consecutive", "fail_max": 5, "break_duration": break_duration, "break_multiplier": 1.0,
            "break_max": break_duration, "probe_lease": 3.0,
        },
        "fallback": {"routes": {model: {"steps": [
            {"kind": "model", "model": fallback_model}, {"kind": "cache"}, {"kind": "canned", "text": canned},
        ]}}},
        "cache": {"ttl": 600.0},
    })  # fmt: skip


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How to run the demo: the phases play out on :data:`DEMO_MODEL` and the models of its route."""

    phases: tuple[Phase, ...] = field(default_factory=lambda: parse_scenario(DEFAULT_SCENARIO))
    concurrency: int = 16
    rate: float = 20.0
    use_async: bool = False
    #: None: :func:`demo_policy`.
    policy: Policy | None = None
    #: Builds the HTTP client of each fallback target made from ``base_url`` (see ``resilient()``).
    http_client: HttpClientFactory | None = None


class Stage:
    """The fake upstream of a run, served on loopback, its faults switched as the scenario plays.

    Every caller's client, in this process or in worker processes, talks to the one upstream
    :meth:`serve` yields; a client sending :data:`WORKER_HEADER` has its requests counted per
    worker in :meth:`arrivals`.
    """

    def __init__(self, phases: tuple[Phase, ...], policy: Policy) -> None:
        self.phases = phases
        route = route_for(policy.fallback, DEMO_MODEL)
        models = [s.model for s in route.steps if s.kind == "model" and s.model is not None]
        self._fallback_models = [model for model in models if model != DEMO_MODEL]
        # Past the attempt timeout when that is short; capped so a long timeout shows slow answers.
        self._slow_delay = min(policy.timeouts.attempt + 1.0, 5.0)
        self.upstream = FakeUpstream(SYSTEM_CLOCK, models=(DEMO_MODEL, *self._fallback_models))
        self._rng = random.Random(7)

    def serve(self) -> AbstractContextManager[str]:
        """Serve the upstream on a loopback port; yields its ``/v1`` base URL."""
        return self.upstream.serve()

    def conduct(self, elapsed: float) -> None:
        """Set the fake's faults for the moment of the scenario ``elapsed`` seconds in."""
        index, fraction = phase_at(self.phases, elapsed)
        primary, fallback = phase_faults(
            self.phases[index].name, fraction, slow_delay=self._slow_delay, rng=self._rng
        )
        self.upstream.set_default(DEMO_MODEL, primary)
        for model in self._fallback_models:
            self.upstream.set_default(model, fallback)

    def arrivals(self, origin: float) -> tuple[Arrival, ...]:
        """Every request received so far, timed from ``origin`` (``time.monotonic``, as the fake's clock)."""
        return tuple(
            Arrival(r.at - origin, r.model, int(w) if (w := r.headers.get(WORKER_HEADER)) else None)
            for r in self.upstream.requests
        )


def warm_up(base_url: str, policy: Policy) -> None:
    """One call to ``base_url`` (model ``warm-up``) through a throwaway client of ``policy``.

    Made before a run's clock starts, so the SDK's and the chain's lazy imports and the first
    connection do not make the run's first calls look slow. Shares no state (``shared`` is off).
    """
    local = policy.model_copy(update={"shared": None})
    with resilient(openai.OpenAI(base_url=base_url, api_key="sk-demo-not-a-real-key"), local) as client:
        client.chat.completions.create(model="warm-up", messages=[{"role": "user", "content": "hi"}])


class Caller:
    """The calling side of a run: one resilient client under the load driver, every call recorded.

    ``rate`` calls per second from ``config.concurrency`` threads or tasks, the first due
    ``offset`` seconds after ``origin`` (see :class:`~resilient_openai.testing._load.Load`).
    ``worker`` (a worker process's index) stamps its records, its breaker changes and, as
    :data:`WORKER_HEADER`, its requests.
    """

    def __init__(
        self,
        config: DemoConfig,
        policy: Policy,
        *,
        rate: float,
        concurrency: int,
        offset: float = 0.0,
        origin: float | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.worker = worker
        self._concurrency = concurrency
        self._rng = random.Random(7 if worker is None else f"7:{worker}")
        self._lock = threading.Lock()
        self.load = Load(
            rate=rate, offset=offset, duration=config.phases[-1].end, on_outcome=self._record,
            keep=False, origin=origin, seed=worker or 0,
        )  # fmt: skip
        self._records: list[CallRecord] = []
        self._changes: list[BreakerChange] = []
        self._bug_reports: list[str] = []
        self._client: openai.OpenAI | openai.AsyncOpenAI | None = None

    def collected(self) -> tuple[tuple[CallRecord, ...], tuple[BreakerChange, ...], tuple[str, ...]]:
        """The calls, breaker changes and bug reports so far (copies; safe from any thread)."""
        with self._lock:
            return tuple(self._records), tuple(self._changes), tuple(self._bug_reports)

    def breakers(self) -> list[dict[str, Any]]:
        """``health(client)["breakers"]`` sorted by name (none before the client exists)."""
        client = self._client
        return [] if client is None else sorted(health(client)["breakers"], key=lambda b: str(b["name"]))

    def drive(self, base_url: str) -> None:
        """Run the load against ``base_url`` to the end of the scenario (blocks); close the client."""
        if self.config.use_async:
            asyncio.run(self._drive_async(base_url))
            return
        with self._connect(openai.OpenAI, base_url) as client:
            self.load.run_threads(
                lambda call: client.chat.completions.create(
                    model=DEMO_MODEL,
                    messages=[{"role": "user", "content": self._prompt(call)}],
                    max_tokens=32,
                ),
                self._concurrency,
            )

    async def _drive_async(self, base_url: str) -> None:
        async with self._connect(openai.AsyncOpenAI, base_url) as client:
            await self.load.run_tasks(
                lambda call: client.chat.completions.create(
                    model=DEMO_MODEL,
                    messages=[{"role": "user", "content": self._prompt(call)}],
                    max_tokens=32,
                ),
                self._concurrency,
            )

    def _connect(self, kind: type[_ClientT], base_url: str) -> _ClientT:
        headers = None if self.worker is None else {WORKER_HEADER: str(self.worker)}
        client = resilient(
            kind(base_url=base_url, api_key="sk-demo-not-a-real-key", default_headers=headers),
            self.policy,
            listeners=(self._on_event,),
            http_client=self.config.http_client,
        )
        self._client = client
        return client

    def _prompt(self, call: Call) -> str:
        """A fresh question every :data:`FRESH_EVERY` calls, else one the cache may know."""
        if call.number % FRESH_EVERY == FRESH_EVERY - 1:
            return f"Quick check #{call.number}: reply with OK."
        with self._lock:
            return self._rng.choice(DEMO_PROMPTS)

    def _record(self, outcome: Outcome) -> None:
        """Turn one call's outcome into a :class:`CallRecord` (the load's ``on_outcome``)."""
        error, found = outcome.error, outcome.provenance
        source = name = report = None
        if error is not None:
            name = type(error).__name__
            # The contract: every error out of a resilient client is an openai.OpenAIError
            # (the SDK's own, or one of ours deriving from it). Anything else is a bug to show.
            if not isinstance(error, openai.OpenAIError):
                report = "".join(traceback.format_exception(error)).rstrip()
        elif found is None or found.source is None:
            name = "MissingProvenance"
            report = f"an answer came back without provenance: {type(outcome.result).__name__}"
        else:
            source = found.source.value
        phase, _ = phase_at(self.config.phases, outcome.start)
        record = CallRecord(
            outcome.start, outcome.latency, phase, source, name, report is not None, self.worker
        )
        with self._lock:
            self._records.append(record)
            if report is not None and len(self._bug_reports) < _MAX_BUG_REPORTS:
                self._bug_reports.append(report)

    def _on_event(self, event: Event) -> None:
        """The policy listener: note every breaker transition with the run's own time."""
        if isinstance(event, BreakerStateChanged):
            change = BreakerChange(self.load.elapsed(), event.breaker, event.new, self.worker)
            with self._lock:
                self._changes.append(change)


class DemoRun:
    """One run of the demo in this process: ``run()`` blocks until every call has ended.

    ``on_tick`` (called from the thread that called ``run``, every :data:`TICK` seconds)
    receives the run so far for a live view. Ctrl-C (or any error raised by ``on_tick``) stops
    the load, waits for the calls in flight, and propagates.
    """

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.policy = config.policy or demo_policy(DEMO_MODEL, DEMO_FALLBACK_MODEL)
        self._stage = Stage(config.phases, self.policy)
        self._caller = Caller(config, self.policy, rate=config.rate, concurrency=config.concurrency)
        self._base_url = ""

    def run(self, on_tick: Callable[[DemoResult], None] | None = None) -> DemoResult:
        """Play the scenario under load and return what happened."""
        load = self._caller.load
        self._stage.conduct(load.elapsed())
        with self._stage.serve() as self._base_url:
            failure: list[BaseException] = []
            driver = threading.Thread(
                target=self._drive, args=(failure,), name="resilient-openai-demo", daemon=True
            )
            driver.start()
            try:
                while driver.is_alive():
                    driver.join(TICK)
                    self._stage.conduct(load.elapsed())
                    if on_tick is not None:
                        on_tick(self.snapshot())
            finally:
                load.stop()
                driver.join()
            if failure:
                raise failure[0]
            return self.snapshot()

    def _drive(self, failure: list[BaseException]) -> None:
        """Run the load (a thread); any crash is handed to ``run``."""
        try:
            self._caller.drive(self._base_url)
        except BaseException as exc:
            failure.append(exc)
            self._caller.load.stop()

    def snapshot(self) -> DemoResult:
        """The run as it stands now (safe to call from any thread while it runs)."""
        records, changes, reports = self._caller.collected()
        load = self._caller.load
        return DemoResult(
            phases=self.config.phases,
            base_url=self._base_url,
            elapsed=min(load.elapsed(), self.config.phases[-1].end),
            in_flight=load.in_flight,
            records=records,
            arrivals=self._stage.arrivals(load.t0),
            breaker_changes=tuple(sorted(changes, key=lambda c: c.at)),
            breakers=tuple(self._caller.breakers()),
            bug_reports=reports,
        )
