"""The validation layer: refuse, before anything is sent, a request that cannot succeed.

A prompt too large for the model's window is the fallback walk's to judge: it starts at the
route's larger-context model when one is configured, and refuses the call otherwise.
"""

from __future__ import annotations

from typing import Any

from .._errors import RequestRejectedError
from .._validate import check_request
from ._call import AsyncHandler, Call, Handler

__all__ = ["AsyncValidate", "SyncValidate"]


def _check(call: Call) -> None:
    body = call.body
    if body is None:
        return
    problem = check_request(call.operation, body)
    if problem is not None:
        rule, message = problem
        raise RequestRejectedError(message, rule=rule, operation=call.operation, model=call.requested_model)


class SyncValidate:
    """Checks each request before the chain spends anything on it (threads)."""

    __slots__ = ("_next",)

    def __init__(self, next: Handler) -> None:
        self._next = next

    def __call__(self, call: Call) -> Any:
        next = self._next
        _check(call)
        return next(call)


class AsyncValidate:
    """Checks each request before the chain spends anything on it (asyncio tasks)."""

    __slots__ = ("_next",)

    def __init__(self, next: AsyncHandler) -> None:
        self._next = next

    async def __call__(self, call: Call) -> Any:
        next = self._next
        _check(call)
        return await next(call)
