"""The validation layer: refuse, before anything is sent, a request that cannot succeed.

A prompt too large for the model's window is the fallback walk's to judge: it starts at the
route's larger-context model when one is configured, and refuses the call otherwise.
"""

from __future__ import annotations

from typing import Any

from .._errors import RequestRejectedError
from .._validate import check_request
from ._call import Call, Handler

__all__ = ["Validate"]


def _check(call: Call) -> None:
    body = call.body
    if body is None:
        return
    problem = check_request(call.operation, body)
    if problem is not None:
        rule, message = problem
        raise RequestRejectedError(message, rule=rule, operation=call.operation, model=call.requested_model)


class Validate:
    """Checks each request before the chain spends anything on it.

    The same layer serves both flavours: it raises before anything is sent, or hands the call
    down and returns what the layer below returns (for an asyncio chain, its coroutine,
    awaited by the caller: this layer costs no coroutine of its own).
    """

    __slots__ = ("_next",)

    def __init__(self, next: Handler) -> None:
        self._next = next

    def __call__(self, call: Call) -> Any:
        _check(call)
        return self._next(call)
