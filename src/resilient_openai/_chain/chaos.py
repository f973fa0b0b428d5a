"""The forced-failure switch: make a model or target fail on purpose, to exercise fallbacks.

Configured by ``FallbackPolicy.forced_failures`` (model name or target name -> verdict). It sits
inside the breaker, so a forced failure is counted, retried and fallen back from exactly like a
real one; the error is built by the SDK itself from a synthetic response, so it is the SDK's own
exception type with an OpenAI error body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from .._classify import Verdict
from ._call import AsyncHandler, Call, Handler

__all__ = ["AsyncChaos", "SyncChaos", "forced_error"]

_STATUS: Mapping[Verdict, tuple[int, str | None]] = {
    Verdict.SERVER_ERROR: (503, None),
    Verdict.RATE_LIMITED: (429, "rate_limit_exceeded"),
    Verdict.QUOTA_EXHAUSTED: (429, "insufficient_quota"),
    Verdict.REQUEST_TIMEOUT: (408, None),
    Verdict.CONFLICT: (409, None),
    Verdict.CONTEXT_LENGTH_EXCEEDED: (400, "context_length_exceeded"),
    Verdict.CONTENT_FILTERED: (400, "content_policy_violation"),
    Verdict.CALLER_ERROR: (400, "invalid_request_error"),
}


def forced_error(call: Call, verdict: Verdict) -> Exception:
    """The SDK exception a real upstream failure with ``verdict`` would have produced."""
    target = call.target
    request = call.describe_request()
    if verdict is Verdict.TIMEOUT:
        return openai.APITimeoutError(request=request)
    status, code = _STATUS.get(verdict, (None, None))
    if status is None:
        return openai.APIConnectionError(message="Connection error (forced failure).", request=request)
    name = target.name if target is not None else "?"
    body = {
        "error": {"message": f"forced {verdict} on '{name}'", "type": code or verdict.value, "code": code}
    }
    response = httpx2.Response(status, json=body, request=request)
    error: Exception = call.client._make_status_error_from_response(response)
    return error


class _Forced:
    __slots__ = ("_forced",)

    def __init__(self, forced: Mapping[str, Verdict]) -> None:
        self._forced = dict(forced)

    def verdict(self, call: Call) -> Verdict | None:
        target = call.target
        forced = self._forced
        if target is not None:
            hit = forced.get(target.label) or forced.get(target.name)
            if hit is not None:
                return hit
        return forced.get(call.model or "")


class SyncChaos(_Forced):
    """Raises the forced failure configured for the call's target or model (threads)."""

    __slots__ = ()

    def __call__(self, call: Call, next: Handler) -> Any:
        verdict = self.verdict(call)
        if verdict is not None:
            raise forced_error(call, verdict)
        return next(call)


class AsyncChaos(_Forced):
    """Raises the forced failure configured for the call's target or model (asyncio tasks)."""

    __slots__ = ()

    async def __call__(self, call: Call, next: AsyncHandler) -> Any:
        verdict = self.verdict(call)
        if verdict is not None:
            raise forced_error(call, verdict)
        return await next(call)
