"""Structured outputs and tool calls through the chain: a fallback answers the request as asked or
raises UnanswerableError; the caller's own parse() outcome is the caller's; every path fills and
reads the cache; provenance reaches what parse() returns, raw headers and listeners."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import openai
import pydantic
import pytest

from resilient_openai import (
    CannedToolCall,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    UnanswerableError,
    health,
    provenance,
)
from resilient_openai.observe.events import CallCompleted, Event
from resilient_openai.testing import Garbage, Ok, Status

from .conftest import Harness

MESSAGES = [{"role": "user", "content": "who?"}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
                "additionalProperties": False,
            },
        },
    }
]
LOOKUP = CannedToolCall(name="lookup", arguments={"q": "status"})


class Person(pydantic.BaseModel):
    name: str
    age: int


class Picky(pydantic.BaseModel):
    """A response model whose own validator rejects every well-formed answer."""

    name: str

    @pydantic.field_validator("name")
    @classmethod
    def _never(cls, value: str) -> str:
        raise ValueError("the caller's own check says no")


def _policy(*steps: FallbackStep, **parts: Any) -> Policy:
    """A route for ``gpt-A`` with these steps, and no retries (each failure is final at once)."""
    parts.setdefault("retry", RetryPolicy(rules={}))
    return Policy(fallback=FallbackPolicy(routes={"gpt-A": Route(steps=steps)}), **parts)


def _call(harness: Harness, work: Callable[[], Any]) -> Any:
    """Run ``work`` through the harness; what it raises is returned instead."""
    try:
        return harness.run(work)
    except Exception as exc:
        return exc


def _source(result: object) -> str | None:
    record = provenance(result)
    assert record is not None, f"no provenance on {type(result).__name__}"
    return None if record.source is None else record.source.value


def _parse(harness: Harness, client: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "gpt-A")
    kwargs.setdefault("messages", MESSAGES)
    return _call(harness, lambda: client.chat.completions.parse(**kwargs))


def _create(harness: Harness, client: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "gpt-A")
    kwargs.setdefault("messages", MESSAGES)
    return _call(harness, lambda: client.chat.completions.create(**kwargs))


def _raw(harness: Harness, client: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``with_raw_response.create(...)``: the wrapper and what its (sync) ``parse()`` returns."""
    kwargs.setdefault("model", "gpt-A")
    kwargs.setdefault("messages", MESSAGES)
    wrapper = harness.run(lambda: client.chat.completions.with_raw_response.create(**kwargs))
    return wrapper, wrapper.parse()


def _streaming_response(harness: Harness, client: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``with_streaming_response.create(...)`` on a non-streaming request: headers and parsed."""
    kwargs.setdefault("model", "gpt-A")
    kwargs.setdefault("messages", MESSAGES)
    if harness.is_async:

        async def run() -> tuple[Any, Any]:
            async with client.chat.completions.with_streaming_response.create(**kwargs) as wrapper:
                return wrapper.headers, await wrapper.parse()

        return asyncio.run(run())
    with client.chat.completions.with_streaming_response.create(**kwargs) as wrapper:
        return wrapper.headers, wrapper.parse()


# -- a fallback honours the request's shape -------------------------------------------------------


def test_parse_with_only_canned_text_raises_unanswerable_not_validation_error(harness: Harness) -> None:
    """parse(response_format=Person) in an outage with a canned text: our error, with provenance."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", text="busy")))
    error = _parse(harness, client, response_format=Person)
    assert isinstance(error, UnanswerableError)
    assert isinstance(error, openai.OpenAIError)
    assert "JSON" in error.reason
    assert error.attempts == 1
    assert isinstance(error.__cause__, openai.InternalServerError)
    record = provenance(error)
    assert record is not None
    assert record.reason == "server_error"
    assert [a.verdict for a in record.attempts] == ["server_error"]


def test_parse_is_answered_by_canned_json_valid_for_its_schema(harness: Harness) -> None:
    """A canned JSON value that fits the schema is parsed into the caller's model."""
    harness.upstream.set_default("gpt-A", Status(503))
    step = FallbackStep(kind="canned", text="busy", json={"name": "Nobody", "age": 0})
    client = harness.client(_policy(step))
    answer = _parse(harness, client, response_format=Person)
    assert answer.choices[0].message.parsed == Person(name="Nobody", age=0)
    assert _source(answer) == "canned"


