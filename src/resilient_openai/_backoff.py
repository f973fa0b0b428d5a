"""Whether to try the same target again, and after how long. Pure: time and randomness come in."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._classify import Classification, Verdict
from ._policy import RetryPolicy, RetryRule

__all__ = ["RetryDecision", "backoff_delay", "decide_open_circuit_wait", "decide_retry"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """``delay`` seconds to wait before the next attempt, or None to give up (``reason`` says why)."""

    delay: float | None
    reason: str


def backoff_delay(rule: RetryRule, retry_number: int, rand: float) -> float:
    """The wait before retry number ``retry_number`` (1-based): capped doubling, minus jitter.

    ``rand`` is a uniform draw in [0, 1): the wait is reduced by up to ``rule.jitter`` of itself.
    """
    exponent = min(retry_number - 1, 64)
    delay = min(rule.base * 2.0**exponent, rule.cap)
    return max(delay * (1.0 - rule.jitter * rand), 0.0)


#: The one failure retried on the same target even when the route has somewhere else to go: a
#: connection dropped at once (a stale pooled connection) costs nothing to try again.
_WORTH_AGAIN = Verdict.CONNECTION_ERROR


def decide_retry(
    outcome: Classification,
    *,
    policy: RetryPolicy,
    attempt: int,
    remaining: float,
    rand: float,
    has_next: bool = False,
    spent: float = 0.0,
    limit: float = math.inf,
) -> RetryDecision:
    """Decide after failed attempt number ``attempt`` (1-based) with ``remaining`` seconds of budget.

    Never retried: verdicts without a rule (caller errors, quota, context length, content filter,
    cancellation), an upstream that says ``x-should-retry: false``, a server-requested wait longer
    than ``policy.max_retry_after``, or any wait that would not fit in the remaining budget — in
    those cases giving up now lets a fallback answer while there is still time.

    When the route has another step (``has_next``) a failed target is not asked again: the next
    step answers now, and a struggling target gets less load, not the same load later. Only a
    connection dropped quickly (a stale pooled connection) is tried again; one that took at least
    half the attempt's time ``limit`` (``spent`` seconds: an upstream that held the request and
    then hung up) fails over too.
    """
    verdict = outcome.verdict
    rule = policy.rules.get(verdict)
    if rule is None:
        return RetryDecision(None, f"{verdict} is not retried")
    if has_next and (verdict is not _WORTH_AGAIN or spent >= limit / 2):
        return RetryDecision(None, f"{verdict} after {spent:.3g}s: failing over instead of waiting again")
    if policy.honor_should_retry and outcome.should_retry is False:
        return RetryDecision(None, "upstream said x-should-retry: false")
    if attempt >= rule.attempts:
        return RetryDecision(None, f"{rule.attempts} attempt(s) allowed for {verdict}")
    server_wait = outcome.retry_after
    if server_wait is not None and (math.isinf(server_wait) or server_wait > policy.max_retry_after):
        return RetryDecision(None, f"upstream asked to wait {server_wait:g}s (> {policy.max_retry_after:g}s)")
    use_server = server_wait is not None and server_wait > 0
    delay = server_wait if use_server and server_wait is not None else backoff_delay(rule, attempt, rand)
    if delay >= remaining:
        return RetryDecision(None, f"waiting {delay:.3g}s would pass the deadline ({remaining:.3g}s left)")
    return RetryDecision(delay, f"retrying {verdict} in {delay:.3g}s")


def decide_open_circuit_wait(
    outcome: Classification, *, policy: RetryPolicy, remaining: float, has_fallback: bool
) -> float | None:
    """Whether to wait out an open circuit rather than answer at once.

    Only with no fallback left to answer instead, and only for a short wait (at most
    ``policy.max_open_wait``) that fits the remaining budget: a caller should hear about a long
    outage in microseconds, not after sitting through the break.
    """
    wait = outcome.retry_after
    if outcome.verdict is not Verdict.CIRCUIT_OPEN or has_fallback or wait is None:
        return None
    return wait if wait <= policy.max_open_wait and wait < remaining else None
