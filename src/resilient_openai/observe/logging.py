"""Events as log lines: :class:`LoggingListener` is one listener among others on the event bus.

Levels follow what an operator needs to act on:

======================================  =========  ==============================================
event                                   level      why
======================================  =========  ==============================================
AttemptFailed                           DEBUG      the retry or the final outcome says more
RetryScheduled                          INFO       normal resilience at work
FallbackServed                          WARNING    the caller got a degraded answer
BreakerStateChanged to open / isolated  WARNING    a target is cut off
BreakerStateChanged to half-open        INFO       probing has begun
BreakerStateChanged to closed           INFO       recovered
CallRejected                            DEBUG      one per call while open: the opening says it
CallCompleted, answered                 DEBUG      the common case
CallCompleted, failed                   INFO       the caller gets the error and decides how loud
StreamEventSkipped                      WARNING    the upstream sent malformed data
any other Event subclass                DEBUG
======================================  =========  ==============================================

Every line carries the event's fields as ``extra`` (``event`` is the event's class name), so JSON
formatters get them as structured fields. Events never carry prompts, answers or keys, and the
logger carries a :class:`~resilient_openai.observe.redact.RedactingFilter` all the same.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .events import (
    AttemptFailed,
    BreakerStateChanged,
    CallCompleted,
    CallRejected,
    Event,
    FallbackServed,
    RetryScheduled,
    StreamEventSkipped,
)
from .redact import RedactingFilter

__all__ = ["LOGGER_NAME", "LoggingListener"]

#: The logger :class:`LoggingListener` writes to unless given another.
LOGGER_NAME = "resilient_openai.events"

_SHUT = frozenset({"open", "isolated"})
# Names ``Logger.makeRecord`` refuses in ``extra`` (it raises KeyError on them).
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_field_names: dict[type[Event], tuple[tuple[str, str], ...]] = {}


def _extra(event: Event) -> dict[str, Any]:
    """The event's fields as ``extra``; a field an unknown subclass names like a LogRecord
    attribute is renamed ``event_<name>`` instead of making ``makeRecord`` raise."""
    kind = type(event)
    names = _field_names.get(kind)
    if names is None:
        fields = dataclasses.fields(event) if dataclasses.is_dataclass(event) else ()
        names = tuple((f.name, f"event_{f.name}" if f.name in _RESERVED else f.name) for f in fields)
        _field_names[kind] = names
    extra: dict[str, Any] = {"event": kind.__name__}
    for name, key in names:
        extra[key] = getattr(event, name, None)
    return extra


def _describe(event: Event) -> tuple[int, str, tuple[object, ...]]:
    """Level, %-template and arguments of the line for ``event``."""
    match event:
        case RetryScheduled():
            return (
                logging.INFO,
                "resilient-openai: retrying %s (model %s) on %s in %.2fs after %s (attempt %d failed)",
                (event.operation, event.model, event.breaker, event.delay, event.verdict, event.attempt),
            )
        case AttemptFailed():
            return (
                logging.DEBUG,
                "resilient-openai: attempt %d of %s (model %s) on %s failed: %s (status %s)",
                (event.attempt, event.operation, event.model, event.breaker, event.verdict, event.status),
            )
        case FallbackServed():
            return (
                logging.WARNING,
                "resilient-openai: %s for model %s answered by %s (model %s) after %s",
                (event.operation, event.requested_model, event.source, event.answered_by, event.reason),
            )
        case BreakerStateChanged():
            level = logging.WARNING if event.new in _SHUT else logging.INFO
            return (
                level,
                "resilient-openai: circuit %s %s -> %s (%s; retry after %s s)",
                (event.breaker, event.old, event.new, event.reason, event.retry_after),
            )
        case CallRejected():
            return (
                logging.DEBUG,
                "resilient-openai: circuit %s is open, call rejected (retry after %.2fs)",
                (event.breaker, event.retry_after),
            )
        case CallCompleted() if event.error is None:
            return (
                logging.DEBUG,
                "resilient-openai: %s (model %s) answered by %s in %.3fs after %d attempt(s)",
                (event.operation, event.model, event.source, event.latency, event.attempts),
            )
        case CallCompleted():
            return (
                logging.INFO,
                "resilient-openai: %s (model %s) failed with %s (%s) in %.3fs after %d attempt(s)",
                (event.operation, event.model, event.error, event.verdict, event.latency, event.attempts),
            )
        case StreamEventSkipped():
            return (
                logging.WARNING,
                "resilient-openai: skipped a malformed stream event of %s (model %s) from %s",
                (event.operation, event.model, event.breaker),
            )
        case _:
            return logging.DEBUG, "resilient-openai: %s", (type(event).__name__,)


class LoggingListener:
    """An event listener that writes one log line per event, at the level the event deserves.

    ``logger`` defaults to ``resilient_openai.events``. A
    :class:`~resilient_openai.observe.redact.RedactingFilter` is added to it when it has none, so
    the lines and their ``extra`` fields are masked whatever handlers the application attaches.
    """

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        if not any(isinstance(f, RedactingFilter) for f in self._logger.filters):
            self._logger.addFilter(RedactingFilter())

    @property
    def logger(self) -> logging.Logger:
        """The logger the lines go to."""
        return self._logger

    def __call__(self, event: Event) -> None:
        """Log ``event``; nothing is built when its level is disabled."""
        level, template, args = _describe(event)
        logger = self._logger
        if logger.isEnabledFor(level):
            logger.log(level, template, *args, extra=_extra(event))