def test_canned_json_that_does_not_fit_is_skipped_for_the_next_step(harness: Harness) -> None:
    """A canned JSON value invalid for the schema is never served; a later function answers."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(
        _policy(
            FallbackStep(kind="canned", json={"name": "Nobody"}),
            FallbackStep(kind="function", function="fill"),
        ),
        runtime={"functions": {"fill": lambda body, reason: '{"name": "Fn", "age": 1}'}},
    )
    answer = _parse(harness, client, response_format=Person)
    assert answer.choices[0].message.parsed == Person(name="Fn", age=1)
    assert _source(answer) == "function"


def test_responses_parse_is_answered_by_canned_json(harness: Harness) -> None:
    """responses.parse(text_format=Person) is answered by a fitting canned JSON value."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", json={"name": "R", "age": 2})))
    answer = _call(harness, lambda: client.responses.parse(model="gpt-A", input="who?", text_format=Person))
    assert answer.output_parsed == Person(name="R", age=2)
    assert _source(answer) == "canned"


def test_forced_tool_call_is_never_answered_with_text(harness: Harness) -> None:
    """tool_choice="required" with only a canned text: our error, not finish_reason="stop"."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", text="busy")))
    error = _create(harness, client, tools=TOOLS, tool_choice="required")
    assert isinstance(error, UnanswerableError)
    assert "tool call" in error.reason


def test_forced_tool_call_is_answered_by_a_canned_tool_call(harness: Harness) -> None:
    """A configured canned tool call answers a forced call to that function."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", text="busy", tool_call=LOOKUP)))
    choice = {"type": "function", "function": {"name": "lookup"}}
    answer = _create(harness, client, tools=TOOLS, tool_choice=choice)
    assert answer.choices[0].finish_reason == "tool_calls"
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "lookup"
    assert call.function.arguments == '{"q":"status"}'
    assert _source(answer) == "canned"


def test_forced_tool_call_is_streamed_from_a_canned_tool_call(harness: Harness) -> None:
    """A streaming request forcing a tool call gets the canned call as tool-call deltas."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", tool_call=LOOKUP)))
    _, chunks, error = harness.stream_chat(client, tools=TOOLS, tool_choice="required")
    assert error is None
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or ()]
    assert [(call.function.name, call.function.arguments) for call in calls] == [("lookup", '{"q":"status"}')]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parse_with_a_tool_is_answered_with_parsed_arguments(harness: Harness) -> None:
    """parse() with a strict function tool gets the canned call's arguments parsed."""

    class Lookup(pydantic.BaseModel):
        q: str

    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(
        _policy(FallbackStep(kind="canned", tool_call=CannedToolCall(name="Lookup", arguments={"q": "x"})))
    )
    answer = _parse(harness, client, tools=[openai.pydantic_function_tool(Lookup)], tool_choice="required")
    assert answer.choices[0].message.tool_calls[0].function.parsed_arguments == Lookup(q="x")


def test_a_function_may_decline(harness: Harness) -> None:
    """A function returning None declines; with nothing else the caller gets our error."""
    harness.upstream.set_default("gpt-A", Status(503))
    seen: list[Any] = []

    def decline(body: Any, reason: str) -> None:
        seen.append(body["response_format"]["type"])

    client = harness.client(
        _policy(FallbackStep(kind="function", function="decline")),
        runtime={"functions": {"decline": decline}},
    )
    error = _parse(harness, client, response_format=Person)
    assert isinstance(error, UnanswerableError)
    assert error.reason == "function: declined"
    assert seen == ["json_schema"]


