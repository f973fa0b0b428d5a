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

    __slots__ = (
        "_duration",
        "_fallbacks",
        "_provider",
        "_rejections",
        "_retries",
        "_stream_events_skipped",
        "_transitions",
    )

    def __init__(self, meter: Meter | None = None, *, provider: str | None = "openai") -> None:
        if meter is None:
            meter = metrics.get_meter("resilient_openai", _scope_version())
        self._provider = provider
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._retries = meter.create_counter(
            "resilient_openai.retries", unit="{retry}", description="Retries scheduled by the chain."
        )
        self._fallbacks = meter.create_counter(
            "resilient_openai.fallbacks", unit="{call}",
            description="Answers served by something other than the primary target.",
        )  # fmt: skip
        self._transitions = meter.create_counter(
            "resilient_openai.breaker.transitions", unit="{transition}",
            description="Circuit breaker state changes.",
        )  # fmt: skip
        self._rejections = meter.create_counter(
            "resilient_openai.breaker.rejections", unit="{call}",
            description="Calls an open circuit answered at once, without sending them.",
        )  # fmt: skip
        self._stream_events_skipped = meter.create_counter(
            "resilient_openai.stream.events_skipped", unit="{event}",
            description="Malformed server-sent events dropped from healthy streams.",
        )  # fmt: skip

    def _operation(self, operation: str, model: str | None) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"gen_ai.operation.name": gen_ai_operation_name(operation)}
        api_type = _API_TYPES.get(operation)
        if api_type is not None:
            attributes["openai.api.type"] = api_type
        if self._provider is not None:
            attributes["gen_ai.provider.name"] = self._provider
        if model is not None:
            attributes["gen_ai.request.model"] = model
        return attributes

    def __call__(self, event: Event) -> None:
        """Record what ``event`` measures; events of other types are ignored."""
        match event:
            case CallCompleted():
                attributes = self._operation(event.operation, event.model)
                if event.answered_by is not None:
                    attributes["gen_ai.response.model"] = event.answered_by
                if event.source is not None:
                    attributes["resilient_openai.source"] = event.source
                if event.error is not None:
                    attributes["error.type"] = event.verdict
                self._duration.record(event.latency, attributes)
            case RetryScheduled():
                attributes = self._operation(event.operation, event.model)
                attributes["error.type"] = event.verdict
                attributes["resilient_openai.breaker.name"] = event.breaker
                self._retries.add(1, attributes)
            case FallbackServed():
                attributes = self._operation(event.operation, event.requested_model)
                if event.answered_by is not None:
                    attributes["gen_ai.response.model"] = event.answered_by
                attributes["resilient_openai.source"] = event.source
                attributes["resilient_openai.reason"] = event.reason
                self._fallbacks.add(1, attributes)
            case BreakerStateChanged():
                self._transitions.add(
                    1,
                    {
                        "resilient_openai.breaker.name": event.breaker,
                        "resilient_openai.breaker.state": event.new,
                    },
                )
            case CallRejected():
                self._rejections.add(1, {"resilient_openai.breaker.name": event.breaker})
            case StreamEventSkipped():
                self._stream_events_skipped.add(1, self._operation(event.operation, event.model))
            case _:
                pass
