"""The pure retry decision: rules, server advice, the deadline."""

from __future__ import annotations

import math

import pytest

from resilient_openai import Classification, RetryPolicy, RetryRule, Verdict
from resilient_openai._backoff import backoff_delay, decide_open_circuit_wait, decide_retry

POLICY = RetryPolicy()


def _decide(
    outcome: Classification, attempt: int = 1, remaining: float = 60.0, rand: float = 0.0
) -> float | None:
    return decide_retry(outcome, policy=POLICY, attempt=attempt, remaining=remaining, rand=rand).delay


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict.CALLER_ERROR,
        Verdict.QUOTA_EXHAUSTED,
        Verdict.CONTEXT_LENGTH_EXCEEDED,
        Verdict.CONTENT_FILTERED,
        Verdict.CANCELLED,
        Verdict.UNEXPECTED,
        Verdict.CIRCUIT_OPEN,
    ],
)
def test_never_retried(verdict: Verdict) -> None:
    """Caller errors, quota, context length, content filter and the like are never retried."""
    assert _decide(Classification(verdict)) is None


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict.RATE_LIMITED,
        Verdict.SERVER_ERROR,
        Verdict.REQUEST_TIMEOUT,
        Verdict.CONFLICT,
        Verdict.CONNECTION_ERROR,
        Verdict.TIMEOUT,
        Verdict.STREAM_INTERRUPTED,
    ],
)
def test_retried_by_default(verdict: Verdict) -> None:
    """The SDK's retryable set is retried, twice."""
    assert _decide(Classification(verdict), attempt=1) == 0.5
    assert _decide(Classification(verdict), attempt=2) == 1.0
    assert _decide(Classification(verdict), attempt=3) is None


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    """min(base * 2**n, cap), reduced by up to jitter."""
    rule = RetryRule(attempts=10, base=0.5, cap=8.0, jitter=0.25)
    assert [backoff_delay(rule, n, 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_delay(rule, 3, 1.0) == pytest.approx(1.5)


def test_server_wait_is_used() -> None:
    """A Retry-After within bounds is the wait."""
    assert _decide(Classification(Verdict.RATE_LIMITED, retry_after=2.0)) == 2.0


@pytest.mark.parametrize("wait", [121.0, math.inf])
def test_long_server_wait_gives_up(wait: float) -> None:
    """A server wait over 120 s means give up now."""
    assert _decide(Classification(Verdict.RATE_LIMITED, retry_after=wait)) is None


def test_wait_past_the_deadline_gives_up() -> None:
    """A wait that does not fit the remaining budget gives up now, so a fallback has time."""
    assert _decide(Classification(Verdict.RATE_LIMITED, retry_after=5.0), remaining=4.0) is None


def test_should_retry_false_is_obeyed() -> None:
    """x-should-retry: false stops a retryable verdict."""
    assert _decide(Classification(Verdict.SERVER_ERROR, should_retry=False)) is None


def test_an_open_circuit_is_never_waited_out_by_default() -> None:
    """By default an open circuit answers at once: waiting is opt-in (``max_open_wait``)."""
    short = Classification(Verdict.CIRCUIT_OPEN, retry_after=0.5)
    assert decide_open_circuit_wait(short, policy=RetryPolicy(), remaining=60.0, has_fallback=False) is None


def test_open_circuit_wait_only_without_fallback_and_when_short() -> None:
    """Opted in, an open circuit is waited out only with no fallback left, for a short wait that fits."""
    short = Classification(Verdict.CIRCUIT_OPEN, retry_after=2.0)
    long = Classification(Verdict.CIRCUIT_OPEN, retry_after=30.0)
    wait = decide_open_circuit_wait
    opted = RetryPolicy(max_open_wait=8.0)
    assert wait(short, policy=opted, remaining=60.0, has_fallback=False) == 2.0
    assert wait(short, policy=opted, remaining=60.0, has_fallback=True) is None
    assert wait(short, policy=opted, remaining=1.0, has_fallback=False) is None
    assert wait(long, policy=opted, remaining=60.0, has_fallback=False) is None