def test_a_function_text_that_does_not_fit_is_not_served(harness: Harness) -> None:
    """A function's plain text never answers a structured request."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(
        _policy(FallbackStep(kind="function", function="sorry")),
        runtime={"functions": {"sorry": lambda body, reason: "sorry, later"}},
    )
    error = _create(harness, client, response_format={"type": "json_object"})
    assert isinstance(error, UnanswerableError)


def test_a_model_step_is_asked_the_structured_request(harness: Harness) -> None:
    """A fallback model gets the same request, response_format included."""
    harness.upstream.set_default("gpt-A", Status(503))
    harness.upstream.set_default("gpt-B", Ok('{"name": "B", "age": 5}'))
    client = harness.client(_policy(FallbackStep(kind="model", model="gpt-B")))
    answer = _parse(harness, client, response_format=Person)
    assert answer.choices[0].message.parsed == Person(name="B", age=5)
    (sent,) = [r for r in harness.upstream.requests if r.model == "gpt-B"]
    assert sent.json is not None
    assert sent.json["response_format"]["type"] == "json_schema"


# -- the caller's outcome is the caller's ---------------------------------------------------------


def test_callers_own_validation_is_raised_once_without_retry_breaker_or_fallback(harness: Harness) -> None:
    """A well-formed answer the caller's model rejects: the SDK's ValidationError, one request."""
    harness.upstream.set_default("gpt-A", Ok('{"name": "Ann"}'))
    harness.upstream.set_default("gpt-B", Ok('{"name": "Bob"}'))
    client = harness.client(
        Policy(
            fallback=FallbackPolicy(
                routes={"gpt-A": Route(steps=(FallbackStep(kind="model", model="gpt-B"),))}
            )
        )
    )
    error = _parse(harness, client, response_format=Picky)
    assert isinstance(error, pydantic.ValidationError)
    assert harness.upstream.count("gpt-A") == 1
    assert harness.upstream.count("gpt-B") == 0
    (breaker,) = health(client)["breakers"]
    assert breaker["consecutive_failures"] == 0
    assert breaker["state"] == "closed"
    record = provenance(error)
    assert record is not None
    assert record.reason == "caller_error"


def test_plain_sdk_raises_the_same_validation_error(harness: Harness) -> None:
    """The plain SDK, for comparison: the same error type on the same answer."""
    harness.upstream.set_default("gpt-A", Ok('{"name": "Ann"}'))
    error = _parse(harness, harness.raw(), response_format=Picky)
    assert isinstance(error, pydantic.ValidationError)


def test_a_truncated_body_is_still_the_upstreams_failure(harness: Harness) -> None:
    """A 200 the SDK cannot read as JSON falls back, even for parse()."""
    harness.upstream.set_default("gpt-A", Garbage('{"id": "chatcmpl-1", "choices": [{"ind'))
    client = harness.client(_policy(FallbackStep(kind="canned", json={"name": "C", "age": 1})))
    answer = _parse(harness, client, response_format=Person)
    assert answer.choices[0].message.parsed == Person(name="C", age=1)
    assert _source(answer) == "canned"


def test_a_length_finish_is_the_callers_outcome(harness: Harness) -> None:
    """parse() of a well-formed answer cut by max_tokens: the SDK's LengthFinishReasonError, once."""
    cut = {
        "id": "chatcmpl-cut",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-A",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"name": "A'},
                "finish_reason": "length",
            }
        ],
    }
    harness.upstream.set_default("gpt-A", Garbage(cut))
    client = harness.client(_policy(FallbackStep(kind="canned", json={"name": "C", "age": 1})))
    error = _parse(harness, client, response_format=Person)
    assert isinstance(error, openai.LengthFinishReasonError)
    assert harness.upstream.count("gpt-A") == 1
    assert isinstance(_parse(harness, harness.raw(), response_format=Person), openai.LengthFinishReasonError)


# -- every path fills and reads the cache; no warnings -------------------------------------------


@pytest.mark.filterwarnings("error")
def test_parse_with_a_cache_route_warns_nothing_and_is_served_from_the_cache(harness: Harness) -> None:
    """parse() fills the cache silently (warnings are errors here) and is answered from it."""
    harness.upstream.script("gpt-A", [Ok('{"name": "Ann", "age": 3}')])
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="cache")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = _parse(harness, client, response_format=Person)
        second = _parse(harness, client, response_format=Person)
    assert _source(first) == "upstream"
    assert second.choices[0].message.parsed == Person(name="Ann", age=3)
    assert _source(second) == "cache"


def test_raw_response_fills_and_reads_the_cache(harness: Harness) -> None:
    """with_raw_response (how LangChain calls) stores the answer and is served from the cache."""
    harness.upstream.script("gpt-A", [Ok("remembered")])
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="cache")))
    first, _ = _raw(harness, client)
    assert first.headers["x-resilient-source"] == "upstream"
    wrapper, parsed = _raw(harness, client)
    assert parsed.choices[0].message.content == "remembered"
    assert _source(parsed) == "cache"
    assert wrapper.headers["x-resilient-source"] == "cache"
    assert wrapper.headers["x-resilient-reason"] == "server_error"
    assert wrapper.headers["x-resilient-model"] == "gpt-A"
    assert _create(harness, client).choices[0].message.content == "remembered"


