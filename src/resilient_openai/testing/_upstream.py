"""A fault-scripted fake OpenAI upstream, in process (an httpx2 transport) or on a loopback socket.

The work is split the way the rest of the library is: :meth:`FakeUpstream._decide` is the pure part
(record the request, pick the fault, turn it into a :data:`Plan`: waits, headers, body pieces,
hang-up); the transports here and the server in :mod:`._server` only carry a plan out. In process,
every wait goes through the injected clock and honours the request's read timeout, so a test with
a :class:`FakeClock` never sleeps; on the socket, waits are real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import httpx2

from .. import _shapes
from ._clock import FakeClock
from ._faults import (
    FAULTS,
    Breakage,
    Cut,
    Delay,
    Fault,
    Garbage,
    Hold,
    Malformed,
    Ok,
    OneOf,
    Reset,
    Silence,
    Stall,
    Status,
)
from ._plan import Hangup, Plan, Reply, Wait

if TYPE_CHECKING:
    from .._clock import Clock

__all__ = ["FakeUpstream", "RecordedRequest"]

# Error ``type`` OpenAI sends with a status when the test does not name one (other 4xx:
# invalid_request_error, 5xx: server_error).
_ERROR_TYPES = {403: "permission_error", 409: "conflict_error", 429: "requests"}
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})


@dataclass(frozen=True, slots=True, repr=False)
class RecordedRequest:
    """One request the fake upstream received, recorded even when its fault dropped it.

    ``model`` is the body's ``"model"`` (``None`` when there is none); ``headers`` has lower-cased
    names and keeps every header (``repr`` masks credentials); ``at`` is the clock's ``now()``;
    ``request_id`` is the ``x-request-id`` the answer carries (or would have carried); ``fault``
    the fault that answered it (the very instance scripted or set as default).
    """

    method: str
    path: str
    model: str | None
    stream: bool
    json: dict[str, Any] | None
    headers: dict[str, str]
    at: float
    request_id: str = ""
    fault: Fault | None = None

    def __repr__(self) -> str:
        """Like the dataclass repr, with credential header values masked (the scheme is kept)."""
        masked = {k: _mask(v) if k in _SECRET_HEADERS else v for k, v in self.headers.items()}
        shown = {spec.name: getattr(self, spec.name) for spec in fields(self)} | {"headers": masked}
        return f"RecordedRequest({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


def _mask(value: str) -> str:
    scheme, sep, _secret = value.partition(" ")
    return f"{scheme} ***" if sep else "***"


_Frame = tuple[str | None, _shapes.JSONDict]
"""One SSE event before framing: its ``event:`` name (or ``None``) and its JSON data."""


def _json(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _json_reply(
    status: int, body: object, headers: Iterable[tuple[str, str]] = (), breakage: Breakage | None = None
) -> Plan:
    """A JSON answer, with the breakage applied to its body: stalled before, cut or truncated."""
    data = _json(body)
    sent = data[: len(data) // 2] if isinstance(breakage, Malformed) else data
    length = ("content-length", str(len(sent)))
    reply = Reply(status, (("content-type", "application/json"), *headers, length))
    if isinstance(breakage, Stall):
        return reply, Wait(breakage.seconds), data
    if isinstance(breakage, Cut):
        return reply, data[: len(data) // 2], Hangup()
    return reply, sent


def _sse_reply(
    head: list[_Frame], content: list[_Frame], tail: list[bytes], breakage: Breakage | None
) -> Plan:
    """A streamed body with the breakage laid in at its position (see :class:`Cut`)."""
    pieces: list[Wait | bytes | Hangup] = [*map(_frame, head), *map(_frame, content), *tail]
    if breakage is not None:
        at = min(breakage.at if isinstance(breakage, Malformed) else breakage.after, len(content))
        if isinstance(breakage, Malformed) and at < len(content):
            # Invalid JSON, but framed, so the events after it still parse.
            name, data = content[at]
            text = _json(data).decode()
            pieces[len(head) + at] = _shapes.sse([text[: len(text) // 2]], done=False, event_names=[name])
        elif not isinstance(breakage, Malformed):
            # The opening events go out with the first token.
            index = len(head) + at if at else 0
            if isinstance(breakage, Stall):
                pieces.insert(index, Wait(breakage.seconds))
            else:
                pieces[index:] = [Hangup()]
    return Reply(200, (("content-type", "text/event-stream; charset=utf-8"),)), *pieces


def _frame(frame: _Frame) -> bytes:
    return _shapes.sse([frame[1]], done=False, event_names=[frame[0]])


def _prompt_text(value: object) -> str:
    """The prompt's text (messages, input, instructions), for the fake's token counts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_prompt_text(item) for item in value)
    if isinstance(value, dict):
        keys = ("messages", "content", "text", "input", "instructions")
        return " ".join(_prompt_text(v) for k, v in value.items() if k in keys)
    return ""


