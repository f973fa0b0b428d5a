"""The forced-failure switch: make a model or target fail on purpose, to exercise fallbacks.

Configured by ``FallbackPolicy.forced_failures`` (model name or target name -> verdict). It sits
inside the breaker, so a forced failure is counted, retried and fallen back from exactly like a
real one; the error is built by the SDK itself from a synthetic response, so it is the SDK's own
exception type with an OpenAI error body.
"""

from __future__ import annotations

from collections.abc import Mapping

import openai

from .. import _sdk
from .._classify import TRAITS, Verdict, classify
from ._call import AsyncHandler, Call, Handler, Outcome

__all__ = ["AsyncChaos", "SyncChaos", "forced_error"]


def forced_error(call: Call, verdict: Verdict) -> Exception:
    """The SDK exception a real upstream failure with ``verdict`` would have produced."""
    request = _sdk.describe_request(call.client, call.options)
    forced = TRAITS[verdict].forced_as
    status, code = forced if forced is not None else (None, None)
    if status is None:
        if code == "timeout":
            return openai.APITimeoutError(request=request)
        return openai.APIConnectionError(message="Connection error (forced failure).", request=request)
    if status == 200:
        return _sdk.malformed_error(request, "forced")
    target = call.target
    name = target.name if target is not None else "?"
    body = {
        "error": {"message": f"forced {verdict} on '{name}'", "type": code or verdict.value, "code": code}
    }
    return _sdk.error_from_status(call.client, request, status, body)


class _Forced:
    __slots__ = ("_forced",)

    def __init__(self, forced: Mapping[str, Verdict]) -> None:
        self._forced = dict(forced)

    def outcome(self, call: Call) -> Outcome | None:
        """The forced failure for the call's target or model, already judged; None: send."""
        target = call.target
        forced = self._forced
        verdict = None
        if target is not None:
            verdict = forced.get(target.label) or forced.get(target.name)
        if verdict is None:
            verdict = forced.get(call.model or "")
        if verdict is None:
            return None
        error = forced_error(call, verdict)
        return Outcome(error=error, judged=classify(error))


class SyncChaos(_Forced):
    """Fails the call's target or model on purpose, as configured (threads)."""

    __slots__ = ("_next",)

    def __init__(self, next: Handler, forced: Mapping[str, Verdict]) -> None:
        super().__init__(forced)
        self._next = next

    def __call__(self, call: Call) -> Outcome:
        next = self._next
        forced = self.outcome(call)
        if forced is not None:
            return forced
        outcome: Outcome = next(call)
        return outcome


class AsyncChaos(_Forced):
    """Fails the call's target or model on purpose, as configured (asyncio tasks)."""

    __slots__ = ("_next",)

    def __init__(self, next: AsyncHandler, forced: Mapping[str, Verdict]) -> None:
        super().__init__(forced)
        self._next = next

    async def __call__(self, call: Call) -> Outcome:
        next = self._next
        forced = self.outcome(call)
        if forced is not None:
            return forced
        outcome: Outcome = await next(call)
        return outcome
