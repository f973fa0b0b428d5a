"""OpenTelemetry metrics from the event bus: :class:`OpenTelemetryListener` (extra ``otel``).

Needs only ``opentelemetry-api``; the application's SDK (or none: then every instrument is a
no-op) decides where the measurements go. Names follow the GenAI semantic conventions where they
define one:

``gen_ai.client.operation.duration`` (histogram, ``s``), one measurement per call through the chain
    ``gen_ai.operation.name``: ``chat`` for ``chat.completions`` and ``responses`` (as the OpenAI
    conventions say, with ``openai.api.type`` = ``chat_completions`` / ``responses`` telling them
    apart), ``embeddings``, ``text_completion`` for ``completions``; any other operation is reported
    under its own name. ``gen_ai.provider.name`` (``provider``, ``openai`` by default),
    ``gen_ai.request.model``, ``gen_ai.response.model`` when a fallback named the model that
    answered, ``error.type`` on failures (our verdict: ``rate_limited``, ``server_error``,
    ``timeout``, ``circuit_open``..., see :class:`~resilient_openai.Verdict`), and
    ``resilient_openai.source`` (who answered).
``resilient_openai.retries`` (counter): operation, request model, ``error.type`` (the failed
    attempt's verdict), ``resilient_openai.breaker.name`` (the target retried).
``resilient_openai.retry_budget.exhausted`` (counter): operation, request model, ``error.type``
    (the failed attempt's verdict), ``resilient_openai.breaker.name`` (the target not retried).
``resilient_openai.fallbacks`` (counter): operation, request and response model,
    ``resilient_openai.source``, ``resilient_openai.reason``.
``resilient_openai.breaker.transitions`` (counter): ``resilient_openai.breaker.name``,
    ``resilient_openai.breaker.state`` (the state entered).
``resilient_openai.breaker.rejections`` (counter): ``resilient_openai.breaker.name``.
``resilient_openai.stream.events_skipped`` (counter): operation, request model.

Attribute values are bounded as for the Prometheus listener: no prompts, keys or ids.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

try:
    from opentelemetry import metrics
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "OpenTelemetryListener needs opentelemetry-api: pip install 'resilient-openai[otel]'"
    ) from exc

from .events import (
    BreakerStateChanged,
    CallCompleted,
    CallRejected,
    Event,
    FallbackServed,
    RetryBudgetExhausted,
    RetryScheduled,
    StreamEventSkipped,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

__all__ = ["DURATION_BUCKETS", "OpenTelemetryListener", "gen_ai_operation_name"]

#: The bucket boundaries the GenAI conventions recommend for ``gen_ai.client.operation.duration``.
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

_OPERATION_NAMES = {
    "chat.completions": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "completions": "text_completion",
}
_API_TYPES = {"chat.completions": "chat_completions", "responses": "responses"}

AttributeValue = str | bool | int | float

#: The counters (``resilient_openai.`` + name): unit and description.
_COUNTERS = {
    "retries": ("{retry}", "Retries scheduled by the chain."),
    "retry_budget.exhausted": ("{retry}", "Retries not made because the target's retry budget was spent."),
    "fallbacks": ("{call}", "Answers served by something other than the primary target."),
    "breaker.transitions": ("{transition}", "Circuit breaker state changes."),
    "breaker.rejections": ("{call}", "Calls an open circuit answered at once, without sending them."),
    "stream.events_skipped": ("{event}", "Malformed server-sent events dropped from healthy streams."),
}


def gen_ai_operation_name(operation: str) -> str:
    """The ``gen_ai.operation.name`` of one of our operations (``chat.completions`` -> ``chat``)."""
    return _OPERATION_NAMES.get(operation, operation)


def _scope_version() -> str:
    try:
        return metadata.version("resilient-openai")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return ""


class OpenTelemetryListener:
    """An event listener that records GenAI-convention metrics through an OpenTelemetry ``Meter``.

    ``meter`` defaults to the global meter provider's meter named ``resilient_openai``. ``provider``
    is the ``gen_ai.provider.name`` to report (``azure.ai.openai`` for Azure; None leaves it out).
    """

    __slots__ = ("_counters", "_duration", "_provider")

    def __init__(self, meter: Meter | None = None, *, provider: str | None = "openai") -> None:
        if meter is None:
            meter = metrics.get_meter("resilient_openai", _scope_version())
        self._provider = provider
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._counters = {
            name: meter.create_counter(f"resilient_openai.{name}", unit=unit, description=description)
            for name, (unit, description) in _COUNTERS.items()
        }

    def _attributes(
        self, operation: str, model: str | None, answered_by: str | None = None, source: str | None = None
    ) -> dict[str, AttributeValue]:
        """The attributes of a call's measurement; those without a value are left out."""
        attributes: dict[str, AttributeValue] = {"gen_ai.operation.name": gen_ai_operation_name(operation)}
        optional = {
            "openai.api.type": _API_TYPES.get(operation),
            "gen_ai.provider.name": self._provider,
            "gen_ai.request.model": model,
            "gen_ai.response.model": answered_by,
            "resilient_openai.source": source,
        }
        attributes.update((key, value) for key, value in optional.items() if value is not None)
        return attributes

    def __call__(self, event: Event) -> None:
        """Record what ``event`` measures; events of other types are ignored."""
        attributes: dict[str, AttributeValue]
        match event:
            case CallCompleted():
                attributes = self._attributes(event.operation, event.model, event.answered_by, event.source)
                if event.error is not None:
                    attributes["error.type"] = event.verdict
                self._duration.record(event.latency, attributes)
                return
            case RetryScheduled() | RetryBudgetExhausted():
                counter = "retries" if isinstance(event, RetryScheduled) else "retry_budget.exhausted"
                attributes = self._attributes(event.operation, event.model)
                attributes["error.type"] = event.verdict
                attributes["resilient_openai.breaker.name"] = event.breaker
            case FallbackServed():
                counter = "fallbacks"
                attributes = self._attributes(
                    event.operation, event.requested_model, event.answered_by, event.source
                )
                attributes["resilient_openai.reason"] = event.reason
            case BreakerStateChanged():
                counter = "breaker.transitions"
                attributes = {
                    "resilient_openai.breaker.name": event.breaker,
                    "resilient_openai.breaker.state": event.new,
                }
            case CallRejected():
                counter = "breaker.rejections"
                attributes = {"resilient_openai.breaker.name": event.breaker}
            case StreamEventSkipped():
                counter = "stream.events_skipped"
                attributes = self._attributes(event.operation, event.model)
            case _:
                return
        self._counters[counter].add(1, attributes)
