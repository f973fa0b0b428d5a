"""Watching a live stream: skip a malformed event, turn cuts and stalls into a typed error.

The SDK's ``Stream`` reads server-sent events from the HTTP response's byte stream. The attempt
layer slips a guard between the two: the guard hands the SDK only well-formed events, reads the
first event while still inside the chain (so a failure before the first chunk is retried or
falls back invisibly), and after that ends any cut, stall or unreadable stream with
:class:`~resilient_openai.IncompleteStreamError` carrying the partial text: never a normal end
with a truncated answer. :class:`StreamWatch` is the I/O-free part shared by both guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from .. import _sdk
from .._classify import Verdict
from .._clock import Clock
from .._errors import IncompleteStreamError
from .._fallback.assemble import assembler_for
from .._fallback.splice import Splice
from ..observe.events import EventBus, StreamEventSkipped
from ._watchdog import WATCHDOG, Watched

__all__ = [
    "AsyncJoined",
    "AsyncStreamGuard",
    "Joined",
    "StreamHooks",
    "StreamWatch",
    "SyncStreamGuard",
    "splice_chunk",
]

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


#: What breaks a stream after its first token: the transport, or what the watch saw in it.
_BREAKS = (httpx2.TimeoutException, httpx2.TransportError, IncompleteStreamError)


def _cause(exc: Exception) -> BaseException | None:
    return exc.__cause__ if isinstance(exc, IncompleteStreamError) else exc


def splice_chunk(splice: Splice, chunk: bytes) -> bytes:
    """The events of a regenerated stream's ``chunk`` that the caller should see (trimmed where
    the join falls), as an :class:`~resilient_openai._sdk.EventChunk`; empty bytes for none."""
    events = getattr(chunk, "events", ())
    kept: list[_sdk.DecodedEvent] = []
    for event in events:
        value = event.json()
        taken = splice.take(value)
        if taken is value:
            kept.append(event)
        elif taken is not None:
            data = json.dumps(taken, separators=(",", ":"))
            kept.append(
                _sdk.DecodedEvent(event=event.event, data=data, id=event.id, retry=event.retry, value=taken)
            )
    if not kept:
        return b""
    raw = b"".join(b"data: " + event.data.encode() + b"\n\n" for event in kept)
    return _sdk.EventChunk(raw, tuple(kept))


class Joined(httpx2.SyncByteStream):
    """A regenerated stream from where it joined the caller's text: the held chunks, then the
    rest; closing it closes the regenerated stream (its own guard records its outcome)."""

    def __init__(self, held: list[bytes], rest: Iterator[bytes], stream: object) -> None:
        self._held, self._rest, self._stream = held, rest, stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._held
        yield from self._rest

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class AsyncJoined(httpx2.AsyncByteStream):
    """The asyncio twin of :class:`Joined`."""

    def __init__(self, held: list[bytes], rest: AsyncIterator[bytes], stream: object) -> None:
        self._held, self._rest, self._stream = held, rest, stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._held:
            yield chunk
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


def _broken(exc: Exception) -> tuple[str, str]:
    """Why a stream that had started broke: a stall (read timeout) or a cut (anything else)."""
    if isinstance(exc, httpx2.TimeoutException):
        return "stalled", "no event within the idle limit"
    return "cut", "the connection dropped mid-answer"


class SyncStreamGuard(httpx2.SyncByteStream):
    """Sits between the HTTP body and the SDK's ``Stream`` (threads).

    ``watched``: the connection, when the :data:`~._watchdog.WATCHDOG` can end a read on it
    that outlives the watch's limit (the transport's own limit was fixed when the body began).
    """

    def __init__(
        self,
        raw: httpx2.SyncByteStream,
        watch: StreamWatch,
        request: httpx2.Request,
        watched: Watched | None = None,
    ) -> None:
        self._raw = raw
        self._watch = watch
        self._request = request
        self._watched = watched
        self._source: Iterator[bytes] = iter(raw) if watched is None else self._watched_reads(watched)
        self._pending: list[bytes] = []
        self._rescues: list[object] = []

    def _watched_reads(self, watched: Watched) -> Iterator[bytes]:
        """The body, each read handed to the watchdog with the watch's limit: one it ends raises
        ``httpx2.ReadTimeout``, as the transport's own limit would."""
        watch, source = self._watch, iter(self._raw)
        try:
            while True:
                WATCHDOG.due(watched, time.monotonic() + watch.read_bound())
                try:
                    data = next(source)
                except StopIteration:
                    return
                except httpx2.TransportError as exc:
                    if watched.fired:
                        raise httpx2.ReadTimeout("no event within the limit", request=self._request) from exc
                    raise
                finally:
                    watched.due = math.inf  # between reads nothing is watched
                yield data
        finally:  # also when a stream dropped unread is collected
            WATCHDOG.forget(watched)

    def _unwatch(self) -> None:
        watched, self._watched = self._watched, None
        if watched is not None:
            WATCHDOG.forget(watched)

    def prime(self) -> None:
        """Read up to the first piece of the answer, inside the chain: failures here are retryable.

        Events before it (the role chunk, ``response.created``) are held back, so a failure
        before the first token is invisible to the caller.
        """
        watch = self._watch
        try:
            while not watch.started:
                try:
                    data = next(self._source)
                except StopIteration:
                    raise watch.error("truncated", "the body ended before the first event") from None
                kept = watch.feed(data)
                if kept:
                    self._pending.append(kept)
            watch.first_token()
        except (httpx2.TimeoutException, httpx2.TransportError) as exc:
            self._unwatch()
            self._raw.close()
            raise _sdk.mapped_transport_error(exc, self._request) from exc
        except BaseException:
            self._unwatch()
            self._raw.close()
            raise

    def __iter__(self) -> Iterator[bytes]:
        watch = self._watch
        pending, self._pending = self._pending, []
        yield from pending
        try:
            while True:
                try:
                    for data in self._source:
                        watch.check_deadline()
                        kept = watch.feed(data)
                        if kept:
                            yield kept
                    break
                except _BREAKS as exc:
                    self._unwatch()  # this connection is done; a rescuing stream has its own guard
                    go_on = watch.hooks.rescue_sync
                    more = go_on(watch.partial_text) if go_on is not None and watch.rescuable(exc) else None
                    if more is None:
                        raise watch.ended_by(exc) from _cause(exc)
                    watch.hand_over()
                    self._rescues.append(more)
                    self._source = iter(more)
        finally:
            self._unwatch()
        watch.truncated()

    def close(self) -> None:
        self._unwatch()
        self._watch.closed_early()
        self._raw.close()
        for more in self._rescues:  # a rescuing stream's own guard records its outcome
            if isinstance(more, httpx2.SyncByteStream):
                more.close()


