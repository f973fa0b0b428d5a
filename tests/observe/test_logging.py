"""LoggingListener: one line per event, at the level an operator needs, with structured fields."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import pytest

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
from resilient_openai.observe.logging import LOGGER_NAME, LoggingListener
from resilient_openai.observe.redact import RedactingFilter

SENTINEL = "sk-proj-SENTINEL0123456789abcdef"
_names = itertools.count()


@dataclass(frozen=True, slots=True)
class CustomEvent(Event):
    """An event type the listener has never heard of, with a field named like a LogRecord attribute."""

    name: str
    detail: int


@pytest.fixture
def logger(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    """A fresh logger, captured at DEBUG."""
    name = f"tests.observe.logging.{next(_names)}"
    caplog.set_level(logging.DEBUG, logger=name)
    return logging.getLogger(name)


def _one(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    assert len(caplog.records) == 1
    return caplog.records[0]


EVENTS_AND_LEVELS: list[tuple[Event, int]] = [
    (AttemptFailed(1.0, "chat.completions", "gpt-4o", "primary", 1, "server_error", 500), logging.DEBUG),
    (RetryScheduled(1.0, "chat.completions", "gpt-4o", "primary", 1, 0.5, "rate_limited"), logging.INFO),
    (RetryBudgetExhausted(1.0, "chat.completions", "gpt-4o", "primary", 1, "server_error"), logging.WARNING),
    (FallbackServed(1.0, "chat.completions", "gpt-4o", "gpt-4o-mini", "fallback_model", "rate_limited"),
     logging.WARNING),
    (BreakerStateChanged(1.0, "primary", "closed", "open", "failure_rate", 30.0), logging.WARNING),
    (BreakerStateChanged(1.0, "primary", "closed", "isolated", "manual", None), logging.WARNING),
    (BreakerStateChanged(1.0, "primary", "open", "half-open", "timeout", None), logging.INFO),
    (BreakerStateChanged(1.0, "primary", "half-open", "closed", "probe_succeeded", None), logging.INFO),
    (CallRejected(1.0, "primary", 12.5), logging.DEBUG),
    (CallCompleted(1.0, "chat.completions", "gpt-4o", "upstream", "success", 1, 0.25, None), logging.DEBUG),
    (CallCompleted(1.0, "embeddings", "te-3", None, "timeout", 3, 9.0, "APITimeoutError"), logging.INFO),
    (StreamEventSkipped(1.0, "responses", "gpt-4o", "primary"), logging.WARNING),
    (CustomEvent(1.0, "mine", 7), logging.DEBUG),
    (Event(1.0), logging.DEBUG),
]  # fmt: skip


@pytest.mark.parametrize(("event", "level"), EVENTS_AND_LEVELS)
def test_each_event_logs_at_its_level(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture, event: Event, level: int
) -> None:
    """Every event type, known or not, gives exactly one line at its documented level."""
    LoggingListener(logger)(event)
    record = _one(caplog)
    assert record.levelno == level
    assert record.getMessage().startswith("resilient-openai: ")
    assert record.__dict__["event"] == type(event).__name__


def test_fields_travel_as_extra(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    """Each field of the event is a structured attribute of the record."""
    LoggingListener(logger)(
        RetryScheduled(5.0, "chat.completions", "gpt-4o", "primary", 2, 1.5, "rate_limited")
    )
    record = _one(caplog)
    fields = {
        k: record.__dict__[k] for k in ("at", "operation", "model", "breaker", "attempt", "delay", "verdict")
    }
    assert fields == {
        "at": 5.0, "operation": "chat.completions", "model": "gpt-4o", "breaker": "primary",
        "attempt": 2, "delay": 1.5, "verdict": "rate_limited",
    }  # fmt: skip
    assert record.getMessage() == (
        "resilient-openai: retrying chat.completions (model gpt-4o) on primary in 1.50s after rate_limited "
        "(attempt 2 failed)"
    )


def test_clashing_field_names_are_renamed(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    """A field named like a LogRecord attribute becomes ``event_<name>`` instead of raising."""
    LoggingListener(logger)(CustomEvent(1.0, "mine", 7))
    record = _one(caplog)
    assert record.name == logger.name
    assert record.__dict__["event_name"] == "mine"
    assert record.__dict__["detail"] == 7


def test_disabled_levels_log_nothing(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    """Below the logger's level, nothing is emitted."""
    logger.setLevel(logging.WARNING)
    listener = LoggingListener(logger)
    listener(CallRejected(1.0, "primary", 1.0))
    listener(RetryScheduled(1.0, "chat.completions", "gpt-4o", "primary", 1, 0.5, "rate_limited"))
    assert caplog.records == []


def test_listener_logger_carries_one_redacting_filter(logger: logging.Logger) -> None:
    """The listener's logger gets a RedactingFilter, once however many listeners share it."""
    LoggingListener(logger)
    LoggingListener(logger)
    assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1


def test_default_logger_is_the_events_logger() -> None:
    """Without a logger, lines go to ``resilient_openai.events``, inside the redacted hierarchy."""
    listener = LoggingListener()
    assert listener.logger.name == LOGGER_NAME == "resilient_openai.events"
    assert any(isinstance(f, RedactingFilter) for f in listener.logger.filters)


def test_a_secret_in_an_event_field_is_masked(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """Even a key pasted into a model name is masked, in the message and in the extra fields."""
    LoggingListener(logger)(
        CallCompleted(1.0, "chat.completions", SENTINEL, "upstream", "success", 1, 0.1, None)
    )
    record = _one(caplog)
    assert "SENTINEL" not in record.getMessage()
    assert "SENTINEL" not in str(record.__dict__["model"])
    assert "SENTINEL" not in caplog.text


@pytest.mark.parametrize(("event", "level"), EVENTS_AND_LEVELS)
def test_listener_never_raises_through_the_bus(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture, event: Event, level: int
) -> None:
    """On the bus, the listener handles every event type without the bus having to log a failure."""
    EventBus([LoggingListener(logger)]).emit(event)
    assert [r.levelno for r in caplog.records] == [level]
