"""The end of the chain: the SDK's own ``request`` on the current target, its retries off.

Here an attempt becomes an :class:`~resilient_openai._chain._call.Outcome`, classified once, for
every layer above to read: an exception, a 200 that is not an answer of the operation
(malformed: HTML, truncated or shapeless JSON), or the answer. A well-formed answer that the
caller's own ``parse()`` rejects (its model's validation, a length or content-filter finish) is
the caller's outcome (``caller_error``): never retried, never a breaker failure, no fallback.
"""

from __future__ import annotations

from typing import Any

from .. import _sdk
from .._classify import Classification, Verdict, classify
from .._clock import Clock
from ._call import Call, Outcome

__all__ = ["AsyncTerminal", "SyncTerminal", "failed"]

_CALLERS = Classification(Verdict.CALLER_ERROR)


def failed(exc: Exception, clock: Clock) -> Outcome:
    """A failed attempt as a value, with its classification."""
    return Outcome(error=exc, judged=classify(exc, now_epoch=clock.wall()))


def _malformed(call: Call, why: str, clock: Clock, cause: Exception | None = None) -> Outcome:
    error = _sdk.malformed_error(_sdk.describe_request(call.client, call.options), why)
    error.__cause__ = cause
    return failed(error, clock)


def _judged(call: Call, result: Any, clock: Clock) -> Outcome:
    body = _sdk.answer_body(result)
    why = _sdk.malformed(result, call.cast_to, call.options, call.operation, call.stream)
    return Outcome(result, body=body) if why is None else _malformed(call, why, clock)


class SyncTerminal:
    """Sends the current attempt with the SDK (threads)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def __call__(self, call: Call) -> Outcome:
        target = call.target
        assert target is not None
        parser = _sdk.guard_parser(call.options, call.cast_to, call.stream, call.operation)
        try:
            result = target.send(call.cast_to, call.options, stream=call.stream, stream_cls=call.stream_cls)
        except _sdk.CallerOutcome as exc:
            return Outcome(error=exc.error, judged=_CALLERS)
        except ValueError as exc:  # the SDK could not read the body (JSON, text)
            return _malformed(call, f"unreadable JSON: {exc}", self._clock, exc)
        except Exception as exc:
            return failed(exc, self._clock)
        finally:
            if parser is not None:
                _sdk.restore_parser(call.options, parser)
        return _judged(call, result, self._clock)


class AsyncTerminal:
    """Sends the current attempt with the SDK (asyncio tasks)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def __call__(self, call: Call) -> Outcome:
        target = call.target
        assert target is not None
        send = target.send
        parser = _sdk.guard_parser(call.options, call.cast_to, call.stream, call.operation)
        try:
            result = await send(call.cast_to, call.options, stream=call.stream, stream_cls=call.stream_cls)
        except _sdk.CallerOutcome as exc:
            return Outcome(error=exc.error, judged=_CALLERS)
        except ValueError as exc:  # the SDK could not read the body (JSON, text)
            return _malformed(call, f"unreadable JSON: {exc}", self._clock, exc)
        except Exception as exc:
            return failed(exc, self._clock)
        finally:
            if parser is not None:
                _sdk.restore_parser(call.options, parser)
        return _judged(call, result, self._clock)
