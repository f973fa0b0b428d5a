"""The one seam to what we do not own: every private touch of the openai SDK and of httpx2.

Everything else in the library speaks in verdicts, outcomes and plain values; only this module
knows the SDK's private methods (``_build_request``, ``_process_response``,
``_process_response_data``, ``_make_status_error_from_response``) and the ones a resilient client
overrides (``_process_response``, ``_make_sse_decoder``), its request options object, the
per-request timeout dict httpx2 keeps in request extensions, how transport exceptions map to
the SDK's own, and how it merges a request's headers and query (``_merge_headers``,
``_merge_mappings``, a client's ``_custom_headers`` and ``_custom_query``) to name its tenant.
An ``openai`` upgrade is read here.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, cast

import httpx2
import openai
import pydantic
from openai._base_client import _merge_headers, _merge_mappings
from openai._models import FinalRequestOptions
from openai._streaming import ServerSentEvent, SSEDecoder

__all__ = [
    "CallerOutcome",
    "DecodedEvent",
    "EventChunk",
    "EventDecoder",
    "Options",
    "answer_body",
    "base_url",
    "caller_limit",
    "client_methods",
    "describe_request",
    "error_from_status",
    "guard_parser",
    "label",
    "local_result_async",
    "local_result_sync",
    "mapped_transport_error",
    "prepare_attempt",
    "raw_answer",
    "read_limit",
    "response_of",
    "restore_parser",
    "malformed",
    "malformed_error",
    "selects_tenant",
    "sent_selectors",
    "tenant",
    "with_body",
    "without_credentials",
]

#: The SDK's per-request options (method, url, body, headers, timeout, post-parser).
Options = FinalRequestOptions
#: The SDK marks raw (``with_raw_response``) and streaming-response requests with this header.
_RAW_HEADER = "X-Stainless-Raw-Response"
_JSON_HEADERS = {"content-type": "application/json"}
_SSE_HEADERS = {"content-type": "text/event-stream"}


def caller_limit(options: FinalRequestOptions, client: Any) -> float | None:
    """The read limit the caller set on the call (or else on its client), if any."""
    per_call: object = options.timeout
    chosen = client.timeout if per_call.__class__ is openai.NotGiven else per_call
    if isinstance(chosen, httpx2.Timeout):
        return chosen.read
    if isinstance(chosen, int | float) and not isinstance(chosen, bool):
        return float(chosen)
    return None


def prepare_attempt(
    options: FinalRequestOptions,
    *,
    read: float,
    connect: float,
    body: Mapping[str, Any] | None,
    configured: bool = False,
) -> FinalRequestOptions:
    """Set one attempt's time limits and body on ``options``, with the SDK's retries off.

    The SDK builds a fresh options object for every call and copies it again inside
    ``request()``, so the call's own copy is ours to adjust for each attempt. ``configured``:
    the limits are the policy's own (not cut short by the deadline), so their timeout object
    is built once and shared.
    """
    # Written to the model's field storage, as the SDK's own ``construct`` does: the value is of
    # the field's type, and pydantic's assignment hook costs more than the rest of this layer.
    fields = options.__dict__
    fields["timeout"] = _timeout(read, connect) if configured else httpx2.Timeout(read, connect=connect)
    if isinstance(options.max_retries, int) and options.max_retries:
        options.max_retries = 0  # unset, the client's own 0 applies
    if body is not None and options.json_data is not body:
        options.json_data = body
    return options


_timeouts: dict[tuple[float, float], httpx2.Timeout] = {}


def _timeout(read: float, connect: float) -> httpx2.Timeout:
    """The httpx2 timeout of a configured (read, connect) pair, built once."""
    found = _timeouts.get((read, connect))
    if found is None:
        found = httpx2.Timeout(read, connect=connect)
        if len(_timeouts) < 64:
            _timeouts[(read, connect)] = found
    return found


def with_body(options: FinalRequestOptions, body: Mapping[str, Any]) -> FinalRequestOptions:
    """A copy of ``options`` sending ``body`` instead (a continuation's prefilled request)."""
    copied = options.model_copy()
    copied.json_data = body
    return copied


def describe_request(client: Any, options: FinalRequestOptions) -> httpx2.Request:
    """A request naming the call's method and URL, for errors made without an HTTP exchange."""
    url = str(client.base_url) + options.url.lstrip("/")
    return httpx2.Request(options.method.upper(), url)


def base_url(client: Any) -> Any:
    """``client``'s base URL object, without the string conversion (its identity changes only
    when the base URL is reassigned, which is what memos keyed on it need to know)."""
    return client._base_url


#: The headers that carry a credential or pick a tenant, lower-cased (the SDK merges header
#: names case-insensitively).
TENANT_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")


def tenant(client: Any) -> tuple[object, ...] | None:
    """What ``client`` itself contributes to every request's tenant, as raw values a memo can
    compare: (api key, organization, project, base URL object, custom default headers, custom
    default query). None when the credentials are resolved per request (a key provider, workload
    identity, a provider runtime) or there is no key: then there is no stable tenant."""
    if (
        getattr(client, "_api_key_provider", None) is not None
        or getattr(client, "workload_identity", None) is not None
        or getattr(client, "_provider_runtime", None) is not None
        or not client.api_key
    ):
        return None
    return (
        client.api_key, client.organization, client.project, client._base_url,
        client._custom_headers, client._custom_query,
    )  # fmt: skip


def selects_tenant(options: FinalRequestOptions) -> bool:
    """Whether the request itself carries tenant selectors: one of :data:`TENANT_HEADERS` (in
    any case, ``Omit`` included), query parameters, or a query in its URL."""
    headers = options.headers  # usually not given: falsy, so the Mapping check is skipped
    if headers and isinstance(headers, Mapping) and any(name.lower() in TENANT_HEADERS for name in headers):
        return True
    return bool(options.params) or "?" in options.url


def without_credentials(options: FinalRequestOptions) -> FinalRequestOptions:
    """``options`` without the request's own credential headers (:data:`TENANT_HEADERS`), for a
    call sent to another provider: its client's own credentials apply there, and the caller's
    key must never reach it. The same object when there are none."""
    headers = options.headers
    if not isinstance(headers, Mapping) or not any(name.lower() in TENANT_HEADERS for name in headers):
        return options
    copied = options.model_copy()
    copied.headers = {name: value for name, value in headers.items() if name.lower() not in TENANT_HEADERS}
    return copied


def sent_selectors(client: Any, options: FinalRequestOptions) -> tuple[str | None, ...]:
    """The tenant selectors a request made with ``options`` carries, merged as the SDK merges
    them: each of :data:`TENANT_HEADERS` (None: not sent) from the client's auth and default
    headers and the request's own, the query string from the client's default query and the
    request's, the query written in the request's URL, and the base URL."""
    own = options.headers if isinstance(options.headers, Mapping) else {}
    merged = _merge_headers(client.auth_headers, client.default_headers, own)
    sent = {name.lower(): value for name, value in merged.items()}
    params = _merge_mappings(client.default_query, options.params)
    query = client.qs.stringify(params) if params else ""
    return (
        *(sent.get(name) for name in TENANT_HEADERS), query, options.url.partition("?")[2],
        str(client._base_url),
    )  # fmt: skip


def response_of(result: Any) -> httpx2.Response | None:
    """The HTTP response under a Stream, AsyncStream or raw-response wrapper."""
    for name in ("response", "http_response"):
        candidate = getattr(result, name, None)
        if isinstance(candidate, httpx2.Response):
            return candidate
    return None


def raw_answer(result: Any) -> Mapping[str, Any] | None:
    """The JSON object a raw-response wrapper (``with_raw_response``) already read, if any.

    A wrapper whose body is not read yet (``with_streaming_response``) is left unread: the
    caller reads it.
    """
    response = response_of(result)
    if response is None or response.headers.get("content-type", "").split(";")[0] != "application/json":
        return None
    try:
        answer = json.loads(response.content)
    except (httpx2.ResponseNotRead, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def label(result: Any, headers: Mapping[str, str], on_parse: Callable[[Any], None]) -> None:
    """Say where ``result`` came from wherever a caller or framework reads it: ``headers`` on the
    HTTP response under it, and ``on_parse(parsed)`` for what a raw wrapper's ``parse()`` returns
    (frameworks keep only the parsed object)."""
    response = response_of(result)
    if response is None:
        return
    response.headers.update(headers)
    options = getattr(result, "_options", None)
    if not isinstance(options, FinalRequestOptions):
        return  # a Stream: it is what the caller holds
    parser = options.post_parser

    def labelled(parsed: Any) -> Any:
        if callable(parser):
            parsed = parser(parsed)
        on_parse(parsed)
        return parsed

    copied = options.model_copy()
    copied.post_parser = labelled
    result._options = copied  # the wrapper's own copy: the call's options stay as they were


def read_limit(request: httpx2.Request, seconds: float) -> None:
    """Reads of the body answering ``request`` wait at most ``seconds``.

    httpcore takes the body's read limit from the request's timeout dict once, when the body is
    first read, after the headers; a transport that reads it for every read (the fake upstream)
    follows later changes too.
    """
    limits = request.extensions.get("timeout")
    if isinstance(limits, dict):
        limits["read"] = seconds


def mapped_transport_error(exc: Exception, request: httpx2.Request) -> Exception:
    """A transport failure as the SDK itself would raise it."""
    if isinstance(exc, httpx2.TimeoutException):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(request=request)


class CallerOutcome(Exception):
    """The caller's own post-parser (``parse()``'s ``response_format`` or tools) raised on an
    answer the SDK read: ``error`` is the caller's outcome, not the upstream's failure."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def guard_parser(
    options: FinalRequestOptions, cast_to: Any, stream: bool, operation: str
) -> Callable[[Any], Any] | None:
    """Tell the caller's post-parser apart from the SDK reading the body, for one attempt.

    The SDK applies ``options.post_parser`` (how ``parse()`` builds the caller's model and raises
    ``ValidationError``, ``LengthFinishReasonError``...) inside its response processing, where a
    truncated body also raises ``ValueError``. For a plain call with a post-parser, wrap it so
    what it raises on an answer of ``operation`` arrives as :class:`CallerOutcome`; a body that
    is no answer (the SDK hands the parser the text of unreadable JSON) skips the parser, to be
    judged malformed. Returns the caller's parser, to put back with :func:`restore_parser` (a raw
    wrapper's ``parse()`` runs it later, unwrapped).
    """
    parser = options.post_parser
    if not callable(parser) or not _is_plain(options, cast_to, stream):
        return None

    def guarded(parsed: Any) -> Any:
        if _not_answer(parsed, operation) is not None:
            return parsed
        try:
            return parser(parsed)
        except Exception as exc:
            raise CallerOutcome(exc) from None

    options.post_parser = guarded
    return parser


def restore_parser(options: FinalRequestOptions, parser: Callable[[Any], Any]) -> None:
    """Put the caller's post-parser back after an attempt (see :func:`guard_parser`)."""
    options.post_parser = parser


def malformed_error(request: httpx2.Request, why: str) -> openai.APIResponseValidationError:
    """A 200 whose body is not a valid answer: the upstream's failure, as the SDK's own error."""
    response = httpx2.Response(200, request=request)
    return openai.APIResponseValidationError(
        response, None, message=f"the upstream's 200 is not an answer: {why}"
    )


#: The field every valid answer of an operation carries (a list).
_ANSWER_FIELD = {"chat.completions": "choices", "responses": "output"}


def malformed(
    result: Any, cast_to: Any, options: FinalRequestOptions, operation: str, stream: bool
) -> str | None:
    """Why a parsed 200 is not a valid answer of ``operation`` (None: it is, or cannot be told yet).

    Only plain results are judged (a stream is judged event by event; a raw response's body is
    parsed by the caller). The SDK hands back the text of a body that is not JSON, and builds a
    model from any JSON object: neither is an answer.
    """
    if not _is_plain(options, cast_to, stream):
        return None
    return _not_answer(result, operation)


def _not_answer(result: Any, operation: str) -> str | None:
    """Why what the SDK read from a 200 is not an answer of ``operation`` (None: it is)."""
    if not isinstance(result, pydantic.BaseModel):
        return f"a {type(result).__name__} body instead of JSON"
    field = _ANSWER_FIELD.get(operation)
    if field is not None and not isinstance(getattr(result, field, None), list):
        return f"JSON without {field!r}"
    return None


def error_from_status(
    client: Any, request: httpx2.Request, status: int, body: Mapping[str, Any]
) -> Exception:
    """The SDK's own exception for an HTTP ``status`` answer carrying ``body``."""
    response = httpx2.Response(status, json=body, request=request)
    error: Exception = client._make_status_error_from_response(response)
    return error


class DecodedEvent(ServerSentEvent):
    """A server-sent event the stream guard already decoded: the SDK reads its JSON from here
    instead of parsing the data again."""

    __slots__ = ("_json",)

    def __init__(
        self, *, event: str | None, data: str, id: str | None, retry: int | None, value: Any
    ) -> None:
        super().__init__(event=event, data=data, id=id, retry=retry)
        self._json = value

    def json(self) -> Any:
        return self._json


class EventChunk(bytes):
    """Bytes of whole server-sent events that also carry the events, decoded once.

    A guarded stream yields these; httpx2 passes the very object through an uncompressed
    body, so the decoder below hands the SDK the events without reading the bytes again. Any
    other reader sees plain, well-formed SSE bytes.
    """

    events: tuple[DecodedEvent, ...]

    def __new__(cls, raw: bytes, events: tuple[DecodedEvent, ...]) -> EventChunk:
        chunk = super().__new__(cls, raw)
        chunk.events = events
        return chunk


class EventDecoder(SSEDecoder):
    """The SDK's SSE decoder, short-cut for a guarded stream's already decoded events.

    The resilient client's ``_make_sse_decoder`` returns this. A stream whose first chunk is an
    :class:`EventChunk` is read event by event; any other stream (a compressed body, a local
    answer) is decoded by the SDK as usual.
    """

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        chunks = iter(iterator)
        for first in chunks:
            if not isinstance(first, EventChunk):
                yield from super().iter_bytes(itertools.chain((first,), chunks))
                return
            yield from first.events
            for chunk in chunks:
                yield from cast("EventChunk", chunk).events
            return

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        chunks = aiter(iterator)
        async for first in chunks:
            if not isinstance(first, EventChunk):
                async for event in super().aiter_bytes(_prepend(first, chunks)):
                    yield event
                return
            for event in first.events:
                yield event
            async for chunk in chunks:
                for event in cast("EventChunk", chunk).events:
                    yield event
            return


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _decoder(self: Any) -> EventDecoder:
    """The SSE decoder a stream of a resilient client reads with: guarded streams' events come
    decoded once, by the guard, and are not parsed again."""
    return EventDecoder()


#: The plain answer this thread or task has just read, with the JSON bytes it was parsed from.
#: Set inside the SDK's ``request()`` by a caching client (:func:`client_methods`) and taken
#: right after it returns (:func:`answer_body`), in the same thread or task.
_just_read: ContextVar[tuple[Any, bytes] | None] = ContextVar("resilient_openai_just_read", default=None)


def _keep(result: Any, response: httpx2.Response) -> None:
    """Remember the body of ``response`` when the SDK parsed it into the model ``result``."""
    if isinstance(result, pydantic.BaseModel):
        with contextlib.suppress(httpx2.ResponseNotRead):
            _just_read.set((result, response.content))


def answer_body(result: Any) -> bytes | None:
    """The JSON bytes the SDK parsed ``result`` from, as the upstream sent them, when a caching
    client has just read them in this thread or task (taken: a second ask answers None)."""
    kept = _just_read.get()
    if kept is None:
        return None
    _just_read.set(None)
    return kept[1] if kept[0] is result else None


def client_methods(base: type[Any], *, is_async: bool, keep_bodies: bool) -> dict[str, Any]:
    """The SDK client methods a resilient client class puts in front of ``base``'s.

    Its streams read with :class:`EventDecoder`. With ``keep_bodies`` (a client whose answers
    are cached), the bytes of each plain answer are kept for :func:`answer_body`, so the cache
    stores what the upstream sent instead of serializing the parsed model again.
    """
    methods: dict[str, Any] = {"_make_sse_decoder": _decoder}
    if not keep_bodies:
        return methods
    process = base._process_response
    if is_async:

        async def process_async(self: Any, *, response: httpx2.Response, **rest: Any) -> Any:
            result = await process(self, response=response, **rest)
            _keep(result, response)
            return result

        methods["_process_response"] = process_async
    else:

        def process_sync(self: Any, *, response: httpx2.Response, **rest: Any) -> Any:
            result = process(self, response=response, **rest)
            _keep(result, response)
            return result

        methods["_process_response"] = process_sync
    return methods


_model_types: dict[Any, bool] = {}


def _is_model_type(cast_to: Any) -> bool:
    """Whether ``cast_to`` is a pydantic model the SDK parses a JSON body into (remembered)."""
    known = _model_types.get(cast_to)
    if known is None:
        known = (
            inspect.isclass(cast_to)
            and issubclass(cast_to, pydantic.BaseModel)
            and not hasattr(cast_to, "build")  # the SDK's ModelBuilderProtocol: built from the response
        )
        if len(_model_types) < 256:
            _model_types[cast_to] = known
    return known


def _is_plain(options: FinalRequestOptions, cast_to: Any, stream: bool) -> bool:
    """A call whose result is the parsed model itself (no stream, no raw wrapper)."""
    if stream or not _is_model_type(cast_to):
        return False
    headers = options.headers
    return not (isinstance(headers, dict) and _RAW_HEADER in headers)


def _plain_result(client: Any, cast_to: Any, options: FinalRequestOptions, answer: Mapping[str, Any]) -> Any:
    """Build the SDK's model straight from ``answer``, as the SDK parses a JSON body.

    The fast way for a local answer: no HTTP response is made up and no JSON is re-read, and
    pydantic's validator (compiled) builds the model an order of magnitude faster than the SDK's
    lenient ``construct``. An answer it refuses (a cached upstream answer of an odd shape) takes
    the SDK's own lenient path.
    """
    parsed: Any
    try:
        parsed = cast_to.model_validate(answer)
    except pydantic.ValidationError:
        request = httpx2.Request(options.method.upper(), "http://resilient-openai.local/")
        response = httpx2.Response(200, headers=_JSON_HEADERS, request=request)
        parsed = client._process_response_data(data=dict(answer), cast_to=cast_to, response=response)
    post_parser = options.post_parser
    if callable(post_parser):
        parsed = post_parser(parsed)
    return parsed


def _synthetic(client: Any, options: FinalRequestOptions, content: bytes, stream: bool) -> httpx2.Response:
    headers = _SSE_HEADERS if stream else _JSON_HEADERS
    return httpx2.Response(200, headers=headers, content=content, request=client._build_request(options))


def local_result_sync(
    client: Any,
    cast_to: Any,
    options: FinalRequestOptions,
    *,
    answer: Mapping[str, Any],
    wire: Callable[[], bytes],
    stream: bool,
    stream_cls: Any,
) -> Any:
    """A locally made answer as the SDK's own result type (threads).

    ``wire()`` gives the answer's bytes as the upstream would send them (JSON, or server-sent
    events for a stream); it is only called for streams and raw-response wrappers, which read
    bytes: a plain call gets its model built straight from ``answer``.
    """
    if _is_plain(options, cast_to, stream):
        return _plain_result(client, cast_to, options, answer)
    response = _synthetic(client, options, wire(), stream)
    result = client._process_response(
        cast_to=cast_to, options=options, response=response, stream=stream, stream_cls=stream_cls
    )
    _just_read.set(None)  # what a caching client kept of it: a local answer is never stored again
    return result


async def local_result_async(
    client: Any,
    cast_to: Any,
    options: FinalRequestOptions,
    *,
    answer: Mapping[str, Any],
    wire: Callable[[], bytes],
    stream: bool,
    stream_cls: Any,
) -> Any:
    """The asyncio twin of :func:`local_result_sync`."""
    if _is_plain(options, cast_to, stream):
        return _plain_result(client, cast_to, options, answer)
    response = _synthetic(client, options, wire(), stream)
    result = await client._process_response(
        cast_to=cast_to, options=options, response=response, stream=stream, stream_cls=stream_cls
    )
    _just_read.set(None)  # what a caching client kept of it: a local answer is never stored again
    return result
