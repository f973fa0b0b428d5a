"""What one live stream has delivered and how it ended: the I/O-free part both guards share.

:class:`StreamWatch` is fed the body's bytes as they arrive and told when the body ends; it keeps
the partial text, skips malformed events, knows the read limits (first token, idle gap,
deadline) and turns a cut, a stall or an unreadable stream into
:class:`~resilient_openai.IncompleteStreamError`. :class:`StreamHooks` is what the fallback
layer asks to be told.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from .. import _sdk
from .._classify import Verdict
from .._clock import Clock
from .._errors import IncompleteStreamError
from .._fallback.assemble import assembler_for
from ..observe.events import EventBus, StreamEventSkipped

__all__ = ["MAX_MALFORMED_IN_A_ROW", "StreamHooks", "StreamWatch"]

#: This many malformed events in a row make a stream unreadable.
MAX_MALFORMED_IN_A_ROW = 3


@dataclass(frozen=True, slots=True)
class StreamHooks:
    """What the fallback layer wants told about a live stream, given before it is sent."""

    #: Called with the assembled answer when the stream completes (the cache stores it).
    on_complete: Callable[[dict[str, Any]], None] | None = None
    #: Given the partial text of a stream cut mid-answer, another target's bytes continuing it.
    rescue_sync: Callable[[str], Iterable[bytes] | None] | None = None
    rescue_async: Callable[[str], Awaitable[AsyncIterable[bytes] | None]] | None = None
    #: Told (the caller's stream, the error or None) when the stream ends: the call completes then.
    on_end: Callable[[Any, IncompleteStreamError | None], None] | None = None


_NO_HOOKS = StreamHooks()
#: Operations whose streams say when they are complete (finish_reason / response.completed).
_SELF_TERMINATING = frozenset({"chat.completions", "responses"})


class StreamWatch:
    """What one stream has delivered so far, and how it ended. No I/O: fed bytes, asked to end."""

    __slots__ = (
        "_assembler",
        "_buffer",
        "_bus",
        "_clock",
        "_deadline",
        "_first_token",
        "_first_token_by",
        "_idle",
        "_malformed_run",
        "_permit",
        "_raised",
        "_request",
        "_started",
        "breaker",
        "delivered",
        "done_seen",
        "ended",
        "hooks",
        "model",
        "operation",
        "outcome",
        "rescued",
        "result",
    )  # fmt: skip

    def __init__(
        self,
        *,
        operation: str,
        model: str | None,
        breaker: str,
        clock: Clock,
        bus: EventBus,
        deadline: float,
        request: httpx2.Request,
        hooks: StreamHooks | None = None,
        result: Any = None,
        first_token_by: float = math.inf,
        idle: float = math.inf,
    ) -> None:
        #: When the first content event must have come (clock time), and the longest gap after it.
        self._first_token_by = first_token_by
        self._idle = idle
        self._raised: IncompleteStreamError | None = None
        self.operation = operation
        #: What the caller holds (the SDK's Stream): its provenance is corrected if it breaks.
        self.result = result
        self._request = request
        self.model = model
        self.breaker = breaker
        self._clock = clock
        self._bus = bus
        self._deadline = deadline
        self._assembler = assembler_for(operation)
        self._buffer = b""
        self._malformed_run = 0
        self._permit: Any = None
        self._started = 0.0
        self._first_token: float | None = None
        self.delivered = 0
        self.done_seen = False
        self.ended = False
        self.outcome: Verdict | None = None
        #: What the fallback layer wants told: the completed answer, and how to continue a cut.
        self.hooks = hooks or _NO_HOOKS
        #: The stream broke mid-answer and another step is finishing it.
        self.rescued = False

    @property
    def started(self) -> bool:
        """The answer has begun: a chunk carried part of it, or the stream already finished."""
        assembler = self._assembler
        return assembler.chunks > 0 or self.done_seen or assembler.finished

    @property
    def partial_text(self) -> str:
        """The answer text delivered so far."""
        return str(self._assembler.text)

    def feed(self, data: bytes) -> bytes:
        """Take raw bytes; return the complete, well-formed events among them.

        The result is an :class:`~resilient_openai._sdk.EventChunk`: the events' bytes, carrying
        the events already decoded, so the SDK does not parse them again (empty bytes when no
        event is complete yet).
        """
        buffer = self._buffer + data
        # A CRLF may be split between two reads: hold a trailing CR back until its LF arrives.
        held = b"\r" if buffer.endswith(b"\r") else b""
        if held:
            buffer = buffer[:-1]
        *blocks, rest = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        self._buffer = rest + held
        kept: list[bytes] = []
        events: list[_sdk.DecodedEvent] = []
        for block in blocks:
            event = self._decode(block)
            if event is not None:
                kept.append(block)
                events.append(event)
        if not events:
            return b""
        return _sdk.EventChunk(b"\n\n".join(kept) + b"\n\n", tuple(events))

    def _decode(self, block: bytes) -> _sdk.DecodedEvent | None:
        """One event block, decoded as the SDK would (None: a comment, or skipped as malformed)."""
        name = ident = retry = None
        data_lines: list[bytes] = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                data_lines.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace") or None
            elif field == b"id" and b"\0" not in value:
                ident = value.decode("utf-8", "replace")
            elif field == b"retry" and value.isdigit():
                retry = int(value)
        if not data_lines:
            return None  # a comment or keep-alive: nothing for the reader
        raw = b"\n".join(data_lines)
        data = raw.decode("utf-8", "replace")
        if raw.startswith(b"[DONE]"):
            self.done_seen = True
            return _sdk.DecodedEvent(event=name, data=data, id=ident, retry=retry, value=None)
        try:
            value = json.loads(raw)
        except ValueError:
            self._malformed()
            return None
        self._malformed_run = 0
        if isinstance(value, dict):
            self._account(value)
        self.delivered += 1
        return _sdk.DecodedEvent(event=name, data=data, id=ident, retry=retry, value=value)

    def _account(self, event: dict[str, Any]) -> None:
        """Feed the answer's assembler; an error reported inside the stream raises."""
        began = self.started
        if event.get("error"):
            self._upstream_error(began, _error_message(event), event["error"])
        # An event the SDK accepts but we cannot account for costs us only the bookkeeping.
        with contextlib.suppress(Exception):
            self._assembler.feed(event)
        if getattr(self._assembler, "outcome", None) == "failed":
            self._upstream_error(began, "the response failed", event.get("response"))

    def _upstream_error(self, began: bool, message: str, body: object) -> None:
        """The upstream reported an error inside the stream: retryable before the answer
        ``began``, the typed error (a failure for the breaker) after it."""
        if not began:
            raise openai.APIError(message, self._request, body=body)
        raise self.error("upstream_error", message)

    def _malformed(self) -> None:
        self._malformed_run += 1
        if self._bus:
            self._bus.emit(StreamEventSkipped(self._clock.wall(), self.operation, self.model, self.breaker))
        if self._malformed_run >= MAX_MALFORMED_IN_A_ROW:
            raise self.error("unreadable", f"{self._malformed_run} malformed events in a row")

    def check_deadline(self) -> None:
        """Raise when the call's total deadline has passed while the stream was still running."""
        if self._clock.now() > self._deadline:
            raise self.error("deadline", "the call's total deadline passed mid-stream")

    def error(self, reason: str, detail: str) -> IncompleteStreamError:
        """The typed error for a stream that ends badly now, with what it delivered."""
        text = self.partial_text
        error = self._raised = IncompleteStreamError(
            f"stream {reason} after {self.delivered} event(s): {detail}",
            partial_text=text,
            chunks=self.delivered,
            reason=reason,
            breaker=self.breaker,
            operation=self.operation,
            model=self.model,
        )
        return error

    def complete(self) -> bool:
        """At a clean end of the HTTP body: did the server finish the answer?"""
        if self.done_seen or self._assembler.finished:
            return True
        return self.operation not in _SELF_TERMINATING and self.delivered > 0

    def closed_early(self) -> None:
        """The reader closed the stream: a success if the answer was complete, else abandoned.

        The SDK stops reading at ``[DONE]`` and closes the response without reading to the end of
        the body, so a close after a finished answer is the normal way a stream completes.
        """
        finished = self.done_seen or self._assembler.finished
        self.end(Verdict.SUCCESS if finished else Verdict.CANCELLED)

    def first_token(self) -> None:
        """The answer began now (called once, when priming ends): from here on a read may wait
        the idle limit, never past the deadline. Both guards bound every read by
        :meth:`read_bound` (the sync one through the watchdog, where it can end a read); the
        limit is also handed to a transport that reads it per read (the fake upstream)."""
        now = self._first_token = self._clock.now()
        _sdk.read_limit(self._request, max(min(self._idle, self._deadline - now), 0.001))

    def read_bound(self) -> float:
        """How long the next read may wait: until the first token is due, then the idle limit;
        never past the call's deadline."""
        now = self._clock.now()
        due = self._first_token_by if self._first_token is None else now + self._idle
        return max(min(due, self._deadline) - now, 0.001)

    def fail(self, error: IncompleteStreamError) -> IncompleteStreamError:
        """The answer began and the stream ends badly: end as interrupted (the fallback layer
        records what happened, on the error and on the stream) and return the error to raise."""
        self.end(Verdict.STREAM_INTERRUPTED, error)
        return error

    def rescuable(self, exc: Exception) -> bool:
        """Whether another step may finish this answer: plain text was delivered, one choice, and
        the call's deadline has not passed."""
        if self._late(exc):
            return False
        return bool(self.partial_text.strip()) and bool(getattr(self._assembler, "text_only", False))

    def _late(self, exc: Exception) -> bool:
        reason = exc.reason if isinstance(exc, IncompleteStreamError) else None
        return reason == "deadline" or self._clock.now() >= self._deadline

    def ended_by(self, exc: Exception) -> IncompleteStreamError:
        """The stream broke mid-answer: the error to raise, always describing what *this* stream
        delivered (a rescuing stream's own error becomes its cause)."""
        if isinstance(exc, IncompleteStreamError) and exc is self._raised:
            return self.fail(exc)
        if self._late(exc):
            reason, detail = "deadline", "the call's total deadline passed mid-stream"
        elif isinstance(exc, IncompleteStreamError):
            reason, detail = exc.reason, str(exc)
        else:
            reason, detail = _broken(exc)
        error = self.error(reason, detail)
        error.__cause__ = exc
        return self.fail(error)

    def truncated(self) -> None:
        """At a clean end of the body: a success if the answer was finished, else raise."""
        if not self.complete():
            raise self.fail(self.error("truncated", "the body ended before the answer was finished"))
        self.end(Verdict.SUCCESS)

    def hand_over(self) -> None:
        """This target broke mid-answer and another one continues: record the failure now."""
        self.rescued = True
        self.outcome = Verdict.STREAM_INTERRUPTED
        self._settle()
        self.outcome = None

    def hand_permit(self, permit: Any, started: float) -> None:
        """Take over the breaker permit: the outcome is recorded when the stream ends. A half-open
        probe is settled at once (its first token came: the target answers), so it never holds
        the probe slot for the length of an answer."""
        if permit.is_probe and not self.ended:
            permit.record(Verdict.SUCCESS, duration=self._clock.now() - started)
            return
        self._permit = permit
        self._started = started
        if self.ended:
            self._settle()

    def end(self, outcome: Verdict, error: IncompleteStreamError | None = None) -> None:
        """The stream is over: SUCCESS, CANCELLED for an abandoned stream, or a failure ``error``."""
        if self.ended:
            return
        self.ended = True
        self.outcome = outcome
        hooks = self.hooks
        if outcome is Verdict.SUCCESS and hooks.on_complete is not None and not self.rescued:
            answer = self._complete_answer()
            if answer is not None:
                hooks.on_complete(answer)
        self._settle()
        if hooks.on_end is not None:
            hooks.on_end(self.result, error)

    def _complete_answer(self) -> dict[str, Any] | None:
        """The whole answer, only when the server said it was finished and completed."""
        assembler = self._assembler
        if not assembler.finished or getattr(assembler, "outcome", "completed") != "completed":
            return None
        return dict(assembler.completion())

    def _settle(self) -> None:
        permit, self._permit = self._permit, None
        if permit is None or self.outcome is None:
            return
        if self.outcome is Verdict.CANCELLED:
            permit.ignore()
        else:
            # A stream's speed is its time to first token (what slow-call tripping judges);
            # its total length says more about the answer than about the upstream's health.
            end = self._first_token if self._first_token is not None else self._clock.now()
            permit.record(self.outcome, duration=end - self._started)


def _error_message(event: dict[str, Any]) -> str:
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "An error occurred during streaming"


def _broken(exc: Exception) -> tuple[str, str]:
    """Why a stream that had started broke: a stall (read timeout) or a cut (anything else)."""
    if isinstance(exc, httpx2.TimeoutException):
        return "stalled", "no event within the idle limit"
    return "cut", "the connection dropped mid-answer"
