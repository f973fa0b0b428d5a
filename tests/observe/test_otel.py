"""OpenTelemetryListener: GenAI-convention names and attributes, recorded through a fake Meter."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from opentelemetry.metrics import Counter, Histogram, NoOpMeter

from resilient_openai.observe.events import (
    AttemptFailed,
    BreakerStateChanged,
    CallCompleted,
    CallRejected,
    Event,
    EventBus,
    FallbackServed,
    RetryBudgetExhausted,
    RetryScheduled,
    StreamEventSkipped,
)
from resilient_openai.observe.otel import DURATION_BUCKETS, OpenTelemetryListener, gen_ai_operation_name

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.util.types import Attributes

Measurement = tuple[float, dict[str, object]]


class FakeCounter(Counter):
    """A Counter that keeps every ``add``."""

    def __init__(self, name: str, unit: str = "", description: str = "") -> None:
        self.name, self.unit, self.description = name, unit, description
        self.measurements: list[Measurement] = []

    def add(self, amount: float, attributes: Attributes = None, context: Context | None = None) -> None:
        self.measurements.append((amount, dict(attributes or {})))


class FakeHistogram(Histogram):
    """A Histogram that keeps every ``record`` and its advisory buckets."""

    def __init__(
        self, name: str, unit: str = "", description: str = "", buckets: Sequence[float] | None = None
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.buckets = buckets
        self.measurements: list[Measurement] = []

    def record(self, amount: float, attributes: Attributes = None, context: Context | None = None) -> None:
        self.measurements.append((amount, dict(attributes or {})))


class FakeMeter(NoOpMeter):
    """A Meter whose counters and histograms remember what they were given."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.instruments: dict[str, FakeCounter | FakeHistogram] = {}

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        counter = FakeCounter(name, unit, description)
        self.instruments[name] = counter
        return counter

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> Histogram:
        histogram = FakeHistogram(name, unit, description, explicit_bucket_boundaries_advisory)
        self.instruments[name] = histogram
        return histogram

    def measurements(self, name: str) -> list[Measurement]:
        """What the instrument called ``name`` received."""
        return self.instruments[name].measurements


@dataclass(frozen=True, slots=True)
class CustomEvent(Event):
    """An event type the listener has never heard of."""

    detail: str


@pytest.fixture
def meter() -> FakeMeter:
    """A fresh fake meter."""
    return FakeMeter()


DURATION = "gen_ai.client.operation.duration"


def _completed(
    operation: str = "chat.completions",
    model: str | None = "gpt-4o",
    source: str | None = "upstream",
    verdict: str = "success",
    error: str | None = None,
    latency: float = 0.4,
    answered_by: str | None = None,
) -> CallCompleted:
    return CallCompleted(1.0, operation, model, source, verdict, 1, latency, error, answered_by)


def test_instruments_use_the_convention_names(meter: FakeMeter) -> None:
    """The duration histogram is the GenAI one, in seconds with the recommended buckets."""
    OpenTelemetryListener(meter)
    duration = meter.instruments[DURATION]
    assert isinstance(duration, FakeHistogram)
    assert (duration.unit, duration.buckets) == ("s", DURATION_BUCKETS)
    assert set(meter.instruments) == {
        DURATION,
        "resilient_openai.retries",
        "resilient_openai.retry_budget.exhausted",
        "resilient_openai.fallbacks",
        "resilient_openai.breaker.transitions",
        "resilient_openai.breaker.rejections",
        "resilient_openai.stream.events_skipped",
    }


def test_answered_call_duration(meter: FakeMeter) -> None:
    """An answered call records its latency with operation, provider, model and source, no error."""
    OpenTelemetryListener(meter)(_completed(latency=0.4))
    assert meter.measurements(DURATION) == [
        (0.4, {
            "gen_ai.operation.name": "chat",
            "openai.api.type": "chat_completions",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "resilient_openai.source": "upstream",
        })
    ]  # fmt: skip


def test_failed_call_carries_error_type(meter: FakeMeter) -> None:
    """A failed call has ``error.type`` set to its verdict, and no source (nobody answered)."""
    OpenTelemetryListener(meter)(_completed(source=None, verdict="rate_limited", error="RateLimitError"))
    [(_, attributes)] = meter.measurements(DURATION)
    assert attributes["error.type"] == "rate_limited"
    assert "resilient_openai.source" not in attributes


@pytest.mark.parametrize(
    ("operation", "name", "api_type"),
    [
        ("chat.completions", "chat", "chat_completions"),
        ("responses", "chat", "responses"),
        ("embeddings", "embeddings", None),
        ("completions", "text_completion", None),
        ("images.generate", "images.generate", None),
    ],
)
def test_operation_names_follow_the_conventions(
    meter: FakeMeter, operation: str, name: str, api_type: str | None
) -> None:
    """Our operations map to ``gen_ai.operation.name``; Chat Completions and Responses differ by API type."""
    assert gen_ai_operation_name(operation) == name
    OpenTelemetryListener(meter)(_completed(operation=operation))
    [(_, attributes)] = meter.measurements(DURATION)
    assert attributes["gen_ai.operation.name"] == name
    assert attributes.get("openai.api.type") == api_type


