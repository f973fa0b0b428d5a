"""Prometheus metrics from the event bus: :class:`PrometheusListener` (extra ``prometheus``).

Metric names (``namespace`` prefixed, ``resilient_openai_`` by default):

=====================================  ==========  =========================================
name                                   kind        labels
=====================================  ==========  =========================================
``calls_total``                        counter     operation, model, source, verdict
``retries_total``                      counter     operation, model, verdict
``retry_budget_exhausted_total``       counter     breaker
``fallbacks_total``                    counter     operation, source, reason
``breaker_transitions_total``          counter     breaker, to
``rejections_total``                   counter     breaker
``stream_events_skipped_total``        counter     (none)
``breaker_state``                      gauge       breaker: 0 closed, 1 half-open, 2 open, 3 isolated
``call_duration_seconds``              histogram   operation, source
=====================================  ==========  =========================================

Labels are bounded. ``operation`` is an SDK resource path (``chat.completions``, ``responses``...),
``source``, ``verdict`` and ``reason`` come from fixed vocabularies, ``breaker`` names come from
the policy. ``model`` is the model *as the caller asked for it*, which is bounded by the
application's own configuration; as a guard against an application that forwards its users'
model names, only the first ``max_models`` distinct models get their own series and the rest are
counted under ``_other``. Prompts, keys, request ids, error messages and exception names are
never labels. An absent value (no model, no source because nobody answered, no reason) is the
empty string, which Prometheus treats as "label not set".

``calls_total`` counts every call that went through the chain, ``verdict`` being ``success`` for
an answer (from any source) and the failure verdict otherwise; ``call_duration_seconds`` uses the
OpenTelemetry GenAI buckets (10 ms to 82 s), which suit model calls better than the default ones.
"""

from __future__ import annotations

import threading

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "PrometheusListener needs prometheus-client: pip install 'resilient-openai[prometheus]'"
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

__all__ = ["BREAKER_STATE_VALUES", "DURATION_BUCKETS", "OTHER", "PrometheusListener"]

#: ``breaker_state`` gauge values.
BREAKER_STATE_VALUES: dict[str, int] = {"closed": 0, "half-open": 1, "open": 2, "isolated": 3}

#: ``call_duration_seconds`` buckets: the OpenTelemetry GenAI ``gen_ai.client.operation.duration`` ones.
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

#: The ``model`` label of models beyond ``max_models``.
OTHER = "_other"


class _BoundedValues:
    """Admits the first ``limit`` distinct values of one label; the rest become :data:`OTHER`."""

    __slots__ = ("_limit", "_lock", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return ""
        if value in self._seen:  # the hot path: a known model, no lock
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
            return value


class PrometheusListener:
    """An event listener that keeps Prometheus counters, a breaker-state gauge and a latency histogram.

    ``registry`` defaults to prometheus_client's global ``REGISTRY``; one listener per registry
    (a second one would register the same metric names twice, which prometheus_client refuses).
    Register the listener on every client's event bus that should feed these metrics.
    """

    __slots__ = (
        "_breaker_state",
        "_breaker_transitions",
        "_call_duration",
        "_calls",
        "_fallbacks",
        "_model",
        "_rejections",
        "_retries",
        "_retry_budget_exhausted",
        "_stream_events_skipped",
    )

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "resilient_openai",
        *,
        max_models: int = 100,
    ) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models!r}")
        registry = REGISTRY if registry is None else registry
        self._model = _BoundedValues(max_models)
        self._calls = Counter(
            "calls", "Calls through the chain, by who answered and how they ended.",
            ["operation", "model", "source", "verdict"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._retries = Counter(
            "retries", "Retries scheduled, by the verdict of the failed attempt.",
            ["operation", "model", "verdict"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._retry_budget_exhausted = Counter(
            "retry_budget_exhausted", "Retries not made because the target's retry budget was spent.",
            ["breaker"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._fallbacks = Counter(
            "fallbacks", "Answers served by something other than the primary target.",
            ["operation", "source", "reason"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._breaker_transitions = Counter(
            "breaker_transitions", "Circuit breaker state changes, by the state entered.",
            ["breaker", "to"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._rejections = Counter(
            "rejections", "Calls an open circuit answered at once, without sending them.",
            ["breaker"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._stream_events_skipped = Counter(
            "stream_events_skipped", "Malformed server-sent events dropped from healthy streams.",
            namespace=namespace, registry=registry,
        )  # fmt: skip
        self._breaker_state = Gauge(
            "breaker_state", "Circuit state: 0 closed, 1 half-open, 2 open, 3 isolated.",
            ["breaker"], namespace=namespace, registry=registry,
        )  # fmt: skip
        self._call_duration = Histogram(
            "call_duration_seconds", "Time from a call entering the chain to its answer or error.",
            ["operation", "source"], namespace=namespace, registry=registry, buckets=DURATION_BUCKETS,
        )  # fmt: skip

    def __call__(self, event: Event) -> None:
        """Update the metrics ``event`` concerns; events of other types are ignored."""
        match event:
            case CallCompleted():
                source = event.source or ""
                self._calls.labels(event.operation, self._model(event.model), source, event.verdict).inc()
                self._call_duration.labels(event.operation, source).observe(event.latency)
            case RetryScheduled():
                self._retries.labels(event.operation, self._model(event.model), event.verdict).inc()
            case RetryBudgetExhausted():
                self._retry_budget_exhausted.labels(event.breaker).inc()
            case FallbackServed():
                self._fallbacks.labels(event.operation, event.source, event.reason).inc()
            case BreakerStateChanged():
                self._breaker_transitions.labels(event.breaker, event.new).inc()
                value = BREAKER_STATE_VALUES.get(event.new)
                if value is not None:
                    self._breaker_state.labels(event.breaker).set(value)
            case CallRejected():
                self._rejections.labels(event.breaker).inc()
            case StreamEventSkipped():
                self._stream_events_skipped.inc()