class AsyncStreamGuard(httpx2.AsyncByteStream):
    """Sits between the HTTP body and the SDK's ``AsyncStream`` (asyncio tasks)."""

    def __init__(self, raw: httpx2.AsyncByteStream, watch: StreamWatch, request: httpx2.Request) -> None:
        self._raw = raw
        self._watch = watch
        self._request = request
        self._source: AsyncIterator[bytes] = aiter(raw)
        self._pending: list[bytes] = []
        self._rescues: list[object] = []

    async def prime(self) -> None:
        """Read up to the first piece of the answer, inside the chain: failures here are retryable.

        Events before it (the role chunk, ``response.created``) are held back, so a failure
        before the first token is invisible to the caller.
        """
        watch = self._watch
        try:
            while not watch.started:
                try:
                    data = await self._read()
                except StopAsyncIteration:
                    raise watch.error("truncated", "the body ended before the first event") from None
                kept = watch.feed(data)
                if kept:
                    self._pending.append(kept)
            watch.first_token()
        except (httpx2.TimeoutException, httpx2.TransportError) as exc:
            await self._raw.aclose()
            raise _sdk.mapped_transport_error(exc, self._request) from exc
        except BaseException:
            await self._raw.aclose()
            raise

    async def __aiter__(self) -> AsyncIterator[bytes]:
        watch = self._watch
        pending, self._pending = self._pending, []
        for kept in pending:
            yield kept
        while True:
            try:
                while True:
                    try:
                        data = await self._read()
                    except StopAsyncIteration:
                        break
                    watch.check_deadline()
                    kept = watch.feed(data)
                    if kept:
                        yield kept
                break
            except _BREAKS as exc:
                go_on = watch.hooks.rescue_async
                more = await go_on(watch.partial_text) if go_on is not None and watch.rescuable(exc) else None
                if more is None:
                    raise watch.ended_by(exc) from _cause(exc)
                watch.hand_over()
                self._rescues.append(more)
                self._source = aiter(more)
        watch.truncated()

    async def _read(self) -> bytes:
        """The next piece of the body, waiting no longer than the watch allows (a stall raises
        ``httpx2.ReadTimeout``, as the transport's own limit would)."""
        try:
            async with asyncio.timeout(self._watch.read_bound()):
                return await anext(self._source)
        except TimeoutError as exc:
            raise httpx2.ReadTimeout("no event within the limit", request=self._request) from exc

    async def aclose(self) -> None:
        self._watch.closed_early()
        await self._raw.aclose()
        for more in self._rescues:  # a rescuing stream's own guard records its outcome
            if isinstance(more, httpx2.AsyncByteStream):
                await more.aclose()