def test_streaming_response_fills_the_cache_when_parsed(harness: Harness) -> None:
    """with_streaming_response stores the answer once the caller parses it; a stream reads it."""
    harness.upstream.script("gpt-A", [Ok("streamed in")])
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="cache")))
    headers, parsed = _streaming_response(harness, client)
    assert headers["x-resilient-source"] == "upstream"
    assert _source(parsed) == "upstream"
    headers, parsed = _streaming_response(harness, client)
    assert headers["x-resilient-source"] == "cache"
    assert parsed.choices[0].message.content == "streamed in"
    assert _source(parsed) == "cache"


def test_a_stream_fills_the_cache_for_raw_readers(harness: Harness) -> None:
    """A finished stream is stored; a raw call to the same request is answered from it."""
    harness.upstream.script("gpt-A", [Ok("from a stream")])
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="cache")))
    _, _, error = harness.stream_chat(client, messages=MESSAGES)
    assert error is None
    _, parsed = _raw(harness, client)
    assert parsed.choices[0].message.content == "from a stream"
    assert _source(parsed) == "cache"


# -- provenance wherever the answer goes ----------------------------------------------------------


def test_raw_parse_of_a_structured_fallback_carries_provenance(harness: Harness) -> None:
    """with_raw_response.parse(...).parse() returns an object provenance() knows."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", json={"name": "N", "age": 9})))

    def work() -> Any:
        return client.chat.completions.with_raw_response.parse(
            model="gpt-A", messages=MESSAGES, response_format=Person
        )

    wrapper = harness.run(work)
    parsed = wrapper.parse()
    assert parsed.choices[0].message.parsed == Person(name="N", age=9)
    assert _source(parsed) == "canned"
    assert wrapper.headers["x-resilient-source"] == "canned"


def test_every_path_tells_listeners_how_the_call_ended(harness: Harness) -> None:
    """CallCompleted is emitted once per call: plain, raw, streaming response, caller error, ours."""
    events: list[Event] = []
    harness.upstream.script("gpt-A", [Ok("one"), Ok('{"name": "x"}')])
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(
        _policy(FallbackStep(kind="cache"), FallbackStep(kind="canned", text="busy")),
        runtime={"listeners": (events.append,)},
    )
    _create(harness, client)
    _parse(harness, client, response_format=Picky)
    _raw(harness, client)
    _streaming_response(harness, client)
    _create(harness, client, tools=TOOLS, tool_choice="required")
    done = [event for event in events if isinstance(event, CallCompleted)]
    assert [(event.source, event.verdict, event.error) for event in done] == [
        ("upstream", "success", None),
        (None, "caller_error", "ValidationError"),
        ("cache", "success", None),
        ("cache", "success", None),
        (None, "server_error", "UnanswerableError"),
    ]


RESPONSES_TOOLS: list[Any] = [{"type": "function", "name": "lookup", **TOOLS[0]["function"]}]


def test_responses_forced_tool_call_is_answered_by_a_canned_tool_call(harness: Harness) -> None:
    """The Responses API's forced tool call gets the canned call as a function_call item."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", text="busy", tool_call=LOOKUP)))
    answer = _call(
        harness,
        lambda: client.responses.create(
            model="gpt-A", input="who?", tools=RESPONSES_TOOLS, tool_choice="required"
        ),
    )
    (item,) = answer.output
    assert (item.type, item.name, item.arguments) == ("function_call", "lookup", '{"q":"status"}')
    assert _source(answer) == "canned"


def test_responses_forced_tool_call_is_streamed_from_a_canned_tool_call(harness: Harness) -> None:
    """A streamed Responses request forcing a tool call gets function-call events."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(FallbackStep(kind="canned", tool_call=LOOKUP)))
    request = {"model": "gpt-A", "input": "who?", "tools": RESPONSES_TOOLS, "tool_choice": "required"}
    if harness.is_async:

        async def consume() -> list[Any]:
            stream = await client.responses.create(stream=True, **request)
            return [event async for event in stream]

        events = asyncio.run(consume())
    else:
        events = list(client.responses.create(stream=True, **request))
    done = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert [(event.name, event.arguments) for event in done] == [("lookup", '{"q":"status"}')]
    assert events[-1].response.output[0].type == "function_call"