def test_fallback_names_the_response_model(meter: FakeMeter) -> None:
    """After a fallback, the call's duration carries the model that really answered."""
    listener = OpenTelemetryListener(meter)
    listener(
        FallbackServed(1.0, "chat.completions", "gpt-4o", "gpt-4o-mini", "fallback_model", "rate_limited")
    )
    listener(_completed(source="fallback_model", answered_by="gpt-4o-mini"))
    listener(_completed(source="upstream"))
    first, second = (attributes for _, attributes in meter.measurements(DURATION))
    assert first["gen_ai.response.model"] == "gpt-4o-mini"
    assert first["gen_ai.request.model"] == "gpt-4o"
    assert "gen_ai.response.model" not in second
    assert meter.measurements("resilient_openai.fallbacks") == [
        (1, {
            "gen_ai.operation.name": "chat",
            "openai.api.type": "chat_completions",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-mini",
            "resilient_openai.source": "fallback_model",
            "resilient_openai.reason": "rate_limited",
        })
    ]  # fmt: skip


def test_retries_counter(meter: FakeMeter) -> None:
    """A scheduled retry counts once, with the failed attempt's verdict as ``error.type``."""
    OpenTelemetryListener(meter)(RetryScheduled(1.0, "embeddings", "te-3", "primary", 1, 0.5, "server_error"))
    assert meter.measurements("resilient_openai.retries") == [
        (1, {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "te-3",
            "error.type": "server_error",
            "resilient_openai.breaker.name": "primary",
        })
    ]  # fmt: skip


def test_retry_budget_counter(meter: FakeMeter) -> None:
    """A retry the budget refused counts once, with the target and the failed attempt's verdict."""
    OpenTelemetryListener(meter)(
        RetryBudgetExhausted(1.0, "embeddings", "te-3", "primary", 1, "server_error")
    )
    assert meter.measurements("resilient_openai.retry_budget.exhausted") == [
        (1, {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "te-3",
            "error.type": "server_error",
            "resilient_openai.breaker.name": "primary",
        })
    ]  # fmt: skip
    assert meter.measurements("resilient_openai.retries") == []


def test_breaker_counters(meter: FakeMeter) -> None:
    """Transitions count per breaker and state entered; rejections per breaker."""
    listener = OpenTelemetryListener(meter)
    listener(BreakerStateChanged(1.0, "primary", "closed", "open", "failure_rate", 30.0))
    listener(CallRejected(1.0, "primary", 29.0))
    assert meter.measurements("resilient_openai.breaker.transitions") == [
        (1, {"resilient_openai.breaker.name": "primary", "resilient_openai.breaker.state": "open"})
    ]
    assert meter.measurements("resilient_openai.breaker.rejections") == [
        (1, {"resilient_openai.breaker.name": "primary"})
    ]


def test_provider_can_be_changed_or_left_out(meter: FakeMeter) -> None:
    """``provider`` sets ``gen_ai.provider.name``; None omits it."""
    OpenTelemetryListener(meter, provider="azure.ai.openai")(_completed())
    other = FakeMeter()
    OpenTelemetryListener(other, provider=None)(_completed())
    assert meter.measurements(DURATION)[0][1]["gen_ai.provider.name"] == "azure.ai.openai"
    assert "gen_ai.provider.name" not in other.measurements(DURATION)[0][1]


def test_attributes_are_bounded(meter: FakeMeter) -> None:
    """Per-call details (latency, attempts, error names, times) never become attributes."""
    listener = OpenTelemetryListener(meter)
    for i in range(200):
        listener(
            CallCompleted(float(i), "chat.completions", "gpt-4o", None, "timeout", i, i / 3, f"Error{i}")
        )
    distinct = {tuple(sorted(attributes.items())) for _, attributes in meter.measurements(DURATION)}
    assert len(distinct) == 1


EVERY_EVENT: list[Event] = [
    AttemptFailed(1.0, "chat.completions", None, "primary", 1, "timeout", None),
    RetryScheduled(1.0, "chat.completions", None, "primary", 1, 0.5, "timeout"),
    FallbackServed(1.0, "chat.completions", None, None, "canned", ""),
    BreakerStateChanged(1.0, "primary", "open", "half-open", "timeout", None),
    CallRejected(1.0, "primary", 0.0),
    _completed(model=None, source=None, verdict="unexpected", error="RuntimeError"),
    StreamEventSkipped(1.0, "responses", None, "primary"),
    CustomEvent(1.0, "mine"),
    Event(1.0),
]


@pytest.mark.parametrize("event", EVERY_EVENT)
def test_every_event_type_is_handled_without_raising(
    meter: FakeMeter, event: Event, caplog: pytest.LogCaptureFixture
) -> None:
    """Any event, including unknown subclasses and missing values, is absorbed; the bus logs no failure."""
    EventBus([OpenTelemetryListener(meter)]).emit(event)
    assert not [r for r in caplog.records if "listener" in r.getMessage()]


def test_default_meter_comes_from_the_global_provider() -> None:
    """Without a meter, the listener uses the global provider (a no-op one here) and still works."""
    listener = OpenTelemetryListener()
    for event in EVERY_EVENT:
        listener(event)


def test_attribute_values_are_valid_otel_types(meter: FakeMeter) -> None:
    """Every attribute value is a plain string or number, as the OTel API requires."""
    listener = OpenTelemetryListener(meter)
    for event in EVERY_EVENT:
        listener(event)
    recorded: list[Mapping[str, object]] = [
        a for inst in meter.instruments.values() for _, a in inst.measurements
    ]
    assert recorded
    assert all(isinstance(v, str | int | float) for attributes in recorded for v in attributes.values())


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, importing the module says which extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    monkeypatch.delitem(sys.modules, "resilient_openai.observe.otel")
    with pytest.raises(ImportError, match=r"resilient-openai\[otel\]"):
        importlib.import_module("resilient_openai.observe.otel")
