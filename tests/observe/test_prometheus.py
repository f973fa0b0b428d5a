"""PrometheusListener: counters, gauge and histogram values after events, with bounded labels."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

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
from resilient_openai.observe.prometheus import OTHER, PrometheusListener

NS = "resilient_openai"


@dataclass(frozen=True, slots=True)
class CustomEvent(Event):
    """An event type the listener has never heard of."""

    detail: str


@pytest.fixture
def registry() -> CollectorRegistry:
    """A private registry, so tests never share series."""
    return CollectorRegistry()


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(f"{NS}_{name}", labels)


def _series(registry: CollectorRegistry, sample_name: str) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() for s in m.samples if s.name == sample_name]


def _completed(
    model: str | None = "gpt-4o",
    source: str | None = "upstream",
    verdict: str = "success",
    latency: float = 0.3,
    error: str | None = None,
    operation: str = "chat.completions",
) -> CallCompleted:
    return CallCompleted(1.0, operation, model, source, verdict, 1, latency, error)


def test_calls_are_counted_by_source_and_verdict(registry: CollectorRegistry) -> None:
    """Answers and failures land in ``calls_total`` with who answered and how it ended."""
    listener = PrometheusListener(registry)
    listener(_completed())
    listener(_completed())
    listener(_completed(source="cache"))
    listener(_completed(source=None, verdict="timeout", error="APITimeoutError"))
    base = {"operation": "chat.completions", "model": "gpt-4o"}
    assert _value(registry, "calls_total", **base, source="upstream", verdict="success") == 2
    assert _value(registry, "calls_total", **base, source="cache", verdict="success") == 1
    assert _value(registry, "calls_total", **base, source="", verdict="timeout") == 1


def test_call_duration_histogram(registry: CollectorRegistry) -> None:
    """Latencies are observed per operation and source, in GenAI-sized buckets."""
    listener = PrometheusListener(registry)
    listener(_completed(latency=0.5))
    listener(_completed(latency=30.0))
    labels = {"operation": "chat.completions", "source": "upstream"}
    assert _value(registry, "call_duration_seconds_count", **labels) == 2
    assert _value(registry, "call_duration_seconds_sum", **labels) == 30.5
    assert _value(registry, "call_duration_seconds_bucket", **labels, le="0.64") == 1
    assert _value(registry, "call_duration_seconds_bucket", **labels, le="40.96") == 2


def test_retries_and_fallbacks(registry: CollectorRegistry) -> None:
    """Scheduled retries and served fallbacks have their own counters."""
    listener = PrometheusListener(registry)
    listener(RetryScheduled(1.0, "chat.completions", "gpt-4o", "primary", 1, 0.5, "rate_limited"))
    listener(RetryScheduled(1.0, "chat.completions", "gpt-4o", "primary", 2, 1.0, "rate_limited"))
    listener(
        FallbackServed(1.0, "chat.completions", "gpt-4o", "gpt-4o-mini", "fallback_model", "rate_limited")
    )
    retries = {"operation": "chat.completions", "model": "gpt-4o", "verdict": "rate_limited"}
    assert _value(registry, "retries_total", **retries) == 2
    fallbacks = {"operation": "chat.completions", "source": "fallback_model", "reason": "rate_limited"}
    assert _value(registry, "fallbacks_total", **fallbacks) == 1


def test_retries_refused_by_the_budget_are_counted_by_target(registry: CollectorRegistry) -> None:
    """Each retry the budget refused counts once under the target's breaker name."""
    listener = PrometheusListener(registry)
    listener(RetryBudgetExhausted(1.0, "chat.completions", "gpt-4o", "primary", 1, "server_error"))
    listener(RetryBudgetExhausted(1.0, "responses", "gpt-4o", "primary", 2, "rate_limited"))
    assert _value(registry, "retry_budget_exhausted_total", breaker="primary") == 2
    assert (
        _value(
            registry, "retries_total", operation="chat.completions", model="gpt-4o", verdict="server_error"
        )
        is None
    )


@pytest.mark.parametrize(("state", "value"), [("closed", 0), ("half-open", 1), ("open", 2), ("isolated", 3)])
def test_breaker_state_gauge(registry: CollectorRegistry, state: str, value: int) -> None:
    """The gauge shows the state a breaker last entered, and the transition is counted."""
    listener = PrometheusListener(registry)
    listener(BreakerStateChanged(1.0, "primary", "closed", state, "test", None))
    assert _value(registry, "breaker_state", breaker="primary") == value
    assert _value(registry, "breaker_transitions_total", breaker="primary", to=state) == 1