def _embedding_inputs(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return [json.dumps(value)]


class FakeUpstream:
    """A scripted stand-in for the OpenAI API, for the library's tests and its users' tests.

    It answers ``POST .../chat/completions`` (JSON or SSE), ``POST .../responses`` (JSON or SSE),
    ``POST .../embeddings`` and ``GET .../models`` in the SDK's exact shapes, under any path
    prefix. Each request takes the next fault scripted for its model (:meth:`script`), or the
    model's default (:meth:`set_default`, initially :class:`Ok`). Use it in process::

        upstream = FakeUpstream()
        client = openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1", max_retries=0,
                               http_client=httpx2.Client(transport=upstream.transport()))

    or on a loopback socket with ``with upstream.serve() as base_url: ...``. Thread-safe.

    In process, waits (latency, delays, stalls, silence) go through ``clock`` (a fresh
    :class:`FakeClock` by default, so nothing sleeps) and honour the request's read timeout.
    """

    def __init__(self, clock: Clock | None = None, *, models: Iterable[str] = ()) -> None:
        """``clock`` times in-process waits (default: a new FakeClock); ``models`` seeds GET /models."""
        self._clock: Clock = clock if clock is not None else FakeClock()
        self._models = list(models)
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Fault]] = {}
        self._defaults: dict[str, Fault] = {"*": Ok()}
        self._requests: list[RecordedRequest] = []
        self._serial = itertools.count(1)

    @property
    def clock(self) -> Clock:
        """The clock in-process waits go through and requests are timestamped with."""
        return self._clock

    def script(self, model: str, faults: Iterable[Fault]) -> None:
        """Queue ``faults`` for ``model``: each request for it takes the next one.

        ``"*"`` is a queue shared by requests whose model has no queued fault of its own (and by
        requests without a model). When the queues are empty the default applies.
        """
        faults = list(faults)
        if wrong := [fault for fault in faults if not isinstance(fault, FAULTS)]:
            raise TypeError(f"script() takes Fault values, got {wrong[0]!r}")
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(faults)

    def set_default(self, model: str, fault: Fault) -> None:
        """How ``model`` answers once its script is used up; ``"*"`` for every other model."""
        if not isinstance(fault, FAULTS):
            raise TypeError(f"set_default() takes a Fault, got {fault!r}")
        with self._lock:
            self._defaults[model] = fault

    def pending(self, model: str | None = None) -> int:
        """How many scripted faults are still queued, for ``model`` or in all queues."""
        with self._lock:
            return sum(len(queue) for name, queue in self._scripts.items() if model in (None, name))

    def _next_fault_locked(self, model: str | None) -> Fault:
        key = model if model is not None else "*"
        queue = self._scripts.get(key) or self._scripts.get("*")
        fault = queue.popleft() if queue else self._defaults.get(key, self._defaults["*"])
        return fault.draw() if isinstance(fault, OneOf) else fault

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since creation or :meth:`reset_counts`, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def count(self, model: str | None = None, path: str | None = None) -> int:
        """How many requests were received, for ``model`` and/or whose path ends with ``path``."""
        with self._lock:
            return sum(model in (None, r.model) and r.path.endswith(path or "") for r in self._requests)

    def take(self, header: str, value: str) -> list[RecordedRequest]:
        """Remove and return the recorded requests whose ``header`` is ``value``, oldest first.

        For a harness that tags each call with an id header and checks every call by its own
        requests as soon as it ends, while the log stays as short as the calls in flight.
        """
        name = header.lower()
        with self._lock:
            taken = [r for r in self._requests if r.headers.get(name) == value]
            self._requests = [r for r in self._requests if r.headers.get(name) != value]
            return taken

    def reset_counts(self) -> None:
        """Forget the recorded requests (scripts and defaults are kept)."""
        with self._lock:
            self._requests.clear()

    def transport(self) -> httpx2.BaseTransport:
        """An in-process transport for ``httpx2.Client(transport=...)``."""
        return httpx2.MockTransport(lambda request: _Exchange(self, request).reply())

    def async_transport(self) -> httpx2.AsyncBaseTransport:
        """An in-process transport for ``httpx2.AsyncClient(transport=...)``."""
        return httpx2.MockTransport(lambda request: _Exchange(self, request).areply())

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> AbstractContextManager[str]:
        """Serve on a loopback socket; yields the base URL (``http://127.0.0.1:PORT/v1``).

        A threaded HTTP/1.1 server on a daemon thread; streams use chunked encoding so a cut is a
        real truncated body. Waits are real sleeps here, so keep them tiny. Stops on exit.
        """
        # Imported here: the server executes the plans defined in this module.
        from ._server import serve_upstream

        return serve_upstream(self._decide, host, port)

    def _decide(self, method: str, path: str, headers: Mapping[str, str], raw_body: bytes) -> Plan:
        """Record one request and decide, without I/O, how to answer it."""
        try:
            parsed = json.loads(raw_body) if raw_body else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        model = body["model"] if body is not None and isinstance(body.get("model"), str) else None
        stream = body is not None and body.get("stream") is True
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            serial = next(self._serial)
            fault = self._next_fault_locked(model)
            at, request_id = self._clock.now(), f"req_fake{serial:06d}"
            request = RecordedRequest(method, path, model, stream, body, lowered, at, request_id, fault)
            self._requests.append(request)
        return self._plan(request, serial, fault)

    def _plan(self, request: RecordedRequest, serial: int, fault: Fault) -> Plan:
        before: list[Wait | threading.Event] = []
        while isinstance(fault, Delay | Hold | OneOf):
            if isinstance(fault, OneOf):
                fault = fault.draw()
                continue
            before.append(Wait(fault.seconds) if isinstance(fault, Delay) else fault.event)
            fault = fault.then
        if isinstance(fault, Reset | Silence):
            return *before, *((Wait(math.inf),) if isinstance(fault, Silence) else ()), Hangup()
        if isinstance(fault, Status):
            error_type = fault.type or _ERROR_TYPES.get(
                fault.code, "server_error" if fault.code >= 500 else "invalid_request_error"
            )
            message = fault.message or f"fake upstream: HTTP {fault.code} for {request.method} {request.path}"
            body = _shapes.error_body(message, type=error_type, code=fault.code_str)
            reply, *pieces = _json_reply(fault.code, body, fault.headers.items())
        elif isinstance(fault, Garbage):
            if isinstance(fault.body, Mapping):
                reply, *pieces = _json_reply(200, fault.body)
            else:
                data = fault.body.encode() if isinstance(fault.body, str) else fault.body
                html = (("content-type", "text/html; charset=utf-8"), ("content-length", str(len(data))))
                reply, *pieces = Reply(200, html), data
        elif isinstance(fault, Ok):
            if fault.latency:
                before.append(Wait(fault.latency))
            reply, *pieces = self._answer(request, serial, fault, None)
        else:
            reply, *pieces = self._answer(request, serial, Ok(fault.text, tokens=fault.tokens), fault)
        assert isinstance(reply, Reply)
        # Later headers win: a scripted header overrides the defaults.
        merged = dict((("x-request-id", request.request_id), *reply.headers))
        return *before, Reply(reply.status, tuple(merged.items())), *pieces

    def _answer(self, request: RecordedRequest, serial: int, answer: Ok, breakage: Breakage | None) -> Plan:
        """A successful answer for the endpoint, shaped by ``answer`` and broken by ``breakage``."""
        method, path, body = request.method, request.path.rstrip("/"), request.json
        endpoint = next((name for m, end, name in _ENDPOINTS if m == method and path.endswith(end)), None)
        created = int(self._clock.wall())
        if endpoint is None:
            message = f"Invalid URL ({method} {request.path})"
            return _json_reply(404, _shapes.error_body(message, type="invalid_request_error"))
        if endpoint == "models":
            with self._lock:
                names = [*self._models, *self._scripts, *self._defaults, *(r.model for r in self._requests)]
            ids = list(dict.fromkeys(n for n in names if n and n != "*")) or ["fake-model"]
            return _json_reply(200, _shapes.model_list(ids, created=created))
        if body is None:
            message = "We could not parse the JSON body of your request. (fake upstream)"
            return _json_reply(400, _shapes.error_body(message, type="invalid_request_error"))
        model = answer.model or request.model or "fake-model"
        if endpoint == "embeddings":
            dims = body.get("dimensions")
            payload = _shapes.embeddings(
                _embedding_inputs(body.get("input", "")),
                model,
                encoding_format="base64" if body.get("encoding_format") == "base64" else "float",
                dims=dims if isinstance(dims, int) and dims > 0 else 8,
            )
            return _json_reply(200, payload, breakage=breakage)
        text = answer.text if answer.text is not None else _shapes.placeholder_text(answer.tokens)
        prompt_tokens = _shapes.count_tokens(_prompt_text(body))
        tokens = _shapes.count_tokens(text)
        if endpoint == "chat":
            completion = _shapes.chat_completion(
                text, model, id=f"chatcmpl-fake{serial:06d}", created=created, prompt_tokens=prompt_tokens
            )
            if not request.stream:
                return _json_reply(200, completion, breakage=breakage)
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            chunks = _shapes.chat_chunks(
                completion, include_usage=include_usage if answer.usage is None else answer.usage
            )
            # The first chunk announces the role; then one chunk per token; then finish (and usage).
            frames: list[_Frame] = [(None, chunk) for chunk in chunks]
            head, content, tail = frames[:1], frames[1 : 1 + tokens], frames[1 + tokens :]
            done = [b"data: [DONE]\n\n"] if answer.done else []
            return _sse_reply(head, content, [*map(_frame, tail), *done], breakage)
        response = _shapes.response_object(
            text,
            model,
            id=f"resp_fake{serial:06d}",
            item_id=f"msg_fake{serial:06d}",
            created_at=created,
            input_tokens=prompt_tokens,
        )
        if not request.stream:
            return _json_reply(200, response, breakage=breakage)
        frames = list(_shapes.response_events(response))
        # The deltas are the events just before the one output_text.done of our single message.
        last = [name for name, _ in frames].index("response.output_text.done")
        head, content, tail = frames[: last - tokens], frames[last - tokens : last], frames[last:]
        # The Responses API has no [DONE]: done=False leaves out response.completed instead.
        return _sse_reply(head, content, [*map(_frame, tail if answer.done else tail[:-1])], breakage)


