"""Turn any outcome of an attempt into a :class:`Verdict`: the one vocabulary every policy speaks.

Pure: no I/O, no clock. Retry rules, breaker accounting and fallback decisions all start from
:func:`classify`, so an error is judged the same way everywhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import httpx2
import openai

__all__ = [
    "MAX_RETRY_AFTER",
    "TRAITS",
    "Classification",
    "Traits",
    "Verdict",
    "classify",
    "parse_retry_after",
    "verdicts_where",
]

#: A server-requested wait longer than this (seconds) is never waited for (the SDK's own cap).
MAX_RETRY_AFTER = 120.0


class Verdict(StrEnum):
    """What an attempt's outcome means, independent of how it surfaced."""

    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    SERVER_ERROR = "server_error"
    REQUEST_TIMEOUT = "request_timeout"
    CONFLICT = "conflict"
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    CONTENT_FILTERED = "content_filtered"
    CALLER_ERROR = "caller_error"
    CANCELLED = "cancelled"
    CIRCUIT_OPEN = "circuit_open"
    STREAM_INTERRUPTED = "stream_interrupted"
    #: A 200 whose body is not a valid response of the operation (HTML, truncated or shapeless JSON).
    MALFORMED_RESPONSE = "malformed_response"
    UNEXPECTED = "unexpected"


@dataclass(frozen=True, slots=True)
class Traits:
    """What the chain does with one verdict, by default: the one table every policy starts from."""

    #: Retried on the same target by default (the SDK's own policy), and a retry rule may be set.
    retryable: bool = False
    #: An outage: this target cannot answer now, another one may (the fallback walk moves on).
    outage: bool = False
    #: Counted as a failure by the circuit breaker by default.
    breaker_failure: bool = False
    #: May be configured as a breaker failure (False: it says nothing of the target's health).
    may_trip: bool = False
    #: ``fallback.forced_failures`` may fake it: the HTTP status and error code it is faked with
    #: (status None: a transport failure, not an HTTP answer).
    forced_as: tuple[int | None, str | None] | None = None


#: Every verdict's traits. A 409 (``conflict``), for example, is retried and fallen back from
#: but never trips a breaker by default: the upstream is healthy, the resource was busy.
TRAITS: Mapping[Verdict, Traits] = {
    Verdict.SUCCESS: Traits(),
    Verdict.RATE_LIMITED: Traits(
        retryable=True, outage=True, may_trip=True, forced_as=(429, "rate_limit_exceeded")
    ),
    Verdict.QUOTA_EXHAUSTED: Traits(outage=True, may_trip=True, forced_as=(429, "insufficient_quota")),
    Verdict.SERVER_ERROR: Traits(
        retryable=True, outage=True, breaker_failure=True, may_trip=True, forced_as=(503, None)
    ),
    Verdict.REQUEST_TIMEOUT: Traits(
        retryable=True, outage=True, breaker_failure=True, may_trip=True, forced_as=(408, None)
    ),
    Verdict.CONFLICT: Traits(retryable=True, outage=True, may_trip=True, forced_as=(409, None)),
    Verdict.CONNECTION_ERROR: Traits(
        retryable=True, outage=True, breaker_failure=True, may_trip=True, forced_as=(None, None)
    ),
    Verdict.TIMEOUT: Traits(
        retryable=True, outage=True, breaker_failure=True, may_trip=True, forced_as=(None, "timeout")
    ),
    Verdict.CONTEXT_LENGTH_EXCEEDED: Traits(forced_as=(400, "context_length_exceeded")),
    Verdict.CONTENT_FILTERED: Traits(forced_as=(400, "content_policy_violation")),
    Verdict.CALLER_ERROR: Traits(forced_as=(400, "invalid_request_error")),
    # Faked as a dropped connection: the nearest failure a transport can produce.
    Verdict.CANCELLED: Traits(forced_as=(None, None)),
    Verdict.CIRCUIT_OPEN: Traits(outage=True, forced_as=(None, None)),
    Verdict.STREAM_INTERRUPTED: Traits(
        retryable=True, outage=True, breaker_failure=True, may_trip=True, forced_as=(None, None)
    ),
    Verdict.MALFORMED_RESPONSE: Traits(
        retryable=True, outage=True, breaker_failure=True, may_trip=True, forced_as=(200, None)
    ),
    Verdict.UNEXPECTED: Traits(may_trip=True, forced_as=(None, None)),
}


