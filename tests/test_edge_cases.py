"""Edge cases found in review: odd framing, in-stream errors, tenants, deadlines, timeouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from resilient_openai import (
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    IncompleteStreamError,
    Policy,
    RetryPolicy,
    Route,
    Timeouts,
    health,
    provenance,
    resilient,
)
from resilient_openai._chain import operation_of
from resilient_openai.testing import Delay, FakeClock, Malformed, Ok, Silence, Status

from .conftest import Harness, text_of

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-A"}


def _chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {**CHUNK, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _sse_client(pieces: list[bytes], clock: FakeClock, **policy: Any) -> openai.OpenAI:
    """A resilient sync client whose upstream streams exactly these byte pieces."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        def body() -> Iterator[bytes]:
            yield from pieces

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    raw = openai.OpenAI(api_key="sk-x", base_url="http://mock.test/v1",
                        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))  # fmt: skip
    return resilient(raw, Policy(retry=RetryPolicy(rules={}), **policy), clock=clock)


def _read(client: openai.OpenAI) -> tuple[list[Any], BaseException | None]:
    chunks: list[Any] = []
    stream = client.chat.completions.create(
        model="gpt-A", messages=[{"role": "user", "content": "x"}], stream=True
    )
    try:
        for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


def test_crlf_terminators_split_across_reads(clock: FakeClock) -> None:
    """CRLF framing split between two reads loses no event."""
    events = [_chunk("A"), _chunk("B"), _chunk("C"), _chunk(finish="stop")]
    wire = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events) + b"data: [DONE]\r\n\r\n"
    )
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    chunks, error = _read(_sse_client(pieces, clock))
    assert error is None
    assert text_of(chunks) == "ABC"


def test_error_event_mid_stream_is_a_typed_failure(clock: FakeClock) -> None:
    """An error event after the answer began ends the stream with the typed error, as a failure."""
    error_event = {"error": {"message": "overloaded", "type": "server_error"}}
    wire = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in (_chunk("A"), _chunk("B"), error_event)]
    client = _sse_client(wire, clock, breaker=BreakerPolicy(fail_max=1))
    _, error = _read(client)
    assert isinstance(error, IncompleteStreamError)
    assert error.reason == "upstream_error"
    assert error.partial_text == "AB"
    assert health(client)["breakers"][0]["state"] == "open"


def test_failed_responses_stream_is_not_a_success(clock: FakeClock) -> None:
    """A Responses stream ending in response.failed is a failure, retried before any token."""
    response = {"id": "r", "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    failed = {"type": "response.failed", "sequence_number": 1, "response": response}
    wire = [b"event: response.failed\ndata: " + json.dumps(failed).encode() + b"\n\n"]
    client = _sse_client(wire, clock, breaker=BreakerPolicy(fail_max=1))
    with pytest.raises(openai.APIError):
        client.responses.create(model="gpt-A", input="x", stream=True)
    assert health(client)["breakers"][0]["window_failures"] == 1


def test_callable_keys_never_share_cache_entries(harness: Harness) -> None:
    """Clients whose key comes from a provider are not cached at all: no tenant to scope by."""
    route = Route(steps=(FallbackStep(kind="cache"), FallbackStep(kind="canned", text="canned")))
    policy = Policy(retry=RetryPolicy(rules={}), fallback=FallbackPolicy(routes={"gpt-A": route}))
    base = harness.client(policy)
    if harness.is_async:

        async def key_a() -> str:
            return "sk-tenant-A"

        async def key_b() -> str:
            return "sk-tenant-B"
    else:

        def key_a() -> str:  # type: ignore[misc]
            return "sk-tenant-A"

        def key_b() -> str:  # type: ignore[misc]
            return "sk-tenant-B"

    tenant_a = base.with_options(api_key=key_a)
    tenant_b = base.with_options(api_key=key_b)
    harness.chat(tenant_a)
    harness.upstream.set_default("gpt-A", Status(503))
    assert harness.chat(tenant_b).choices[0].message.content == "canned"


def test_deadline_is_not_a_failure_of_an_untried_target(harness: Harness) -> None:
    """Running out of time before a fallback model is tried does not count against its breaker."""
    harness.upstream.set_default("gpt-A", Silence())
    route = Route(steps=(FallbackStep(kind="model", model="gpt-B"), FallbackStep(kind="canned", text="late")))
    policy = Policy(
        timeouts=Timeouts(total=30.0, attempt=30.0, first_token=30.0, stream_idle=20.0),
        fallback=FallbackPolicy(routes={"gpt-A": route}),
    )
    client = harness.client(policy)
    result = harness.chat(client)
    assert result.choices[0].message.content == "late"
    assert harness.upstream.count(model="gpt-B") == 0
    snapshots = {s["name"]: s for s in health(client)["breakers"]}
    assert all(s["window_failures"] == 0 for name, s in snapshots.items() if name.endswith("gpt-B"))


def test_client_timeout_is_honoured(harness: Harness) -> None:
    """A shorter timeout set on the client (with_options) is respected by every attempt."""
    harness.upstream.set_default("gpt-A", Delay(10.0))
    client = harness.client(Policy(retry=RetryPolicy(rules={}))).with_options(timeout=2.0)
    start = harness.clock.now()
    with pytest.raises(openai.APITimeoutError):
        harness.chat(client)
    assert harness.clock.now() - start == pytest.approx(2.0)


def test_caller_errors_carry_provenance(harness: Harness) -> None:
    """A 400 that propagates still says what was tried."""
    harness.upstream.set_default("gpt-A", Status(400))
    with pytest.raises(openai.BadRequestError) as caught:
        harness.chat(harness.client())
    record = provenance(caught.value)
    assert record is not None
    assert record.reason == "caller_error"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/chat/completions", "chat.completions"),
        ("/responses/resp_0000abc", "responses"),
        ("/files/file-0/content", "files.content"),
        ("/embeddings?x=1", "embeddings"),
    ],
)
def test_operation_names_drop_resource_ids(url: str, name: str) -> None:
    """Operation names (metric labels) never carry resource ids."""
    assert operation_of(url) == name


def test_unreadable_body_is_a_retried_malformed_response(harness: Harness) -> None:
    """A 200 with a truncated JSON body is the server's fault: retried, never a bare ValueError."""
    harness.upstream.script("gpt-A", [Malformed(0), Ok(text="fine")])
    result = harness.chat(harness.client())
    assert result.choices[0].message.content == "fine"
    record = provenance(result)
    assert record is not None
    assert [a.verdict for a in record.attempts] == ["malformed_response", "success"]


def test_a_compressed_stream_reaches_the_caller_whole() -> None:
    """A gzip-encoded event stream (rare, but legal) streams as the plain SDK streams it."""
    import gzip

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-A",
            "choices": [choice],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    events = chunk({"role": "assistant", "content": "hello"}, None) + chunk({}, "stop") + b"data: [DONE]\n\n"

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx2.Response(200, headers=headers, content=gzip.compress(events))

    raw = openai.OpenAI(api_key="sk-x", base_url="http://gzip.test/v1",
                        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))  # fmt: skip
    client = resilient(raw, Policy(), clock=FakeClock())
    stream = client.chat.completions.create(
        model="gpt-A", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert text_of(list(stream)) == "hello"
