"""Every row of the verdict table, and Retry-After parsing."""

from __future__ import annotations

import asyncio
import email.utils

import httpx2
import openai
import pytest

from resilient_openai import CircuitOpenError, DeadlineExceededError, IncompleteStreamError, Verdict, classify
from resilient_openai._classify import parse_retry_after

REQUEST = httpx2.Request("POST", "https://api.test/v1/chat/completions")


def _status(
    status: int, *, code: str | None = None, kind: str | None = None, headers: dict[str, str] | None = None
) -> openai.APIStatusError:
    body = {"error": {"message": "m", "type": kind, "code": code, "param": None}}
    response = httpx2.Response(status, json=body, headers=headers, request=REQUEST)
    client = openai.OpenAI(api_key="sk-x", base_url="https://api.test/v1")
    return client._make_status_error_from_response(response)


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [
        (None, Verdict.SUCCESS),
        (_status(429), Verdict.RATE_LIMITED),
        (_status(429, code="insufficient_quota", kind="insufficient_quota"), Verdict.QUOTA_EXHAUSTED),
        (_status(429, kind="insufficient_quota"), Verdict.QUOTA_EXHAUSTED),
        (_status(500), Verdict.SERVER_ERROR),
        (_status(503), Verdict.SERVER_ERROR),
        (_status(408), Verdict.REQUEST_TIMEOUT),
        (_status(409), Verdict.CONFLICT),
        (openai.APIConnectionError(request=REQUEST), Verdict.CONNECTION_ERROR),
        (httpx2.ConnectError("refused"), Verdict.CONNECTION_ERROR),
        (openai.APITimeoutError(request=REQUEST), Verdict.TIMEOUT),
        (httpx2.ReadTimeout("slow"), Verdict.TIMEOUT),
        (DeadlineExceededError("late"), Verdict.TIMEOUT),
        (_status(400, code="context_length_exceeded"), Verdict.CONTEXT_LENGTH_EXCEEDED),
        (_status(400, code="content_policy_violation"), Verdict.CONTENT_FILTERED),
        (_status(400, code="content_filter"), Verdict.CONTENT_FILTERED),
        (_status(400), Verdict.CALLER_ERROR),
        (_status(401), Verdict.CALLER_ERROR),
        (_status(403), Verdict.CALLER_ERROR),
        (_status(404), Verdict.CALLER_ERROR),
        (_status(422), Verdict.CALLER_ERROR),
        (asyncio.CancelledError(), Verdict.CANCELLED),
        (CircuitOpenError("open", breaker="b", retry_after=3.0), Verdict.CIRCUIT_OPEN),
        (IncompleteStreamError("cut", partial_text="", chunks=0, reason="cut"), Verdict.STREAM_INTERRUPTED),
        (openai.APIError("stream error event", REQUEST, body=None), Verdict.SERVER_ERROR),
        (ValueError("a bug somewhere"), Verdict.UNEXPECTED),
    ],
)
def test_verdict_table(outcome: BaseException | None, verdict: Verdict) -> None:
    """Each kind of outcome gets its verdict."""
    assert classify(outcome).verdict is verdict


def test_status_and_headers_are_carried() -> None:
    """A status error carries its status, Retry-After and x-should-retry."""
    outcome = classify(_status(503, headers={"retry-after": "3", "x-should-retry": "false"}))
    assert (outcome.status, outcome.retry_after, outcome.should_retry) == (503, 3.0, False)


def test_circuit_open_carries_retry_after() -> None:
    """An open-circuit rejection keeps the breaker's retry_after."""
    assert classify(CircuitOpenError("open", retry_after=7.5)).retry_after == 7.5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "nope", "retry-after": "4"}, 4.0),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "garbage"}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms first, then Retry-After seconds; unreadable values count as absent."""
    assert parse_retry_after(httpx2.Headers(headers), now_epoch=0.0) == expected


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is measured from the given wall time."""
    now = 1_767_225_600.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx2.Headers({"retry-after": date}), now_epoch=now) == pytest.approx(30.0)