def verdicts_where(trait: str) -> frozenset[Verdict]:
    """The verdicts whose ``trait`` (a :class:`Traits` field name) is true."""
    return frozenset(verdict for verdict, traits in TRAITS.items() if getattr(traits, trait))


@dataclass(frozen=True, slots=True)
class Classification:
    """A verdict plus what the upstream said about retrying it."""

    verdict: Verdict
    #: Seconds the server asked us to wait (``retry-after-ms`` / ``Retry-After``), if it did.
    retry_after: float | None = None
    #: The upstream's ``x-should-retry`` header: True / False when present, None when absent.
    should_retry: bool | None = None
    #: HTTP status, when the outcome was an HTTP response.
    status: int | None = None


_SUCCESS = Classification(Verdict.SUCCESS)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_FILTER_CODES = frozenset({"content_policy_violation", "content_filter"})


def parse_retry_after(headers: Mapping[str, str] | httpx2.Headers, now_epoch: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date).

    ``now_epoch`` is the wall time used to turn an HTTP date into a delay. A value that cannot be
    read is treated as absent; an overflowing one as "longer than anyone should wait".
    """
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        if math.isinf(value):
            return math.inf
        return max(value / divisor, 0.0)
    raw_date = headers.get("retry-after")
    if raw_date is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(raw_date)
    except (TypeError, ValueError, IndexError):
        return None
    return max(parsed.timestamp() - now_epoch, 0.0)


def _error_fields(exc: openai.APIStatusError) -> tuple[str, str]:
    body = exc.body
    code = getattr(exc, "code", None) or ""
    kind = getattr(exc, "type", None) or ""
    if isinstance(body, Mapping):
        code = code or str(body.get("code") or "")
        kind = kind or str(body.get("type") or "")
    return str(code), str(kind)


def _status_verdict(status: int, code: str, kind: str) -> Verdict:
    if status == 429:
        if "insufficient_quota" in (code, kind):
            return Verdict.QUOTA_EXHAUSTED
        return Verdict.RATE_LIMITED
    if status == 408:
        return Verdict.REQUEST_TIMEOUT
    if status == 409:
        return Verdict.CONFLICT
    if status >= 500:
        return Verdict.SERVER_ERROR
    if code in _CONTEXT_CODES:
        return Verdict.CONTEXT_LENGTH_EXCEEDED
    if code in _FILTER_CODES or kind in _FILTER_CODES:
        return Verdict.CONTENT_FILTERED
    return Verdict.CALLER_ERROR


def _header_flag(headers: httpx2.Headers) -> bool | None:
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def classify(outcome: BaseException | None, *, now_epoch: float = 0.0) -> Classification:
    """Judge one attempt: ``None`` is a success, an exception is judged by kind, status and code.

    ``now_epoch`` (wall seconds) is only needed to read a ``Retry-After`` given as an HTTP date.
    """
    # Local import: errors.py imports this module for Verdict.
    from ._errors import CircuitOpenError, DeadlineExceededError, IncompleteStreamError

    if outcome is None:
        return _SUCCESS
    if isinstance(outcome, asyncio.CancelledError | KeyboardInterrupt):
        return Classification(Verdict.CANCELLED)
    if isinstance(outcome, openai.APIStatusError):
        status = outcome.status_code
        code, kind = _error_fields(outcome)
        headers = outcome.response.headers
        return Classification(
            _status_verdict(status, code, kind),
            retry_after=parse_retry_after(headers, now_epoch),
            should_retry=_header_flag(headers),
            status=status,
        )
    if isinstance(outcome, openai.APITimeoutError | httpx2.TimeoutException):
        return Classification(Verdict.TIMEOUT)
    if isinstance(outcome, openai.APIConnectionError | httpx2.TransportError):
        return Classification(Verdict.CONNECTION_ERROR)
    if isinstance(outcome, DeadlineExceededError):
        return Classification(Verdict.TIMEOUT)
    if isinstance(outcome, CircuitOpenError):
        return Classification(Verdict.CIRCUIT_OPEN, retry_after=outcome.retry_after)
    if isinstance(outcome, IncompleteStreamError):
        return Classification(Verdict.STREAM_INTERRUPTED)
    if isinstance(outcome, openai.APIResponseValidationError):
        return Classification(Verdict.MALFORMED_RESPONSE, status=outcome.status_code)
    if isinstance(outcome, openai.APIError):
        # An error event inside a stream: the server's fault.
        return Classification(Verdict.SERVER_ERROR)
    return Classification(Verdict.UNEXPECTED)
