"""Paths through the chain that other tests leave out: read-through cache hits, local answers for
the Responses API (whole and streamed), raw responses and isolated circuits, through both shells."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from resilient_openai import (
    CachePolicy,
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    breakers,
    health,
    provenance,
)
from resilient_openai.testing import Ok, Status

from .conftest import Harness, text_of

CANNED = "The service is busy, please try again soon."
OTHER_TENANT_KEY = "sk-other-tenant-9876543210fedcbaKEY"


def _policy(harness: Harness, *steps: FallbackStep, **parts: Any) -> Policy:
    """The one place this file builds a policy: a route for ``gpt-A`` and no retries by default."""
    parts.setdefault("retry", RetryPolicy(rules={}))
    parts.setdefault("fallback", FallbackPolicy(routes={"gpt-A": Route(steps=steps)}))
    return Policy(**parts)


def _source(result: object) -> str | None:
    record = provenance(result)
    assert record is not None, f"no provenance on {type(result).__name__}"
    return None if record.source is None else record.source.value


def _respond(harness: Harness, client: Any, **kwargs: Any) -> Any:
    """``client.responses.create(...)`` with a default model and input."""
    kwargs.setdefault("model", "gpt-A")
    kwargs.setdefault("input", "hello")
    return harness.run(lambda: client.responses.create(**kwargs))


def _stream_responses(harness: Harness, client: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
    """Open a Responses stream and read it to the end: (stream, events)."""
    kwargs.setdefault("model", "gpt-A")
    kwargs.setdefault("input", "hello")
    if harness.is_async:

        async def consume() -> tuple[Any, list[Any]]:
            stream = await client.responses.create(stream=True, **kwargs)
            return stream, [event async for event in stream]

        return asyncio.run(consume())
    stream = client.responses.create(stream=True, **kwargs)
    return stream, list(stream)


def _delta_text(events: list[Any]) -> str:
    """The text the ``response.output_text.delta`` events of a Responses stream carry."""
    return "".join(event.delta for event in events if event.type == "response.output_text.delta")


def _completed(events: list[Any]) -> Response:
    """The response carried by the stream's final ``response.completed`` event."""
    finals = [event.response for event in events if event.type == "response.completed"]
    assert len(finals) == 1, [event.type for event in events]
    response = finals[0]
    assert isinstance(response, Response)
    return response


