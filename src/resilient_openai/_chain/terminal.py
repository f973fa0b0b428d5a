"""The end of the chain: the SDK's own ``request`` on the current target, its retries off.

Here an attempt's exception becomes an :class:`~resilient_openai._chain._call.Outcome`,
classified once, for every layer above to read.
"""

from __future__ import annotations

from .. import _sdk
from .._classify import classify
from .._clock import Clock
from ._call import Call, Outcome

__all__ = ["AsyncTerminal", "SyncTerminal", "failed"]


def failed(exc: Exception, clock: Clock) -> Outcome:
    """A failed attempt as a value, with its classification."""
    return Outcome(error=exc, judged=classify(exc, now_epoch=clock.wall()))


def _unreadable(call: Call, exc: ValueError) -> Exception:
    """A 200 whose body the SDK could not parse (truncated JSON): judged a server error."""
    error = _sdk.unreadable_error(_sdk.describe_request(call.client, call.options), exc)
    error.__cause__ = exc
    return error


class SyncTerminal:
    """Sends the current attempt with the SDK (threads)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def __call__(self, call: Call) -> Outcome:
        target = call.target
        assert target is not None
        try:
            return Outcome(
                target.send(call.cast_to, call.options, stream=call.stream, stream_cls=call.stream_cls)
            )
        except ValueError as exc:
            return failed(_unreadable(call, exc), self._clock)
        except Exception as exc:
            return failed(exc, self._clock)


class AsyncTerminal:
    """Sends the current attempt with the SDK (asyncio tasks)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def __call__(self, call: Call) -> Outcome:
        target = call.target
        assert target is not None
        try:
            return Outcome(
                await target.send(call.cast_to, call.options, stream=call.stream, stream_cls=call.stream_cls)
            )
        except ValueError as exc:
            return failed(_unreadable(call, exc), self._clock)
        except Exception as exc:
            return failed(exc, self._clock)
