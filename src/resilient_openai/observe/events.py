"""Typed events the chain emits, and the bus that hands them to listeners.

Every event is a frozen, slotted dataclass. Listeners are plain callables taking one event; they
run outside every lock, and a listener that raises is logged and never raised into a call.
Events never carry prompts, answers, API keys or headers: only names, verdicts and numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "AttemptFailed",
    "BreakerStateChanged",
    "CallCompleted",
    "CallRejected",
    "Event",
    "EventBus",
    "FallbackServed",
    "Listener",
    "RetryBudgetExhausted",
    "RetryScheduled",
    "StreamEventSkipped",
]

_log = logging.getLogger("resilient_openai.events")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events. ``at`` is wall time (epoch seconds) from the injected clock."""

    at: float


@dataclass(frozen=True, slots=True)
class AttemptFailed(Event):
    """One attempt on one target failed with ``verdict``."""

    operation: str
    model: str | None
    breaker: str
    attempt: int
    verdict: str
    status: int | None


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """The retry layer will try the same target again after ``delay`` seconds."""

    operation: str
    model: str | None
    breaker: str
    attempt: int
    delay: float
    verdict: str


@dataclass(frozen=True, slots=True)
class RetryBudgetExhausted(Event):
    """A retry was not made: the target's retry budget was spent (the failure is final here)."""

    operation: str
    model: str | None
    breaker: str
    attempt: int
    verdict: str


@dataclass(frozen=True, slots=True)
class BreakerStateChanged(Event):
    """A breaker really changed state (``closed`` / ``open`` / ``half-open`` / ``isolated``)."""

    breaker: str
    old: str
    new: str
    reason: str
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class CallRejected(Event):
    """An open breaker answered a call at once, without sending it."""

    breaker: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class FallbackServed(Event):
    """The caller got an answer from somewhere other than the primary target."""

    operation: str
    requested_model: str | None
    answered_by: str | None
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class CallCompleted(Event):
    """A call through the chain ended: with an answer from ``source``, or with ``error``.

    ``model`` is the model the caller asked for; ``answered_by`` the one that answered.
    """

    operation: str
    model: str | None
    source: str | None
    verdict: str
    attempts: int
    latency: float
    error: str | None
    answered_by: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEventSkipped(Event):
    """A malformed server-sent event was dropped from an otherwise healthy stream."""

    operation: str
    model: str | None
    breaker: str


Listener = Callable[[Event], None]


class EventBus:
    """Delivers events to listeners in order; a failing listener is logged, never raised."""

    __slots__ = ("_listeners",)

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners: tuple[Listener, ...] = tuple(listeners)

    def add(self, listener: Listener) -> None:
        """Register one more listener (copy-on-write, safe while events are being emitted)."""
        self._listeners = (*self._listeners, listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit(self, event: Event) -> None:
        """Call every listener with ``event``; never raises."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("resilient-openai listener %r failed on %s", listener, type(event).__name__)
