"""resilient-openai: retries, circuit breaking and honest fallbacks in front of the OpenAI client.

``resilient(client, policy)`` returns a client of the same class whose every call goes through
the chain; ``provenance(result)`` tells where an answer came from.
"""

from ._breaker._redis import RedisBreakerStorage
from ._classify import Classification, Verdict, classify
from ._client import resilient
from ._clock import SYSTEM_CLOCK, Clock, SystemClock
from ._errors import (
    CircuitOpenError,
    ConfigError,
    DeadlineExceededError,
    IncompleteStreamError,
    RequestRejectedError,
    ResilienceError,
    UnanswerableError,
)
from ._health import breakers, health
from ._policy import (
    BreakerPolicy,
    CachePolicy,
    CannedToolCall,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryBudget,
    RetryPolicy,
    RetryRule,
    Route,
    SharedPolicy,
    Target,
    Timeouts,
    ValidationPolicy,
)
from ._provenance import AttemptRecord, Provenance, Source, provenance

__all__ = [
    "SYSTEM_CLOCK",
    "AttemptRecord",
    "BreakerPolicy",
    "CachePolicy",
    "CannedToolCall",
    "CircuitOpenError",
    "Classification",
    "Clock",
    "ConfigError",
    "DeadlineExceededError",
    "FallbackPolicy",
    "FallbackStep",
    "IncompleteStreamError",
    "Policy",
    "Provenance",
    "RedisBreakerStorage",
    "RequestRejectedError",
    "ResilienceError",
    "RetryBudget",
    "RetryPolicy",
    "RetryRule",
    "Route",
    "SharedPolicy",
    "Source",
    "SystemClock",
    "Target",
    "Timeouts",
    "UnanswerableError",
    "ValidationPolicy",
    "Verdict",
    "breakers",
    "classify",
    "health",
    "provenance",
    "resilient",
]