def test_rejections_and_skipped_stream_events(registry: CollectorRegistry) -> None:
    """Open-circuit rejections are counted per breaker; skipped stream events in total."""
    listener = PrometheusListener(registry)
    listener(CallRejected(1.0, "primary", 5.0))
    listener(CallRejected(1.0, "primary", 4.0))
    listener(StreamEventSkipped(1.0, "responses", "gpt-4o", "primary"))
    assert _value(registry, "rejections_total", breaker="primary") == 2
    assert _value(registry, "stream_events_skipped_total") == 1


def test_per_call_details_never_become_labels(registry: CollectorRegistry) -> None:
    """Latency, attempts, times and error names vary per call; the series count does not."""
    listener = PrometheusListener(registry)
    for i in range(500):
        listener(CallCompleted(float(i), "chat.completions", "gpt-4o", None, "server_error", i % 7, i / 10,
                               f"InternalServerError{i}"))  # fmt: skip
    assert len(_series(registry, f"{NS}_calls_total")) == 1
    assert len(_series(registry, f"{NS}_call_duration_seconds_count")) == 1


def test_model_label_is_capped(registry: CollectorRegistry) -> None:
    """Beyond ``max_models`` distinct models, further models share the ``_other`` series."""
    listener = PrometheusListener(registry, max_models=3)
    for i in range(50):
        listener(_completed(model=f"user-supplied-{i}"))
        listener(
            RetryScheduled(1.0, "chat.completions", f"user-supplied-{i}", "primary", 1, 0.5, "rate_limited")
        )
    calls = _series(registry, f"{NS}_calls_total")
    assert sorted(s["model"] for s in calls) == sorted(
        [OTHER, "user-supplied-0", "user-supplied-1", "user-supplied-2"]
    )
    other = {"operation": "chat.completions", "model": OTHER, "source": "upstream", "verdict": "success"}
    assert _value(registry, "calls_total", **other) == 47
    assert len(_series(registry, f"{NS}_retries_total")) == 4


def test_absent_model_is_an_empty_label(registry: CollectorRegistry) -> None:
    """A call without a model is counted under the empty label, and takes no model slot."""
    listener = PrometheusListener(registry, max_models=1)
    listener(_completed(model=None))
    listener(_completed(model="gpt-4o"))
    models = sorted(s["model"] for s in _series(registry, f"{NS}_calls_total"))
    assert models == ["", "gpt-4o"]


def test_namespace_prefixes_every_name() -> None:
    """``namespace`` replaces the ``resilient_openai`` prefix."""
    registry = CollectorRegistry()
    PrometheusListener(registry, namespace="llm")(CallRejected(1.0, "primary", 1.0))
    assert registry.get_sample_value("llm_rejections_total", {"breaker": "primary"}) == 1


def test_max_models_is_validated(registry: CollectorRegistry) -> None:
    """A cap below one is refused at construction."""
    with pytest.raises(ValueError, match="max_models"):
        PrometheusListener(registry, max_models=0)


@pytest.mark.parametrize(
    "event",
    [
        AttemptFailed(1.0, "chat.completions", None, "primary", 1, "timeout", None),
        RetryScheduled(1.0, "chat.completions", None, "primary", 1, 0.5, "timeout"),
        FallbackServed(1.0, "chat.completions", None, None, "canned", ""),
        BreakerStateChanged(1.0, "primary", "open", "something-new", "test", None),
        CallRejected(1.0, "primary", 0.0),
        _completed(model=None, source=None, verdict="unexpected", error="RuntimeError"),
        StreamEventSkipped(1.0, "responses", None, "primary"),
        CustomEvent(1.0, "mine"),
        Event(1.0),
    ],
)
def test_every_event_type_is_handled_without_raising(
    registry: CollectorRegistry, event: Event, caplog: pytest.LogCaptureFixture
) -> None:
    """Any event, including unknown subclasses and missing values, is absorbed; the bus logs no failure."""
    EventBus([PrometheusListener(registry)]).emit(event)
    assert not [r for r in caplog.records if "listener" in r.getMessage()]


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, importing the module says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "resilient_openai.observe.prometheus")
    with pytest.raises(ImportError, match=r"resilient-openai\[prometheus\]"):
        importlib.import_module("resilient_openai.observe.prometheus")
