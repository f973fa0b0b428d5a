"""What the chain should do: retry rules, timeouts, breakers, fallbacks, cache, validation.

A :class:`Policy` is a tree of frozen dataclasses. Build it in code, or load it with
:meth:`Policy.from_dict` / :meth:`Policy.from_file` (TOML; YAML with the ``yaml`` extra), which
check every key once, at start-up, and raise :class:`~resilient_openai.ConfigError` naming each
mistake. The hot path never re-validates.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._classify import Verdict
from ._clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    import openai

    from .observe.events import Listener

__all__ = [
    "BreakerPolicy",
    "CachePolicy",
    "FallbackPolicy",
    "FallbackStep",
    "Policy",
    "RetryPolicy",
    "RetryRule",
    "Route",
    "Target",
    "Timeouts",
    "ValidationPolicy",
]

#: Verdicts a retry rule may be given for. The rest (caller errors, quota, context length,
#: content filter, cancellation, open circuit, unexpected) are never retried.
RETRYABLE_VERDICTS = frozenset(
    {
        Verdict.RATE_LIMITED,
        Verdict.SERVER_ERROR,
        Verdict.REQUEST_TIMEOUT,
        Verdict.CONFLICT,
        Verdict.CONNECTION_ERROR,
        Verdict.TIMEOUT,
        Verdict.STREAM_INTERRUPTED,
    }
)


@dataclass(frozen=True, slots=True)
class RetryRule:
    """How one verdict is retried: total ``attempts`` (>= 1) and exponential backoff.

    The n-th retry waits ``min(base * 2**(n-1), cap)``, reduced by a random fraction of up to
    ``jitter`` (the SDK's own shape: 0.5 s doubling to 8 s, minus up to 25 %).
    """

    attempts: int = 3
    base: float = 0.5
    cap: float = 8.0
    jitter: float = 0.25


def _default_rules() -> Mapping[Verdict, RetryRule]:
    return {verdict: RetryRule() for verdict in RETRYABLE_VERDICTS}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-verdict retry rules, plus how far to trust the server's own advice."""

    rules: Mapping[Verdict, RetryRule] = field(default_factory=_default_rules)
    #: A server-requested wait longer than this (seconds) means "give up on this target now".
    max_retry_after: float = 120.0
    #: Obey ``x-should-retry: true|false`` from the upstream.
    honor_should_retry: bool = True
    #: With no fallback left, wait out an open circuit once when its ``retry_after`` is at most
    #: this many seconds (and fits the deadline); longer breaks are answered at once with
    #: :class:`~resilient_openai.CircuitOpenError`. 0 never waits.
    max_open_wait: float = 8.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits, in seconds.

    ``total`` bounds one call end to end, fallbacks included. ``attempt`` bounds every wait on
    the network within one attempt (connect, each read). For streams, ``first_token`` bounds the
    wait for the response and ``stream_idle`` every later wait between events.
    """

    total: float = 60.0
    attempt: float = 30.0
    connect: float = 5.0
    first_token: float = 30.0
    stream_idle: float = 20.0


BreakerMode = Literal["consecutive", "ratio"]


def _default_failure_verdicts() -> frozenset[Verdict]:
    return frozenset(
        {
            Verdict.SERVER_ERROR,
            Verdict.CONNECTION_ERROR,
            Verdict.TIMEOUT,
            Verdict.REQUEST_TIMEOUT,
            Verdict.STREAM_INTERRUPTED,
        }
    )


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a target's circuit opens, how long it stays open, and how it closes again."""

    enabled: bool = True
    mode: BreakerMode = "consecutive"
    #: consecutive mode: this many failures in a row open the circuit.
    fail_max: int = 5
    #: ratio mode: open when failures / calls >= failure_ratio over the last ``window`` seconds,
    #: once at least ``min_calls`` calls were recorded in it.
    failure_ratio: float = 0.5
    window: float = 30.0
    min_calls: int = 10
    #: Slow-call tripping (off when None): open when the share of calls slower than
    #: ``slow_call_threshold`` seconds reaches ``slow_call_ratio`` (with ``min_calls``).
    slow_call_threshold: float | None = None
    slow_call_ratio: float = 1.0
    #: First open period; each reopening multiplies it by ``break_multiplier`` up to ``break_max``.
    break_duration: float = 30.0
    break_multiplier: float = 2.0
    break_max: float = 300.0
    #: Half-open: at most this many probes in flight; this many successes close the circuit.
    half_open_probes: int = 1
    close_after: int = 1
    #: A probe that has not reported after this many seconds frees its slot.
    probe_lease: float = 60.0
    #: Verdicts that count as failures. Everything else that is not a success is ignored.
    failure_verdicts: frozenset[Verdict] = field(default_factory=_default_failure_verdicts)
    #: Quota exhaustion opens the target's circuit for this long (0 disables).
    quota_break: float = 600.0
    #: Most breakers kept (least recently used are dropped when closed).
    max_breakers: int = 1024


@dataclass(frozen=True, slots=True)
class Target:
    """Another client to fall back to: a provider, region, or local OpenAI-compatible server.

    In a file, the key comes from the environment variable named by ``api_key_env`` (a file
    never holds secrets). In code, pass a ready ``client`` instead.
    """

    name: str
    base_url: str | None = None
    api_key_env: str | None = None
    organization: str | None = None
    project: str | None = None
    #: Model to ask there (None: the caller's model).
    model: str | None = None
    #: The target accepts a trailing assistant message as a prefill to continue from.
    accepts_prefill: bool = False
    retry: RetryPolicy | None = None
    breaker: BreakerPolicy | None = None
    client: openai.OpenAI | openai.AsyncOpenAI | None = None

    def api_key(self) -> str | None:
        """The key from ``api_key_env``, read now (None when no variable is named)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


FallbackKind = Literal["model", "target", "cache", "canned", "function"]


@dataclass(frozen=True, slots=True)
class FallbackStep:
    """One rung of a fallback chain.

    ``model``: ask ``model`` on the same client. ``target``: ask the :class:`Target` named
    ``target``. ``cache``: the last good answer to the same request. ``canned``: ``text``, a
    ``str.format`` template that may use ``{model}`` and ``{reason}``. ``function``: call
    ``function(request_body, reason)``; it returns the answer text (sync or async).
    """

    kind: FallbackKind
    model: str | None = None
    target: str | None = None
    text: str | None = None
    function: Callable[[Mapping[str, Any], str], str | Awaitable[str]] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """The fallback chain for the models a route matches (a model name, or ``"*"``)."""

    steps: tuple[FallbackStep, ...] = ()
    #: Where ``context_length_exceeded`` goes (a model with a larger window), if anywhere.
    context_model: str | None = None
    #: What answers a content-filtered request, if anything (default: the filter error).
    content_policy: FallbackStep | None = None


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """Fallback routes by model name (``"*"`` matches any), alternate targets, continuation."""

    routes: Mapping[str, Route] = field(default_factory=dict)
    targets: Mapping[str, Target] = field(default_factory=dict)
    #: Continue a stream cut mid-answer on the next target that accepts a prefill.
    continuation: bool = False
    #: Make these models / target names fail on purpose, with this verdict (chaos switch).
    forced_failures: Mapping[str, Verdict] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The response cache: bounded by entries and bytes, with a TTL, scoped per tenant."""

    enabled: bool = True
    max_entries: int = 1024
    max_bytes: int = 16 * 1024 * 1024
    ttl: float = 3600.0
    #: Serve a hit before calling the upstream at all (off: the cache only answers outages).
    read_through: bool = False


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """Checks made before sending, so a request that cannot succeed never reaches a breaker."""

    enabled: bool = True
    #: Context windows in tokens, by model name (prefix match), for the prompt-size estimate.
    context_windows: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the chain needs. ``Policy()`` is a sensible production default."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    fallback: FallbackPolicy = field(default_factory=FallbackPolicy)
    cache: CachePolicy = field(default_factory=CachePolicy)
    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    clock: Clock = SYSTEM_CLOCK
    listeners: tuple[Listener, ...] = ()
    #: Names the breaker for (base_url, model); default ``breaker.default_key``: one per pair.
    breaker_key: Callable[[str, str | None], str] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> Policy:
        """Build and validate a policy from plain data (as read from TOML/YAML/JSON).

        ``overrides`` sets code-only fields such as ``clock`` or ``listeners``.
        """
        from ._config import policy_from_dict

        return policy_from_dict(data, **overrides)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> Policy:
        """Load ``path`` (``.toml``; ``.yaml``/``.yml`` with the ``yaml`` extra) and validate it."""
        from ._config import load_file

        return cls.from_dict(load_file(Path(path)), **overrides)
