"""The validation layer: refuse, before anything is sent, a request that cannot succeed.

A prompt too large for the model's window goes to the route's larger-context model when one is
configured (the fallback layer starts there); otherwise it is refused like any other mistake.
"""

from __future__ import annotations

from typing import Any

from .._errors import RequestRejectedError
from .._policy import ValidationPolicy
from .._validate import check_request
from ._call import AsyncHandler, Call, Handler

__all__ = ["AsyncValidate", "SyncValidate"]


def _check(call: Call, policy: ValidationPolicy) -> None:
    body = call.body
    if body is None:
        return
    problem = check_request(call.operation, body, policy)
    if problem is None:
        return
    rule, message = problem
    if rule == "context_window":
        call.oversized = True
        return
    raise RequestRejectedError(message, rule=rule, operation=call.operation, model=call.requested_model)


class SyncValidate:
    """Checks each request before the chain spends anything on it (threads)."""

    __slots__ = ("_policy",)

    def __init__(self, policy: ValidationPolicy) -> None:
        self._policy = policy

    def __call__(self, call: Call, next: Handler) -> Any:
        _check(call, self._policy)
        return next(call)


class AsyncValidate:
    """Checks each request before the chain spends anything on it (asyncio tasks)."""

    __slots__ = ("_policy",)

    def __init__(self, policy: ValidationPolicy) -> None:
        self._policy = policy

    async def __call__(self, call: Call, next: AsyncHandler) -> Any:
        _check(call, self._policy)
        return await next(call)