def _assert_sdk_events(events: list[Any]) -> None:
    """Every event is one of the SDK's own typed Responses stream events."""
    assert events
    for event in events:
        assert isinstance(event, pydantic.BaseModel)
        assert type(event).__module__.startswith("openai.types.responses."), type(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"


# -- read-through cache ---------------------------------------------------------------------------


def test_read_through_hit_answers_without_reaching_the_upstream(harness: Harness) -> None:
    """With read_through, a repeated request is answered from the cache and sends nothing."""
    harness.upstream.script("gpt-A", [Ok("first answer")])
    harness.upstream.set_default("gpt-A", Ok("a later, different answer"))
    client = harness.client(
        _policy(harness, FallbackStep(kind="cache"), cache=CachePolicy(read_through=True)),
    )
    first = harness.chat(client)
    assert _source(first) == "upstream"
    assert harness.upstream.count() == 1
    second = harness.chat(client)
    assert harness.upstream.count() == 1
    assert isinstance(second, ChatCompletion)
    assert second.choices[0].message.content == "first answer"
    assert _source(second) == "cache"


def test_read_through_hit_is_not_served_to_another_tenant(harness: Harness) -> None:
    """The same request under another API key goes to the upstream, not to the first key's entry."""
    harness.upstream.script("gpt-A", [Ok("tenant one's answer"), Ok("tenant two's answer")])
    client = harness.client(
        _policy(harness, FallbackStep(kind="cache"), cache=CachePolicy(read_through=True)),
    )
    harness.chat(client)
    assert _source(harness.chat(client)) == "cache"  # the entry exists for the first tenant
    other = client.with_options(api_key=OTHER_TENANT_KEY)
    assert breakers(other) is breakers(client)  # a copy shares the chain and its cache
    theirs = harness.chat(other)
    assert harness.upstream.count() == 2
    assert harness.upstream.requests[-1].headers["authorization"] == f"Bearer {OTHER_TENANT_KEY}"
    assert theirs.choices[0].message.content == "tenant two's answer"
    assert _source(theirs) == "upstream"


def test_read_through_hit_is_served_to_a_streaming_caller(harness: Harness) -> None:
    """A read-through entry stored by a plain call answers a later stream=True call as chunks."""
    harness.upstream.set_default("gpt-A", Ok("stored plain answer"))
    client = harness.client(
        _policy(harness, FallbackStep(kind="cache"), cache=CachePolicy(read_through=True)),
    )
    harness.chat(client)
    stream, chunks, error = harness.stream_chat(client, stream_options={"include_usage": True})
    assert error is None
    assert harness.upstream.count() == 1
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert text_of(chunks) == "stored plain answer"
    assert chunks[-1].usage is not None
    assert _source(stream) == "cache"


def test_read_through_entry_expires_after_its_ttl(harness: Harness) -> None:
    """Once the cache TTL has passed, the same request goes to the upstream again."""
    harness.upstream.script("gpt-A", [Ok("old answer"), Ok("new answer")])
    client = harness.client(
        _policy(harness, FallbackStep(kind="cache"), cache=CachePolicy(read_through=True, ttl=60.0)),
    )
    harness.chat(client)
    harness.clock.advance(59.0)
    assert _source(harness.chat(client)) == "cache"
    harness.clock.advance(2.0)
    fresh = harness.chat(client)
    assert harness.upstream.count() == 2
    assert fresh.choices[0].message.content == "new answer"
    assert _source(fresh) == "upstream"


# -- the Responses API answered locally -----------------------------------------------------------


def test_responses_canned_answer_is_a_response(harness: Harness) -> None:
    """Primary down: responses.create returns a Response whose output text is the canned text."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text=CANNED)))
    result = _respond(harness, client)
    assert isinstance(result, Response)
    assert result.output_text == CANNED
    assert result.status == "completed"
    record = provenance(result)
    assert record is not None
    assert record.source == "canned"
    assert record.model == result.model
    assert record.reason == "server_error"


def test_responses_canned_answer_streams_as_sdk_events(harness: Harness) -> None:
    """Primary down, stream=True: the canned text arrives as the SDK's typed Responses events."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text=CANNED)))
    stream, events = _stream_responses(harness, client)
    _assert_sdk_events(events)
    assert _delta_text(events) == CANNED
    assert _completed(events).output_text == CANNED
    assert _source(stream) == "canned"


def test_responses_cached_answer_replays_as_a_stream(harness: Harness) -> None:
    """A Responses answer cached from a plain call is replayed as a stream while the primary is down."""
    harness.upstream.set_default("gpt-A", Ok("remembered words here"))
    client = harness.client(_policy(harness, FallbackStep(kind="cache")))
    first = _respond(harness, client)
    assert first.output_text == "remembered words here"
    harness.upstream.set_default("gpt-A", Status(503))
    stream, events = _stream_responses(harness, client)
    _assert_sdk_events(events)
    assert _delta_text(events) == "remembered words here"
    assert _completed(events).output_text == "remembered words here"
    assert _source(stream) == "cache"


# -- chat streams and raw responses answered locally ----------------------------------------------


def test_chat_canned_stream_assembles_and_reports_usage(harness: Harness) -> None:
    """Outage, chat stream with include_usage: the chunks spell the canned text and end with usage."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text=CANNED)))
    stream, chunks, error = harness.stream_chat(client, stream_options={"include_usage": True})
    assert error is None
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert text_of(chunks) == CANNED
    usage = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1
    assert usage[0] is chunks[-1]
    assert usage[0].choices == []
    assert usage[0].usage.completion_tokens > 0
    assert _source(stream) == "canned"


def test_raw_response_from_a_canned_fallback_parses_to_a_completion(harness: Harness) -> None:
    """with_raw_response during an outage: ``.parse()`` gives a ChatCompletion with the canned text."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text=CANNED)))
    raw = harness.run(
        lambda: client.chat.completions.with_raw_response.create(
            model="gpt-A", messages=[{"role": "user", "content": "hello"}]
        )
    )
    assert raw.status_code == 200
    parsed = raw.parse()
    assert isinstance(parsed, ChatCompletion)
    assert parsed.choices[0].message.content == CANNED
    assert _source(raw) == "canned"


def test_streaming_response_from_a_canned_fallback_parses_to_a_completion(harness: Harness) -> None:
    """with_streaming_response during an outage: the body parses to a ChatCompletion, canned text."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text=CANNED)))
    create = client.chat.completions.with_streaming_response.create
    request: dict[str, Any] = {"model": "gpt-A", "messages": [{"role": "user", "content": "hello"}]}
    if harness.is_async:

        async def read() -> tuple[Any, Any]:
            async with create(**request) as response:
                return response, await response.parse()

        response, parsed = asyncio.run(read())
    else:
        with create(**request) as response:
            parsed = response.parse()
    assert response.status_code == 200
    assert isinstance(parsed, ChatCompletion)
    assert parsed.choices[0].message.content == CANNED
    assert _source(response) == "canned"


# -- an isolated circuit --------------------------------------------------------------------------


def test_isolated_circuit_is_answered_canned_without_a_request(harness: Harness) -> None:
    """An operator isolates the primary's breaker: the canned answer is served, nothing is sent."""
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text=CANNED)))
    assert _source(harness.chat(client)) == "upstream"  # makes the breaker exist
    names = [snapshot["name"] for snapshot in health(client)["breakers"]]
    assert len(names) == 1
    breakers(client).isolate(names[0])
    assert health(client)["status"] == "degraded"
    harness.upstream.reset_counts()
    result = harness.chat(client)
    assert harness.upstream.count() == 0
    assert result.choices[0].message.content == CANNED
    record = provenance(result)
    assert record is not None
    assert record.source == "canned"
    assert record.reason == "circuit_open"


def test_isolated_circuit_without_fallback_raises_circuit_open(harness: Harness) -> None:
    """With no fallback, an isolated circuit raises CircuitOpenError and sends nothing."""
    client = harness.client(_policy(harness))
    harness.chat(client)
    name = health(client)["breakers"][0]["name"]
    breakers(client).isolate(name)
    harness.upstream.reset_counts()
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert caught.value.breaker == name
    assert harness.upstream.count() == 0