_ENDPOINTS = (
    ("POST", "/chat/completions", "chat"),
    ("POST", "/responses", "responses"),
    ("POST", "/embeddings", "embeddings"),
    ("GET", "/models", "models"),
)


# -- in process: httpx2 MockTransports; only the waiting differs between sync and async ---------


class _Exchange(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """One request's plan carried out step by step: the waits, the headers, then the body.

    Single pass, like a socket: iterating the body again (the SDK drains what is left) resumes
    where the last pass stopped, and a cut connection or a timed-out read stays so.
    """

    def __init__(self, upstream: FakeUpstream, request: httpx2.Request) -> None:
        self._steps = upstream._decide(request.method, request.url.path, request.headers, request.content)
        self._replied = False
        self._position = 0
        self._clock = upstream.clock
        self._request = request
        self._error: httpx2.TransportError | None = None

    def _next(self) -> Wait | threading.Event | Reply | bytes | None:
        """What to do next: sleep, wait for an event, send; ``None`` at the end. Raises a drop."""
        if self._error is not None:
            raise self._error
        if self._position == len(self._steps):
            return None
        step = self._steps[self._position]
        if isinstance(step, Hangup):
            message = _CUT_MESSAGE if self._replied else _RESET_MESSAGE
            raise httpx2.RemoteProtocolError(message, request=self._request)
        self._position += 1
        if isinstance(step, threading.Event):
            return step
        if not isinstance(step, Wait):
            self._replied = True
            return step
        # Against the read timeout in force now: the library may change it between reads.
        timeout = self._request.extensions.get("timeout")
        read = timeout.get("read") if isinstance(timeout, Mapping) else None
        if read is not None and step.seconds > float(read):
            self._error = httpx2.ReadTimeout("The read operation timed out", request=self._request)
            return Wait(float(read))
        if math.isinf(step.seconds):
            raise RuntimeError(
                "the fake upstream never answers this request (Silence()) and the request has no "
                "read timeout, so the test would hang forever: give the client a timeout"
            )
        return step

    def run(self) -> Reply | bytes | None:
        """Carry out the waits up to the next thing to send."""
        while isinstance(step := self._next(), Wait | threading.Event):
            if isinstance(step, Wait):
                self._clock.sleep(step.seconds)
            else:
                step.wait()
        return step

    async def arun(self) -> Reply | bytes | None:
        """Carry out the waits up to the next thing to send, never blocking the loop."""
        while isinstance(step := self._next(), Wait | threading.Event):
            if isinstance(step, Wait):
                await self._clock.asleep(step.seconds)
            else:
                # A threading.Event set from another thread cannot wake the loop, and waiting in a
                # worker thread could not be cancelled: poll, so the loop never blocks.
                while not step.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        return step

    def reply(self) -> httpx2.Response:
        """Carry out the waits before the headers, then answer (a drop raises)."""
        return self._response(self.run())

    async def areply(self) -> httpx2.Response:
        """Carry out the waits before the headers, then answer (a drop raises)."""
        return self._response(await self.arun())

    def _response(self, reply: Reply | bytes | None) -> httpx2.Response:
        assert isinstance(reply, Reply)
        return httpx2.Response(reply.status, headers=reply.headers, stream=self, request=self._request)

    def __iter__(self) -> Iterator[bytes]:
        while isinstance(piece := self.run(), bytes):
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while isinstance(piece := await self.arun(), bytes):
            yield piece


_RESET_MESSAGE = "Server disconnected without sending a response."
_CUT_MESSAGE = "peer closed connection without sending complete message body"
