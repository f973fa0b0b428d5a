"""What a demo run records and sums up to: phases, calls, breaker changes, requests, workers.

:class:`DemoResult` is a run so far (for a live view) or finished, in one process or in
several workers (:mod:`resilient_openai._demo_workers`); :func:`breaker_timeline` turns its
breaker changes into rows of spans for a picture. Pure data and arithmetic: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ._breaker import default_key
from .testing._load import percentile

__all__ = [
    "DEMO_MODEL",
    "FAILING_PHASES",
    "Arrival",
    "BreakerChange",
    "CallRecord",
    "DemoResult",
    "Phase",
    "PhaseSummary",
    "WorkerStatus",
    "breaker_timeline",
    "phase_at",
]

DEMO_MODEL: Final = "gpt-demo"
#: The phases in which the primary model fails (answers 503, or too late).
FAILING_PHASES: Final = ("storm", "slow")


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the scenario: what the upstream does (``name``), from ``start`` to ``end`` s."""

    name: str
    start: float
    end: float


def phase_at(phases: Sequence[Phase], elapsed: float) -> tuple[int, float]:
    """The index of the phase running ``elapsed`` s into the run, and how far into it (0..1).

    Past the end it stays in the last phase (calls still in flight finish there).
    """
    for index, phase in enumerate(phases):
        if elapsed < phase.end:
            return index, max(elapsed - phase.start, 0.0) / (phase.end - phase.start)
    return len(phases) - 1, 1.0


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call of the demo: when it started (s after the run's start), in which phase, how it ended.

    ``source`` is the provenance's source (``"upstream"``, ``"cache"``...) or None on an error;
    ``error`` the exception's class name; ``bug`` is True for an exception that is not an
    ``openai.OpenAIError`` (or an answer with no provenance): the library broke its contract.
    ``worker`` is the worker process that made the call (None in a one-process run).
    """

    start: float
    latency: float
    phase: int
    source: str | None
    error: str | None
    bug: bool
    worker: int | None = None


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A breaker changed state ``at`` s after the run's start, as ``worker`` saw it (None: one process)."""

    at: float
    breaker: str
    new: str
    worker: int | None = None


class Arrival(NamedTuple):
    """One request the upstream received: when (s after the run's start), for which model, from whom."""

    at: float
    model: str | None
    worker: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker process of a workers run, as its latest report tells: pid, breakers, calls in flight."""

    index: int
    pid: int
    #: ``health(client)["breakers"]`` of the worker's client, sorted by name.
    breakers: tuple[Mapping[str, Any], ...]
    in_flight: int
    #: The worker has made its last call and reported it.
    done: bool


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    """The calls that started in one phase (or the whole run) and the upstream requests it saw."""

    phase: Phase
    calls: int
    by_source: Counter[str]
    errors: int
    p50: float | None
    p99: float | None
    upstream_requests: int
    #: Upstream requests that asked for the primary model.
    to_primary: int

    @classmethod
    def of(cls, phase: Phase, records: Sequence[CallRecord], models: Sequence[str | None]) -> PhaseSummary:
        """Sum up ``records`` and the ``models`` of the upstream requests of ``phase``."""
        latencies = [r.latency for r in records]
        return cls(
            phase, len(records), Counter(r.source for r in records if r.source is not None),
            sum(1 for r in records if r.error is not None), percentile(latencies, 50),
            percentile(latencies, 99), len(models), models.count(DEMO_MODEL),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DemoResult:
    """A run as it stands (a live view's snapshot) or finished: its calls, requests and breakers."""

    phases: tuple[Phase, ...]
    base_url: str
    elapsed: float
    in_flight: int
    records: tuple[CallRecord, ...]
    #: Every request the upstream received.
    arrivals: tuple[Arrival, ...]
    breaker_changes: tuple[BreakerChange, ...]
    #: ``health(client)["breakers"]``, sorted by name: one dict per breaker (name, state...).
    breakers: tuple[Mapping[str, Any], ...]
    #: Tracebacks of the first few unexpected exceptions.
    bug_reports: tuple[str, ...]
    #: A workers run's processes, by index (empty in a one-process run).
    workers: tuple[WorkerStatus, ...] = ()
    #: A workers run: where its breakers live (shared on Redis, or each worker's own, and why).
    sharing: str = ""
    #: A workers run whose workers share their breakers on Redis.
    shared: bool = False

    @property
    def phase(self) -> Phase:
        """The phase playing at ``elapsed``."""
        return self.phases[phase_at(self.phases, self.elapsed)[0]]

    @property
    def summaries(self) -> tuple[PhaseSummary, ...]:
        """One summary per phase: calls by the phase they started in, requests by arrival."""
        models: list[list[str | None]] = [[] for _ in self.phases]
        for arrival in self.arrivals:
            models[phase_at(self.phases, arrival.at)[0]].append(arrival.model)
        return tuple(
            PhaseSummary.of(phase, [r for r in self.records if r.phase == i], models[i])
            for i, phase in enumerate(self.phases)
        )

    @property
    def total(self) -> PhaseSummary:
        """The whole run summed up, as a phase named ``total``."""
        return PhaseSummary.of(
            Phase("total", 0.0, self.duration), self.records, [arrival.model for arrival in self.arrivals]
        )

    @property
    def duration(self) -> float:
        """Seconds from the start to the last call's end."""
        return max((r.start + r.latency for r in self.records), default=0.0)

    @property
    def upstream_requests(self) -> int:
        """Requests the fake upstream received."""
        return len(self.arrivals)

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
        return self.total.by_source

    def errors(self) -> Counter[str]:
        """Errors per exception class over the whole run."""
        return Counter(record.error for record in self.records if record.error is not None)

    def outage_requests(self) -> Counter[int | None]:
        """Requests to the primary model while it was failing (:data:`FAILING_PHASES`), per worker."""
        failing = {i for i, phase in enumerate(self.phases) if phase.name in FAILING_PHASES}
        return Counter(
            a.worker
            for a in self.arrivals
            if a.model == DEMO_MODEL and phase_at(self.phases, a.at)[0] in failing
        )

    def breaker_label(self, name: str) -> str:
        """A breaker's name without the fake's ``host:port/path:`` (its port means nothing to a reader)."""
        return name.removeprefix(default_key(self.base_url, None) + ":")


def breaker_timeline(result: DemoResult) -> Iterator[tuple[str, list[tuple[float, float, str]]]]:
    """Rows of breaker states as ``(start, end, state)`` spans over the run, each with its label.

    One row per breaker in a one-process run; in a workers run one row per worker, its breaker of
    :data:`DEMO_MODEL` (shared breakers' rows move together). A breaker is taken as closed from
    the start of the run until its first recorded change.
    """
    end = max(result.duration, result.phases[-1].end)
    if result.workers:
        for worker in result.workers:
            mine = [
                c for c in result.breaker_changes
                if c.worker == worker.index and result.breaker_label(c.breaker) == DEMO_MODEL
            ]  # fmt: skip
            yield f"worker {worker.index} (pid {worker.pid})", _spans(mine, end)
        return
    names = [str(b["name"]) for b in result.breakers] + [c.breaker for c in result.breaker_changes]
    for name in dict.fromkeys(names):
        mine = [c for c in result.breaker_changes if c.breaker == name]
        yield result.breaker_label(name), _spans(mine, end)


def _spans(changes: Sequence[BreakerChange], end: float) -> list[tuple[float, float, str]]:
    """One breaker's ``changes`` (in time order) as spans from 0 to ``end``, closed at first."""
    spans: list[tuple[float, float, str]] = []
    state, since = "closed", 0.0
    for change in changes:
        if change.at > since:
            spans.append((since, change.at, state))
        state, since = change.new, change.at
    spans.append((since, max(end, since), state))
    return spans
