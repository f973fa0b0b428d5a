"""Events as log lines: :class:`LoggingListener` is one listener among others on the event bus.

Levels follow what an operator needs to act on:

======================================  =========  ==============================================
event                                   level      why
======================================  =========  ==============================================
AttemptFailed                           DEBUG      the retry or the final outcome says more
RetryScheduled                          INFO       normal resilience at work
RetryBudgetExhausted                    WARNING    a target fails more than its budget retries
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
    RetryBudgetExhausted,
    RetryScheduled,
    StreamEventSkipped,
)
from .redact import _RECORD_ATTRS, RedactingFilter

__all__ = ["LOGGER_NAME", "LoggingListener"]

#: The logger :class:`LoggingListener` writes to unless given another.
LOGGER_NAME = "resilient_openai.events"

_PREFIX = "resilient-openai: "
_SHUT = frozenset({"open", "isolated"})
_field_names: dict[type[Event], tuple[tuple[str, str], ...]] = {}


def _fields(event: Event) -> dict[str, Any]:
    """The event's fields, for ``extra`` and for the line's template; a field an unknown subclass
    names like a LogRecord attribute (``makeRecord`` raises KeyError on those) is renamed ``event_<name>``."""
    kind = type(event)
    names = _field_names.get(kind)
    if names is None:
        fields = dataclasses.fields(event) if dataclasses.is_dataclass(event) else ()
        names = tuple((f.name, f"event_{f.name}" if f.name in _RECORD_ATTRS else f.name) for f in fields)
        _field_names[kind] = names
    return {"event": kind.__name__} | {key: getattr(event, name, None) for name, key in names}


def _line(event: Event) -> tuple[int, str]:
    """Level and %-template (over :func:`_fields`) of the line for ``event``."""
    match event:
        case RetryScheduled():
            return logging.INFO, (
                "retrying %(operation)s (model %(model)s) on %(breaker)s in %(delay).2fs after %(verdict)s"
                " (attempt %(attempt)d failed)"
            )
        case RetryBudgetExhausted():
            return logging.WARNING, (
                "not retrying %(operation)s (model %(model)s) on %(breaker)s after %(verdict)s"
                " (attempt %(attempt)d failed): its retry budget is spent"
            )
        case AttemptFailed():
            return logging.DEBUG, (
                "attempt %(attempt)d of %(operation)s (model %(model)s) on %(breaker)s failed: %(verdict)s"
                " (status %(status)s)"
            )
        case FallbackServed():
            return logging.WARNING, (
                "%(operation)s for model %(requested_model)s answered by %(source)s (model %(answered_by)s)"
                " after %(reason)s"
            )
        case BreakerStateChanged():
            level = logging.WARNING if event.new in _SHUT else logging.INFO
            return level, "circuit %(breaker)s %(old)s -> %(new)s (%(reason)s; retry after %(retry_after)s s)"
        case CallRejected():
            return (
                logging.DEBUG,
                "circuit %(breaker)s is open, call rejected (retry after %(retry_after).2fs)",
            )
        case CallCompleted() if event.error is None:
            return logging.DEBUG, (
                "%(operation)s (model %(model)s) answered by %(source)s in %(latency).3fs"
                " after %(attempts)d attempt(s)"
            )
        case CallCompleted():
            return logging.INFO, (
                "%(operation)s (model %(model)s) failed with %(error)s (%(verdict)s) in %(latency).3fs"
                " after %(attempts)d attempt(s)"
            )
        case StreamEventSkipped():
            return logging.WARNING, (
                "skipped a malformed stream event of %(operation)s (model %(model)s) from %(breaker)s"
            )
        case _:
            return logging.DEBUG, "%(event)s"


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
        level, template = _line(event)
        logger = self._logger
        if logger.isEnabledFor(level):
            fields = _fields(event)
            logger.log(level, _PREFIX + template, fields, extra=fields)
