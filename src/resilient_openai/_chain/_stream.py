"""Watching a live stream: skip a malformed event, turn cuts and stalls into a typed error.

The SDK's ``Stream`` reads server-sent events from the HTTP response's byte stream. The attempt
layer slips a guard between the two: the guard hands the SDK only well-formed events, reads the
first event while still inside the chain (so a failure before the first chunk is retried or
falls back invisibly), and after that ends any cut, stall or unreadable stream with
:class:`~resilient_openai.IncompleteStreamError` carrying the partial text: never a normal end
with a truncated answer. :class:`~._watch.StreamWatch` is the I/O-free part shared by both
guards; a sync guard's reads are bounded through :mod:`._watchdog`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator

import httpx2

from .. import _sdk
from .._errors import IncompleteStreamError
from .._fallback.splice import Splice
from ._watch import StreamWatch
from ._watchdog import WATCHDOG, Watched

__all__ = ["AsyncJoined", "AsyncStreamGuard", "Joined", "SyncStreamGuard", "splice_chunk"]

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
        ``httpx2.ReadTimeout``, as the transport's own limit would. The connection is forgotten
        when the body ends, breaks, or this generator is closed or collected."""
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
        while True:
            try:
                for data in self._source:
                    watch.check_deadline()
                    kept = watch.feed(data)
                    if kept:
                        yield kept
                break
            except _BREAKS as exc:
                go_on = watch.hooks.rescue_sync
                more = go_on(watch.partial_text) if go_on is not None and watch.rescuable(exc) else None
                if more is None:
                    raise watch.ended_by(exc) from _cause(exc)
                watch.hand_over()
                self._rescues.append(more)
                self._source = iter(more)
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
